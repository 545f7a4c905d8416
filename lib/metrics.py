"""Monitoring, the counting side: requests record into the instance, which writes to Redis at most every 5 s.

Every figure is a counter in two Redis hashes, the minute's and the hour's (keys.metrics_bucket):

    dousell:meta:metrics:m:<epoch minute>   kept 26 h; the last hour sums 60 of them
    dousell:meta:metrics:h:<epoch hour>     kept 26 h; the last 24 hours sum 24 of them

    <family>:HIT|STALE|REFRESH|LOAD|WAIT    a cached read's outcome (lib/cache/aside)
    <family>:BYPASS|TIMEOUT                 Redis unusable / a waiter gave up: answered from the database
    db:q:<family>  db:q:-  db:failed        queries PostgREST answered (inside a cache loader or not)
    lock:<payment|visit|other>:<event>      acquired, blocked, expired, unavailable (lib/cache/locks)
    lat:api:<METHOD> <route>:<le>           request durations, histogram (<le> = bucket bound, ms)
    lat:upstash:<le>                        Upstash REST call durations, histogram
    redis:refused_writes                    writes Redis refused because the database is full
    metrics:lost_writes                     writes of these counters that never reached Redis

A request records into the instance's buffer (`pending`, per epoch minute and field), never into
Redis. At the end of a request, before its answer (a function may be frozen once its answer is
out), the buffer is written in one command (an EVALSHA of WRITE) if the last write is at least
FLUSH_INTERVAL old and Redis is not being skipped. So monitoring costs at most one billed command
per instance every 5 s whatever the traffic, and a cache hit stays one command. What it costs in
return: an instance frozen or recycled before its next request loses what it recorded since its
last write, at most FLUSH_INTERVAL of its traffic (docs/monitoring.md). A failed write is counted
and dropped, never retried (it may have landed) and never an error for the user.
Recording happens only inside a request served by `lib.web.http.Endpoint` (not for /api/health or
/api/metrics: probes and dashboards are not traffic).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lib import keys
from lib.edge import upstash
from lib.errors import ConfigurationError
from lib.histogram import LABELS, bucket_index

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replaceable in tests: the wall clock that picks a bucket, the clock of the write interval.
clock = time.time
monotonic = time.monotonic

BUCKET_TTL = 26 * 3600  # seconds; beyond the 24 h window, so an hour bucket is whole while read
FLUSH_INTERVAL = 5.0  # seconds between two writes of an instance's buffer
MAX_PENDING = 5_000  # distinct (minute, field) increments an instance buffers; beyond, dropped
UNRECORDED = ("/api/health", "/api/metrics")

# Statuses of a cached read, as lib/cache/aside records them.
SERVED_FROM_CACHE = ("HIT", "STALE")
LOADED = ("LOAD", "REFRESH", "TIMEOUT")  # X-Cache: MISS
CACHE_STATUSES = ("HIT", "STALE", "REFRESH", "LOAD", "WAIT", "BYPASS", "TIMEOUT")
LOCK_EVENTS = ("acquired", "blocked", "expired", "unavailable")

# KEYS: pairs of bucket hashes (a minute's, then its hour's). ARGV[1] their TTL in seconds, then
# three values per increment: the pair's number (1-based), the field, the amount. redis.pcall, so
# one key of the wrong type never loses the other increments. Returns how many Redis refused.
WRITE = upstash.Script("""
local refused = 0
for i = 2, #ARGV, 3 do
  local pair = tonumber(ARGV[i]) * 2
  for k = pair - 1, pair do
    local r = redis.pcall('HINCRBY', KEYS[k], ARGV[i + 1], ARGV[i + 2])
    if type(r) == 'table' and r.err then refused = refused + 1 end
  end
end
for k = 1, #KEYS do redis.pcall('EXPIRE', KEYS[k], ARGV[1]) end
return refused
""", writes=True)


class Pending:
    """Increments recorded by this instance, not yet in Redis: (epoch minute, field) → amount."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}

    def add(self, name: str, amount: int = 1, minute: int | None = None) -> bool:
        """Buffer an increment; False (and nothing kept) when the buffer is full."""
        minute = int(clock()) // 60 if minute is None else minute
        with self._lock:
            slot = (minute, name)
            if slot not in self._counts and len(self._counts) >= self.limit:
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

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


