"""lib/ops/health: Redis and the database probed side by side, a probe that hangs counted down within the timeout.

The body for each state of the two (and the status code) is tested through the endpoint: tests/api/test_health.py;
here, a used-up Upstash quota (said as `redis_quota`, not probed meanwhile).
"""

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


def test_a_used_up_quota_is_said_as_such_and_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[bool] = []
    monkeypatch.setattr(upstash, "probe", lambda: probed.append(True) or True)
    monkeypatch.setattr(db, "probe", lambda timeout: True)
    monkeypatch.setattr(config, "environment", lambda: "local")
    upstash.breaker.hold(3600.0, "daily_quota")
    try:
        body, up = health.check()
    finally:
        upstash.breaker.reset()
    assert (body["status"], body["redis"], body["redis_quota"]["quota"], up) == ("degraded", "down", "daily", True)
    assert body["redis_quota"]["until"].endswith("Z")
    assert probed == [], "a probe would only be refused again (and billed)"


def test_a_probe_that_meets_the_quota_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> bool:
        upstash.breaker.hold(60.0, "monthly_quota")  # what the edge does when PING meets the quota
        return False

    monkeypatch.setattr(upstash, "probe", refused)
    monkeypatch.setattr(db, "probe", lambda timeout: True)
    try:
        body, _ = health.check()
    finally:
        upstash.breaker.reset()
    assert (body["redis"], body["redis_quota"]["quota"]) == ("down", "monthly")
