"""GET /api/cron/reconcile on a real loopback server: Vercel Cron's bearer secret, the jobs' counts, a 503 when a
job cannot finish. PostgREST is faked at the network boundary; Redis is a real Valkey behind the Upstash stand-in
(the fixtures of tests/api/test_hooks_database_api.py)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import httpx
import pytest

from devstack.redis_server import free_port
from lib.cache import invalidation
from tests.api.test_hooks_database_api import AWA, CHANGE, outbox, row  # noqa: F401 (fixtures)
from tests.support import serve

cron_api = importlib.import_module("api.cron.reconcile")
SECRET = "s3cret-cron-secret-0123456789"


@pytest.fixture(scope="module")
def base():
    with serve(cron_api.handler) as url:
        yield url


@pytest.fixture
def client(outbox, base, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CRON_SECRET", SECRET)
    with httpx.Client(base_url=base, timeout=10) as http:
        yield http


def run(client, secret=SECRET, path="/api/cron/reconcile"):
    return client.get(path, headers={"Authorization": f"Bearer {secret}"} if secret else {})


@pytest.mark.parametrize("secret, code", [(None, "authentication_required"), ("wrong", "invalid_token"),
                                          ("s3cret-webhook-secret", "invalid_token")])  # another platform secret
def test_without_vercels_cron_secret_it_is_401_and_nothing_runs(client, outbox, secret, code):  # noqa: F811
    outbox.rows = [row()]
    response = run(client, secret)
    assert (response.status_code, response.json()["error"]["code"]) == (401, code)
    assert response.headers["www-authenticate"] == 'Bearer realm="cron"'
    assert outbox.calls == []


def test_an_unset_cron_secret_keeps_it_closed(client, outbox, monkeypatch):  # noqa: F811
    monkeypatch.delenv("CRON_SECRET")
    response = run(client, "anything")
    assert (response.status_code, response.json()["error"]["details"]) == (500, {"variable": "CRON_SECRET"})
    assert outbox.calls == []


def test_a_query_string_is_refused(client, outbox):  # noqa: F811
    response = run(client, path="/api/cron/reconcile?all=1")
    assert (response.status_code, response.json()["error"]["code"]) == (422, "validation_error")
    assert outbox.calls == []


def test_it_drains_the_outbox_and_answers_counts(client, outbox):  # noqa: F811
    outbox.rows = [row(owners=[AWA]), {**row(), "id": 2, "table_name": "notifications",
                                       "record": {"user_id": AWA}, "old_record": None}]
    response = run(client)
    assert response.status_code == 200
    counts = response.json()["jobs"]["invalidations"]
    expected = set(invalidation.change_tags("properties", CHANGE["old_record"], CHANGE["record"], [AWA])) | {
        f"notifications:{AWA}"}
    assert counts == {"applied": 2, "already_applied": 0, "deferred": 0, "invalidated": len(expected),
                      "more": False, "pending": 0, "oldest_seconds": None}
    assert [name for name, _ in outbox.calls] == ["claim_invalidations", "complete_invalidations",
                                                  "invalidation_backlog", "payments_to_reconcile",
                                                  "invalidation_backlog"]  # the alerts job's look at it
    assert response.json()["jobs"]["alerts"] == {"firing": [], "fired": 0, "cleared": 0, "posted": 0}
    assert response.json()["jobs"]["payments"] == {"due": 0, "checked": 0, "changed": 0, "needs_review": 0,
                                                   "expired": 0, "errors": 0, "left": 0}


def test_redis_away_the_job_fails_as_a_503_and_its_rows_wait(client, outbox, monkeypatch):  # noqa: F811
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
    outbox.rows = [row()]
    response = run(client)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "service_unavailable")
    assert "details" not in response.json()["error"]
    assert ("release_invalidations", {"p_ids": [1]}) in outbox.calls


def test_the_cron_is_scheduled_every_minute_in_vercel_json():
    config = json.loads((Path(__file__).resolve().parents[2] / "vercel.json").read_text())
    assert {"path": "/api/cron/reconcile", "schedule": "* * * * *"} in config["crons"]
