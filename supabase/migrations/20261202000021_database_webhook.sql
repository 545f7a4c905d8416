-- The database webhook: after every change recorded in the outbox, POST it to the API
-- (`/api/hooks/database`), which drains the outbox at once. This is what a Supabase
-- Database Webhook is (supabase_functions.http_request: an AFTER trigger that builds
-- {"type", "table", "schema", "record", "old_record"} and sends it with pg_net's
-- net.http_post), with one difference: the URL and the secret are settings read at each
-- call from Supabase Vault, never literals in a migration or in a trigger's arguments
-- (trigger arguments are readable by every role in pg_trigger).
--
-- Settings (docs/invalidation.md, "On hosted Supabase"), two Vault secrets:
--   dousell_database_webhook_url     https://<deployment>/api/hooks/database
--   dousell_database_webhook_secret  the value of DATABASE_WEBHOOK_SECRET on Vercel
-- Without the URL, nothing is sent: the cron drains the outbox every minute instead.
--
-- pg_net is fire-and-forget (its queue is an unlogged table, a request that fails or
-- times out is not retried): a webhook can be lost. Nothing depends on it arriving; the
-- outbox row stays until the API deletes it. Sending never fails the user's write either:
-- any error here is a WARNING, and the change is still in the outbox.

-- pg_net on hosted Supabase (Dashboard > Database > Extensions, or here). A bare
-- PostgreSQL (the local stack, the tests) has no pg_net: devstack/sql/bootstrap.sql gives
-- it the same net.http_post, delivered by the Supabase stand-in.
do $$
begin
  if exists (select from pg_available_extensions where name = 'pg_net') then
    create extension if not exists pg_net;
  end if;
  if to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null then
    raise exception 'net.http_post is missing: enable the pg_net extension first (docs/invalidation.md)';
  end if;
end
$$;

-- Reads one Vault secret; NULL when Vault or the secret is missing.
create or replace function private.setting(p_name text) returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_value text;
begin
  select s.decrypted_secret into v_value from vault.decrypted_secrets s where s.name = p_name;
  return nullif(btrim(v_value), '');
exception when undefined_table or invalid_schema_name or insufficient_privilege then
  return null;
end;
$$;

-- The Database Webhook itself. Timeout 5 s (pg_net's default): a cold function answers
-- well within it; a slower one is recovered by the cron.
create or replace function private.send_database_webhook() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
  v_payload jsonb;
begin
  v_url := private.setting('dousell_database_webhook_url');
  if v_url is null then
    return null;
  end if;
  if tg_op = 'UPDATE' and to_jsonb(old) = to_jsonb(new) then
    return null;  -- nothing recorded in the outbox either
  end if;
  v_secret := private.setting('dousell_database_webhook_secret');
  v_payload := jsonb_build_object(
    'type', tg_op,
    'table', tg_table_name,
    'schema', tg_table_schema,
    'record', case when tg_op = 'DELETE' then null else to_jsonb(new) end,
    'old_record', case when tg_op = 'INSERT' then null else to_jsonb(old) end);
  begin
    perform net.http_post(
      url := v_url,
      body := v_payload,
      params := '{}'::jsonb,
      headers := jsonb_build_object('Content-Type', 'application/json',
                                    'Authorization', 'Bearer ' || coalesce(v_secret, '')),
      timeout_milliseconds := 5000);
  exception when others then
    raise warning 'database webhook not queued (%: %); the outbox keeps the change', sqlstate, sqlerrm;
  end;
  return null;
end;
$$;

create trigger b_database_webhook after insert or update or delete on public.properties
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.leases
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.rental_payments
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.visits
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.visit_slots
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.profiles
  for each row execute function private.send_database_webhook();
create trigger b_database_webhook after insert or update or delete on public.notifications
  for each row execute function private.send_database_webhook();

revoke execute on function private.setting(text) from public, anon, authenticated;
revoke execute on function private.send_database_webhook() from public, anon, authenticated;
