"""lib/ops/series: a window's buckets as points: folding, rolling up into longer buckets, columns for charts."""

from __future__ import annotations

import pytest

from lib import keys, metrics
from lib.edge import upstash
from lib.histogram import LABELS
from lib.ops import recorder, report, series
from lib.ops.recorder import KINDS
from tests.fakes import fake_upstash

NOW = 1_800_000_030.0  # 30 s into an epoch minute
MINUTE = int(NOW) // 60


@pytest.fixture
def redis(monkeypatch):
    monkeypatch.setattr(metrics, "clock", lambda: NOW)
    with fake_upstash(monkeypatch) as fake:
        yield fake


def write(increments):
    names, args = recorder.write_arguments(increments)
    assert upstash.run(recorder.WRITE, names, args) == 0


def test_minutes_roll_up_into_their_five_minutes_and_their_hour(redis):
    # MINUTE opens a five-minute bucket and an hour: the five minutes before it are the previous
    # five-minute bucket and end the previous hour.
    assert MINUTE % 60 == 0
    write({(MINUTE - 5 + i, "search:HIT"): i + 1 for i in range(5)} | {(MINUTE, "search:LOAD"): 1})
    minutes = report.report("1h")["series"]
    assert minutes["families"]["search"][-6:] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    day = report.report("24h")
    assert day["series"]["step_seconds"] == 300 and day["series"]["t"][-1] == MINUTE * 60
    assert day["series"]["families"]["search"][-3:] == [None, 1.0, 0.0]
    assert day["cache"]["families"]["search"]["hits"] == 15
    week = report.report("7d")["series"]
    assert week["step_seconds"] == 3600 and week["families"]["search"][-2:] == [1.0, 0.0]
    assert redis.stats.scripts_global_lock == 0, "WRITE and SERIES lock their keys only, not the database"


def test_a_point_folds_the_endpoints_into_one_histogram_and_the_lock_kinds_into_one_count(redis):
    write({(MINUTE, "lat:api:GET /api/search:3"): 2, (MINUTE, "lat:api:POST /api/payments:10"): 2,
           (MINUTE, "lat:upstash:1"): 9, (MINUTE, "lock:payment:acquired"): 2, (MINUTE, "lock:visit:acquired"): 1,
           (MINUTE, "lock:visit:expired"): 1, (MINUTE, "http:5xx"): 1, (MINUTE, "breaker:open"): 3,
           (MINUTE, "db:q:search"): 2, (MINUTE, "search:LOAD"): 2, (MINUTE, "search:HIT"): 6})
    points = report.report("1h")["series"]
    assert points["requests"][-1] == 4 and points["p50_ms"][-1] == 3.0 and points["p95_ms"][-1] == 9.75
    assert (points["locks"]["acquired"][-1], points["locks"]["expired"][-1]) == (3, 1)
    assert (points["errors_5xx"][-1], points["breaker_open"][-1]) == (1, 3)
    assert (points["queries_served"][-1], points["queries_avoided"][-1], points["hit_rate"][-1]) == (2, 6, 0.75)
    assert points["requests"][:-1] == [0] * 59 and points["hit_rate"][:-1] == [None] * 59


def test_a_gauge_keeps_the_largest_sample_of_its_bucket_and_totals_keep_it_too(redis):
    for sample, minute in ((100, MINUTE - 1), (300, MINUTE), (200, MINUTE)):
        upstash.execute(recorder.gauges_command({"memory": sample, "maxmemory": 1000, "outbox": 2}, minute * 60))
    body = report.report("1h")
    assert body["series"]["redis_memory_bytes"][-2:] == [100, 300]
    assert body["series"]["redis_memory_ratio"][-1] == 0.3 and body["series"]["outbox_backlog"][-1] == 2
    assert body["outbox"] == {"backlog": 2}, "the window's largest, not a sum of samples"
    assert report.report("7d")["series"]["redis_memory_bytes"][-1] == 300
    assert redis.stats.scripts_global_lock == 0 and redis.stats.scripts_key_locked > 0, "GAUGES locks its keys only"


