"""The stand-ins for one bench run: `python -m devstack up --no-api` on free ports, stopped at the end.

The stack runs in its own process with its own state folder, so a developer's `make dev` on the
default ports is left alone; the bench talks to it on 127.0.0.1 only.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import httpx

from devstack import child
from devstack.__main__ import UPSTASH_TOKEN
from devstack.child import ChildStack

START_TIMEOUT = 120.0  # PostgreSQL init + migrations + seed take ~10 s here


class LocalStack(ChildStack):
    """A running `devstack up` (devstack/child.py) and an admin client for its drill switches."""

    ADMIN_TIMEOUT = 10.0

    @cached_property
    def admin(self) -> httpx.Client:
        return httpx.Client(timeout=self.ADMIN_TIMEOUT)

    # -- the Supabase stand-in's drill endpoints ------------------------------------------------

    def set_db_delay(self, ms: float) -> None:
        """Sleep `ms` before every /rest/v1 request (the seed's ~300 ms to Supabase)."""
        self._supabase("POST", "delay", {"ms": ms})

    def db_stats(self) -> dict[str, Any]:
        """Requests that reached the database since the last reset."""
        return self._supabase("GET", "stats")

    def reset_db_stats(self) -> None:
        self._supabase("POST", "stats/reset", {})

    def db_requests(self) -> int:
        return int(self.db_stats()["rest_requests"])

    def upstash_stats(self) -> dict[str, Any]:
        """What the Upstash stand-in counted since its last reset: billed commands, scripts by lock."""
        return self._upstash("GET", "stats")

    def reset_upstash_stats(self) -> None:
        self._upstash("POST", "stats/reset")

    def _upstash(self, method: str, path: str) -> Any:
        response = self.admin.request(method, f"{self.upstash_url}/__devstack/{path}",
                                      headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"})
        response.raise_for_status()
        return response.json()["result"]

    def upstash_status(self) -> dict[str, Any]:
        response = self.admin.get(f"{self.upstash_url}/__devstack/status",
                                  headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"})
        response.raise_for_status()
        body = response.json()
        return body.get("result", body)

    def _supabase(self, method: str, path: str, payload: dict | None = None) -> Any:
        response = self.admin.request(method, f"{self.supabase_url}/__devstack/{path}", json=payload)
        response.raise_for_status()
        return response.json()

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        if "admin" in self.__dict__:
            self.admin.close()
        super().stop()


def start(timeout: float = START_TIMEOUT) -> LocalStack:
    """Start the stand-ins on free ports and wait for the `ready` file the stack writes."""
    return child.start(api=False, purpose="bench", timeout=timeout, cls=LocalStack)
