"""devstack/cron.py: Vercel Cron for the local stack: every path of vercel.json's `crons`, with `CRON_SECRET` as a
bearer token, on its interval (`DEVSTACK_CRON_SECONDS`, default 60), carrying on after a failed call."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import pytest

from devstack import cron
from tests.support import serve, wait_for


class Api(BaseHTTPRequestHandler):
    calls: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    status = 200

    def do_GET(self):
        with self.lock:
            self.calls.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    Api.calls, Api.status = [], 200
    with serve(Api) as url:
        yield url


def test_the_paths_are_vercel_jsons_crons():
    assert cron.cron_paths() == ["/api/cron/reconcile"]


@pytest.mark.parametrize("value, seconds", [(None, 60.0), ("", 60.0), ("5", 5.0), ("0.5", 0.5)])
def test_the_interval_is_a_minute_unless_a_drill_says_otherwise(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("DEVSTACK_CRON_SECONDS", raising=False)
    else:
        monkeypatch.setenv("DEVSTACK_CRON_SECONDS", value)
    assert cron.interval() == seconds


def test_each_path_is_called_on_schedule_with_the_secret_as_vercel_does(api):
    caller = cron.CronCaller(api, "cron-secret", seconds=0.05).start()
    try:
        wait_for(lambda: len(Api.calls) >= 3, timeout=10, what="three ticks")
    finally:
        caller.shutdown()
    assert set(Api.calls) == {("/api/cron/reconcile", "Bearer cron-secret")}
    assert caller.calls[-1]["status"] == 200


def test_a_failing_call_is_logged_and_the_next_tick_still_comes(api, caplog):
    Api.status = 503
    caller = cron.CronCaller(api, "s", seconds=0.05).start()
    try:
        wait_for(lambda: len(Api.calls) >= 2, timeout=10, what="two ticks")
    finally:
        caller.shutdown()
    assert "503" in caplog.text


def test_an_api_that_is_not_up_is_a_logged_error_not_a_crash(caplog):
    from devstack.redis_server import free_port

    caller = cron.CronCaller(f"http://127.0.0.1:{free_port()}", "s", seconds=60)
    caller.tick()
    assert caller.calls[-1]["status"] is None and "ConnectError" in caller.calls[-1]["body"]
