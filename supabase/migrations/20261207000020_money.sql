-- Money that cannot get stuck, and owners who cannot be flooded (issue 24, findings 4 and 6).
--
--   * rental_payments.status gains 'expired': PayDunya never settled the invoice within its life
--     (PayDunya's `expire_date` when it sends one, else 7 days after the invoice was made). The
--     cron stops asking about it, and the month can be paid again with a new invoice.
--   * review_reason gains 'amount_mismatch' (PayDunya says paid, but not the rent: the row no
--     longer stays pending forever) and 'paid_after_expired' (an expired invoice paid after all).
--   * payments_to_reconcile() also hands out, for a bounded time, rows already failed or
--     cancelled that have an invoice: their invoice can still be paid at PayDunya, and if that
--     IPN is lost, only a re-confirmation finds the money. An expired row is not asked about
--     again: its invoice's life is over (a payment PayDunya takes anyway still comes by IPN).
--   * expire_payment(): the cron's verdict on an invoice PayDunya still calls pending at the end
--     of its life.
--   * cancel_visit() notifies an owner at most once an hour per visitor and property, and at most
--     10 times an hour in all: a book/cancel loop filled an owner's notifications at ~15 a
--     minute, unbounded.
--
-- Codes for lib (raise exception '<code>' using errcode = 'P0001'): as before; no new one.

-- statuses and reasons ------------------------------------------------------------------------

alter table public.rental_payments drop constraint rental_payments_status_check;
alter table public.rental_payments add constraint rental_payments_status_check
  check (status in ('pending', 'completed', 'failed', 'cancelled', 'expired', 'needs_review'));
alter table public.rental_payments drop constraint rental_payments_review_reason_check;
alter table public.rental_payments add constraint rental_payments_review_reason_check
  check (review_reason in ('paid_after_failed', 'paid_after_cancelled', 'paid_after_expired',
                           'month_already_paid', 'amount_mismatch'));

-- The longest an invoice is re-confirmed, whatever PayDunya says its expire_date is: a date far
-- in the future (or a garbled one) must not keep an invoice on the cron's list for years.
create or replace function private.invoice_deadline(p_created_at timestamptz, p_expire_date timestamptz)
returns timestamptz
language sql
immutable
set search_path = ''
as $$
  select least(coalesce(p_expire_date, p_created_at + interval '7 days'), p_created_at + interval '30 days')
$$;

-- confirm_payment -----------------------------------------------------------------------------
-- As in 20261202000040, with money that does not fit put under review instead of refused:
--   any row but completed/needs_review + completed, amount is not the rent → needs_review
--                                                      (amount_mismatch; the amount received in
--                                                      the notifications' data)
--   failed/cancelled/expired + completed              → needs_review (paid_after_<status>)
--   pending + completed, month paid by another invoice → needs_review (month_already_paid)
--   pending + completed/failed/cancelled              → that status
--   anything else (a repeat, a late cancel after a payment, a review already open) → unchanged
-- The amount matters only when money was received: a failed or cancelled verdict applies
-- whatever amount comes with it (refusing it would leave the row pending, asked about forever).
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

  select * into v_lease from public.leases where id = v_payment.lease_id;
  select * into v_property from public.properties where id = v_lease.property_id;
  select coalesce(pr.full_name, pr.email, 'Votre locataire') into v_tenant_name
  from public.profiles pr where pr.id = v_lease.tenant_id;
  v_data := jsonb_build_object(
    'payment_id', v_payment.id, 'lease_id', v_lease.id, 'property_id', v_property.id,
    'period', v_payment.period, 'amount', v_payment.amount, 'currency', v_payment.currency);

  if p_status = 'completed' and v_payment.status not in ('completed', 'needs_review')
     and p_amount is distinct from v_payment.amount then
    v_reason := 'amount_mismatch';
    v_data := v_data || jsonb_build_object('received', p_amount);
  elsif p_status = 'completed' and v_payment.status in ('failed', 'cancelled', 'expired') then
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
       case when v_reason = 'amount_mismatch'
         then format('Nous avons reçu un paiement pour le loyer %s de « %s », mais pas du montant attendu (%s). '
                     'Notre équipe vérifie ce paiement et vous recontacte (remboursement ou complément).',
                     private.of_period(v_payment.period), v_property.title, private.format_xof(v_payment.amount))
         else format('Nous avons reçu %s pour le loyer %s de « %s », sur une facture qui n''était plus valable. '
                     'Notre équipe vérifie ce paiement et vous recontacte (remboursement ou validation).',
                     private.format_xof(v_payment.amount), private.of_period(v_payment.period), v_property.title)
       end,
       v_data),
      (v_property.owner_id, 'payment_needs_review', 'Paiement à vérifier',
       case when v_reason = 'amount_mismatch'
         then format('%s a payé le loyer %s de « %s », mais pas du montant attendu (%s). '
                     'Notre équipe vérifie ce paiement avant de vous le reverser.',
                     coalesce(v_tenant_name, 'Votre locataire'), private.of_period(v_payment.period),
                     v_property.title, private.format_xof(v_payment.amount))
         else format('%s a payé %s pour le loyer %s de « %s » sur une facture qui n''était plus valable. '
                     'Notre équipe vérifie ce paiement avant de vous le reverser.',
                     coalesce(v_tenant_name, 'Votre locataire'), private.format_xof(v_payment.amount),
                     private.of_period(v_payment.period), v_property.title)
       end,
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

-- expire_payment ------------------------------------------------------------------------------
-- PayDunya still calls the invoice of `p_token` pending (or answers a status we do not know):
-- once its life is over (private.invoice_deadline: PayDunya's expire_date when sent, else 7
-- days), the row becomes 'expired' and the cron stops asking. Before that, nothing changes.
-- The database's clock decides, not the caller's. Same answer as confirm_payment.

create or replace function public.expire_payment(p_token text, p_expire_date timestamptz default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment public.rental_payments;
  v_owner_id uuid;
  v_tenant_id uuid;
  v_changed boolean := false;
begin
  select * into v_payment from public.rental_payments where provider_token = p_token for update;
  if not found then
    raise exception 'payment_not_found' using errcode = 'P0001';
  end if;
  select l.tenant_id, p.owner_id into v_tenant_id, v_owner_id
  from public.leases l join public.properties p on p.id = l.property_id
  where l.id = v_payment.lease_id;

  if v_payment.status = 'pending' and now() >= private.invoice_deadline(v_payment.created_at, p_expire_date) then
    update public.rental_payments set status = 'expired' where id = v_payment.id returning * into v_payment;
    v_changed := true;
  end if;

  return jsonb_build_object('payment', to_jsonb(v_payment), 'changed', v_changed, 'review', false,
                            'tenant_id', v_tenant_id, 'owner_id', v_owner_id, 'lease_id', v_payment.lease_id);
end;
$$;

-- payments_to_reconcile -----------------------------------------------------------------------
-- As in 20261202000040, plus the rows whose invoice died here but may still be paid at PayDunya
-- (failed or cancelled, with a token): each re-confirmed at most every p_dead_interval
-- (30 minutes) for p_dead_for (7 days) after it died (updated_at: the check stamps live in
-- private.payment_checks, so they do not move it). Pending rows go first, so a backlog of dead
-- ones never delays a live payment. At 20 a minute the cron re-confirms 1,200 invoices an hour:
-- 600 dead rows at once (two checks an hour each) before they take the whole batch.
--   {"batch": [{"id", "lease_id", "provider_token", "created_at", "status"}], "due": <how many>}

drop function public.payments_to_reconcile(integer, interval, interval);

create function public.payments_to_reconcile(
  p_limit integer, p_min_age interval default interval '10 minutes', p_interval interval default interval '1 minute',
  p_dead_interval interval default interval '30 minutes', p_dead_for interval default interval '7 days')
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

  with candidates as (
    select r.id, r.lease_id, r.provider_token, r.created_at, r.status, c.checked_at
    from public.rental_payments r left join private.payment_checks c on c.payment_id = r.id
    where r.provider_token is not null
      and ((r.status = 'pending' and r.created_at < now() - p_min_age
            and (c.checked_at is null or c.checked_at < now() - p_interval))
        or (r.status in ('failed', 'cancelled') and r.updated_at > now() - p_dead_for
            and (c.checked_at is null or c.checked_at < now() - p_dead_interval)))
  )
  select count(*) into v_due from candidates;

  with picked as (
    select r.id, r.lease_id, r.provider_token, r.created_at, r.status
    from public.rental_payments r left join private.payment_checks c on c.payment_id = r.id
    where r.provider_token is not null
      and ((r.status = 'pending' and r.created_at < now() - p_min_age
            and (c.checked_at is null or c.checked_at < now() - p_interval))
        or (r.status in ('failed', 'cancelled') and r.updated_at > now() - p_dead_for
            and (c.checked_at is null or c.checked_at < now() - p_dead_interval)))
    order by (r.status = 'pending') desc, coalesce(c.checked_at, r.created_at), r.id
    limit p_limit
    for update of r skip locked
  ), stamped as (
    insert into private.payment_checks as pc (payment_id) select id from picked
    on conflict (payment_id) do update set checked_at = now(), checks = pc.checks + 1
    returning payment_id
  )
  select coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'lease_id', p.lease_id, 'status', p.status,
                                               'provider_token', p.provider_token, 'created_at', p.created_at)
                            order by p.status <> 'pending', p.created_at), '[]'::jsonb)
  into v_batch
  from picked p join stamped s on s.payment_id = p.id;

  return jsonb_build_object('batch', v_batch, 'due', v_due);
