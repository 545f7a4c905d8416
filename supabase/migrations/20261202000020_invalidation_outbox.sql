-- The invalidation outbox: every change to a row the API shows is recorded here, in the
-- same transaction as the change, whoever made it (the API, the web app through
-- supabase-js, Supabase Studio, SQL, another service).
--
-- The API drains it (docs/invalidation.md): it claims rows, bumps the Redis tags each row
-- maps to (lib/keys.change_tags, the one map), then deletes them. A row stays until its
-- tags are bumped: an invalidation that cannot reach Redis waits here, not in the memory
-- of one serverless instance. The database webhook (next migration) only says "drain now".
--
-- Rows carry both versions of the changed row as stored (to_jsonb), the owners of the
-- property it belongs to (leases, payments and visits do not carry their owner, whose
-- dashboard they change), and the change id the API sent with its own write
-- (`X-Dousell-Change`, read from PostgREST's `request.headers`), so the drain can tell a
-- change the API already applied from one it never saw.
--
-- Clients never reach it: it lives in `private` (not exposed by PostgREST, no grants),
-- written by a SECURITY DEFINER trigger, read and emptied through SECURITY DEFINER
-- functions that only service_role may call.

create schema if not exists private;
revoke all on schema private from public;

create table private.invalidation_outbox (
  id bigint generated always as identity primary key,
  created_at timestamptz not null default clock_timestamp(),
  table_name text not null,
  op text not null check (op in ('INSERT', 'UPDATE', 'DELETE')),
  record jsonb,
  old_record jsonb,
  owner_ids uuid[] not null default '{}',
  change_id text,
  -- A drainer holds the rows it claimed until then; past it, another may take them (the
  -- first one died between claiming and deleting). Bumping a tag twice is harmless.
  claimed_until timestamptz,
  claims integer not null default 0
);

-- What the drain asks for: the oldest unclaimed rows first.
create index invalidation_outbox_claimable_idx on private.invalidation_outbox (id)
  include (claimed_until);

revoke all on private.invalidation_outbox from public, anon, authenticated;

-- The change id of the API's own write: `X-Dousell-Change: <32 hex>` on the PostgREST request.
-- Anything else (no header, SQL, Studio, a malformed value) is NULL: the change is then
-- bumped by the drain whatever the API did. Never raises: a write must not fail here.
create or replace function private.request_change_id() returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_headers text := current_setting('request.headers', true);
  v_id text;
begin
  if v_headers is null or v_headers = '' then
    return null;
  end if;
  begin
    v_id := v_headers::jsonb ->> 'x-dousell-change';
  exception when others then
    return null;
  end;
  if v_id ~ '^[0-9a-f]{32}$' then
    return v_id;
  end if;
  return null;
end;
$$;

-- The owners of the property a lease, payment, visit or slot belongs to (both versions).
create or replace function private.property_owners(p_table text, p_old jsonb, p_new jsonb)
returns uuid[]
language sql
stable
set search_path = ''
as $$
  select coalesce(array_agg(distinct p.owner_id), '{}')
  from public.properties p
  where p.id in (
    select (r ->> 'property_id')::bigint
    from unnest(array[p_old, p_new]) r
    where p_table in ('leases', 'visits', 'visit_slots') and r ? 'property_id'
    union
    select l.property_id
    from unnest(array[p_old, p_new]) r
    join public.leases l on l.id = (r ->> 'lease_id')::bigint
    where p_table = 'rental_payments' and r ? 'lease_id'
  )
$$;

create or replace function private.record_change() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_old jsonb := case when tg_op in ('UPDATE', 'DELETE') then to_jsonb(old) end;
  v_new jsonb := case when tg_op in ('INSERT', 'UPDATE') then to_jsonb(new) end;
begin
  if tg_op = 'UPDATE' and v_old = v_new then
    return null;  -- `update ... set x = x`: nothing anyone can see changed
  end if;
  insert into private.invalidation_outbox (table_name, op, record, old_record, owner_ids, change_id)
  values (tg_table_name, tg_op, v_new, v_old, private.property_owners(tg_table_name, v_old, v_new),
          private.request_change_id());
  return null;
end;
$$;

-- One row-level AFTER trigger per table the API shows (lib/keys.TABLES). Named with a
-- leading `a_` only for people: AFTER triggers fire in name order, and this one logically
-- comes before the webhook's.
create trigger a_record_change after insert or update or delete on public.properties
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.leases
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.rental_payments
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.visits
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.visit_slots
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.profiles
  for each row execute function private.record_change();
create trigger a_record_change after insert or update or delete on public.notifications
  for each row execute function private.record_change();

-- The drain's three calls (POST /rest/v1/rpc/<name>, service_role only) ------------------

-- Claims up to p_limit unclaimed rows, oldest first, for p_hold_seconds; returns them as a
-- JSON array. Concurrent drainers skip each other's rows (SKIP LOCKED, then the claim).
create or replace function public.claim_invalidations(p_limit integer default 200, p_hold_seconds integer default 30)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_rows jsonb;
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 or p_hold_seconds is null or p_hold_seconds < 1
     or p_hold_seconds > 600 then
    raise exception 'invalid_claim' using errcode = 'P0001';
  end if;
  with claimable as (
    select o.id from private.invalidation_outbox o
    where o.claimed_until is null or o.claimed_until < clock_timestamp()
    order by o.id
    limit p_limit
    for update skip locked
  ), claimed as (
    update private.invalidation_outbox o
    set claimed_until = clock_timestamp() + make_interval(secs => p_hold_seconds), claims = o.claims + 1
    from claimable c
    where o.id = c.id
    returning o.id, o.created_at, o.table_name, o.op, o.record, o.old_record, o.owner_ids, o.change_id, o.claims
  )
  select coalesce(jsonb_agg(to_jsonb(claimed) order by claimed.id), '[]'::jsonb) into v_rows from claimed;
  return v_rows;
end;
$$;

-- Deletes rows whose tags were bumped. Returns how many were still there.
create or replace function public.complete_invalidations(p_ids bigint[])
returns integer
language sql
security definer
set search_path = ''
as $$
  with gone as (delete from private.invalidation_outbox where id = any(p_ids) returning 1)
  select count(*)::integer from gone
$$;

-- Hands claimed rows back at once (Redis refused the bump): the next drain takes them
-- without waiting for the claim to run out.
create or replace function public.release_invalidations(p_ids bigint[])
returns integer
language sql
security definer
set search_path = ''
as $$
  with released as (
    update private.invalidation_outbox set claimed_until = null where id = any(p_ids) returning 1
  )
  select count(*)::integer from released
$$;

-- What is waiting: {"pending", "oldest_seconds"} (the cron reports it; 0 and null when empty).
create or replace function public.invalidation_backlog()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'pending', count(*),
    'oldest_seconds', round(extract(epoch from clock_timestamp() - min(created_at))::numeric, 3))
  from private.invalidation_outbox
$$;

revoke execute on function public.claim_invalidations(integer, integer) from public, anon, authenticated;
revoke execute on function public.complete_invalidations(bigint[]) from public, anon, authenticated;
revoke execute on function public.release_invalidations(bigint[]) from public, anon, authenticated;
revoke execute on function public.invalidation_backlog() from public, anon, authenticated;
grant execute on function public.claim_invalidations(integer, integer) to service_role;
grant execute on function public.complete_invalidations(bigint[]) to service_role;
grant execute on function public.release_invalidations(bigint[]) to service_role;
grant execute on function public.invalidation_backlog() to service_role;

revoke execute on function private.record_change() from public, anon, authenticated;
revoke execute on function private.request_change_id() from public, anon, authenticated;
revoke execute on function private.property_owners(text, jsonb, jsonb) from public, anon, authenticated;
