"""lib/ops/report: the KPIs from known totals, the windows, and one read-only call to Upstash."""

from __future__ import annotations

import httpx
import pytest

from lib import metrics
from lib.edge import upstash
from lib.errors import MetricsUnavailable
from lib.ops import report
from tests.fakes import fake_upstash

NOW = 1_800_000_030.0  # 30 s into an epoch minute
MINUTE = int(NOW) // 60


# == the figures from known totals =============================================================


def lat(name, label, n):
    return {f"lat:{name}:{label}": n}


KNOWN = {
    "property_detail:HIT": 90, "property_detail:STALE": 5, "property_detail:LOAD": 4, "property_detail:REFRESH": 1,
    "property_detail:WAIT": 7,
    "search:HIT": 10, "search:LOAD": 5, "search:BYPASS": 3, "search:TIMEOUT": 2,
    "db:q:property_detail": 5, "db:q:search": 20, "db:q:-": 6, "db:failed": 1,
    "lock:payment:acquired": 12, "lock:payment:blocked": 3, "lock:visit:acquired": 4, "lock:visit:blocked": 1,
    "lock:visit:expired": 1, "lock:payment:unavailable": 2,
    **lat("api:GET /api/properties", "3", 60), **lat("api:GET /api/properties", "5", 40),
    **lat("api:GET /api/search", "250", 100),
    **lat("upstash", "1", 90), **lat("upstash", "2", 10),
    "metrics:lost_writes": 2, "redis:refused_writes": 3,
    "not-a-family": 9, "lat:nonsense": 4,  # unknown fields are ignored, not fatal
}
INFO = "# Memory\r\nused_memory:47185920\r\nused_memory_human:45.00M\r\nmaxmemory:104857600\r\n"


@pytest.fixture(scope="module")
def figures():
    return report.summarize(KNOWN, report.parse_info(INFO), 1234)


def test_hit_rate_counts_stale_as_served_and_bypasses_as_not(figures):
    detail = figures["cache"]["families"]["property_detail"]
    assert detail == {"reads": 100, "hits": 90, "stale": 5, "misses": 5, "bypasses": 0, "early_refreshes": 1,
                      "waits": 7, "hit_rate": 0.95}
    search = figures["cache"]["families"]["search"]
    assert (search["reads"], search["misses"], search["bypasses"], search["hit_rate"]) == (20, 7, 3, 0.5)
    overall = figures["cache"]
    assert (overall["reads"], overall["hits"], overall["stale"], overall["hit_rate"]) == (120, 100, 5, 0.875)


def test_a_family_without_traffic_is_listed_with_no_rate(figures):
    assert figures["cache"]["families"]["notifications"]["hit_rate"] is None
    assert "not-a" not in figures["cache"]["families"]


def test_latency_percentiles_overall_per_endpoint_and_upstash(figures):
    api = figures["latency"]["api"]
    assert api["endpoints"]["GET /api/properties"] == {"count": 100, "p50_ms": 2.83, "p95_ms": 4.75,
                                                        "p50_above": False, "p95_above": False}
    assert api["endpoints"]["GET /api/search"]["p50_ms"] == 175.0
    assert (api["count"], api["p50_ms"]) == (200, 5.0)  # half the requests are at most 5 ms
    assert figures["latency"]["upstash"] == {"count": 100, "p50_ms": 0.78, "p95_ms": 1.5, "p50_above": False,
                                             "p95_above": False}


def test_a_percentile_beyond_the_functions_limit_says_so_instead_of_a_bucket_bound():
    slow = report.summarize(lat("api:POST /api/payments", "inf", 3), {}, None)["latency"]
    assert slow["api"]["p50_ms"] == slow["limit_ms"] == 30_000 and slow["api"]["p50_above"] is True


def test_locks_blocked_are_the_double_operations_prevented(figures):
    locks_ = figures["locks"]
    assert (locks_["acquired"], locks_["blocked"], locks_["expired"], locks_["unavailable"]) == (16, 4, 1, 2)
    assert locks_["double_operations_prevented"] == 4
    # 20 locked operations (16 held, 4 stopped); one lock expired under its holder: a door left open.
    assert locks_["prevented_rate"] == 0.95
    assert locks_["kinds"]["visit"] == {"acquired": 4, "blocked": 1, "expired": 1, "unavailable": 0}


def test_locks_taken_without_contention_are_100_percent_not_no_data():
    """The page said "pas encore de données" beside "11 acquis · 0 bloqués": the rate was
    blocked / (blocked + expired), undefined when nobody contended."""
    locks_ = report.summarize({"lock:payment:acquired": 11}, {}, None)["locks"]
    assert (locks_["acquired"], locks_["blocked"], locks_["prevented_rate"]) == (11, 0, 1.0)
    assert report.summarize({"lock:payment:acquired": 11, "lock:payment:expired": 1}, {}, None)["locks"][
        "prevented_rate"] == 0.9091


def test_queries_avoided_use_each_familys_queries_per_load(figures):
    database = figures["database"]
    assert (database["queries_served"], database["queries_failed"]) == (31, 1)
    # property_detail: 95 served from Redis × (5 queries / 5 loads); search: 10 × (20 / 10).
    assert database["queries_avoided"] == 95 + 20


