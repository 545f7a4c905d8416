"""lib/ops/health: Redis and the database probed side by side, a probe that hangs counted down within the timeout.

The body for each state of the two (and the status code) is tested through the endpoint: tests/api/test_health.py.
"""

from __future__ import annotations

import threading

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