def test_the_columns_are_aligned_with_their_times():
    out = series.series([{"search:HIT": 1}], [0, 60, 120], 60)
    assert out["t"] == [0, 60, 120] and out["hit_rate"] == [1.0, None, None]
    assert all(len(column) == 3 for name, column in out.items() if isinstance(column, list))
    assert all(len(column) == 3 for column in out["families"].values())
    assert set(out["families"]) == set(series.FAMILIES)


def test_a_week_of_buckets_is_bounded_by_their_ttls(redis):
    write({(MINUTE, "search:HIT"): 1})
    ttl = {kind: redis.redis.ttl(f"dousell:meta:metrics:{kind}:{number}")
           for kind, number in zip(recorder.KINDS, recorder.bucket_numbers(MINUTE), strict=True)}
    # Each kind outlives the longest window reading it (1 h, 24 h, 7 d), by less than that window again.
    assert 3600 < ttl["m"] <= 7200 and 86400 < ttl["f"] <= 90000 and 7 * 86400 < ttl["h"] <= 8 * 86400


ENDPOINTS = ("GET /api/properties", "GET /api/properties/[id]", "GET /api/search", "GET /api/dashboard",
             "GET /api/profile", "GET /api/notifications", "GET /api/payments", "POST /api/payments",
             "GET /api/visits", "POST /api/visits", "DELETE /api/visits", "PATCH /api/properties/[id]",
             "POST /api/paydunya/ipn", "POST /api/hooks/database", "GET /api/cron/reconcile")


def bucket_fields(every: bool) -> dict[str, int]:
    """A bucket's fields: a typical day's (each family's hits and loads, latencies over 7 bounds) or
    every field the code can write."""
    statuses = metrics.CACHE_STATUSES if every else ("HIT", "LOAD")
    labels = LABELS if every else LABELS[2:9]
    fields = {f"{family}:{status}": 123 for family in series.FAMILIES for status in statuses}
    fields |= {f"db:q:{family}": 45 for family in series.FAMILIES}
    fields |= {f"lat:api:{endpoint}:{label}": 67 for endpoint in ENDPOINTS for label in labels}
    fields |= {f"lat:upstash:{label}": 890 for label in labels}
    fields |= {f"lock:{kind}:{event}": 3 for kind in ("payment", "visit") for event in metrics.LOCK_EVENTS}
    return fields | {"db:q:-": 5, "db:failed": 1, "http:5xx": 1, "breaker:open": 1, "g:memory": 123_456_789,
                     "g:maxmemory": 268_435_456, "g:keys": 45_678, "g:outbox": 3}


def test_a_week_of_series_costs_a_few_megabytes_of_redis_whatever_the_traffic(redis):
    """Every bucket alive at once (TTL / span of each kind: 120 minutes, 300 five minutes, 192 hours),
    written by WRITE, measured by Valkey's MEMORY USAGE. Traffic changes the counts, not the size."""
    alive = {kind: ttl // span for kind, (span, ttl) in recorder.BUCKETS.items()}
    assert alive == {"m": 120, "f": 300, "h": 192}
    sizes = {}
    for every in (False, True):
        fields = bucket_fields(every)
        redis.redis.flushall()
        write({(MINUTE, name): n for name, n in fields.items()})  # one bucket of each kind, as WRITE makes it
        for kind, count in alive.items():
            template = redis.redis.hgetall(keys.metrics_bucket(kind, recorder.bucket_numbers(MINUTE)[KINDS.index(kind)]))
            for n in range(count):
                redis.redis.hset(f"week:{kind}:{n}", mapping=template)
        sizes[every] = (len(fields), sum(redis.redis.memory_usage(k, samples=0) for k in redis.redis.scan_iter("week:*")))
    print(f"\na week of series: {sizes[False][0]} fields a bucket {sizes[False][1]:,} bytes; "
          f"every field ({sizes[True][0]}) {sizes[True][1]:,} bytes")
    assert sizes[False][1] < 4_000_000 and sizes[True][1] < 10_000_000
