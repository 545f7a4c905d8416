-- Money and visits that cannot get stuck (issue 13).
--
--   * rental_payments.status gains 'needs_review': PayDunya says an invoice was paid, but its
--     row was already failed or cancelled, or the month was already paid by another invoice.
--     Money was received: the row shows it (payments list, owner dashboard), both parties are
--     notified, and an operator settles it (refund or keep). Never dropped.
--   * private.payment_checks + payments_to_reconcile(): the cron re-confirms with PayDunya every
--     pending invoice older than 10 minutes, least recently checked first (a lost IPN).
--   * book_visit caps a visitor's future bookings (3 per property, 10 in all), under a lock on
--     the visitor's profile row so concurrent bookings cannot slip past the count.
--   * cancel_visit(): the visitor or the property's owner cancels a future visit; the slot is
--     free at once (available_slots only counts booked visits) and the other party is told.
--   * user_visits(): a user's visits as visitor and as owner, upcoming first.
--
-- New codes for lib (raise exception '<code>' using errcode = 'P0001'):
--   too_many_bookings, visit_not_found, visit_started.

-- needs_review --------------------------------------------------------------------------------

alter table public.rental_payments drop constraint rental_payments_status_check;
alter table public.rental_payments add constraint rental_payments_status_check
  check (status in ('pending', 'completed', 'failed', 'cancelled', 'needs_review'));
-- Why a row is under review, for the people who settle it.
alter table public.rental_payments add column review_reason text
  check (review_reason in ('paid_after_failed', 'paid_after_cancelled', 'month_already_paid'));

-- reserve_payment: as in 20261126000003, except that a month whose money is under review is
-- paid as far as the tenant is concerned (already_paid): a second invoice would take it twice.
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
    where r.lease_id = v_lease.id and r.period = p_period and r.status in ('completed', 'needs_review')
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

-- confirm_payment: as in 20261126000003, plus the verdicts that used to be dropped.
--   pending   + completed/failed/cancelled → that status (completed: both notified)
--   pending   + completed, month already paid by another invoice → needs_review
--   failed    + completed → needs_review       cancelled + completed → needs_review
--   anything else (a repeat, a late cancel after a payment, a review already open) → unchanged
-- needs_review notifies tenant and owner; `review` in the answer tells lib to log an error.
-- {"payment", "changed", "review", "tenant_id", "owner_id", "lease_id"}

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
  v_reason text;
  v_data jsonb;
begin
  if p_status is null or p_status not in ('pending', 'completed', 'failed', 'cancelled') then
    raise exception 'invalid_status' using errcode = 'P0001';
  end if;

  select * into v_payment from public.rental_payments where provider_token = p_token for update;
  if not found then
    raise exception 'payment_not_found' using errcode = 'P0001';
  end if;
  if p_amount is distinct from v_payment.amount then
    raise exception 'amount_mismatch' using errcode = 'P0001';
  end if;

  select * into v_lease from public.leases where id = v_payment.lease_id;
  select * into v_property from public.properties where id = v_lease.property_id;
  select coalesce(pr.full_name, pr.email, 'Votre locataire') into v_tenant_name
  from public.profiles pr where pr.id = v_lease.tenant_id;
  v_data := jsonb_build_object(
    'payment_id', v_payment.id, 'lease_id', v_lease.id, 'property_id', v_property.id,
    'period', v_payment.period, 'amount', v_payment.amount, 'currency', v_payment.currency);

  if p_status = 'completed' and v_payment.status in ('failed', 'cancelled') then
    v_reason := 'paid_after_' || v_payment.status;
  elsif v_payment.status = 'pending' and p_status <> 'pending' then
    begin
      update public.rental_payments
      set status = p_status,
          paid_at = case when p_status = 'completed' then now() end
      where id = v_payment.id
      returning * into v_payment;
      v_changed := true;
    exception when unique_violation then
      -- Another invoice of this month was paid first (rental_payments_one_completed).
      v_reason := 'month_already_paid';
    end;

    if v_changed and p_status = 'completed' then
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

  if v_reason is not null then
    update public.rental_payments
    set status = 'needs_review', review_reason = v_reason, paid_at = now()
    where id = v_payment.id
    returning * into v_payment;
    v_changed := true;
    v_data := v_data || jsonb_build_object('review_reason', v_reason);
    insert into public.notifications (user_id, kind, title, body, data) values
      (v_lease.tenant_id, 'payment_needs_review', 'Paiement en vérification',
       format('Nous avons reçu %s pour le loyer %s de « %s », sur une facture qui n''était plus valable. '
              'Notre équipe vérifie ce paiement et vous recontacte (remboursement ou validation).',
              private.format_xof(v_payment.amount), private.of_period(v_payment.period), v_property.title),
       v_data),
      (v_property.owner_id, 'payment_needs_review', 'Paiement à vérifier',
       format('%s a payé %s pour le loyer %s de « %s » sur une facture qui n''était plus valable. '
              'Notre équipe vérifie ce paiement avant de vous le reverser.',
              coalesce(v_tenant_name, 'Votre locataire'), private.format_xof(v_payment.amount),
              private.of_period(v_payment.period), v_property.title),
       v_data);
  end if;

  return jsonb_build_object(
    'payment', to_jsonb(v_payment),
    'changed', v_changed,
    'review', v_reason is not null,
    'tenant_id', v_lease.tenant_id,
    'owner_id', v_property.owner_id,
    'lease_id', v_lease.id);
