"""Vercel Cron's jobs: run one after the other, each failure reported by its code, the others still run.

The cron proves itself with `Authorization: Bearer $CRON_SECRET` (Vercel's convention), checked
by lib/bearer before any job starts. A job that fails makes the answer a 503, so Vercel's cron
log shows the failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from lib.errors import DousellError, ServiceUnavailable

log = logging.getLogger(__name__)


Job = tuple[str, Callable[[], dict[str, Any]]]


def run_jobs(jobs: Sequence[Job]) -> dict[str, Any]:
    """`{"jobs": {name: its counts}}`; if a job failed, every job still ran, each failure is logged
    with its code, and the answer is a 503 `service_unavailable` (the contract's error shape)."""
    results: dict[str, Any] = {}
    failed = []
    for name, job in jobs:
        try:
            results[name] = job()
        except DousellError as exc:
            log.warning("cron job %s failed: %s %s", name, exc.code, exc.details if exc.details is not None else "")
            failed.append(name)
    if failed:
        log.warning("cron: %s failed; the others gave %s", ", ".join(failed), results)
        raise ServiceUnavailable("Une tâche planifiée n'a pas pu aboutir ; elle sera relancée à la prochaine "
                                 "exécution.")
    return {"jobs": results}
