-- The catalogue at 50,000 listings: every public read served by an index, whatever the size.
--
-- What the API asks PostgREST for (lib/properties.py), as `anon`, one page at a time, newest
-- first (created_at, then id: a total order, so a page boundary never drops or repeats a row
-- between two equal dates):
--   the public list     published_properties order by created_at desc, id desc limit/offset, exact count
--   a city's list       ... where city_lower = 'dakar'
--   a search            ... where any of city_lower =, type =, price between, bedrooms >=, and
--                       (title ilike '%q%' or description ilike '%q%' or district ilike '%q%')
--   a detail            ... where id = 123 (the primary key)
-- Every list and search asks `Prefer: count=estimated`: exact up to max-rows (a count stopped at
-- 1,001 rows), the planner's estimate above; an exact count of 50,000 rows is 50-80 ms a miss.
-- Pages reach 1,000 listings deep at most (lib/properties.MAX_DEPTH), so no OFFSET walks further.
-- tests/sql/test_scale_plans.py EXPLAINs each one over a generated catalogue: no sequential scan.
-- The indexes are partial (`where status = 'published'`): the public reads never see other
-- rows, and drafts and archived listings then cost them nothing.

create extension if not exists pg_trgm with schema extensions;

-- city_lower -----------------------------------------------------------------------------
-- A city's list matches the city ignoring case (the web app stores what owners type: `dakar`,
-- `DAKAR`). It used `city ilike 'Dakar'`, which no btree index serves; equality on lower(city)
-- is served by one, and PostgREST filters on columns only: hence a generated column, kept by
-- the database whoever writes the row. In a UTF-8 database, ILIKE lowercases both sides, so a
-- pattern without wildcards (a canonical city has none) matches exactly the rows whose
-- lower(city) equals it: the lists show the rows they showed before.

alter table public.properties
  add column city_lower text generated always as (lower(city)) stored;

comment on column public.properties.city_lower is
  'lower(city), kept by the database: what ?city= matches (lib/properties.py). Not writable.';

-- published_properties -------------------------------------------------------------------
-- The public catalogue: what RLS's "published are public" policy shows anon, as a view the
-- public reads go through. Why not the table under RLS: PostgreSQL uses a query's condition as
-- an index condition under RLS only if its operator is LEAKPROOF, and ILIKE (texticlike) is not
-- (only a superuser can mark it; Supabase's `postgres` is not one). Through the table, anon's
-- `title=ilike.*piscine*` can use no trigram index: a sequential scan of every listing, 1 to 2 s
-- at 50,000 (tests/sql/test_scale_plans.py keeps the proof). The view is its owner's
-- (`postgres`, who owns the table and is not subject to its RLS): the condition below replaces
-- the policy, and PostgREST's filters reach the indexes.
--
-- Not a security_barrier view, on purpose: a barrier keeps non-leakproof conditions above the
-- view's own, which is the RLS problem again. What that allows is evaluating a client's filter
-- on an unpublished row before `status = 'published'` discards it; PostgREST filters are
-- built-in comparisons, pattern and regex matches on these columns, which raise no error and
-- have no side effect that depends on a row's values, and the partial indexes below never
-- visit unpublished rows. Supabase's advisor lists the view as "security definer": this is why.
--
-- Read-only: Supabase's default privileges grant ALL on new views, and a simple view is
-- updatable, with its owner's rights (RLS bypassed). Only SELECT is granted.

create view public.published_properties as
  select id, owner_id, title, description, city, district, type, price, currency, bedrooms, status,
         created_at, updated_at, city_lower
  from public.properties
  where status = 'published';

comment on view public.published_properties is
  'Published listings, read by the API as anon (lib/properties.py). Read-only; see 20261202000030_scale.sql.';

revoke all on public.published_properties from public, anon, authenticated, service_role;
grant select on public.published_properties to anon, authenticated, service_role;

-- Indexes --------------------------------------------------------------------------------

-- Superseded: the first by the partial index below (with id, the lists' tie-breaker), the
-- second by city_lower's (no query could use an expression index through PostgREST).
drop index if exists public.properties_status_created_at_idx;
drop index if exists public.properties_city_idx;

-- The public list and its count (an index-only scan of the published rows).
create index properties_published_newest_idx on public.properties (created_at desc, id desc)
  where status = 'published';

-- A city's list and its count; a search with a city walks it too.
create index properties_published_city_newest_idx on public.properties (city_lower, created_at desc, id desc)
  where status = 'published';

-- A search by type, newest first (six values: without the date, a page deep in a type sorts them all).
create index properties_published_type_newest_idx on public.properties (type, created_at desc, id desc)
  where status = 'published';

-- A search by city and type, the pair tenants combine most (`villa` in `Saly`): without it, a
-- search reads every row of the city to keep one type (50 ms for Thiès at 50,000 listings).
create index properties_published_city_type_newest_idx on public.properties
  (city_lower, type, created_at desc, id desc) where status = 'published';

-- Search ranges.
create index properties_published_price_idx on public.properties (price) where status = 'published';
create index properties_published_bedrooms_idx on public.properties (bedrooms) where status = 'published';

-- Search text: `ilike '%q%'` on each of the three columns, combined by a BitmapOr. A trigram
-- index needs three characters in a row: api/search.py refuses a shorter `q`.
create index properties_published_title_trgm_idx on public.properties
  using gin (title extensions.gin_trgm_ops) where status = 'published';
create index properties_published_description_trgm_idx on public.properties
  using gin (description extensions.gin_trgm_ops) where status = 'published';
create index properties_published_district_trgm_idx on public.properties
  using gin (district extensions.gin_trgm_ops) where status = 'published';
