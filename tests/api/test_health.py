"""GET /api/health: the contract's body, 503 only when the database is down, each probe bounded in time."""

from __future__ import annotations

import importlib
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import respx

from tests.support import serve

health = importlib.import_module("api.health")
UPSTASH = "https://upstash.test"
SUPABASE = "https://project.supabase.test"


@pytest.fixture(autouse=True)
def configured(monkeypatch):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", UPSTASH)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    monkeypatch.setenv("SUPABASE_URL", SUPABASE)
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon")
    monkeypatch.delenv("VERCEL", raising=False)
    monkeypatch.delenv("DOUSELL_DEPLOYMENT", raising=False)
    monkeypatch.delenv("PAYDUNYA_MODE", raising=False)


@pytest.fixture
def api():
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        with serve(health.handler) as base, httpx.Client(base_url=base, timeout=10) as client:
            yield mock, client


@pytest.mark.parametrize("redis_ok, db_ok, status, body", [
    (True, True, 200, {"status": "ok", "redis": "up", "database": "up"}),
    (False, True, 200, {"status": "degraded", "redis": "down", "database": "up"}),  # the cache is optional
    (True, False, 503, {"status": "degraded", "redis": "up", "database": "down"}),  # the data is not
    (False, False, 503, {"status": "degraded", "redis": "down", "database": "down"}),
])
def test_health_reports_each_dependency(api, redis_ok, db_ok, status, body):
    mock, client = api
    mock.post(UPSTASH).mock(return_value=httpx.Response(200, json={"result": "PONG"}) if redis_ok
                            else httpx.Response(200, json={"error": "ERR down"}))
    mock.get(f"{SUPABASE}/rest/v1/properties").mock(
        return_value=httpx.Response(200, json=[]) if db_ok else httpx.Response(503, json={"code": "PGRST001"}))
    response = client.get("/api/health")
    assert response.status_code == status
    assert response.json() == {**body, "environment": "local", "paydunya_mode": "test"}
    assert response.headers["cache-control"] == "no-store"


def test_health_reports_the_vercel_environment(api, monkeypatch):
    mock, client = api
    monkeypatch.setenv("VERCEL", "1")
    monkeypatch.setenv("VERCEL_ENV", "preview")
    mock.post(UPSTASH).mock(return_value=httpx.Response(200, json={"result": "PONG"}))
    mock.get(f"{SUPABASE}/rest/v1/properties").mock(return_value=httpx.Response(200, json=[]))
    assert client.get("/api/health").json()["environment"] == "vercel-preview"


@pytest.mark.parametrize("env, shown", [
    ({}, "test"),                                                         # the sandbox by default, where no rent is real
    ({"VERCEL": "1", "VERCEL_ENV": "production", "PAYDUNYA_MODE": "live"}, "live"),
    ({"VERCEL": "1", "VERCEL_ENV": "production", "PAYDUNYA_MODE": "test"}, "test"),  # said explicitly: shown
    ({"VERCEL": "1", "VERCEL_ENV": "production"}, None),                  # unset where required: payments refuse
    ({"DOUSELL_DEPLOYMENT": "dakar"}, None),
    ({"PAYDUNYA_MODE": "prod"}, None),                                    # not a mode
])
def test_health_shows_the_paydunya_mode_in_use(api, monkeypatch, env, shown):
    mock, client = api
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mock.post(UPSTASH).mock(return_value=httpx.Response(200, json={"result": "PONG"}))
    mock.get(f"{SUPABASE}/rest/v1/properties").mock(return_value=httpx.Response(200, json=[]))
    response = client.get("/api/health")
    assert (response.status_code, response.json()["status"]) == (200, "ok")  # reported, not a failure of health
    assert response.json()["paydunya_mode"] == shown


def test_health_without_any_configuration_answers_down_not_500(monkeypatch):
    for name in ("UPSTASH_REDIS_REST_URL", "SUPABASE_URL", "SUPABASE_ANON_KEY"):
        monkeypatch.delenv(name)
    with serve(health.handler) as base:
        response = httpx.get(f"{base}/api/health", timeout=10)
    assert response.status_code == 503
    assert response.json()["redis"] == "down" and response.json()["database"] == "down"


class Hanging(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):
        self.release.wait(10)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_dead_redis_and_database_cost_about_one_second_not_a_hang(monkeypatch):
    with serve(Hanging) as dead, serve(health.handler) as base:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", dead)
        monkeypatch.setenv("SUPABASE_URL", dead)
        start = time.monotonic()
        response = httpx.get(f"{base}/api/health", timeout=15)
        elapsed = time.monotonic() - start
        Hanging.release.set()
    assert response.status_code == 503
    assert response.json()["redis"] == "down" and response.json()["database"] == "down"
    assert elapsed < 3, f"health took {elapsed:.1f}s with both dependencies hanging for 10s"
