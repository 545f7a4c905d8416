"""Monitoring, the reading side: a window's KPIs, its series and the alerts, read from Redis in one call.

A window is a run of buckets of one kind (lib/ops/recorder): 60 minutes for `1h`, 288 five-minute
buckets for `24h`, 168 hours for `7d`. One read-only script (SERIES) returns both the window's totals
(the KPIs) and each bucket's fields with the per-endpoint latencies folded into one histogram
(the series' points), so a refresh of the page costs one command for the window whatever its
length (the alerts' state read by the same script), plus DBSIZE (INFO is not billed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lib import keys, metrics
from lib.edge import upstash
from lib.errors import MetricsUnavailable
from lib.histogram import BOUNDS_MS, LABEL_INDEX, LIMIT_MS, bound_label
from lib.metrics import CACHE_STATUSES, LOCK_EVENTS
from lib.ops.recorder import BUCKETS
from lib.ops.series import (
    FAMILIES,
    SERIES,
    cache_figures,
    latency_figures,
    protected_rate,
    queries_avoided,
    ratio,
    series,
)

WINDOWS = {  # name → (bucket kind, buckets read): one point per bucket
    "1h": ("m", 60),
    "24h": ("f", 288),
    "7d": ("h", 168),
}
ALIASES = {"last_hour": "1h", "last_24h": "24h"}  # the names the first page used; still answered
OBJECTIVES = {
    "hit_rate": 0.9,  # > 90 % of cached reads answered by Redis
    "latency_p50_ms": 10.0,  # API p50 < 10 ms
    "double_operations_prevented": 1.0,  # 100 % of locked operations protected (expired locks count against)
    "memory_alert_ratio": 0.8,  # Redis memory: watch it, alert past 80 % of maxmemory
}
def window_name(window: str) -> str | None:
    """`1h`, `24h`, `7d` (or an alias) → its canonical name; None for anything else."""
    window = ALIASES.get(window, window)
    return window if window in WINDOWS else None


def window_buckets(window: str, now: float) -> tuple[int, int, list[int]]:
    """(bucket seconds, first bucket's start, bucket numbers oldest first) of `window` ending now."""
    kind, count = WINDOWS[window_name(window) or window]
    span = BUCKETS[kind][0]
    current = int(now) // span
    numbers = list(range(current - count + 1, current + 1))
    return span, numbers[0] * span, numbers


def window_keys(window: str, now: float) -> list[str]:
    kind = WINDOWS[window_name(window) or window][0]
    return [keys.metrics_bucket(kind, n) for n in window_buckets(window, now)[2]]


def _pairs(flat: Any) -> dict[str, int]:
    if not isinstance(flat, list):
        return {}
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def report(window: str = "1h") -> dict[str, Any]:
    """The KPIs of `window`, its series and the alerts, read in one Upstash call (the buckets and the
    alerts' state by one read-only script, INFO memory, DBSIZE). MetricsUnavailable (503) when Redis
    does not answer."""
    now = metrics.clock()  # the clock the buckets were chosen by
    canonical = window_name(window) or window
    span, start, numbers = window_buckets(canonical, now)
    names = window_keys(canonical, now)
    try:
        read, info, dbsize = upstash.pipeline([SERIES.command([*names, keys.alerts_state()], []),
                                               ["INFO", "memory"], ["DBSIZE"]])
    except upstash.RedisError as exc:
        if quota := upstash.quota_hold():  # Redis held off by a used-up request quota, not down
            raise MetricsUnavailable("Les métriques sont indisponibles : le quota de requêtes Redis est atteint.",
                                     details={"redis_quota": quota}) from exc
        raise MetricsUnavailable() from exc
    if isinstance(read, upstash.RedisError) or not isinstance(read, list) or len(read) < 2:
        raise MetricsUnavailable() from (read if isinstance(read, upstash.RedisError) else None)
    totals = _pairs(read[0])
    alerts_raw = read[1]
    points = [_pairs(p) for p in read[2:]]
    memory = parse_info(info) if isinstance(info, str) else {}
    body = summarize(totals, memory, dbsize if isinstance(dbsize, int) else None)
    return {"window": window, "from": _iso(start), "to": _iso(now), **body,
            "series": series(points, [n * span for n in numbers], span),
            "alerts": active_alerts(alerts_raw)}


def active_alerts(raw: Any) -> list[dict[str, Any]]:
    """The alerts firing now, from the state lib/ops/alerts keeps (`[]` if none or unreadable)."""
    if not isinstance(raw, str):
        return []
    try:
        state = json.loads(raw)
    except ValueError:
        return []
    out = []
    for name, entry in sorted(state.items()) if isinstance(state, dict) else []:
        if isinstance(entry, dict) and entry.get("firing"):
            out.append({"name": name, "since": _iso(entry.get("since") or 0), "message": entry.get("message", "")})
    return out


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


def summarize(totals: Mapping[str, int], memory: Mapping[str, str], dbsize: int | None) -> dict[str, Any]:
    """The report's figures from a window's summed counters (pure: tested on known totals)."""
    families: dict[str, dict[str, int]] = {family: {} for family in FAMILIES}
    histograms: dict[str, list[int]] = {}
    locks: dict[str, dict[str, int]] = {kind: dict.fromkeys(LOCK_EVENTS, 0) for kind in ("payment", "visit")}
    queries: dict[str, int] = {}
    failed = lost = refused = errors = open_requests = 0
    gauges: dict[str, int] = {}
    for name, amount in totals.items():
        if name.startswith("g:"):
            gauges[name[2:]] = amount
        elif name == "http:5xx":
            errors += amount
        elif name == "breaker:open":
            open_requests += amount
        elif name.startswith("lat:"):
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

    per_family = {family: cache_figures(statuses) for family, statuses in families.items()}  # the seed's order
    overall = cache_figures({s: sum(f.get(s, 0) for f in families.values()) for s in CACHE_STATUSES})
    overall["families"] = per_family

    endpoints = {name[4:]: latency_figures(counts) for name, counts in sorted(histograms.items()) if name.startswith("api:")}
    api_counts = [0] * len(BOUNDS_MS)
    for name, counts in histograms.items():
        if name.startswith("api:"):
            api_counts = [a + b for a, b in zip(api_counts, counts, strict=True)]
    latency = {
        "bounds_ms": [bound_label(b) for b in BOUNDS_MS],
        "limit_ms": LIMIT_MS,  # the last finite bound: a percentile `_above` it is "> limit_ms"
        "api": {**latency_figures(api_counts), "endpoints": endpoints},
        "upstash": latency_figures(histograms.get("upstash", [0] * len(BOUNDS_MS))),
    }

    lock_totals = {event: sum(kind.get(event, 0) for kind in locks.values()) for event in LOCK_EVENTS}
    lock_figures = {
        **lock_totals,
        "double_operations_prevented": lock_totals["blocked"],
        "prevented_rate": protected_rate(lock_totals),
        "kinds": locks,
    }

    database = {
        "queries_served": sum(queries.values()),
        "queries_failed": failed,
        "queries_avoided": round(queries_avoided(families, queries)),
        "by_family": dict(sorted(queries.items())),
    }

    used, maximum = _int(memory.get("used_memory")), _int(memory.get("maxmemory"))
    redis = {
        "used_memory_bytes": used,
        "max_memory_bytes": maximum or None,  # 0: no limit set
        "used_ratio": ratio(used, maximum) if used is not None and maximum else None,
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
        "errors": {"5xx": errors},
        "breaker": {"open_requests": open_requests},  # requests served while Redis was being skipped
        "outbox": {"backlog": gauges.get("outbox")},  # the largest the cron saw in the window
    }
