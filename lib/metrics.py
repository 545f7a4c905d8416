"""Monitoring, the counting side: what a request records into its instance (never into Redis).

lib/cache/aside, lib/cache/locks, lib/db and lib/edge/upstash call the functions below; the writing
of what they counted (one command per instance every 5 s at most) is lib/ops/recorder's, and the
fields, buckets and reading are described there and in lib/ops/report.

    <family>:HIT|STALE|REFRESH|LOAD|WAIT    a cached read's outcome (lib/cache/aside)
    <family>:BYPASS|TIMEOUT                 Redis unusable / a waiter gave up: answered from the database
    db:q:<family>  db:q:-  db:failed        queries PostgREST answered (inside a cache loader or not)
    lock:<payment|visit|other>:<event>      acquired, blocked, expired, unavailable (lib/cache/locks)
    lat:api:<METHOD> <route>:<le>           request durations, histogram (<le> = bucket bound, ms)
    lat:upstash:<le>                        Upstash REST call durations, histogram
    http:5xx                                requests answered with a 5xx status
    breaker:open                            requests served while Redis was being skipped (breaker open)
    redis:refused_writes                    writes Redis refused because the database is full
    metrics:lost_writes                     writes of these counters that never reached Redis

This module is the shared ground (lib's root): it imports nothing above it. The durations of a
request's Upstash calls are tallied by lib/context (the edge records into it) and observed here by
lib/ops/recorder at the request's end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TypeVar

from lib import keys
from lib.histogram import LABELS, bucket_index

T = TypeVar("T")

# Replaceable in tests: the wall clock that picks a bucket.
clock = time.time

MAX_PENDING = 5_000  # distinct (minute, field) increments an instance buffers; beyond, dropped

# Statuses of a cached read, as lib/cache/aside records them.
SERVED_FROM_CACHE = ("HIT", "STALE")
LOADED = ("LOAD", "REFRESH", "TIMEOUT")  # X-Cache: MISS
CACHE_STATUSES = ("HIT", "STALE", "REFRESH", "LOAD", "WAIT", "BYPASS", "TIMEOUT")
LOCK_EVENTS = ("acquired", "blocked", "expired", "unavailable")


class Pending:
    """Increments recorded by this instance, not yet in Redis: (epoch minute, field) → amount."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}
        self.dropped = 0  # increments lost because the buffer was full

    def add(self, name: str, amount: int = 1, minute: int | None = None) -> bool:
        """Buffer an increment; False (and nothing kept, the loss counted) when the buffer is full."""
        minute = int(clock()) // 60 if minute is None else minute
        with self._lock:
            slot = (minute, name)
            if slot not in self._counts and len(self._counts) >= self.limit:
                self.dropped += 1
                return False
            self._counts[slot] = self._counts.get(slot, 0) + amount
            return True

    def take(self) -> dict[tuple[int, str], int]:
        """Everything buffered, the buffer emptied (it now belongs to one outgoing write)."""
        with self._lock:
            taken, self._counts = self._counts, {}
        return taken

    def snapshot(self) -> dict[tuple[int, str], int]:
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


pending = Pending()


# -- recording: on inside a request served by lib.web.http.Endpoint (lib/ops/recorder) ------------

_recording: ContextVar[bool] = ContextVar("dousell_metrics_recording", default=False)
_loading: ContextVar[str | None] = ContextVar("dousell_metrics_loading", default=None)


def start_recording() -> Token[bool]:
    """Record this context's counts from now on; `stop_recording(token)` ends it."""
    return _recording.set(True)


def stop_recording(token: Token[bool]) -> None:
    _recording.reset(token)


def _add(name: str, amount: int = 1) -> None:
    if _recording.get():
        pending.add(name, amount)


def count(name: str, amount: int = 1) -> None:
    """A counter by its field name (`http:5xx`, `breaker:open`), inside a request only."""
    _add(name, amount)


def count_cache(family: str, status: str) -> None:
    """A cached read's outcome (HIT, STALE, REFRESH, LOAD, WAIT, BYPASS, TIMEOUT)."""
    _add(f"{family}:{status}")


def count_refused_write() -> None:
    """Redis refused a write because the database is full (a fill, a claim): not an outage."""
    _add("redis:refused_writes")


def lock_event(name: str, event: str) -> None:
    """`dousell:lock:payment:lease123` + "blocked" → `lock:payment:blocked`."""
    _add(f"lock:{keys.lock_kind(name)}:{event}")


def count_query(ok: bool = True) -> None:
    """One PostgREST call: served (attributed to the cache family whose loader ran it) or failed."""
    _add(f"db:q:{_loading.get() or '-'}" if ok else "db:failed")


def attributed(family: str, loader: Callable[[], T]) -> Callable[[], T]:
    """`loader`, with the queries it runs counted under `family` (for the queries-avoided estimate)."""

    def load() -> T:
        token = _loading.set(family)
        try:
            return loader()
        finally:
            _loading.reset(token)

    return load


def observe(name: str, ms: float) -> None:
    """One latency sample into the histogram `name` (`api:GET /api/properties`, `upstash`)."""
    _add(f"lat:{name}:{LABELS[bucket_index(ms)]}")
