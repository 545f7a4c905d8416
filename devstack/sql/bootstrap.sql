-- What a Supabase project already has before our first migration runs, stubbed for a
-- bare PostgreSQL 15 (tests and the local stack). Never part of supabase/migrations:
-- on a real project these objects exist and belong to Supabase.
--
-- Run as the superuser `postgres`, the role Supabase runs migrations as, so that the
-- default privileges below apply to the objects the migrations create. Safe to run twice.

-- Roles ----------------------------------------------------------------------------------
-- Roles are cluster-wide: a second database (or a second run) finds them already there.
-- PostgREST logs in as `authenticator`, which has no rights of its own (NOINHERIT) and
-- switches to `anon`, `authenticated` or `service_role` according to the JWT.
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

-- Supabase's per-role settings. They apply at login (PostgREST re-applies them after SET ROLE).
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role anon set search_path = "$user", public, extensions;
alter role authenticated set search_path = "$user", public, extensions;
alter role service_role set search_path = "$user", public, extensions;

-- Extensions -----------------------------------------------------------------------------
-- Supabase installs pgcrypto into `extensions` (hence `extensions.crypt`); btree_gist is
-- merely available there, so the migration that needs it creates it.
create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;
grant usage on schema extensions to anon, authenticated, service_role;

-- auth: the part of GoTrue's schema that seeds, triggers and policies touch -------------
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- Column names and types follow GoTrue's auth.users, so a seed written for a real project
-- (including its empty-string token columns) runs here unchanged.
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key default gen_random_uuid(),
  aud varchar(255),
  role varchar(255),
  email text unique,
  encrypted_password text,
  email_confirmed_at timestamptz,
  invited_at timestamptz,
  confirmation_token varchar(255),
  confirmation_sent_at timestamptz,
  recovery_token varchar(255),
  recovery_sent_at timestamptz,
  email_change_token_new varchar(255),
  email_change varchar(255),
  email_change_sent_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb default '{}'::jsonb,
  raw_user_meta_data jsonb default '{}'::jsonb,
  is_super_admin boolean,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  phone text unique,
  phone_confirmed_at timestamptz,
  confirmed_at timestamptz generated always as (least(email_confirmed_at, phone_confirmed_at)) stored,
  banned_until timestamptz,
  deleted_at timestamptz,
  is_anonymous boolean not null default false
);

create table if not exists auth.identities (
  id uuid primary key default gen_random_uuid(),
  provider_id text not null,
  user_id uuid not null references auth.users (id) on delete cascade,
  identity_data jsonb not null,
  provider text not null,
  last_sign_in_at timestamptz,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  email text generated always as (lower(identity_data ->> 'email')) stored,
  unique (provider_id, provider)
);

-- The claims of the request, as PostgREST sets them: `request.jwt.claims` (a JSON text,
-- PostgREST 9+) with the older per-claim `request.jwt.claim.*` settings as a fallback.
-- Bodies match Supabase's so policies behave the same.
create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
    nullif(current_setting('request.jwt.claim.sub', true), '')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role',
    nullif(current_setting('request.jwt.claim.role', true), '')
  )::text
$$;

grant execute on function auth.jwt(), auth.uid(), auth.role() to anon, authenticated, service_role;

-- public: Supabase's default grants ------------------------------------------------------
-- Supabase grants everything in `public` to the API roles and relies on row level
-- security; migrations that want less must revoke explicitly (ours do).
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

-- pg_net: `net.http_post` as the extension defines it ------------------------------------
-- Hosted Supabase has the pg_net extension; a bare PostgreSQL has none. Same tables and
-- signature as pg_net (supabase/pg_net sql/pg_net.sql): a request is a row in an
-- UNLOGGED queue, sent after its transaction commits by a background worker, which
-- deletes it and logs the answer in net._http_response (no retry: a webhook can be lost).
-- Here the worker is the Supabase stand-in (devstack/supabase_net.py); `net.wake()` wakes
-- it with a NOTIFY, which PostgreSQL delivers only at commit, as pg_net's worker sees only
-- committed rows. A params object is refused rather than silently ignored.
create schema if not exists net;

create unlogged table if not exists net.http_request_queue (
  id bigserial,
  method text not null check (method ilike 'get' or method ilike 'post' or method ilike 'delete'),
  url text not null,
  headers jsonb,
  body bytea,
  timeout_milliseconds int not null
);

create unlogged table if not exists net._http_response (
  id bigint,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out bool,
  error_msg text,
  created timestamptz not null default now()
);
create index if not exists _http_response_created_idx on net._http_response (created);

create or replace function net.wake() returns void
language sql
as $$
  select pg_notify('devstack_pg_net', '')
$$;

create or replace function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint
language plpgsql
security definer
set search_path = net
as $$
declare
  request_id bigint;
  content_type text;
begin
  select header_value into content_type
  from jsonb_each_text(coalesce(headers, '{}'::jsonb)) r(header_name, header_value)
  where lower(header_name) = 'content-type'
  limit 1;
  if content_type is null then
    headers := coalesce(headers, '{}'::jsonb) || '{"Content-Type": "application/json"}'::jsonb;
  elsif content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;
  if params is not null and params <> '{}'::jsonb then
    raise exception 'net.http_post params are not supported by the devstack pg_net stand-in';
  end if;
  insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
  values ('POST', url, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds)
  returning id into request_id;
  perform net.wake();
  return request_id;
end;
$$;

-- Supabase's grants on it (docker/volumes/db/webhooks.sql).
grant usage on schema net to postgres, anon, authenticated, service_role;
-- On hosted Supabase every role can read the queue, headers and bodies included, and `postgres`
-- cannot revoke it (Supabase KB): the same here, so that tests see what such a reader sees.
grant select on net.http_request_queue to public;
revoke all on function net.http_post(text, jsonb, jsonb, jsonb, integer) from public;
grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to postgres, anon, authenticated, service_role;

-- Vault: named secrets read through vault.decrypted_secrets ------------------------------
-- Hosted Supabase encrypts `secret` at rest (supabase/vault); this stand-in keeps it in
-- clear, which is fine for the local stack's development secrets. Same table, view and
-- functions (create_secret, update_secret) as the extension.
create schema if not exists vault;
revoke all on schema vault from public;

create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text,
  description text not null default '',
  secret text not null,
  key_id uuid,
  nonce bytea,
  created_at timestamptz not null default current_timestamp,
  updated_at timestamptz not null default current_timestamp
);
create unique index if not exists secrets_name_idx on vault.secrets (name) where name is not null;

create or replace view vault.decrypted_secrets as
select s.id, s.name, s.description, s.secret, s.secret as decrypted_secret, s.key_id, s.nonce,
       s.created_at, s.updated_at
from vault.secrets s;

create or replace function vault.create_secret(new_secret text, new_name text = null, new_description text = '',
                                               new_key_id uuid = null)
returns uuid
language sql
set search_path = ''
as $$
  insert into vault.secrets (secret, name, description) values (new_secret, new_name, new_description)
  returning id
$$;

create or replace function vault.update_secret(secret_id uuid, new_secret text = null, new_name text = null,
                                               new_description text = null, new_key_id uuid = null)
returns void
language sql
set search_path = ''
as $$
  update vault.secrets s
  set secret = coalesce(new_secret, s.secret), name = coalesce(new_name, s.name),
      description = coalesce(new_description, s.description), updated_at = now()
  where s.id = secret_id
$$;

revoke all on function vault.create_secret(text, text, text, uuid), vault.update_secret(uuid, text, text, text, uuid)
  from public;
