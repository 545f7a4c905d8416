"""Monitoring, the reading side: the KPIs of a window (GET /api/metrics), read from Redis in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lib import keys, metrics
from lib.edge import upstash
from lib.errors import MetricsUnavailable
from lib.histogram import BOUNDS_MS, LABEL_INDEX, bound_label, percentile
from lib.metrics import CACHE_STATUSES, LOADED, LOCK_EVENTS, SERVED_FROM_CACHE

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

# KEYS: the bucket hashes of a window. Returns their fields summed, flat: {field, total, ...}.
# One read-only command for 60 or 24 buckets: a dashboard refreshing every 5 s costs two billed
# commands a time (this and DBSIZE; INFO is not billed).
SUM = upstash.Script("""
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
""", writes=False)


def window_keys(window: str, now: float) -> list[str]:
    kind, span, count = WINDOWS[window]
    current = int(now) // span
    return [keys.metrics_bucket(kind, n) for n in range(current - count + 1, current + 1)]


def report(window: str = "last_hour") -> dict[str, Any]:
    """The KPIs of `window`, read in one Upstash call (the buckets summed by one read-only script,
    INFO memory, DBSIZE). MetricsUnavailable (503) when Redis does not answer."""
    now = metrics.clock()  # the clock the buckets were chosen by
    names = window_keys(window, now)
    try:
        summed, info, dbsize = upstash.pipeline([SUM.command(names, []), ["INFO", "memory"], ["DBSIZE"]])
    except upstash.RedisError as exc:
        if quota := upstash.quota_hold():  # Redis held off by a used-up request quota, not down
            raise MetricsUnavailable("Les métriques sont indisponibles : le quota de requêtes Redis est atteint.",
                                     details={"redis_quota": quota}) from exc
        raise MetricsUnavailable() from exc
    if isinstance(summed, upstash.RedisError):
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
    failed = lost = refused = 0
    for name, amount in totals.items():
        if name.startswith("lat:"):
            hist, _, label = name[4:].rpartition(":")
            if label in LABEL_INDEX and hist:
                histograms.setdefault(hist, [0] * len(BOUNDS_MS))[LABEL_INDEX[label]] += amount
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
        elif name == "redis:refused_writes":
            refused += amount
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
        "refused_writes": refused,  # at capacity (eviction off): see docs/monitoring.md
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
