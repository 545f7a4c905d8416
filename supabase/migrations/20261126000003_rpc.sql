-- RPC functions (POST /rest/v1/rpc/<name>).
--
-- Errors the API must tell apart are raised as `raise exception '<code>' using errcode =
-- 'P0001'`: PostgREST answers 400 with the code as `message`, and lib maps the code to
-- the contract's error. The codes are part of the interface with lib:
--   invalid_period, lease_not_found, not_lease_tenant, lease_not_active, already_paid,
--   payment_in_progress, invalid_status, payment_not_found, amount_mismatch,
--   property_not_found, slot_not_found, slot_taken, visitor_not_found.
--
-- The write functions are SECURITY DEFINER with an empty search_path (every name is
-- qualified, so a caller's objects cannot hijack them) and callable by service_role
-- only: the API checks the user's token, then calls them with the user's id.

-- private: helpers that PostgREST must not expose -----------------------------------------

create schema if not exists private;
revoke all on schema private from public;

-- 1500000 -> '1 500 000 FCFA', as French readers expect.
create or replace function private.format_xof(p_amount bigint) returns text
language sql immutable
set search_path = ''
as $$
  select replace(to_char(p_amount, 'FM999,999,999,990'), ',', ' ') || ' FCFA'
$$;

-- '2026-11' -> 'novembre 2026' (no dependency on the server's lc_time).
create or replace function private.period_label(p_period text) returns text
language sql immutable
set search_path = ''
as $$
  select (array['janvier', 'février', 'mars', 'avril', 'mai', 'juin', 'juillet', 'août',
                'septembre', 'octobre', 'novembre', 'décembre'])[substr(p_period, 6, 2)::int]
         || ' ' || substr(p_period, 1, 4)
$$;

-- reserve_payment -------------------------------------------------------------------------
-- Returns the pending payment of (lease, period), creating it if needed:
--   {"payment": {rental_payments row}, "created": bool, "owner_id": uuid}
-- The caller (lib) then creates the PayDunya invoice and stores provider_token and
-- checkout_url on the row; a pending row without checkout_url is one whose invoice is
-- still to be made.

create or replace function public.reserve_payment(p_lease_id bigint, p_tenant_id uuid, p_period text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_lease public.leases;
  v_owner_id uuid;
  v_payment public.rental_payments;
  v_created boolean := false;
begin
  if p_period is null or p_period !~ '^[0-9]{4}-(0[1-9]|1[0-2])$' then
    raise exception 'invalid_period' using errcode = 'P0001';
  end if;

  -- Reservations for one lease queue up here, so the second caller sees the first one's
  -- row. NO KEY UPDATE rather than UPDATE: it serialises us just as well but does not
  -- wait for transactions that merely reference the lease (inserting a payment row).
  select * into v_lease from public.leases where id = p_lease_id for no key update;
  if not found then
    raise exception 'lease_not_found' using errcode = 'P0001';
  end if;
  if v_lease.tenant_id is distinct from p_tenant_id then
    raise exception 'not_lease_tenant' using errcode = 'P0001';
  end if;
  if v_lease.status <> 'active' then
    raise exception 'lease_not_active' using errcode = 'P0001';
  end if;

  select p.owner_id into v_owner_id from public.properties p where p.id = v_lease.property_id;

  if exists (
    select 1 from public.rental_payments r
    where r.lease_id = v_lease.id and r.period = p_period and r.status = 'completed'
  ) then
    raise exception 'already_paid' using errcode = 'P0001';
  end if;

  select * into v_payment from public.rental_payments r
  where r.lease_id = v_lease.id and r.period = p_period and r.status = 'pending';

  if not found then
    begin
      insert into public.rental_payments (lease_id, period, amount, currency, status)
      values (v_lease.id, p_period, v_lease.monthly_rent, v_lease.currency, 'pending')
      returning * into v_payment;
      v_created := true;
    exception when unique_violation then
      -- A writer that did not take the lease lock got there first: the partial unique
      -- index is the last fence. Its row is committed now (we waited on it); answer it.
      select * into v_payment from public.rental_payments r
      where r.lease_id = v_lease.id and r.period = p_period and r.status = 'pending';
      if not found then
        if exists (
          select 1 from public.rental_payments r
          where r.lease_id = v_lease.id and r.period = p_period and r.status = 'completed'
        ) then
          raise exception 'already_paid' using errcode = 'P0001';
        end if;
        raise exception 'payment_in_progress' using errcode = 'P0001';
      end if;
    end;
  end if;

  return jsonb_build_object('payment', to_jsonb(v_payment), 'created', v_created, 'owner_id', v_owner_id);
end;
$$;

-- 'novembre 2026' -> 'de novembre 2026', 'octobre 2026' -> 'd''octobre 2026' (elision).
create or replace function private.of_period(p_period text) returns text
language sql immutable
set search_path = ''
as $$
  select case when private.period_label(p_period) ~ '^[aeiou]' then 'd''' else 'de ' end
         || private.period_label(p_period)
$$;

-- confirm_payment -------------------------------------------------------------------------
-- Applies PayDunya's verdict on an invoice (after lib re-confirmed it with PayDunya):
--   {"payment": {row}, "changed": bool, "tenant_id", "owner_id", "lease_id"}
-- Idempotent: only a pending payment changes, once. completed/failed/cancelled are final;
-- a repeated or late callback answers changed=false. A wrong amount changes nothing.
-- Notifications: on completion only, one to the tenant and one to the owner. A failed or
-- cancelled checkout notifies nobody: the tenant was on PayDunya's page and saw it.

create or replace function public.confirm_payment(p_token text, p_status text, p_amount integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment public.rental_payments;
  v_lease public.leases;
  v_property public.properties;
  v_tenant_name text;
  v_changed boolean := false;
  v_data jsonb;
begin
  if p_status is null or p_status not in ('pending', 'completed', 'failed', 'cancelled') then
    raise exception 'invalid_status' using errcode = 'P0001';
  end if;

  -- Concurrent callbacks for one invoice queue on this row lock; the second one then
  -- reads the first one's outcome and changes nothing (so notifications go out once).
  select * into v_payment from public.rental_payments where provider_token = p_token for update;
  if not found then
    raise exception 'payment_not_found' using errcode = 'P0001';
  end if;
  if p_amount is distinct from v_payment.amount then
    raise exception 'amount_mismatch' using errcode = 'P0001';
  end if;

  select * into v_lease from public.leases where id = v_payment.lease_id;
  select * into v_property from public.properties where id = v_lease.property_id;

  if v_payment.status = 'pending' and p_status <> 'pending' then
    begin
      update public.rental_payments
      set status = p_status,
          paid_at = case when p_status = 'completed' then now() end
      where id = v_payment.id
      returning * into v_payment;
    exception when unique_violation then
      -- Another attempt for this month already completed (rental_payments_one_completed).
      raise exception 'already_paid' using errcode = 'P0001';
    end;
    v_changed := true;

    if p_status = 'completed' then
      select coalesce(pr.full_name, pr.email, 'Votre locataire') into v_tenant_name
      from public.profiles pr where pr.id = v_lease.tenant_id;
      v_data := jsonb_build_object(
        'payment_id', v_payment.id, 'lease_id', v_lease.id, 'property_id', v_property.id,
        'period', v_payment.period, 'amount', v_payment.amount, 'currency', v_payment.currency);
      insert into public.notifications (user_id, kind, title, body, data) values
        (v_lease.tenant_id, 'payment_completed', 'Paiement reçu',
         format('Votre loyer %s pour « %s » (%s) a bien été payé. Merci !',
                private.of_period(v_payment.period), v_property.title, private.format_xof(v_payment.amount)),
         v_data),
        (v_property.owner_id, 'rent_received', 'Loyer reçu',
         format('%s a payé le loyer %s pour « %s » : %s.',
                coalesce(v_tenant_name, 'Votre locataire'), private.of_period(v_payment.period),
                v_property.title, private.format_xof(v_payment.amount)),
         v_data);
    end if;
  end if;

  return jsonb_build_object(
    'payment', to_jsonb(v_payment),
    'changed', v_changed,
    'tenant_id', v_lease.tenant_id,
    'owner_id', v_property.owner_id,
    'lease_id', v_lease.id);
end;
$$;

-- book_visit ------------------------------------------------------------------------------
-- Books the slot of a published property that starts exactly at p_starts_at:
--   {"visit": {visits row}}

create or replace function public.book_visit(p_property_id bigint, p_starts_at timestamptz, p_visitor_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_slot public.visit_slots;
  v_visit public.visits;
begin
  -- Bookings of one property queue up here, whichever slot they want: overlapping slots
  -- conflict too, and two transactions inserting conflicting rows under an exclusion
  -- constraint can deadlock (each waits for the other's uncommitted row). Locking the
  -- property also keeps it from being unpublished halfway. NO KEY UPDATE, as in
  -- reserve_payment, does not wait for inserts that merely reference the property.
  perform 1 from public.properties p
  where p.id = p_property_id and p.status = 'published'
  for no key update;
  if not found then
    raise exception 'property_not_found' using errcode = 'P0001';
  end if;

  select * into v_slot from public.visit_slots s
  where s.property_id = p_property_id and s.starts_at = p_starts_at;
  if not found or v_slot.starts_at <= now() then
    raise exception 'slot_not_found' using errcode = 'P0001';
  end if;

  if not exists (select 1 from public.profiles pr where pr.id = p_visitor_id) then
    raise exception 'visitor_not_found' using errcode = 'P0001';
  end if;

  -- Taken: booked itself, or an overlapping slot of the property is.
  if exists (
    select 1 from public.visits v
    where v.property_id = p_property_id and v.status = 'booked'
      and tstzrange(v.starts_at, v.ends_at) && tstzrange(v_slot.starts_at, v_slot.ends_at)
  ) then
    raise exception 'slot_taken' using errcode = 'P0001';
  end if;

  begin
    insert into public.visits (slot_id, property_id, visitor_id, starts_at, ends_at)
    values (v_slot.id, v_slot.property_id, p_visitor_id, v_slot.starts_at, v_slot.ends_at)
    returning * into v_visit;
  exception when unique_violation or exclusion_violation or deadlock_detected then
    -- Lost a race to a writer that skipped the property lock (its uncommitted booking
    -- was invisible to the checks above): the constraints are the last fence, and a
    -- deadlock can only come from such a conflicting booking.
    raise exception 'slot_taken' using errcode = 'P0001';
  end;

  return jsonb_build_object('visit', to_jsonb(v_visit));
end;
$$;

-- available_slots -------------------------------------------------------------------------
-- Free future slots of a published property, soonest first; empty for anything else.
-- SECURITY DEFINER because "free" depends on visits, which anon may not read; it reveals
-- only which slots are taken, never by whom.

create or replace function public.available_slots(p_property_id bigint)
returns table (starts_at timestamptz, ends_at timestamptz)
language sql
stable
security definer
set search_path = ''
as $$
  select s.starts_at, s.ends_at
  from public.visit_slots s
  join public.properties p on p.id = s.property_id and p.status = 'published'
  where s.property_id = p_property_id
    and s.starts_at > now()
    and not exists (
      select 1 from public.visits v
      where v.property_id = s.property_id and v.status = 'booked'
        and tstzrange(v.starts_at, v.ends_at) && tstzrange(s.starts_at, s.ends_at)
    )
  order by s.starts_at
$$;

-- owner_dashboard -------------------------------------------------------------------------
-- The signed-in owner's figures. SECURITY INVOKER: RLS applies, and the explicit
-- owner filter below keeps out what RLS lets them see as someone else (published
-- properties of others, their own payments as a tenant).
--   {"properties", "published", "active_leases", "revenue_this_month" (XOF, completed
--    payments whose period is the current month in Africa/Dakar), "pending_payments",
--    "upcoming_visits", "month" ('YYYY-MM', the month revenue_this_month covers)}

create or replace function public.owner_dashboard()
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
  with mine as (
    select p.id, p.status from public.properties p where p.owner_id = (select auth.uid())
  ),
  my_leases as (
    select l.id, l.status from public.leases l where l.property_id in (select id from mine)
  ),
  this_month as (
    select to_char(now() at time zone 'Africa/Dakar', 'YYYY-MM') as period
  )
  select jsonb_build_object(
    'properties', (select count(*) from mine),
    'published', (select count(*) from mine where status = 'published'),
    'active_leases', (select count(*) from my_leases where status = 'active'),
    'revenue_this_month', (
      select coalesce(sum(r.amount), 0) from public.rental_payments r
      where r.lease_id in (select id from my_leases)
        and r.status = 'completed'
        and r.period = (select period from this_month)),
    'pending_payments', (
      select count(*) from public.rental_payments r
      where r.lease_id in (select id from my_leases) and r.status = 'pending'),
    'upcoming_visits', (
      select count(*) from public.visits v
      where v.property_id in (select id from mine) and v.status = 'booked' and v.starts_at > now()),
    'month', (select period from this_month)
  )
$$;

-- Who may call what ------------------------------------------------------------------------
-- Supabase's default privileges gave EXECUTE to anon and authenticated (and PostgreSQL to
-- PUBLIC): take it back from everything the browser must not call.

revoke execute on function public.reserve_payment(bigint, uuid, text) from public, anon, authenticated;
revoke execute on function public.confirm_payment(text, text, integer) from public, anon, authenticated;
revoke execute on function public.book_visit(bigint, timestamptz, uuid) from public, anon, authenticated;
grant execute on function public.reserve_payment(bigint, uuid, text) to service_role;
grant execute on function public.confirm_payment(text, text, integer) to service_role;
grant execute on function public.book_visit(bigint, timestamptz, uuid) to service_role;

revoke execute on function public.available_slots(bigint) from public;
grant execute on function public.available_slots(bigint) to anon, authenticated, service_role;

revoke execute on function public.owner_dashboard() from public, anon;
grant execute on function public.owner_dashboard() to authenticated, service_role;

-- Trigger functions are not API (PostgREST ignores them; this says so for people).
revoke execute on function public.set_updated_at() from public, anon, authenticated;
revoke execute on function public.handle_new_user() from public, anon, authenticated;
revoke execute on function public.sync_profile_email() from public, anon, authenticated;
