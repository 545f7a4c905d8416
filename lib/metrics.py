"""Monitoring: the seed's KPIs counted in Redis time buckets, written with calls a request makes anyway.

Every figure is a counter in two Redis hashes, the minute's and the hour's:

    dousell:meta:metrics:m:<epoch minute>   kept 26 h; the last hour sums 60 of them
    dousell:meta:metrics:h:<epoch hour>     kept 26 h; the last 24 hours sum 24 of them

    <family>:HIT|STALE|REFRESH|LOAD|WAIT    lib/cache's READ_SCRIPT, in the read's own EVALSHA
    <family>:BYPASS|TIMEOUT                 Redis unusable / a waiter gave up: answered from the database
    db:q:<family>  db:q:-  db:failed        queries PostgREST answered (inside a cache loader or not)
    lock:<payment|visit|other>:<event>      acquired, blocked, expired, unavailable (lib/locks)
    lat:api:<METHOD> <route>:<le>           request durations, histogram (<le> = bucket bound, ms)
    lat:upstash:<le>                        Upstash REST call durations, histogram
    metrics:lost_writes                     batches of these counters that never reached Redis

No round trip is added to a cache hit. What a request records is buffered in the instance
(`Pending`, per minute) and leaves with the instance's next Upstash call: lib/upstash sends it
in the same `/pipeline` request as that call's own commands (one `EVAL` of WRITE_SCRIPT).
A hit's one call thus carries what earlier requests recorded, and its own duration rides on the
instance's next call. Only a request that made no Redis call at all (a 401, a 404, a read
answered while Redis is skipped), or that leaves counters behind (a lock refused, a waiter that
gave up), sends the buffer at its end, in one call, and only while the circuit breaker is closed.
A failed write is counted and dropped, never retried and never an error for the user.
Recording happens only inside a request served by `lib.http.Endpoint` (not for /api/health or
/api/metrics: probes and dashboards are not traffic).
"""

from __future__ import annotations

import bisect
import hmac
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from lib import config, keys
from lib.errors import AuthenticationRequired, InvalidToken, MetricsUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replaceable in tests: the wall clock that picks a bucket, the clock of the flush backoff.
clock = time.time
monotonic = time.monotonic

BUCKET_TTL = 26 * 3600  # seconds; beyond the 24 h window, so an hour bucket is whole while read
MAX_PENDING = 5_000  # distinct (minute, field) increments an instance buffers; beyond, dropped
FLUSH_BACKOFF = 10.0  # seconds without end-of-request flushes after one failed
UNRECORDED = ("/api/health", "/api/metrics")

# Latency histogram bucket bounds, in ms: a sample goes to the first bound >= it. Fine around
# the 10 ms objective, coarse where only "slow" matters.
BOUNDS_MS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000, math.inf)


def bound_label(bound: float) -> str:
    return "inf" if bound == math.inf else f"{bound:g}"


LABELS = tuple(bound_label(b) for b in BOUNDS_MS)
_LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}

# Statuses of a cached read. READ_SCRIPT writes the first five; lib/cache records the last two.
SERVED_FROM_CACHE = ("HIT", "STALE")
LOADED = ("LOAD", "REFRESH", "TIMEOUT")  # X-Cache: MISS
CACHE_STATUSES = ("HIT", "STALE", "REFRESH", "LOAD", "WAIT", "BYPASS", "TIMEOUT")
LOCK_EVENTS = ("acquired", "blocked", "expired", "unavailable")

WINDOWS = {  # name → (bucket kind, bucket seconds, buckets read)
    "last_hour": ("m", 60, 60),
    "last_24h": ("h", 3600, 24),
}
OBJECTIVES = {
    "hit_rate": 0.9,  # > 90 % of cached reads answered by Redis
    "latency_p50_ms": 10.0,  # API p50 < 10 ms
    "double_operations_prevented": 1.0,  # 100 % of double payments/bookings stopped by the lock
    "memory_alert_ratio": 0.8,  # Redis memory: watch it, alert past 80 % of maxmemory
}

# KEYS: pairs of bucket hashes (a minute's, then its hour's). ARGV[1] their TTL in seconds, then
# three values per increment: the pair's number (1-based), the field, the amount. redis.pcall, so a
# refused increment (out of memory, a key of another type) never turns into an error for the
# commands this one rides with. Returns the number of increments Redis refused.
WRITE_SCRIPT = """
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
"""

# KEYS: the bucket hashes of a window. Returns their fields summed, flat: {field, total, ...}.
# One command for 60 or 24 buckets: a dashboard refreshing every 5 s costs three commands a time.
SUM_SCRIPT = """
local sums, order = {}, {}
for k = 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[k])
  for i = 1, #flat, 2 do
    local f = flat[i]
    if sums[f] == nil then sums[f] = 0; order[#order + 1] = f end
    sums[f] = sums[f] + tonumber(flat[i + 1])
  end
end
local out = {}
for _, f in ipairs(order) do out[#out + 1] = f; out[#out + 1] = sums[f] end
return out
"""


