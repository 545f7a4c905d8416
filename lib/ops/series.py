"""Monitoring over time: a window's buckets as a series of points, one per bucket (what the page charts).

A point is one bucket's fields (lib/ops/recorder) as the figures of the card: hit rate overall and
per family, requests, p50/p95, queries served and avoided, lock outcomes, 5xx, requests served
while Redis was skipped, and the cron's gauges (Redis memory and keys, outbox backlog).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lib import keys
from lib.edge import upstash
from lib.histogram import BOUNDS_MS, LABEL_INDEX, beyond, percentile
from lib.metrics import CACHE_STATUSES, LOADED, LOCK_EVENTS, SERVED_FROM_CACHE

FAMILIES = (*keys.TTL, "other")

# KEYS: the window's buckets, oldest first, then the alerts' state (a string, lib/ops/alerts).
# Returns {totals, alerts' state or false, point 1, ..., point n}, each a flat
# field, value list. Totals sum every field (a gauge `g:*` keeps its largest value); a point folds
# `lat:api:<endpoint>:<le>` into `lat:api:<le>` and `lock:<kind>:<event>` into `lock:<event>`, and
# leaves out the Upstash histogram, so the answer stays small for 288 points.
SERIES = upstash.Script("""
local sums, order, out = {}, {}, {{}, redis.call('GET', KEYS[#KEYS])}
for k = 1, #KEYS - 1 do
  local flat = redis.call('HGETALL', KEYS[k])
  local point, porder = {}, {}
  for i = 1, #flat, 2 do
    local f, n = flat[i], tonumber(flat[i + 1])
    local gauge = string.sub(f, 1, 2) == 'g:'
    if sums[f] == nil then sums[f] = n; order[#order + 1] = f
    elseif gauge then sums[f] = math.max(sums[f], n)
    else sums[f] = sums[f] + n end
    local short = f
    if string.sub(f, 1, 8) == 'lat:api:' then short = 'lat:api:' .. string.match(f, '[^:]*$')
    elseif string.sub(f, 1, 12) == 'lat:upstash:' then short = nil
    elseif string.sub(f, 1, 5) == 'lock:' then short = 'lock:' .. string.match(f, '[^:]*$') end
    if short then
      if point[short] == nil then point[short] = 0; porder[#porder + 1] = short end
      point[short] = point[short] + n
    end
  end
  local p = {}
  for _, f in ipairs(porder) do p[#p + 1] = f; p[#p + 1] = point[f] end
  out[k + 2] = p
end
for _, f in ipairs(order) do out[1][#out[1] + 1] = f; out[1][#out[1] + 1] = sums[f] end
return out
""", writes=False)



def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def latency_figures(counts: Sequence[int]) -> dict[str, Any]:
    """Count, p50 and p95; `p50_above`/`p95_above` true when that percentile is beyond the last
    bound (LIMIT_MS, the functions' limit): the figure is then only a floor ("> 30 s")."""
    return {"count": sum(counts), "p50_ms": ms(percentile(counts, 0.5)), "p95_ms": ms(percentile(counts, 0.95)),
            "p50_above": beyond(counts, 0.5), "p95_above": beyond(counts, 0.95)}


def cache_figures(by_status: Mapping[str, int]) -> dict[str, Any]:
    hits, stale = by_status.get("HIT", 0), by_status.get("STALE", 0)
    misses = sum(by_status.get(s, 0) for s in LOADED)
    bypasses = by_status.get("BYPASS", 0)
    reads = hits + stale + misses + bypasses
    return {
        "reads": reads, "hits": hits, "stale": stale, "misses": misses, "bypasses": bypasses,
        "early_refreshes": by_status.get("REFRESH", 0), "waits": by_status.get("WAIT", 0),
        "hit_rate": ratio(hits + stale, reads),
    }


def protected_rate(locks: Mapping[str, int]) -> float | None:
    """The share of locked operations the lock protected throughout: every acquired lock that held
    until its holder finished, and every second attempt it stopped, over all of them. An expired lock
    counts against it (a second request could have entered). None only when no lock was taken at all
    (11 acquired, none blocked or expired is 100 %, not "no data")."""
    acquired, blocked, expired = locks.get("acquired", 0), locks.get("blocked", 0), locks.get("expired", 0)
    return ratio(max(acquired - expired, 0) + blocked, acquired + blocked)


def queries_avoided(families: Mapping[str, Mapping[str, int]], queries: Mapping[str, int]) -> float:
    """Each read answered by Redis spared one run of its loader; a loader costs its family's
    queries per load in the window (1 when the window saw no load of that family)."""
    avoided = 0.0
    for family, statuses in families.items():
        spared = sum(statuses.get(s, 0) for s in SERVED_FROM_CACHE)
        loads = sum(statuses.get(s, 0) for s in (*LOADED, "BYPASS"))
        per_load = queries.get(family, 0) / loads if loads and queries.get(family) else 1.0
        avoided += spared * per_load
    return avoided


def _point(fields: Mapping[str, int]) -> dict[str, Any]:
    """One bucket's figures, from the fields SERIES folded."""
    families: dict[str, dict[str, int]] = {}
    queries: dict[str, int] = {}
    api = [0] * len(BOUNDS_MS)
    for name, amount in fields.items():
        if name.startswith("lat:api:"):
            index = LABEL_INDEX.get(name[8:])
            if index is not None:
                api[index] += amount
        elif name.startswith("db:q:"):
            queries[name[5:]] = amount
        elif not name.startswith(("lock:", "g:", "http:", "breaker:", "db:", "redis:", "metrics:")):
            family, _, status = name.rpartition(":")
            if family and status in CACHE_STATUSES:
                families.setdefault(family, {})[status] = amount
    overall = cache_figures({s: sum(f.get(s, 0) for f in families.values()) for s in CACHE_STATUSES})
    latency = latency_figures(api)
    used, maximum = fields.get("g:memory"), fields.get("g:maxmemory")
    return {
        "hit_rate": overall["hit_rate"],
        "families": {name: cache_figures(statuses)["hit_rate"] for name, statuses in families.items()},
        "requests": latency["count"],
        "p50_ms": latency["p50_ms"],
        "p95_ms": latency["p95_ms"],
        "queries_served": sum(queries.values()),
        "queries_avoided": round(queries_avoided(families, queries)),
        "locks": {event: fields.get(f"lock:{event}", 0) for event in LOCK_EVENTS},
        "errors_5xx": fields.get("http:5xx", 0),
        "breaker_open": fields.get("breaker:open", 0),
        "redis_memory_bytes": used,
        "redis_memory_ratio": ratio(used, maximum) if used is not None and maximum else None,
        "redis_keys": fields.get("g:keys"),
        "outbox_backlog": fields.get("g:outbox"),
    }


SERIES_FIGURES = ("hit_rate", "requests", "p50_ms", "p95_ms", "queries_served", "queries_avoided", "errors_5xx",
                  "breaker_open", "redis_memory_bytes", "redis_memory_ratio", "redis_keys", "outbox_backlog")


def series(points: Sequence[Mapping[str, int]], times: Sequence[int], step: int) -> dict[str, Any]:
    """The window's points as columns (what a chart draws): `t` the start of each bucket (epoch
    seconds, UTC), then one list per figure, aligned with `t`; a rate is null where nothing was
    counted, a gauge null where the cron took no sample."""
    figures = [_point(p) for p in points] + [_point({})] * (len(times) - len(points))
    out: dict[str, Any] = {"step_seconds": step, "t": list(times)}
    for name in SERIES_FIGURES:
        out[name] = [f[name] for f in figures]
    out["locks"] = {event: [f["locks"][event] for f in figures] for event in LOCK_EVENTS}
    out["families"] = {family: [f["families"].get(family) for f in figures] for family in FAMILIES}
    return out
