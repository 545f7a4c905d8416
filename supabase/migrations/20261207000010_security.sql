-- Security review of the database side (issue 24, findings 1 to 3).
--
-- 1. The public catalogue is read from a table that holds only published listings, so no
--    filter a client sends through `published_properties` is ever evaluated on a draft.
-- 2. The database webhook fires once per statement, not once per row, and what one owner can
--    create through REST is capped (listings per owner, future visit slots per property).
-- 3. The webhook's call is signed (`X-Dousell-Signature`, HMAC-SHA256 with pgcrypto) with the
--    secret kept in Vault; the secret itself is no longer put in pg_net's queue.
--
-- docs/invalidation.md ("Upgrading a running project") gives the order of the steps on a
-- project that already runs the unsigned webhook, so that no change is lost or refused.

-- 1. The public catalogue ------------------------------------------------------------------
-- `published_properties` was a plain view over `properties` with `where status = 'published'`.
-- PostgreSQL may evaluate a caller's condition before, or beside, a plain view's own: a
-- catastrophic-backtracking regex on a draft's title (`title=match.^(?=Appartement en r)(.*)...`)
-- took 3 s when the guessed prefix was right and 3 ms when it was wrong, so a draft could be read
-- one character at a time with the public key. A `security_barrier` view would keep such a
-- condition above the view's, but then `ilike` (not LEAKPROOF) can no longer be an index
-- condition: every search would read every published listing, as RLS does
-- (tests/sql/test_scale_plans.py keeps the proof).
--
-- So the view reads a table that holds nothing else: `private.published_listings`, a copy of the
-- published rows kept by a trigger in the writing transaction. Whatever plan the planner picks and
-- whatever a client filters on, a row the client may not see is not in the relation scanned; the
-- search indexes (trigram, and the newest-first btrees) live on that table, whole instead of
-- partial. The copy costs one row write per change of a published listing; the three trigram
-- indexes move there from `properties` (through the table, RLS keeps `ilike` off them anyway).

create table private.published_listings (
  id bigint primary key references public.properties (id) on update cascade on delete cascade,
  owner_id uuid not null,
  title text not null,
  description text not null,
  city text not null,
  district text,
  type text not null,
  price integer not null,
  currency text not null,
  bedrooms integer not null,
  status text not null check (status = 'published'),
  created_at timestamptz not null,
  updated_at timestamptz not null,
  city_lower text not null
);

revoke all on private.published_listings from public, anon, authenticated, service_role;

comment on table private.published_listings is
  'The published rows of public.properties, kept by trigger a_sync_published_listing; read only through '
  'the view public.published_properties (20261207000010_security.sql).';

create or replace function private.sync_published_listing() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' or (tg_op = 'UPDATE' and (new.status <> 'published' or new.id <> old.id)) then
    delete from private.published_listings where id = old.id;
  end if;
  if tg_op in ('INSERT', 'UPDATE') and new.status = 'published' then
    insert into private.published_listings (id, owner_id, title, description, city, district, type, price, currency,
                                            bedrooms, status, created_at, updated_at, city_lower)
    values (new.id, new.owner_id, new.title, new.description, new.city, new.district, new.type, new.price,
            new.currency, new.bedrooms, new.status, new.created_at, new.updated_at, new.city_lower)
    on conflict (id) do update set
      owner_id = excluded.owner_id, title = excluded.title, description = excluded.description,
      city = excluded.city, district = excluded.district, type = excluded.type, price = excluded.price,
      currency = excluded.currency, bedrooms = excluded.bedrooms, status = excluded.status,
      created_at = excluded.created_at, updated_at = excluded.updated_at, city_lower = excluded.city_lower;
  end if;
  return null;
end;
$$;

revoke execute on function private.sync_published_listing() from public, anon, authenticated;

-- AFTER, so that the generated city_lower is computed. ENABLE ALWAYS: a bulk load run with
-- `session_replication_role = replica` (devstack/catalogue.py, a restore) skips the other
-- triggers but must not leave the catalogue behind the table.
create trigger a_sync_published_listing after insert or update or delete on public.properties
  for each row execute function private.sync_published_listing();
alter table public.properties enable always trigger a_sync_published_listing;

insert into private.published_listings (id, owner_id, title, description, city, district, type, price, currency,
                                        bedrooms, status, created_at, updated_at, city_lower)
select id, owner_id, title, description, city, district, type, price, currency, bedrooms, status, created_at,
       updated_at, city_lower
from public.properties
where status = 'published';

