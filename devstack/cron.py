"""Vercel Cron for the local stack: `vercel dev` runs no crons, so this calls each path of `crons` on schedule.

Vercel Cron sends `GET <path>` with `Authorization: Bearer $CRON_SECRET` to the production
deployment (vercel.com/docs/cron-jobs/manage-cron-jobs). Here every path of vercel.json's
`crons` is called every `DEVSTACK_CRON_SECONDS` seconds (default 60: `* * * * *`, the only
schedule the project uses; a drill may shorten it and says so), first one interval after start.
Each answer is logged on one line; a failed call is logged and retried at the next tick.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("devstack.cron")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SECONDS = 60.0


def cron_paths(config: Path = REPO / "vercel.json") -> list[str]:
    """The `path` of every entry of vercel.json's `crons`."""
    return [entry["path"] for entry in json.loads(config.read_text()).get("crons", [])]


def interval() -> float:
    """`DEVSTACK_CRON_SECONDS`, default 60 (what `* * * * *` means on Vercel)."""
    return float(os.environ.get("DEVSTACK_CRON_SECONDS", "") or DEFAULT_SECONDS)


class CronCaller:
    """A daemon thread calling the cron paths on `api_url`; stopped like the stand-ins (`shutdown`, `server_close`)."""

    def __init__(self, api_url: str, secret: str, *, seconds: float | None = None, paths: list[str] | None = None):
        self.api_url = api_url.rstrip("/")
        self.secret = secret
        self.seconds = interval() if seconds is None else seconds
        self.paths = cron_paths() if paths is None else paths
        self.calls: list[dict[str, Any]] = []  # the last answers, newest last (at most 100)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devstack-cron", daemon=True)

    def start(self) -> CronCaller:
        self._thread.start()
        log.info("cron: %s every %.0f s", ", ".join(self.paths), self.seconds)
        return self

    def tick(self) -> None:
        """Call every path once, now."""
        for path in self.paths:
            try:
                response = httpx.get(f"{self.api_url}{path}", headers={"Authorization": f"Bearer {self.secret}"},
                                     timeout=60)
                record: dict[str, Any] = {"path": path, "status": response.status_code, "body": response.text[:300]}
            except httpx.HTTPError as exc:
                record = {"path": path, "status": None, "body": f"{type(exc).__name__}: {exc}"[:300]}
            ok = record["status"] is not None and record["status"] < 400
            (log.info if ok else log.warning)("cron: GET %s -> %s %s", path, record["status"], record["body"])
            self.calls = [*self.calls[-99:], record]

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            self.tick()

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=65)

    def server_close(self) -> None:
        """Nothing to close; present so the stack stops it like its servers."""