def bucket_key(kind: str, number: int) -> str:
    """`dousell:meta:metrics:m:<epoch minute>` or `...:h:<epoch hour>`."""
    return keys.name("meta", "metrics", kind, number)


def bucket_keys(now: float | None = None) -> tuple[str, str]:
    """The current minute's and hour's bucket keys."""
    now = clock() if now is None else now
    return bucket_key("m", int(now) // 60), bucket_key("h", int(now) // 3600)


# -- the percentile maths ----------------------------------------------------------------------


def bucket_index(ms: float, bounds: Sequence[float] = BOUNDS_MS) -> int:
    """Index of the histogram bucket a sample falls in: the first bound >= `ms`."""
    if not ms > 0:  # negative, zero, NaN: the first bucket
        return 0
    return min(bisect.bisect_left(bounds, ms), len(bounds) - 1)


def percentile(counts: Sequence[int], q: float, bounds: Sequence[float] = BOUNDS_MS) -> float | None:
    """The `q`-quantile (0..1) of a histogram, None if it is empty.

    `counts[i]` samples lie in (bounds[i-1], bounds[i]] (the first bucket starts at 0). The
    quantile's rank is located in its bucket and interpolated linearly between the bucket's
    bounds, as Prometheus' histogram_quantile does; in the open last bucket the answer is its
    lower bound (we only know "slower than that").
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be between 0 and 1")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n > 0 and below + n >= rank:
            lower = bounds[i - 1] if i else 0.0
            upper = bounds[i]
            if upper == math.inf:
                return float(lower)
            return lower + (upper - lower) * (rank - below) / n
        below += n
    return float(bounds[-2])  # unreachable with consistent counts


# -- what this instance has recorded and not written yet ---------------------------------------


class Pending:
    """Increments recorded by this instance, not yet in Redis: (epoch minute, field) → amount."""

    def __init__(self, limit: int = MAX_PENDING):
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

    def holds_counts(self) -> bool:
        """True if anything but latency samples waits (they may wait for the next call; counts not)."""
        with self._lock:
            return any(not name.startswith("lat:") for _, name in self._counts)

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

    writes: int = 0  # batches Redis received
    lost_writes: int = 0  # batches dropped because the call carrying them failed
    dropped: int = 0  # increments refused: buffer full, or Redis refused them

    def reset(self) -> None:
        self.writes = self.lost_writes = self.dropped = 0


pending = Pending()
stats = Stats()
_flush_blocked_until = 0.0


@dataclass
class Recording:
    """One request being recorded: how many Upstash calls it made, whether it is flushing."""

    calls: int = 0
    flushing: bool = False
    token: Token | None = field(default=None, repr=False)


_recording: ContextVar[Recording | None] = ContextVar("dousell_metrics_recording", default=None)
_loading: ContextVar[str | None] = ContextVar("dousell_metrics_loading", default=None)


def _add(name: str, amount: int = 1) -> None:
    if _recording.get() is None:
        return
    if not pending.add(name, amount):
        stats.dropped += 1


def count_cache(family: str, status: str) -> None:
    """A cached read's outcome decided in Python (BYPASS, TIMEOUT); the script counts the rest."""
    _add(f"{family}:{status}")


def lock_event(name: str, event: str) -> None:
    """lib/locks' `on_event`: `dousell:lock:payment:lease123` + "blocked" → `lock:payment:blocked`."""
    prefix = keys.name("lock", "")
    kind = name[len(prefix):].split(":", 1)[0] if name.startswith(prefix) else ""
    _add(f"lock:{kind if kind in ('payment', 'visit') else 'other'}:{event}")


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


def upstash_call(ms: float) -> None:
    """lib/upstash, after each call: its duration, and that this request did call Redis."""
    state = _recording.get()
    if state is None or state.flushing:
        return  # a flush is the metrics' own overhead, not the request's work
    state.calls += 1
    observe("upstash", ms)


# -- the request's lifecycle (lib.http.Endpoint) -----------------------------------------------


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
    state = Recording()
    state.token = _recording.set(state)
    return state


def end_request(state: Recording | None, method: str, endpoint: str, duration_ms: float) -> None:
    """Record the request's duration, flush if it must (see the module doc), stop recording.
    Never raises: monitoring must not fail a request."""
    if state is None:
        return
    try:
        observe(f"api:{method} {endpoint}", duration_ms)
        if state.calls == 0 or pending.holds_counts():
            flush()
    except Exception:
        log.exception("metrics: recording the request failed")
    finally:
        if state.token is not None:
            _recording.reset(state.token)


def _breaker_closed() -> bool:
    cache = sys.modules.get("lib.cache")  # never imported by this request: nothing failed here
    return cache is None or cache.breaker.state == "closed"


def flush() -> bool:
    """Send the buffer now, in one call, unless Redis is being skipped. True if sent."""
    global _flush_blocked_until
    state = _recording.get()
    if state is None or not len(pending) or not _breaker_closed() or monotonic() < _flush_blocked_until:
        return False
    from lib import upstash
    from lib.errors import ConfigurationError

    state.flushing = True
    try:
        upstash.pipeline_results([])  # no command of its own: it carries only the buffer
        return True
    except (upstash.RedisError, ConfigurationError):
        _flush_blocked_until = monotonic() + FLUSH_BACKOFF
        return False
    finally:
        state.flushing = False


# -- riding on an Upstash call (lib/upstash) ---------------------------------------------------


class Batch:
    """The buffer, taken by one outgoing call: its WRITE_SCRIPT command and its fate."""

    def __init__(self, increments: dict[tuple[int, str], int]):
        self.increments = increments
        self.settled = False
        self.command = self._command()

    def _command(self) -> list[Any]:
        pairs: dict[int, int] = {}
        bucket_names: list[str] = []
        args = [str(BUCKET_TTL)]
        for (minute, name), amount in sorted(self.increments.items()):
            pair = pairs.get(minute)
            if pair is None:
                bucket_names += [bucket_key("m", minute), bucket_key("h", minute // 60)]
                pair = pairs[minute] = len(pairs) + 1
            args += [str(pair), name, str(amount)]
        return ["EVAL", WRITE_SCRIPT, len(bucket_names), *bucket_names, *args]

    def delivered(self, answer: Any) -> None:
        """Redis answered (`{"result": refused}` or `{"error"}`): the batch is settled either way."""
        if self.settled:
            return
        self.settled = True
        if isinstance(answer, dict) and isinstance(answer.get("result"), int):
            stats.writes += 1
            stats.dropped += answer["result"]
        else:
            self._lost(f"Redis refused the write: {str(answer)[:200]}")

    def lost(self, reason: object) -> None:
        """The call carrying the batch failed: count it, drop it (it may or may not have landed)."""
        if not self.settled:
            self.settled = True
            self._lost(reason)

    def _lost(self, reason: object) -> None:
        stats.lost_writes += 1
        log.warning("metrics: a write of %d increments was dropped (%s)", len(self.increments), reason)
        if not pending.add("metrics:lost_writes"):  # reported by the next write that lands
            stats.dropped += 1


def outgoing() -> Batch | None:
    """For lib/upstash: the buffer to send with the call being made, if this request records."""
    if _recording.get() is None or not len(pending):
        return None
    taken = pending.take()
    return Batch(taken) if taken else None


# -- GET /api/metrics --------------------------------------------------------------------------


def authorize(header: str | None) -> None:
    """`Authorization: Bearer $METRICS_TOKEN`, compared in constant time; 401 otherwise."""
    expected = config.metrics_token()
    challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
    if not header or not header.strip():
        raise AuthenticationRequired("Jeton de métriques requis (en-tête Authorization: Bearer).", headers=challenge)
    scheme, _, token = header.strip().partition(" ")
    given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise InvalidToken("Jeton de métriques invalide.", headers=challenge)


def window_keys(window: str, now: float) -> list[str]:
    kind, span, count = WINDOWS[window]
    current = int(now) // span
    return [bucket_key(kind, n) for n in range(current - count + 1, current + 1)]


def report(window: str = "last_hour") -> dict[str, Any]:
    """The KPIs of `window`, read in one Upstash call (the buckets summed by one script, INFO
    memory, DBSIZE). MetricsUnavailable (503) when Redis does not answer."""
    from lib import upstash

    now = clock()
    names = window_keys(window, now)
    try:
        summed, info, dbsize = upstash.pipeline_results([
            ["EVAL", SUM_SCRIPT, len(names), *names],
            ["INFO", "memory"],
            ["DBSIZE"],
        ])
    except upstash.RedisError as exc:
        raise MetricsUnavailable() from exc
    if isinstance(summed, Exception):
        raise MetricsUnavailable() from summed
    totals = {str(summed[i]): int(summed[i + 1]) for i in range(0, len(summed) - 1, 2)}
    memory = parse_info(info) if isinstance(info, str) else {}
    body = summarize(totals, memory, dbsize if isinstance(dbsize, int) else None)
    kind, span, count = WINDOWS[window]
    start = (int(now) // span - count + 1) * span
    return {"window": window, "from": _iso(start), "to": _iso(now), **body}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_info(text: str) -> dict[str, str]:
    """`INFO` text (`field:value` lines, `# Section` headings, CRLF) as a dict; defensive."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _latency(counts: Sequence[int]) -> dict[str, Any]:
    return {"count": sum(counts), "p50_ms": _ms(percentile(counts, 0.5)), "p95_ms": _ms(percentile(counts, 0.95))}


def _cache_figures(by_status: Mapping[str, int]) -> dict[str, Any]:
    hits, stale = by_status.get("HIT", 0), by_status.get("STALE", 0)
    misses = sum(by_status.get(s, 0) for s in LOADED)
    bypasses = by_status.get("BYPASS", 0)
    reads = hits + stale + misses + bypasses
    return {
        "reads": reads, "hits": hits, "stale": stale, "misses": misses, "bypasses": bypasses,
        "early_refreshes": by_status.get("REFRESH", 0), "waits": by_status.get("WAIT", 0),
        "hit_rate": _ratio(hits + stale, reads),
    }


def summarize(totals: Mapping[str, int], memory: Mapping[str, str], dbsize: int | None) -> dict[str, Any]:
    """The report's figures from a window's summed counters (pure: tested on known totals)."""
    families: dict[str, dict[str, int]] = {family: {} for family in (*keys.TTL, "other")}
    histograms: dict[str, list[int]] = {}
    locks: dict[str, dict[str, int]] = {kind: dict.fromkeys(LOCK_EVENTS, 0) for kind in ("payment", "visit")}
    queries: dict[str, int] = {}
    failed = lost = 0
    for name, amount in totals.items():
        if name.startswith("lat:"):
            hist, _, label = name[4:].rpartition(":")
            if label in _LABEL_INDEX and hist:
                histograms.setdefault(hist, [0] * len(BOUNDS_MS))[_LABEL_INDEX[label]] += amount
        elif name.startswith("lock:"):
            _, kind, event = name.split(":", 2)
            locks.setdefault(kind, dict.fromkeys(LOCK_EVENTS, 0))
            locks[kind][event] = locks[kind].get(event, 0) + amount
        elif name.startswith("db:q:"):
            queries[name[5:]] = queries.get(name[5:], 0) + amount
        elif name == "db:failed":
            failed += amount
        elif name == "metrics:lost_writes":
            lost += amount
        else:
            family, _, status = name.rpartition(":")
            if family and status in CACHE_STATUSES:
                statuses = families.setdefault(family, {})
                statuses[status] = statuses.get(status, 0) + amount

    per_family = {family: _cache_figures(statuses) for family, statuses in families.items()}  # the seed's order
    overall = _cache_figures({s: sum(f.get(s, 0) for f in families.values()) for s in CACHE_STATUSES})
    overall["families"] = per_family

    endpoints = {name[4:]: _latency(counts) for name, counts in sorted(histograms.items()) if name.startswith("api:")}
    api_counts = [0] * len(BOUNDS_MS)
    for name, counts in histograms.items():
        if name.startswith("api:"):
            api_counts = [a + b for a, b in zip(api_counts, counts, strict=True)]
    latency = {
        "bounds_ms": [bound_label(b) for b in BOUNDS_MS],
        "api": {**_latency(api_counts), "endpoints": endpoints},
        "upstash": _latency(histograms.get("upstash", [0] * len(BOUNDS_MS))),
    }

    lock_totals = {event: sum(kind.get(event, 0) for kind in locks.values()) for event in LOCK_EVENTS}
    blocked, expired = lock_totals["blocked"], lock_totals["expired"]
    lock_figures = {
        **lock_totals,
        "double_operations_prevented": blocked,
        "prevented_rate": _ratio(blocked, blocked + expired),
        "kinds": locks,
    }

    # Each read answered by Redis spared one run of its loader; a loader costs its family's
    # queries per load in the window (1 when the window saw no load of that family).
    avoided = 0.0
    for family, statuses in families.items():
        spared = sum(statuses.get(s, 0) for s in SERVED_FROM_CACHE)
        loads = sum(statuses.get(s, 0) for s in (*LOADED, "BYPASS"))
        per_load = queries.get(family, 0) / loads if loads and queries.get(family) else 1.0
        avoided += spared * per_load
    database = {
        "queries_served": sum(queries.values()),
        "queries_failed": failed,
        "queries_avoided": round(avoided),
        "by_family": dict(sorted(queries.items())),
    }

    used, maximum = _int(memory.get("used_memory")), _int(memory.get("maxmemory"))
    redis = {
        "used_memory_bytes": used,
        "max_memory_bytes": maximum or None,  # 0: no limit set
        "used_ratio": _ratio(used, maximum) if used is not None and maximum else None,
        "keys": dbsize,
    }
    return {
        "objectives": OBJECTIVES,
        "cache": overall,
        "latency": latency,
        "locks": lock_figures,
        "database": database,
        "redis": redis,
        "metrics": {"lost_writes": lost},
    }