-- The same columns, in the same order, as before: lib/domain/properties and PostgREST see no change.
create or replace view public.published_properties as
  select id, owner_id, title, description, city, district, type, price, currency, bedrooms, status,
         created_at, updated_at, city_lower
  from private.published_listings;

comment on view public.published_properties is
  'Published listings, read by the API as anon (lib/domain/properties.py). Read-only; holds nothing else, '
  'so no filter is evaluated on a hidden row (20261207000010_security.sql).';

revoke all on public.published_properties from public, anon, authenticated, service_role;
grant select on public.published_properties to anon, authenticated, service_role;

-- The indexes of 20261202000030_scale.sql, on the copy (every row published: no predicate).
create index published_listings_newest_idx on private.published_listings (created_at desc, id desc);
create index published_listings_city_newest_idx on private.published_listings (city_lower, created_at desc, id desc);
create index published_listings_type_newest_idx on private.published_listings (type, created_at desc, id desc);
create index published_listings_city_type_newest_idx on private.published_listings
  (city_lower, type, created_at desc, id desc);
create index published_listings_price_idx on private.published_listings (price);
create index published_listings_bedrooms_idx on private.published_listings (bedrooms);
create index published_listings_title_trgm_idx on private.published_listings
  using gin (title extensions.gin_trgm_ops);
create index published_listings_description_trgm_idx on private.published_listings
  using gin (description extensions.gin_trgm_ops);
create index published_listings_district_trgm_idx on private.published_listings
  using gin (district extensions.gin_trgm_ops);

drop index if exists public.properties_published_title_trgm_idx;
drop index if exists public.properties_published_description_trgm_idx;
drop index if exists public.properties_published_district_trgm_idx;

