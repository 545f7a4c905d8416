"""lib/ops/health: Redis and the database probed side by side, a probe that hangs counted down within the timeout."""

from __future__ import annotations

import threading

import pytest

from lib import config, db
from lib.edge import upstash
from lib.ops import health


def test_the_probes_run_side_by_side() -> None:
    # The first probe can only answer once the second has started: run one after the other, the
    # first would wait out the timeout and be reported down.
    second_started = threading.Event()
    results = health._run_bounded({
        "redis": lambda: second_started.wait(timeout=5),
        "database": lambda: second_started.set() or True,
    }, timeout=5)
    assert results == {"redis": True, "database": True}


def test_a_probe_that_hangs_is_down_once_the_timeout_passes_and_the_other_still_counts() -> None:
    release = threading.Event()
    try:
        results = health._run_bounded({"redis": lambda: release.wait(timeout=30), "database": lambda: True},
                                      timeout=0.2)
    finally:
        release.set()
    assert results == {"redis": False, "database": True}


@pytest.mark.parametrize(("redis_up", "database_up", "status"), [
    (True, True, "ok"),
    (False, True, "degraded"),
    (True, False, "degraded"),
])
def test_the_body_says_each_dependency_and_the_environment(monkeypatch: pytest.MonkeyPatch, redis_up: bool,
                                                           database_up: bool, status: str) -> None:
    monkeypatch.setattr(upstash, "probe", lambda: redis_up)
    monkeypatch.setattr(db, "probe", lambda timeout: database_up)
    monkeypatch.setattr(config, "environment", lambda: "vercel-preview")
    monkeypatch.delenv("PAYDUNYA_MODE", raising=False)
    body, up = health.check()
    assert body == {"status": status, "redis": "up" if redis_up else "down",
                    "database": "up" if database_up else "down", "environment": "vercel-preview",
                    "paydunya_mode": "test"}
    assert up is database_up


@pytest.mark.parametrize(("environment", "mode", "shown"), [
    ("local", None, "test"),              # the sandbox by default, where no rent is real
    ("vercel-production", "live", "live"),
    ("vercel-production", "test", "test"),  # said explicitly: shown, so nobody mistakes it for live
    ("vercel-production", None, None),    # unset where it is required: payments refuse, health says so
    ("dakar", None, None),
    ("local", "prod", None),              # not a mode
])
def test_the_body_shows_the_paydunya_mode_in_use(monkeypatch: pytest.MonkeyPatch, environment: str,
                                                   mode: str | None, shown: str | None) -> None:
    monkeypatch.setattr(upstash, "probe", lambda: True)
    monkeypatch.setattr(db, "probe", lambda timeout: True)
    monkeypatch.setattr(config, "environment", lambda: environment)
    if mode is None:
        monkeypatch.delenv("PAYDUNYA_MODE", raising=False)
    else:
        monkeypatch.setenv("PAYDUNYA_MODE", mode)
    body, up = health.check()
    assert body["paydunya_mode"] == shown
    assert up and body["status"] == "ok"
