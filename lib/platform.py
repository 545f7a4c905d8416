"""Calls from the platform, not from users: Supabase's database webhook and Vercel Cron.

Each proves itself with a shared secret sent as `Authorization: Bearer <secret>` (Vercel Cron's
convention for `CRON_SECRET`; the webhook is configured to send `DATABASE_WEBHOOK_SECRET`),
compared in constant time before anything else is read. The cron runs its jobs one after the
other; a job that fails is reported by its code, the others still run, and the answer is a 503
(Vercel's cron log then shows the failure).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any

from lib import config
from lib.errors import AuthenticationRequired, DousellError, InvalidToken, ServiceUnavailable

log = logging.getLogger(__name__)


def require_secret(header: str | None, variable: str, realm: str) -> None:
    """401 unless `header` is `Bearer $<variable>` (constant time). An unset variable is a 500
    `configuration_error` naming it: an endpoint without its secret must never be open."""
    expected = config.require(variable)
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    if not header or not header.strip():
        raise AuthenticationRequired("Secret requis (en-tête Authorization: Bearer).", headers=challenge)
    scheme, _, token = header.strip().partition(" ")
    given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise InvalidToken("Secret invalide.", headers=challenge)


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