@dataclass
class Stats:
    """This instance's own bookkeeping of its metrics writes (tests and logs read it)."""

    writes: int = 0  # writes Redis applied
    lost_writes: int = 0  # writes dropped because Redis failed, timed out or was skipped
    refused_writes: int = 0  # writes Redis refused because the database is full
    dropped: int = 0  # increments lost: buffer full, or one key of the wrong type

    def reset(self) -> None:
        self.writes = self.lost_writes = self.refused_writes = self.dropped = 0


pending = Pending()
stats = Stats()
_last_flush = float("-inf")


@dataclass
class Recording:
    """One request being recorded, and the Upstash calls it makes (their durations are recorded)."""

    tally: upstash.Tally
    tally_token: Token[upstash.Tally | None] = field(repr=False)
    token: Token[Recording | None] | None = field(default=None, repr=False)


_recording: ContextVar[Recording | None] = ContextVar("dousell_metrics_recording", default=None)
_loading: ContextVar[str | None] = ContextVar("dousell_metrics_loading", default=None)


def _add(name: str, amount: int = 1) -> None:
    if _recording.get() is None:
        return
    if not pending.add(name, amount):
        stats.dropped += 1


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


# -- the request's lifecycle (lib.web.http.Endpoint) -----------------------------------------------


def route(path: str, path_param: str | None = None) -> str:
    """The endpoint a path belongs to, for the per-endpoint latency: `/api/properties/123` →
    `/api/properties/[id]` (dynamic routes), no trailing slash, no `.py`, safe characters only."""
    path = path.rstrip("/") or "/"
    if path_param:
        path = path.rsplit("/", 1)[0] + f"/[{path_param}]"
    if path.endswith(".py"):
        path = path[:-3]
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "/_-[]") else "_" for c in path)
    return safe[:80]


def begin_request(path: str) -> Recording | None:
    """Start recording a request (None for the operational endpoints, which are not traffic)."""
    if route(path) in UNRECORDED:
        return None
    tally, tally_token = upstash.start_tally()
    state = Recording(tally, tally_token)
    state.token = _recording.set(state)
    return state


def end_request(state: Recording | None, method: str, endpoint: str, duration_ms: float) -> None:
    """Record the request's duration and its Upstash calls', stop recording, and write the buffer
    if it is due. Never fails the request: a monitoring bug is logged with its traceback."""
    if state is None:
        return
    try:
        observe(f"api:{method} {endpoint}", duration_ms)
        for ms in state.tally.calls_ms:
            observe("upstash", ms)
    finally:
        upstash.stop_tally(state.tally_token)
        if state.token is not None:
            _recording.reset(state.token)
    try:
        flush()
    except Exception:  # a bug in monitoring must not cost the user their answer; it is logged loudly
        log.exception("metrics: writing the buffer failed")


def flush(*, force: bool = False) -> bool:
    """Write the buffer in one command if FLUSH_INTERVAL has passed since the last write (or
    `force`), unless Redis is being skipped (its breaker is not closed). True if Redis applied it."""
    global _last_flush
    now = monotonic()
    if not len(pending) or upstash.breaker.state != "closed" or (not force and now - _last_flush < FLUSH_INTERVAL):
        return False
    _last_flush = now
    increments = pending.take()
    if not increments:
        return False
    names, args = write_arguments(increments)
    try:
        refused = upstash.run(WRITE, names, args)
    except upstash.RedisFull as exc:
        stats.refused_writes += 1
        log.warning("metrics: Redis is full, %d increments dropped (%s)", len(increments), exc)
        pending.add("redis:refused_writes")  # reported by the first write that lands
        return False
    except (upstash.RedisError, ConfigurationError) as exc:
        stats.lost_writes += 1
        log.warning("metrics: a write of %d increments was lost (%s)", len(increments), exc)
        pending.add("metrics:lost_writes")
        return False
    stats.writes += 1
    stats.dropped += int(refused)
    return True


def write_arguments(increments: dict[tuple[int, str], int]) -> tuple[list[str], list[Any]]:
    """WRITE's KEYS (a minute's bucket, then its hour's, per minute) and ARGV for `increments`."""
    pairs: dict[int, int] = {}
    names: list[str] = []
    args: list[Any] = [BUCKET_TTL]
    for (minute, name), amount in sorted(increments.items()):
        pair = pairs.get(minute)
        if pair is None:
            names += [keys.metrics_bucket("m", minute), keys.metrics_bucket("h", minute // 60)]
            pair = pairs[minute] = len(pairs) + 1
        args += [pair, name, amount]
    return names, args
