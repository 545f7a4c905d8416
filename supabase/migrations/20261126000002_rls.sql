-- Row level security and privileges.
--
-- Supabase grants ALL on every public table to anon and authenticated and relies on RLS.
-- We keep that default where RLS says everything (properties, visit_slots) and narrow
-- the grants where a whole kind of write must never come from a client, so a missing or
-- mistaken policy cannot open them:
--   * leases, rental_payments, visits: read-only for clients; service_role and the
--     security-definer RPCs write;
--   * profiles: a user may edit their name and phone, not their role (column privilege);
--   * notifications: a user may only set read_at.
-- TRUNCATE ignores RLS altogether, so no client role keeps it on any table.
--
-- service_role has BYPASSRLS and keeps every privilege: it is the server.
-- Policies call auth.uid() as `(select auth.uid())` so it is evaluated once per
-- statement, not once per row.

alter table public.profiles enable row level security;
alter table public.properties enable row level security;
alter table public.leases enable row level security;
alter table public.rental_payments enable row level security;
alter table public.visit_slots enable row level security;
alter table public.visits enable row level security;
alter table public.notifications enable row level security;

revoke truncate on all tables in schema public from anon, authenticated;

-- profiles -------------------------------------------------------------------------------

revoke insert, update, delete on public.profiles from anon, authenticated;
grant update (full_name, phone) on public.profiles to authenticated;

create policy "profiles: read own" on public.profiles
  for select to authenticated
  using (id = (select auth.uid()));

create policy "profiles: update own" on public.profiles
  for update to authenticated
  using (id = (select auth.uid()))
  with check (id = (select auth.uid()));

-- properties -----------------------------------------------------------------------------

create policy "properties: published are public" on public.properties
  for select to anon, authenticated
  using (status = 'published');

create policy "properties: owners read their own" on public.properties
  for select to authenticated
  using (owner_id = (select auth.uid()));

-- Only a profile with the owner role lists properties, and only in its own name.
create policy "properties: owners insert their own" on public.properties
  for insert to authenticated
  with check (
    owner_id = (select auth.uid())
    and exists (select 1 from public.profiles p where p.id = (select auth.uid()) and p.role = 'owner')
  );

-- WITH CHECK stops an owner from handing a property to someone else.
create policy "properties: owners update their own" on public.properties
  for update to authenticated
  using (owner_id = (select auth.uid()))
  with check (owner_id = (select auth.uid()));

create policy "properties: owners delete their own" on public.properties
  for delete to authenticated
  using (owner_id = (select auth.uid()));

-- leases ---------------------------------------------------------------------------------
-- The tenant's branch does not go through properties: a tenant must still see their
-- lease when the property is unpublished or archived (which RLS would hide from them).

revoke insert, update, delete on public.leases from anon, authenticated;

create policy "leases: tenant and owner read" on public.leases
  for select to authenticated
  using (
    tenant_id = (select auth.uid())
    or exists (
      select 1 from public.properties p
      where p.id = leases.property_id and p.owner_id = (select auth.uid())
    )
  );

-- rental_payments ------------------------------------------------------------------------
-- No write policy at all, and no write privilege: payments are created and confirmed by
-- the reserve_payment/confirm_payment RPCs as service_role.

revoke insert, update, delete on public.rental_payments from anon, authenticated;

create policy "rental_payments: tenant and owner of the lease read" on public.rental_payments
  for select to authenticated
  using (
    exists (
      select 1 from public.leases l
      where l.id = rental_payments.lease_id
        and (
          l.tenant_id = (select auth.uid())
          or exists (
            select 1 from public.properties p
            where p.id = l.property_id and p.owner_id = (select auth.uid())
          )
        )
    )
  );

-- visit_slots ----------------------------------------------------------------------------

create policy "visit_slots: slots of published properties are public" on public.visit_slots
  for select to anon, authenticated
  using (
    exists (
      select 1 from public.properties p
      where p.id = visit_slots.property_id and p.status = 'published'
    )
  );

create policy "visit_slots: owners manage their slots" on public.visit_slots
  for all to authenticated
  using (
    exists (
      select 1 from public.properties p
      where p.id = visit_slots.property_id and p.owner_id = (select auth.uid())
    )
  )
  with check (
    exists (
      select 1 from public.properties p
      where p.id = visit_slots.property_id and p.owner_id = (select auth.uid())
    )
  );

-- visits ---------------------------------------------------------------------------------
-- Booked through book_visit only (it checks the slot is free and in the future).

revoke insert, update, delete on public.visits from anon, authenticated;

create policy "visits: visitor and owner read" on public.visits
  for select to authenticated
  using (
    visitor_id = (select auth.uid())
    or exists (
      select 1 from public.properties p
      where p.id = visits.property_id and p.owner_id = (select auth.uid())
    )
  );

-- notifications --------------------------------------------------------------------------
-- Written by confirm_payment (and the server); a user reads theirs and marks them read.

revoke insert, update, delete on public.notifications from anon, authenticated;
grant update (read_at) on public.notifications to authenticated;

create policy "notifications: read own" on public.notifications
  for select to authenticated
  using (user_id = (select auth.uid()));

create policy "notifications: mark own read" on public.notifications
  for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));