def test_redis_memory_and_keys_come_from_info_and_dbsize(figures):
    assert figures["redis"] == {"used_memory_bytes": 47185920, "max_memory_bytes": 104857600, "used_ratio": 0.45,
                                "keys": 1234, "refused_writes": 3}


def test_no_maxmemory_means_no_ratio_and_missing_info_means_nothing_known():
    assert report.summarize({}, {"used_memory": "100", "maxmemory": "0"}, 3)["redis"]["max_memory_bytes"] is None
    assert report.summarize({}, {}, None)["redis"] == {"used_memory_bytes": None, "max_memory_bytes": None,
                                                               "used_ratio": None, "keys": None, "refused_writes": 0}


def test_the_lost_writes_are_reported(figures):
    assert figures["metrics"] == {"lost_writes": 2}


def test_an_empty_window_is_all_zeros_and_nones():
    empty = report.summarize({}, {}, 0)
    assert empty["cache"]["hit_rate"] is None and empty["cache"]["reads"] == 0
    assert empty["latency"]["api"] == {"count": 0, "p50_ms": None, "p95_ms": None, "p50_above": False,
                                       "p95_above": False, "endpoints": {}}
    assert empty["locks"]["prevented_rate"] is None


@pytest.mark.parametrize("window, kind, count, span", [
    ("1h", "m", 60, 60),  # a point a minute
    ("last_hour", "m", 60, 60),  # the first page's name for it
    ("24h", "f", 288, 300),  # a point per five minutes
    ("last_24h", "f", 288, 300),
    ("7d", "h", 168, 3600),  # a point an hour
])
def test_each_window_reads_its_buckets_ending_now(window, kind, count, span):
    names = report.window_keys(window, NOW)
    assert len(names) == count and names[-1] == f"dousell:meta:metrics:{kind}:{int(NOW) // span}"
    assert names[0] == f"dousell:meta:metrics:{kind}:{int(NOW) // span - count + 1}"


def test_an_unknown_window_has_no_name():
    assert report.window_name("last_week") is None and report.window_name("7d") == "7d"


def test_parse_info_reads_fields_and_skips_headings():
    assert report.parse_info(INFO) == {"used_memory": "47185920", "used_memory_human": "45.00M",
                                               "maxmemory": "104857600"}
    assert report.parse_info("") == {}


# == the report over Upstash ===================================================================


@pytest.fixture
def redis(monkeypatch):
    monkeypatch.setattr(metrics, "clock", lambda: NOW)
    with fake_upstash(monkeypatch) as fake:
        yield fake


def test_the_report_reads_the_windows_buckets_and_the_alerts_in_one_call_of_two_billed_commands(redis):
    redis.redis.hset(f"dousell:meta:metrics:m:{MINUTE}", mapping={"property_detail:HIT": 3, "db:q:-": 1})
    redis.redis.hset(f"dousell:meta:metrics:m:{MINUTE - 59}", mapping={"property_detail:HIT": 2})
    redis.redis.hset(f"dousell:meta:metrics:m:{MINUTE - 60}", mapping={"property_detail:HIT": 1000})
    report.report("last_hour")  # the script's first use: NOSCRIPT, then its text
    redis.calls.clear()
    redis.engine.reset_stats()
    body = report.report("last_hour")
    assert body["cache"]["families"]["property_detail"]["hits"] == 5
    assert body["redis"]["max_memory_bytes"] == 256 * 1024 * 1024 and body["redis"]["keys"] == 3
    assert len(redis.calls) == 1
    kind, commands = redis.calls[0]
    assert kind == "PIPELINE" and [c[0] for c in commands] == ["EVALSHA_RO", "INFO", "DBSIZE"]
    assert commands[0][2] == 61, "sixty minute buckets and the alerts' state, passed as KEYS"
    assert commands[0][-1] == "dousell:meta:alerts"
    assert body["series"]["t"][-1] == MINUTE * 60 and len(body["series"]["t"]) == 60
    assert body["series"]["families"]["property_detail"][0] == body["series"]["families"]["property_detail"][-1] == 1.0
    stats = redis.stats
    assert (stats.billed, stats.scripts_key_locked, stats.scripts_global_lock) == (2, 1, 0)


def test_the_window_bounds_are_given_in_utc(redis):
    body = report.report("last_24h")
    assert (body["window"], body["to"]) == ("last_24h", "2027-01-15T08:00:30Z")
    assert body["from"] == "2027-01-14T08:05:00Z"  # 288 buckets of five minutes, the current one included


@pytest.mark.parametrize("outage", [
    httpx.ConnectError("refused"),
    httpx.ReadTimeout("slow"),
])
def test_redis_down_is_metrics_unavailable(redis, outage):
    redis.down = outage
    with pytest.raises(MetricsUnavailable):
        report.report("last_hour")


def test_a_used_up_quota_is_said_in_the_metrics_answer(redis):
    redis.engine.daily_requests = 0
    try:
        with pytest.raises(MetricsUnavailable) as caught:
            report.report("last_hour")
    finally:
        redis.engine.daily_requests = None
        upstash.breaker.reset()
    assert caught.value.details["redis_quota"]["quota"] == "daily"
    assert "quota" in caught.value.message