end;
$$;

-- payments_to_reconcile -----------------------------------------------------------------------
-- When each pending invoice was last re-confirmed with PayDunya by the cron. Kept out of
-- rental_payments on purpose: a check changes nothing a user sees, so it must not go through
-- the outbox trigger and invalidate the lease's payments every minute.

create table private.payment_checks (
  payment_id bigint primary key references public.rental_payments (id) on delete cascade,
  checked_at timestamptz not null default now(),
  checks integer not null default 1
);
revoke all on private.payment_checks from public, anon, authenticated;

-- The next p_limit pending invoices older than p_min_age and not checked within p_interval,
-- least recently checked first (never-checked ones by age), each stamped as checked now: a
-- payment PayDunya keeps calling pending goes to the back of the queue and cannot starve the
-- others. Two concurrent runs take different rows (SKIP LOCKED).
--   {"batch": [{"id", "lease_id", "provider_token", "created_at"}], "due": <how many were due>}

create or replace function public.payments_to_reconcile(
  p_limit integer, p_min_age interval default interval '10 minutes', p_interval interval default interval '1 minute')
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_due integer;
  v_batch jsonb;
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception 'invalid_limit' using errcode = 'P0001';
  end if;

  select count(*) into v_due
  from public.rental_payments r left join private.payment_checks c on c.payment_id = r.id
  where r.status = 'pending' and r.provider_token is not null and r.created_at < now() - p_min_age
    and (c.checked_at is null or c.checked_at < now() - p_interval);

  with picked as (
    select r.id, r.lease_id, r.provider_token, r.created_at
    from public.rental_payments r left join private.payment_checks c on c.payment_id = r.id
    where r.status = 'pending' and r.provider_token is not null and r.created_at < now() - p_min_age
      and (c.checked_at is null or c.checked_at < now() - p_interval)
    order by coalesce(c.checked_at, r.created_at), r.id
    limit p_limit
    for update of r skip locked
  ), stamped as (
    insert into private.payment_checks as pc (payment_id) select id from picked
    on conflict (payment_id) do update set checked_at = now(), checks = pc.checks + 1
    returning payment_id
  )
  select coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'lease_id', p.lease_id,
                                               'provider_token', p.provider_token, 'created_at', p.created_at)
                            order by p.created_at), '[]'::jsonb)
  into v_batch
  from picked p join stamped s on s.payment_id = p.id;

  return jsonb_build_object('batch', v_batch, 'due', v_due);
end;
$$;

-- book_visit ------------------------------------------------------------------------------------
-- As in 20261126000003, plus the cap: a visitor holds at most 3 future bookings of one property
-- and 10 in all (too_many_bookings). The count runs under a lock on the visitor's profile row,
-- so one account's concurrent bookings (of different properties: the property lock does not
-- serialise them) queue up and cannot all pass the count. Lock order is always property, then
-- profile, so two bookings never wait on each other in a cycle.

