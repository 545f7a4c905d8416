"""Health of the API: probes Redis and the database side by side, each bounded in time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lib import config, db
from lib.edge import upstash
from lib.errors import ConfigurationError

# Seconds: a dead Redis or database costs the health check at most about this long.
PROBE_TIMEOUT = 1.0


def _run_bounded(probes: dict[str, Callable[[], bool]], timeout: float) -> dict[str, bool]:
    results = {name: False for name in probes}

    def run(name: str, probe: Callable[[], bool]) -> None:
        results[name] = probe()

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in probes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Both probes run at once: the whole check is bounded by one timeout, not their sum.
        thread.join(timeout)
    return dict(results)


def check() -> tuple[dict[str, Any], bool]:
    """The contract's health body, and whether the database is up (503 otherwise)."""
    results = _run_bounded(
        {"redis": upstash.probe, "database": lambda: db.probe(timeout=PROBE_TIMEOUT)},
        PROBE_TIMEOUT + 0.2,
    )
    ok = all(results.values())
    body = {
        "status": "ok" if ok else "degraded",
        "redis": "up" if results["redis"] else "down",
        "database": "up" if results["database"] else "down",
        "environment": config.environment(),
        "paydunya_mode": _paydunya_mode(),
    }
    return body, results["database"]


def _paydunya_mode() -> str | None:
    """`test` or `live`; None when PAYDUNYA_MODE is missing where it is required, or invalid (payments
    then answer configuration_error naming it): the operator sees it here before a tenant does."""
    try:
        return config.paydunya_mode()
    except ConfigurationError:
        return None
