"""Drill 17: Upstash's daily request quota used up under read load — not an outage, not "up".

The stand-in is given a daily quota of QUOTA billed commands (`POST /__devstack/quota`, as
`DEVSTACK_UPSTASH_DAILY_REQUESTS` does at start); `THREADS` clients then read the public and private
endpoints until well past it. Expected (docs/cache-strategy.md, "The Redis edge"): every answer 200 (0 × 5xx),
reads past the quota answered by the database (`X-Cache: BYPASS`), each function instance asking Upstash once
after the quota and then holding it off until midnight UTC (the stand-in's `quota_refusals` stays near the
number of instances, not the number of reads), one warning per instance in the functions' log, `/api/health`
saying `redis_quota`, `/api/metrics` answering 503 `metrics_unavailable` with `details.redis_quota`.

It runs last: the functions' breakers stay open until midnight UTC (by design), so any drill after it in the
same stack would meet a held-off Redis.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

QUOTA = 150
THREADS = 4
READS = 400
PATHS = [("/api/properties", None), ("/api/properties/123", None), ("/api/search?city=Dakar", None),
         ("/api/properties?city=Dakar", None), ("/api/profile", "moussa.diop@example.sn"),
         ("/api/notifications", "moussa.diop@example.sn")]
WARNING = "request quota is used up (ERR"  # the edge's warning, not the errors that quote it


def quota_used_up(ctx: Any, row: Any) -> None:
    from devstack.__main__ import METRICS_TOKEN, UPSTASH_TOKEN

    stack = ctx.stack
    admin = {"Authorization": f"Bearer {UPSTASH_TOKEN}"}
    log = stack.state / "vercel-dev.log"
    warned_before = _warnings(log)
    for path, who in PATHS:  # cached, so the reads before the quota are hits
        ctx.call(row, "GET", path, who)
    stack.admin.post(f"{stack.upstash_url}/__devstack/stats/reset", headers=admin).raise_for_status()
    stack.admin.post(f"{stack.upstash_url}/__devstack/quota", json={"daily": QUOTA}, headers=admin).raise_for_status()
    caches: Counter = Counter()
    try:
        def reader(n: int) -> None:
            for i in range(n, READS, THREADS):
                path, who = PATHS[i % len(PATHS)]
                a = ctx.call(row, "GET", path, who)
                row.expect(a, {200}, f"GET {path} past the quota")
                caches[a.cache or "-"] += 1

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(reader, range(THREADS)))
        stats = stack.admin.get(f"{stack.upstash_url}/__devstack/stats", headers=admin).json()["result"]
        health = ctx.call(row, "GET", "/api/health")
        metrics = ctx.call(row, "GET", "/api/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    finally:
        stack.admin.post(f"{stack.upstash_url}/__devstack/quota", json={"daily": None}, headers=admin)
    time.sleep(1.0)  # the functions' log lines are written as they happen; give the last ones a moment
    warned = _warnings(log) - warned_before
    health_quota = (health.json() or {}).get("redis_quota") if health.status in (200, 503) else None
    error = (metrics.json() or {}).get("error", {}) if metrics.status == 503 else {}
    row.notes.append(f"daily quota {QUOTA} billed commands, then {READS} reads by {THREADS} clients: "
                     f"X-Cache {dict(sorted(caches.items()))}; Upstash requests refused for the quota: "
                     f"{stats['quota_refusals']} (the functions held it off after their first); warnings logged: "
                     f"{warned}; /api/health {health.status} redis={(health.json() or {}).get('redis')} "
                     f"redis_quota={health_quota}; /api/metrics {metrics.status} {error.get('code')} "
                     f"details={error.get('details')}")
    problems = []
    if not caches.get("BYPASS"):
        problems.append("no read was answered from the database past the quota")
    if not health_quota:
        problems.append("/api/health did not say redis_quota")
    if error.get("code") != "metrics_unavailable" or not (error.get("details") or {}).get("redis_quota"):
        problems.append("/api/metrics did not say redis_quota")
    if stats["quota_refusals"] > 3 * len(PATHS) + THREADS:
        problems.append(f"{stats['quota_refusals']} refused requests: the quota was asked again per read")
    if problems:
        row.failed = "; ".join(problems)


def _warnings(log: Any) -> int:
    try:
        return log.read_text(errors="replace").count(WARNING)
    except OSError:
        return 0


DRILLS = [("Upstash's daily quota used up under read load", quota_used_up)]