-- 2a. Caps on what one owner creates through REST -----------------------------------------
-- Any user may pick the owner role at sign-up and write listings and slots straight through
-- PostgREST. Each row costs storage, an outbox row and tag bumps; without a bound one account
-- makes the rest of the system carry whatever it likes. The caps:
--   500 listings per owner, whatever their status: the demo's busiest owner has 21, a large
--       Dakar agency a few hundred; archived ones count, or archiving would reopen the tap.
--   400 future visit slots per property: one an hour from 08:00 to 18:00 (ten a day) for forty
--       days ahead; past slots do not count.
-- They bind the API roles (`anon`, `authenticated`: PostgREST's SET ROLE after checking the JWT);
-- the service role, migrations, Studio and the local stack's bulk loads are not capped. Refused
-- with `raise exception '<code>'` (P0001), which PostgREST answers as 400 with that message.
-- The API itself creates neither listings nor slots.

create or replace function private.capped_role() returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce(current_setting('role', true), 'none') in ('anon', 'authenticated')
$$;

create or replace function private.cap_listings() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  if not private.capped_role() then
    return null;
  end if;
  -- One statement may insert for several owners: each is counted after the whole statement.
  for v_count in
    select count(*) from public.properties p where p.owner_id in (select distinct n.owner_id from new_rows n)
    group by p.owner_id having count(*) > 500
  loop
    raise exception 'too_many_listings' using errcode = 'P0001',
      detail = 'Un propriétaire peut avoir au plus 500 annonces (brouillons et archives compris).',
      hint = 'Delete or reuse a listing; the cap is in private.cap_listings (20261207000010_security.sql).';
  end loop;
  return null;
end;
$$;

create or replace function private.cap_visit_slots() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  if not private.capped_role() then
    return null;
  end if;
  for v_count in
    select count(*) from public.visit_slots s
    where s.property_id in (select distinct n.property_id from new_rows n) and s.starts_at > now()
    group by s.property_id having count(*) > 400
  loop
    raise exception 'too_many_visit_slots' using errcode = 'P0001',
      detail = 'Une annonce peut avoir au plus 400 créneaux de visite à venir.',
      hint = 'Delete past or unused slots; the cap is in private.cap_visit_slots (20261207000010_security.sql).';
  end loop;
  return null;
end;
$$;

revoke execute on function private.capped_role(), private.cap_listings(), private.cap_visit_slots()
  from public, anon, authenticated;

-- Per statement (transition tables may serve one event each, hence one trigger per event).
-- REST cannot move a listing to another owner (no update grant on owner_id), so inserts alone
-- are counted for listings; a slot may be moved from the past into the future, so both for slots.
create trigger cap_listings_insert after insert on public.properties
  referencing new table as new_rows for each statement execute function private.cap_listings();
create trigger cap_visit_slots_insert after insert on public.visit_slots
  referencing new table as new_rows for each statement execute function private.cap_visit_slots();
create trigger cap_visit_slots_update after update on public.visit_slots
  referencing new table as new_rows for each statement execute function private.cap_visit_slots();

-- 2b and 3. The database webhook: once per statement, signed ---------------------------------
-- Replaces 20261202000021's row-level `b_database_webhook`: a statement changing 1,000 rows
-- queued 1,000 requests (each a function run on Vercel and two Vault reads in the writer's
-- transaction). The drain reads the whole outbox anyway, so one call per statement is enough;
-- its body keeps Supabase's shape with the statement's first changed row (what the endpoint
-- bumps itself when the outbox is unreachable; the cron drains the rest).
--
-- The call carries `X-Dousell-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
-- instead of the secret: on hosted Supabase PUBLIC can read net.http_request_queue, headers
-- included. The body signed is the body sent: pg_net queues `convert_to(body::text, 'UTF8')`,
-- and jsonb's text form is deterministic. Without the secret in Vault nothing is sent (an
-- unsigned call would be refused); the cron drains the outbox instead.

create or replace function private.send_database_webhook() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
  v_new jsonb;
  v_old jsonb;
  v_payload jsonb;
  v_t text;
  v_signature text;
begin
  v_url := private.setting('dousell_database_webhook_url');
  if v_url is null then
    return null;
  end if;
  if tg_op = 'INSERT' then
    select to_jsonb(n) into v_new from new_rows n limit 1;
  elsif tg_op = 'DELETE' then
    select to_jsonb(o) into v_old from old_rows o limit 1;
  else
    -- The first row the update changed (`set x = x` changes nothing, as the outbox trigger sees it).
    select c.r into v_new
    from (select to_jsonb(n) as r from new_rows n except all select to_jsonb(o) from old_rows o) c
    limit 1;
    if v_new is not null then
      select to_jsonb(o) into v_old from old_rows o where to_jsonb(o) -> 'id' = v_new -> 'id' limit 1;
      if v_old is null then  -- the key itself changed
        select c.r into v_old
        from (select to_jsonb(o) as r from old_rows o except all select to_jsonb(n) from new_rows n) c
        limit 1;
      end if;
    end if;
  end if;
  if v_new is null and v_old is null then
    return null;  -- no row changed: nothing in the outbox either
  end if;
  v_secret := private.setting('dousell_database_webhook_secret');
  if v_secret is null then
    raise warning 'database webhook not sent: no dousell_database_webhook_secret in Vault; the outbox keeps the change';
    return null;
  end if;
  v_payload := jsonb_build_object('type', tg_op, 'table', tg_table_name, 'schema', tg_table_schema,
                                  'record', v_new, 'old_record', v_old);
  -- clock_timestamp: when the statement ends, not when a long transaction began.
  v_t := floor(extract(epoch from clock_timestamp()))::bigint::text;
  v_signature := 't=' || v_t || ',v1=' || encode(
    extensions.hmac(convert_to(v_t || '.' || v_payload::text, 'UTF8'), convert_to(v_secret, 'UTF8'), 'sha256'),
    'hex');
  begin
    perform net.http_post(
      url := v_url,
      body := v_payload,
      params := '{}'::jsonb,
      headers := jsonb_build_object('Content-Type', 'application/json', 'X-Dousell-Signature', v_signature),
      timeout_milliseconds := 5000);
  exception when others then
    raise warning 'database webhook not queued (%: %); the outbox keeps the change', sqlstate, sqlerrm;
  end;
  return null;
end;
$$;

revoke execute on function private.send_database_webhook() from public, anon, authenticated;

do $$
declare
  v_table text;
begin
  foreach v_table in array array['properties', 'leases', 'rental_payments', 'visits', 'visit_slots', 'profiles',
                                 'notifications']
  loop
    execute format('drop trigger if exists b_database_webhook on public.%I', v_table);
    execute format('create trigger b_database_webhook_insert after insert on public.%I '
                   'referencing new table as new_rows '
                   'for each statement execute function private.send_database_webhook()', v_table);
    execute format('create trigger b_database_webhook_update after update on public.%I '
                   'referencing old table as old_rows new table as new_rows '
                   'for each statement execute function private.send_database_webhook()', v_table);
    execute format('create trigger b_database_webhook_delete after delete on public.%I '
                   'referencing old table as old_rows '
                   'for each statement execute function private.send_database_webhook()', v_table);
  end loop;
end
$$;