end;
$$;

-- cancel_visit --------------------------------------------------------------------------------
-- As in 20261202000040, except that the owner is not told of every cancellation: at most one
-- "visit_cancelled" an hour per visitor and property (a visitor who books and cancels again
-- changes nothing the owner must act on), and at most 10 an hour in all (many accounts, one
-- owner). A real owner's week holds a handful of cancellations; 10 in one hour is already a
-- loop. The visit is cancelled and the slot freed either way; the owner's visit list
-- (GET /api/visits) still shows every cancelled visit. A visitor is always told when the owner
-- cancels their visit (one notification per visit they booked: bounded by the booking cap).

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
    if v_notified is not null and v_notified = v_owner_id and v_notified <> p_user_id then
      -- Serialise the owner's notifications (lock their profile row) so concurrent cancellations
      -- cannot all pass the count together.
      perform 1 from public.profiles pr where pr.id = v_owner_id for no key update;
      if exists (
        select 1 from public.notifications n
        where n.user_id = v_owner_id and n.kind = 'visit_cancelled' and n.created_at > now() - interval '1 hour'
          and n.data ->> 'visitor_id' = v_visit.visitor_id::text
          and n.data ->> 'property_id' = v_visit.property_id::text
      ) or (
        select count(*) from public.notifications n
        where n.user_id = v_owner_id and n.kind = 'visit_cancelled' and n.created_at > now() - interval '1 hour'
      ) >= 10 then
        v_notified := null;
      end if;
    end if;
    if v_notified is not null and v_notified <> p_user_id then
      insert into public.notifications (user_id, kind, title, body, data) values (
        v_notified, 'visit_cancelled', 'Visite annulée',
        case when p_user_id = v_visit.visitor_id
          then format('La visite du %s pour « %s » a été annulée par le visiteur. Le créneau est de nouveau libre.',
                      v_when, v_title)
          else format('Votre visite du %s pour « %s » a été annulée par le propriétaire.', v_when, v_title)
        end,
        jsonb_build_object('visit_id', v_visit.id, 'property_id', v_visit.property_id,
                           'starts_at', v_visit.starts_at, 'visitor_id', v_visit.visitor_id));
    else
      v_notified := null;
    end if;
  end if;

  return jsonb_build_object('visit', to_jsonb(v_visit), 'changed', v_changed, 'owner_id', v_owner_id,
                            'visitor_id', v_visit.visitor_id, 'notified', v_notified);
end;
$$;

-- Who may call what ---------------------------------------------------------------------------

revoke execute on function public.expire_payment(text, timestamptz) from public, anon, authenticated;
revoke execute on function public.payments_to_reconcile(integer, interval, interval, interval, interval)
  from public, anon, authenticated;
grant execute on function public.expire_payment(text, timestamptz) to service_role;
grant execute on function public.payments_to_reconcile(integer, interval, interval, interval, interval) to service_role;
revoke execute on function private.invoice_deadline(timestamptz, timestamptz) from public;
