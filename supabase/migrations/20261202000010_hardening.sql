-- Hardening: clients write only the columns the API exposes, within the API's limits.
--
-- Supabase grants ALL on public tables to anon and authenticated and relies on RLS. RLS says
-- which rows; it cannot say which columns. Through PostgREST an owner could so far set
-- `created_at` (pinning a listing atop the newest-first list), an explicit `id` (taking the
-- identity values the next inserts will ask for, so another owner's insert fails), or a
-- 2,000-character name that confirm_payment copies into notifications. Column privileges
-- (PostgREST answers 42501 for a column without one) and CHECK constraints close that.
--
-- What the web app still does through supabase-js, and nothing more:
--   * owners insert and edit their listings: the fields of PATCH /api/properties/{id}, plus
--     owner_id on insert (RLS: it must be theirs) and currency (it can only be XOF);
--   * owners open, move and remove visit slots of their properties;
--   * users edit their own name and phone (20261126000002_rls.sql), mark notifications read.
-- id, created_at and updated_at are the database's own; owner_id never changes after insert.

-- properties -----------------------------------------------------------------------------

revoke insert, update on public.properties from anon, authenticated;
revoke delete on public.properties from anon;
grant insert (owner_id, title, description, city, district, type, price, currency, bedrooms, status)
  on public.properties to authenticated;
grant update (title, description, city, district, type, price, currency, bedrooms, status)
  on public.properties to authenticated;

-- visit_slots ----------------------------------------------------------------------------

revoke insert, update on public.visit_slots from anon, authenticated;
revoke delete on public.visit_slots from anon;
grant insert (property_id, starts_at, ends_at) on public.visit_slots to authenticated;
grant update (starts_at, ends_at) on public.visit_slots to authenticated;

-- Limits ---------------------------------------------------------------------------------
-- The same as the API's request models (api/properties/[id].py, api/profile.py), so a value
-- the API refuses with a 422 cannot come in through PostgREST either. Notifications are
-- written by the server, but carry user text (names, titles): bounded too.
--
-- Added NOT VALID, then validated below: a deployed database whose rows break a limit (the
-- web app wrote them) still gets the migration and checks every new write at once.

alter table public.properties
  add constraint properties_title_length check (char_length(btrim(title)) between 3 and 200) not valid,
  add constraint properties_description_length check (char_length(description) <= 5000) not valid,
  add constraint properties_city_length check (char_length(city) <= 60) not valid,
  add constraint properties_district_length check (char_length(district) <= 80) not valid,
  add constraint properties_price_range check (price <= 1000000000) not valid,
  add constraint properties_bedrooms_range check (bedrooms <= 50) not valid;

alter table public.profiles
  add constraint profiles_full_name_length check (char_length(btrim(full_name)) between 2 and 120) not valid,
  add constraint profiles_phone_format check (phone ~ '^\+?[0-9 ]{7,20}$') not valid;

alter table public.notifications
  add constraint notifications_kind_length check (char_length(kind) between 1 and 40) not valid,
  add constraint notifications_title_length check (char_length(title) between 1 and 200) not valid,
  add constraint notifications_body_length check (char_length(body) <= 1000) not valid;

-- Validate each one the existing rows satisfy; name the others, which keep guarding new writes
-- until the rows are fixed and `alter table ... validate constraint ...` is run by hand.
do $$
declare
  c record;
begin
  for c in
    select conrelid::regclass as tbl, conname from pg_constraint
    where connamespace = 'public'::regnamespace and contype = 'c' and not convalidated
      and conname in ('properties_title_length', 'properties_description_length', 'properties_city_length',
                      'properties_district_length', 'properties_price_range', 'properties_bedrooms_range',
                      'profiles_full_name_length', 'profiles_phone_format', 'notifications_kind_length',
                      'notifications_title_length', 'notifications_body_length')
  loop
    begin
      execute format('alter table %s validate constraint %I', c.tbl, c.conname);
    exception when check_violation then
      raise warning 'constraint % on % is not validated: existing rows break it (new writes are checked)',
        c.conname, c.tbl;
    end;
  end loop;
end
$$;

-- Sign-up metadata is the user's own text too: keep a profile within the limits rather than
-- fail the sign-up (GoTrue would answer "Database error saving new user").
create or replace function public.handle_new_user() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  wanted text := new.raw_user_meta_data ->> 'role';
  v_name text := left(btrim(new.raw_user_meta_data ->> 'full_name'), 120);
  v_phone text := coalesce(nullif(btrim(new.raw_user_meta_data ->> 'phone'), ''), new.phone);
begin
  insert into public.profiles (id, email, full_name, phone, role)
  values (
    new.id,
    new.email,
    case when char_length(btrim(v_name)) >= 2 then v_name end,
    case when v_phone ~ '^\+?[0-9 ]{7,20}$' then v_phone end,
    case when wanted in ('owner', 'tenant') then wanted else 'tenant' end
  );
  return new;
end;
$$;

revoke execute on function public.handle_new_user() from public, anon, authenticated;
