"""Monitoring, the writing side: what an instance counted goes to Redis in one command every 5 s at most.

The cron's gauges go the same way, once a minute (lib/ops/alerts).

Every counter lands in three Redis hashes, the minute's, the five minutes' and the hour's
(keys.metrics_bucket), each kept as long as the longest window that reads it needs:

    dousell:meta:metrics:m:<epoch minute>       kept 2 h   window 1h: 60 points, one a minute
    dousell:meta:metrics:f:<epoch 5 minutes>    kept 25 h  window 24h: 288 points, one per 5 minutes
    dousell:meta:metrics:h:<epoch hour>         kept 8 d   window 7d: 168 points, one an hour

The fields are lib/metrics' counters, plus the gauges the cron samples every minute (`g:<name>`,
the largest sample of the bucket): Redis memory used and its maximum, keys, outbox backlog.

A request records into the instance's buffer (lib/metrics.pending), never into Redis. At the end of
a request, before its answer (a function may be frozen once its answer is out), the buffer is
written in one command (an EVALSHA of WRITE, key-locked) if the last write is at least
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
import time
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

from lib import context, keys, metrics
from lib.edge import upstash
from lib.errors import ConfigurationError

log = logging.getLogger(__name__)

# Replaceable in tests: the clock of the write interval.
monotonic = time.monotonic

# kind → (seconds a bucket spans, seconds it is kept). Each is kept a little longer than the
# longest window reading it, so the oldest bucket of a window is whole while it is read.
BUCKETS: dict[str, tuple[int, int]] = {
    "m": (60, 2 * 3600),
    "f": (300, 25 * 3600),
    "h": (3600, 8 * 24 * 3600),
}
KINDS = tuple(BUCKETS)
FLUSH_INTERVAL = 5.0  # seconds between two writes of an instance's buffer
UNRECORDED = ("/api/health", "/api/metrics")

# KEYS: triples of bucket hashes (a minute's, its five minutes', its hour's). ARGV[1..3] their
# TTLs in seconds, then three values per increment: the triple's number (1-based), the field, the
# amount. redis.pcall, so one key of the wrong type never loses the other increments. Returns how
# many increments Redis refused.
WRITE = upstash.Script("""
local refused = 0
for i = 4, #ARGV, 3 do
  local base = (tonumber(ARGV[i]) - 1) * 3
  for k = base + 1, base + 3 do
    local r = redis.pcall('HINCRBY', KEYS[k], ARGV[i + 1], ARGV[i + 2])
    if type(r) == 'table' and r.err then refused = refused + 1 end
  end
end
for k = 1, #KEYS do redis.pcall('EXPIRE', KEYS[k], ARGV[(k - 1) % 3 + 1]) end
return refused
""", writes=True)

# KEYS: one bucket of each kind. ARGV[1..3] their TTLs, then field, value pairs: each field keeps
# the largest value the bucket has seen (a gauge sampled several times in five minutes or an hour).
GAUGES = upstash.Script("""
for k = 1, #KEYS do
  for i = 4, #ARGV, 2 do
    local old = tonumber(redis.call('HGET', KEYS[k], ARGV[i]) or '-1')
    if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1]) end
  end
  redis.call('EXPIRE', KEYS[k], ARGV[k])
end
return #KEYS
""", writes=True)


@dataclass
class Stats:
    """This instance's own bookkeeping of its metrics writes (tests and logs read it)."""

    writes: int = 0  # writes Redis applied
    lost_writes: int = 0  # writes dropped because Redis failed, timed out or was skipped
    refused_writes: int = 0  # writes Redis refused because the database is full
    refused_increments: int = 0  # increments refused inside an applied write (a key of the wrong type)

    @property
    def dropped(self) -> int:
        """Increments lost: the buffer full, or refused by Redis."""
        return self.refused_increments + metrics.pending.dropped

    def reset(self) -> None:
        self.writes = self.lost_writes = self.refused_writes = self.refused_increments = 0


stats = Stats()
_last_flush = float("-inf")


def bucket_numbers(minute: int) -> tuple[int, int, int]:
    """The minute's, its five minutes' and its hour's bucket numbers."""
    return minute, minute // 5, minute // 60


def bucket_names(minute: int) -> list[str]:
    return [keys.metrics_bucket(kind, n) for kind, n in zip(KINDS, bucket_numbers(minute), strict=True)]


def _ttls() -> list[int]:
    return [BUCKETS[kind][1] for kind in KINDS]


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


@dataclass
class Recording:
    """One request being recorded, and the Upstash calls it makes (their durations are recorded)."""

    tally: context.Tally
    tally_token: Token[context.Tally | None] = field(repr=False)
    token: Token[bool] = field(repr=False)

    def stop(self) -> None:
        context.stop_tally(self.tally_token)
        metrics.stop_recording(self.token)


def begin_request(path: str) -> Recording | None:
    """Start recording a request (None for the operational endpoints, which are not traffic)."""
    if route(path) in UNRECORDED:
        return None
    tally, tally_token = context.start_tally()
    return Recording(tally, tally_token, metrics.start_recording())


def end_request(state: Recording | None, method: str, endpoint: str, duration_ms: float, status: int = 200) -> None:
    """Record the request's duration, status and Upstash calls, stop recording, and write the buffer
    if it is due. Never fails the request: a monitoring bug is logged with its traceback."""
    if state is None:
        return
    try:
        metrics.observe(f"api:{method} {endpoint}", duration_ms)
        for ms in state.tally.calls_ms:
            metrics.observe("upstash", ms)
        if status >= 500:
            metrics.count("http:5xx")
        if not upstash.breaker.closed:
            metrics.count("breaker:open")
    finally:
        state.stop()
    try:
        flush()
    except Exception:  # a bug in monitoring must not cost the user their answer; it is logged loudly
        log.exception("metrics: writing the buffer failed")


def flush(*, force: bool = False) -> bool:
    """Write the buffer in one command if FLUSH_INTERVAL has passed since the last write (or
    `force`), unless Redis is being skipped (its breaker is not closed). True if Redis applied it."""
    global _last_flush
    now = monotonic()
    pending = metrics.pending
    if not len(pending) or not upstash.breaker.closed or (not force and now - _last_flush < FLUSH_INTERVAL):
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
    stats.refused_increments += int(refused)
    return True


def write_arguments(increments: Mapping[tuple[int, str], int]) -> tuple[list[str], list[Any]]:
    """WRITE's KEYS (a minute's bucket, its five minutes', its hour's, per minute) and ARGV."""
    triples: dict[int, int] = {}
    names: list[str] = []
    args: list[Any] = _ttls()
    for (minute, name), amount in sorted(increments.items()):
        triple = triples.get(minute)
        if triple is None:
            names += bucket_names(minute)
            triple = triples[minute] = len(triples) + 1
        args += [triple, name, amount]
    return names, args


def gauges_command(values: Mapping[str, int], now: float | None = None) -> list[Any]:
    """The command writing the cron's samples (`memory` → `g:memory`) into the current minute's three
    buckets (lib/ops/alerts sends it in its pipeline)."""
    minute = int(metrics.clock() if now is None else now) // 60
    args: list[Any] = _ttls()
    for name, value in sorted(values.items()):
        args += [f"g:{name}", int(value)]
    return GAUGES.command(bucket_names(minute), args)