create or replace function public.book_visit(p_property_id bigint, p_starts_at timestamptz, p_visitor_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_slot public.visit_slots;
  v_visit public.visits;
  v_here integer;
  v_all integer;
begin
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

  perform 1 from public.profiles pr where pr.id = p_visitor_id for no key update;
  if not found then
    raise exception 'visitor_not_found' using errcode = 'P0001';
  end if;

  if exists (
    select 1 from public.visits v
    where v.property_id = p_property_id and v.status = 'booked'
      and tstzrange(v.starts_at, v.ends_at) && tstzrange(v_slot.starts_at, v_slot.ends_at)
  ) then
    raise exception 'slot_taken' using errcode = 'P0001';
  end if;

  select count(*) filter (where v.property_id = p_property_id), count(*)
  into v_here, v_all
  from public.visits v
  where v.visitor_id = p_visitor_id and v.status = 'booked' and v.starts_at > now();
  if v_here >= 3 or v_all >= 10 then
    raise exception 'too_many_bookings' using errcode = 'P0001';
  end if;

  begin
    insert into public.visits (slot_id, property_id, visitor_id, starts_at, ends_at)
    values (v_slot.id, v_slot.property_id, p_visitor_id, v_slot.starts_at, v_slot.ends_at)
    returning * into v_visit;
  exception when unique_violation or exclusion_violation or deadlock_detected then
    raise exception 'slot_taken' using errcode = 'P0001';
  end;

  return jsonb_build_object('visit', to_jsonb(v_visit));
end;
$$;

-- cancel_visit ----------------------------------------------------------------------------------
-- The visitor or the property's owner cancels a visit that has not started:
--   {"visit": {row}, "changed": bool, "owner_id", "visitor_id", "notified": <uuid or null>}
-- Cancelling twice answers changed=false. Anyone else gets visit_not_found (a visit id tells a
-- stranger nothing); a visit that has started or is over gets visit_started. The other party is
-- notified (in French, Dakar time).

create or replace function public.cancel_visit(p_visit_id bigint, p_user_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_visit public.visits;
  v_owner_id uuid;
  v_title text;
  v_changed boolean := false;
  v_notified uuid;
  v_when text;
begin
  select * into v_visit from public.visits where id = p_visit_id for update;
  if not found then
    raise exception 'visit_not_found' using errcode = 'P0001';
  end if;
  select p.owner_id, p.title into v_owner_id, v_title from public.properties p where p.id = v_visit.property_id;
  if p_user_id is null or (p_user_id <> v_visit.visitor_id and p_user_id is distinct from v_owner_id) then
    raise exception 'visit_not_found' using errcode = 'P0001';
  end if;

  if v_visit.status = 'booked' then
    if v_visit.starts_at <= now() then
      raise exception 'visit_started' using errcode = 'P0001';
    end if;
    update public.visits set status = 'cancelled' where id = v_visit.id returning * into v_visit;
    v_changed := true;
    v_when := to_char(v_visit.starts_at at time zone 'Africa/Dakar', 'DD/MM/YYYY à HH24"h"MI');
    v_notified := case when p_user_id = v_visit.visitor_id then v_owner_id else v_visit.visitor_id end;
    if v_notified is not null and v_notified <> p_user_id then
      insert into public.notifications (user_id, kind, title, body, data) values (
        v_notified, 'visit_cancelled', 'Visite annulée',
        case when p_user_id = v_visit.visitor_id
          then format('La visite du %s pour « %s » a été annulée par le visiteur. Le créneau est de nouveau libre.',
                      v_when, v_title)
          else format('Votre visite du %s pour « %s » a été annulée par le propriétaire.', v_when, v_title)
        end,
        jsonb_build_object('visit_id', v_visit.id, 'property_id', v_visit.property_id,
                           'starts_at', v_visit.starts_at));
    else
      v_notified := null;
    end if;
  end if;

  return jsonb_build_object('visit', to_jsonb(v_visit), 'changed', v_changed, 'owner_id', v_owner_id,
                            'visitor_id', v_visit.visitor_id, 'notified', v_notified);
end;
$$;

-- user_visits -----------------------------------------------------------------------------------
-- GET /api/visits: the signed-in user's visits, as visitor and as owner of the property.
-- SECURITY INVOKER: RLS on visits (visitor or owner) decides what is seen; the property's title
-- is shown when RLS lets the user see the property. Upcoming booked visits first (soonest
-- first), then the others (most recent first); 200 at most.

create or replace function public.user_visits()
returns table (id bigint, property_id bigint, property_title text, visitor_id uuid, role text,
               starts_at timestamptz, ends_at timestamptz, status text, created_at timestamptz,
               updated_at timestamptz)
language sql
stable
security invoker
set search_path = ''
as $$
  select v.id, v.property_id, p.title, v.visitor_id,
         case when v.visitor_id = (select auth.uid()) then 'visitor' else 'owner' end,
         v.starts_at, v.ends_at, v.status, v.created_at, v.updated_at
  from public.visits v
  left join public.properties p on p.id = v.property_id
  where v.visitor_id = (select auth.uid()) or p.owner_id = (select auth.uid())
  order by (v.status = 'booked' and v.starts_at > now()) desc,
           case when v.status = 'booked' and v.starts_at > now() then v.starts_at end asc,
           v.starts_at desc, v.id desc
  limit 200
$$;

-- owner_dashboard: as in 20261126000003, plus `payments_to_review` (needs_review rows).

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
    'payments_to_review', (
      select count(*) from public.rental_payments r
      where r.lease_id in (select id from my_leases) and r.status = 'needs_review'),
    'upcoming_visits', (
      select count(*) from public.visits v
      where v.property_id in (select id from mine) and v.status = 'booked' and v.starts_at > now()),
    'month', (select period from this_month)
  )
$$;

-- Who may call what ---------------------------------------------------------------------------

revoke execute on function public.reserve_payment(bigint, uuid, text) from public, anon, authenticated;
revoke execute on function public.confirm_payment(text, text, integer) from public, anon, authenticated;
revoke execute on function public.book_visit(bigint, timestamptz, uuid) from public, anon, authenticated;
revoke execute on function public.payments_to_reconcile(integer, interval, interval) from public, anon, authenticated;
revoke execute on function public.cancel_visit(bigint, uuid) from public, anon, authenticated;
grant execute on function public.reserve_payment(bigint, uuid, text) to service_role;
grant execute on function public.confirm_payment(text, text, integer) to service_role;
grant execute on function public.book_visit(bigint, timestamptz, uuid) to service_role;
grant execute on function public.payments_to_reconcile(integer, interval, interval) to service_role;
grant execute on function public.cancel_visit(bigint, uuid) to service_role;

revoke execute on function public.user_visits() from public, anon;
grant execute on function public.user_visits() to authenticated, service_role;
revoke execute on function public.owner_dashboard() from public, anon;
grant execute on function public.owner_dashboard() to authenticated, service_role;
