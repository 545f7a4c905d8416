"""lib/metrics: the percentile maths, the report's figures, and known traffic in → exact counts out.

Traffic goes through real `Endpoint`s on a loopback server, with Upstash faked at the network
boundary (fakeredis running the real Lua) and the database stubbed inside `db.run`.
"""

from __future__ import annotations

import math
import random

import httpx
import pytest
import respx

from lib import cache, context, db, keys, locks, metrics, upstash
from lib.errors import NotFound, PaymentInProgress
from lib.http import Endpoint
from tests.fakes import FakeUpstash
from tests.support import serve

URL = "https://upstash.test"
NOW = 1_800_000_030.0  # 30 s into an epoch minute
MINUTE = int(NOW) // 60


# == the percentile maths ======================================================================


def histogram(samples, bounds=metrics.BOUNDS_MS):
    counts = [0] * len(bounds)
    for sample in samples:
        counts[metrics.bucket_index(sample, bounds)] += 1
    return counts


def nearest_rank(samples, q):
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("ms, bound", [
    (0.2, 0.5),
    (0.5, 0.5),  # a sample on a bound belongs to that bound's bucket ("less or equal")
    (0.51, 1),
    (10, 10),
    (10.01, 15),
    (4999, 5000),
    (5001, math.inf),  # slower than the last bound: the open bucket
    (0, 0.5),  # nothing below the first bucket
    (-3, 0.5),
])
def test_a_sample_goes_to_the_first_bound_at_or_above_it(ms, bound):
    assert metrics.BOUNDS_MS[metrics.bucket_index(ms)] == bound


def test_an_empty_histogram_has_no_percentile():
    assert metrics.percentile([0] * len(metrics.BOUNDS_MS), 0.5) is None


def test_samples_in_one_bucket_are_spread_evenly_across_it():
    counts = histogram([6.0] * 200)  # all in (5, 7.5]
    assert metrics.percentile(counts, 0.5) == pytest.approx(6.25)
    assert metrics.percentile(counts, 0.95) == pytest.approx(7.375)


def test_half_and_half_puts_the_median_on_the_bound_between():
    counts = histogram([0.3] * 50 + [0.8] * 50)  # (0, 0.5] and (0.5, 1]
    assert metrics.percentile(counts, 0.5) == pytest.approx(0.5)
    assert metrics.percentile(counts, 0.95) == pytest.approx(0.95)


def test_a_uniform_distribution_gives_its_exact_percentiles():
    counts = histogram(range(1, 1001))  # 1..1000 ms, one each
    assert metrics.percentile(counts, 0.5) == pytest.approx(500)
    assert metrics.percentile(counts, 0.95) == pytest.approx(950)
    assert metrics.percentile(counts, 0.99) == pytest.approx(990)


def test_beyond_the_last_bound_only_a_lower_bound_is_known():
    assert metrics.percentile(histogram([9000, 12000]), 0.5) == 5000


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_the_estimate_lies_in_the_bucket_of_the_true_percentile(seed, q):
    rng = random.Random(seed)
    samples = [rng.lognormvariate(1.5, 1.0) for _ in range(rng.randint(20, 2000))]  # ms, long-tailed
    true = nearest_rank(samples, q)
    i = metrics.bucket_index(true)
    lower, upper = (metrics.BOUNDS_MS[i - 1] if i else 0.0), metrics.BOUNDS_MS[i]
    assert lower <= metrics.percentile(histogram(samples), q) <= upper


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_a_quantile_outside_zero_one_is_refused(q):
    with pytest.raises(ValueError):
        metrics.percentile([1], q, bounds=(10,))


# == the report's figures from known totals ====================================================


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
    "metrics:lost_writes": 2,
    "not-a-family": 9, "lat:nonsense": 4,  # unknown fields are ignored, not fatal
}
INFO = "# Memory\r\nused_memory:47185920\r\nused_memory_human:45.00M\r\nmaxmemory:104857600\r\n"


@pytest.fixture(scope="module")
def figures():
    return metrics.summarize(KNOWN, metrics.parse_info(INFO), 1234)


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
    assert api["endpoints"]["GET /api/properties"] == {"count": 100, "p50_ms": 2.83, "p95_ms": 4.75}
    assert api["endpoints"]["GET /api/search"]["p50_ms"] == 175.0
    assert (api["count"], api["p50_ms"]) == (200, 5.0)  # half the requests are at most 5 ms
    assert figures["latency"]["upstash"] == {"count": 100, "p50_ms": 0.78, "p95_ms": 1.5}


def test_locks_blocked_are_the_double_operations_prevented(figures):
    locks_ = figures["locks"]
    assert (locks_["acquired"], locks_["blocked"], locks_["expired"], locks_["unavailable"]) == (16, 4, 1, 2)
    assert locks_["double_operations_prevented"] == 4
    assert locks_["prevented_rate"] == 0.8  # one lock expired under its holder: a door left open
    assert locks_["kinds"]["visit"] == {"acquired": 4, "blocked": 1, "expired": 1, "unavailable": 0}


def test_queries_avoided_use_each_familys_queries_per_load(figures):
    database = figures["database"]
    assert (database["queries_served"], database["queries_failed"]) == (31, 1)
    # property_detail: 95 served from Redis × (5 queries / 5 loads); search: 10 × (20 / 10).
    assert database["queries_avoided"] == 95 + 20


def test_redis_memory_and_keys_come_from_info_and_dbsize(figures):
    assert figures["redis"] == {"used_memory_bytes": 47185920, "max_memory_bytes": 104857600, "used_ratio": 0.45,
                                "keys": 1234}


def test_no_maxmemory_means_no_ratio_and_missing_info_means_nothing_known():
    assert metrics.summarize({}, {"used_memory": "100", "maxmemory": "0"}, 3)["redis"]["max_memory_bytes"] is None
    assert metrics.summarize({}, {}, None)["redis"] == {"used_memory_bytes": None, "max_memory_bytes": None,
                                                        "used_ratio": None, "keys": None}


def test_the_lost_writes_are_reported(figures):
    assert figures["metrics"] == {"lost_writes": 2}


def test_an_empty_window_is_all_zeros_and_nones():
    empty = metrics.summarize({}, {}, 0)
    assert empty["cache"]["hit_rate"] is None and empty["cache"]["reads"] == 0
    assert empty["latency"]["api"] == {"count": 0, "p50_ms": None, "p95_ms": None, "endpoints": {}}
    assert empty["locks"]["prevented_rate"] is None


@pytest.mark.parametrize("path, param, endpoint", [
    ("/api/properties/123", "id", "/api/properties/[id]"),
    ("/api/properties/", None, "/api/properties"),
    ("/api/health.py", None, "/api/health"),
    ("/api/search", None, "/api/search"),
    ("/api/x y:z", None, "/api/x_y_z"),  # nothing an operator would not expect in a field name
])
def test_a_path_is_reduced_to_its_endpoint(path, param, endpoint):
    assert metrics.route(path, param) == endpoint


def test_the_windows_read_sixty_minutes_or_twenty_four_hours_ending_now():
    minutes = metrics.window_keys("last_hour", NOW)
    assert len(minutes) == 60 and minutes[-1] == f"dousell:meta:metrics:m:{MINUTE}"
    assert minutes[0] == f"dousell:meta:metrics:m:{MINUTE - 59}"
    hours = metrics.window_keys("last_24h", NOW)
    assert len(hours) == 24 and hours[-1] == f"dousell:meta:metrics:h:{int(NOW) // 3600}"


# == known traffic in, exact counts out ========================================================


class Row:
    def __init__(self, data):
        self.data = data


class App(Endpoint):
    """GET /t/{id}: a cached read like /api/properties/{id}, one query per load.
    POST /pay/{id}: a locked write like POST /api/payments, without the payment.
    GET /nothing/{id}: an answer without Redis (a 404, a 401...)."""

    path_param = "id"

    def get(self, req):
        pid = req.path_id()
        if req.path.startswith("/nothing/"):
            raise NotFound()
        value = cache.fetch(keys.property_detail(pid), lambda: db.run(lambda: Row({"id": pid})).data)
        return {"property": value}

    def post(self, req):
        lease = req.path_id()
        try:
            with locks.with_lock(keys.payment_lock(lease), retries=0):
                db.run(lambda: Row([]))
                if req.query.get("outlive") == "1":  # the lock expires and someone else takes it
                    upstash.execute(["SET", keys.payment_lock(lease), "next-holder"])
        except locks.LockBusy as exc:
            raise PaymentInProgress() from exc
        except locks.LockNotOwned:
            pass
        return {"ok": True}


@pytest.fixture
def clock(monkeypatch):
    now = {"t": NOW}
    monkeypatch.setattr(metrics, "clock", lambda: now["t"])
    return now


@pytest.fixture
def redis(monkeypatch, clock):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    monkeypatch.setattr(cache, "draw", lambda: 0.5)
    reset()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield FakeUpstash(router, URL)
    reset()


def reset():
    upstash.set_client(None)
    cache.breaker.reset()
    metrics.pending.clear()
    metrics.stats.reset()
    metrics._flush_blocked_until = 0.0


@pytest.fixture(scope="module")
def app_url():
    with serve(App) as base:
        yield base


@pytest.fixture
def api(redis, app_url):
    with httpx.Client(base_url=app_url, timeout=10) as client:
        yield Api(client)


class Api:
    def __init__(self, client):
        self.client = client

    def read(self, pid):
        return self.client.get(f"/t/{pid}")

    def pay(self, lease, **params):
        return self.client.post(f"/pay/{lease}", params=params)


def bucket(redis, kind="m", number=MINUTE):
    return {k.decode(): int(v) for k, v in redis.redis.hgetall(f"dousell:meta:metrics:{kind}:{number}").items()}


def pending_fields():
    totals: dict[str, int] = {}
    for (_, name), amount in metrics.pending.snapshot().items():
        totals[name] = totals.get(name, 0) + amount
    return totals


def samples(totals, prefix):
    return sum(n for name, n in totals.items() if name.startswith(f"lat:{prefix}:"))


def test_known_reads_give_exact_hits_misses_queries_and_latency_counts(api, redis):
    statuses = [api.read(7).headers["x-cache"] for _ in range(5)] + [api.read(8).headers["x-cache"] for _ in range(3)]
    assert statuses == ["MISS", "HIT", "HIT", "HIT", "HIT", "MISS", "HIT", "HIT"]
    calls = len(redis.calls)

    report = metrics.report("last_hour")
    detail = report["cache"]["families"]["property_detail"]
    assert (detail["hits"], detail["misses"], detail["reads"], detail["hit_rate"]) == (6, 2, 8, 0.75)
    assert report["database"] == {"queries_served": 2, "queries_failed": 0, "queries_avoided": 6,
                                  "by_family": {"property_detail": 2}}
    # The last request's own durations wait for this instance's next call; nothing else is missing.
    left = pending_fields()
    assert left == {**{k: 1 for k in left if k.startswith("lat:api:GET /t/[id]:")},
                    **{k: 1 for k in left if k.startswith("lat:upstash:")}}
    assert samples(left, "api:GET /t/[id]") == 1 and samples(left, "upstash") == 1
    assert report["latency"]["api"]["endpoints"]["GET /t/[id]"]["count"] == 8 - 1
    # Every Upstash call the requests made (a miss: read and fill; the first of each script also
    # its EVAL after NOSCRIPT) is one sample, the last one still buffered.
    assert report["latency"]["upstash"]["count"] == calls - 1
    assert bucket(redis, "h", int(NOW) // 3600) == bucket(redis, "m", MINUTE), "the hour holds what the minute holds"


def test_a_hit_stays_one_rest_call_and_carries_what_the_instance_recorded(api, redis):
    api.read(7)
    redis.calls.clear()
    assert api.read(7).headers["x-cache"] == "HIT"
    assert len(redis.calls) == 1, "a hit is exactly one REST call to Upstash"
    kind, commands = redis.calls[0]
    assert kind == "PIPELINE" and [c[0] for c in commands] == ["EVALSHA", "EVAL"]
    assert commands[1][1] == metrics.WRITE_SCRIPT
    assert metrics.stats.writes >= 1 and metrics.stats.lost_writes == 0


def test_a_request_that_made_no_redis_call_flushes_at_its_end_in_one_call(api, redis):
    response = api.client.get("/nothing/1")
    assert response.status_code == 404
    assert [call[0] for call in redis.calls] == ["PIPELINE"]
    assert [c[0] for c in redis.calls[0][1]] == ["EVAL"]
    assert samples(bucket(redis), "api:GET /nothing/[id]") == 1
    assert len(metrics.pending) == 0


def test_while_the_breaker_is_open_nothing_is_sent_and_bypasses_ride_on_the_first_call_after(api, redis,
                                                                                            monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(cache, "clock", lambda: now["t"])
    redis.down = httpx.ConnectError("refused")
    assert [api.read(7).headers["x-cache"] for _ in range(3)] == ["BYPASS"] * 3
    assert len(redis.calls) == 0 and cache.breaker.state == "open"
    assert pending_fields()["property_detail:BYPASS"] == 3

    redis.down = None
    now["t"] += cache.breaker.interval
    assert api.read(7).headers["x-cache"] == "MISS"
    detail = metrics.report("last_hour")["cache"]["families"]["property_detail"]
    assert (detail["bypasses"], detail["misses"], detail["hit_rate"]) == (3, 1, 0.0)
    assert metrics.report("last_hour")["database"]["queries_served"] == 4


def test_a_failed_write_is_counted_and_dropped_never_an_error_and_reported_by_the_next_write(api, redis, monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(cache, "clock", lambda: now["t"])
    api.read(7)  # leaves its latency samples buffered
    carried = dict(metrics.pending.snapshot())
    assert carried
    redis.down = httpx.ReadTimeout("slow")
    assert api.read(7).status_code == 200  # BYPASS: the user never sees the metrics fail
    assert metrics.stats.lost_writes == 1

    redis.down = None
    now["t"] += cache.breaker.interval
    api.read(7)
    report = metrics.report("last_hour")
    assert report["metrics"]["lost_writes"] == 1
    assert report["latency"]["api"]["endpoints"]["GET /t/[id]"]["count"] == 1, "the lost batch is not replayed"


def test_an_increment_redis_refuses_is_counted_and_the_read_still_hits(api, redis, clock):
    api.read(7)
    clock["t"] += 300  # five minutes later: the buffered samples belong to a bucket now broken
    redis.redis.set(f"dousell:meta:metrics:m:{MINUTE}", "not a hash")
    assert api.read(7).headers["x-cache"] == "HIT"
    assert metrics.stats.dropped > 0 and metrics.stats.lost_writes == 0


def test_samples_land_in_the_minute_they_were_recorded_in_however_late_they_are_sent(api, redis, clock):
    api.read(7)
    clock["t"] += 180
    api.read(7)
    assert samples(bucket(redis, "m", MINUTE), "api:GET /t/[id]") == 1
    assert bucket(redis, "m", MINUTE + 3) == {"property_detail:HIT": 1}  # its own samples wait
    assert bucket(redis, "m", MINUTE)["property_detail:LOAD"] == 1


def test_locks_acquired_blocked_and_expired_are_counted_by_kind(api, redis, monkeypatch):
    monkeypatch.setattr(locks, "sleep", lambda s: None)
    assert api.pay(1).status_code == 200
    redis.redis.set(keys.payment_lock(2), "someone-else", px=30_000)
    busy = api.pay(2)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "payment_in_progress"
    assert not metrics.pending.holds_counts(), "a refused lock is sent at the end of its request"
    assert api.pay(3, outlive="1").status_code == 200

    figures = metrics.report("last_hour")["locks"]
    assert figures["kinds"]["payment"] == {"acquired": 2, "blocked": 1, "expired": 1, "unavailable": 0}
    assert (figures["double_operations_prevented"], figures["prevented_rate"]) == (1, 0.5)
    assert metrics.report("last_hour")["database"]["by_family"] == {"-": 2}


def test_nothing_is_recorded_or_carried_outside_a_request(redis):
    context.begin()
    cache.fetch(keys.property_detail(5), lambda: db.run(lambda: Row(5)).data)
    cache.fetch(keys.property_detail(5), lambda: 5)
    assert len(metrics.pending) == 0
    assert redis.calls and all(call[0] in ("EVALSHA", "EVAL") for call in redis.calls), "nothing rode along"


def test_a_full_buffer_drops_and_counts_instead_of_growing():
    small = metrics.Pending(limit=2)
    assert small.add("a", minute=1) and small.add("b", minute=1) and small.add("a", 5, minute=1)
    assert small.add("c", minute=1) is False
    assert small.snapshot() == {(1, "a"): 6, (1, "b"): 1}


def test_the_write_command_pairs_each_minute_with_its_hour():
    batch = metrics.Batch({(MINUTE, "lat:upstash:1"): 2, (MINUTE, "search:BYPASS"): 1, (MINUTE - 1, "db:failed"): 1})
    command = batch.command
    assert command[:3] == ["EVAL", metrics.WRITE_SCRIPT, 4]
    hour = MINUTE // 60
    assert command[3:7] == [f"dousell:meta:metrics:m:{MINUTE - 1}", f"dousell:meta:metrics:h:{(MINUTE - 1) // 60}",
                            f"dousell:meta:metrics:m:{MINUTE}", f"dousell:meta:metrics:h:{hour}"]
    assert command[7:] == [str(metrics.BUCKET_TTL), "1", "db:failed", "1", "2", "lat:upstash:1", "2",
                           "2", "search:BYPASS", "1"]


def test_parse_info_reads_fields_and_skips_headings():
    assert metrics.parse_info(INFO) == {"used_memory": "47185920", "used_memory_human": "45.00M",
                                        "maxmemory": "104857600"}
    assert metrics.parse_info("") == {}


# == riding on an Upstash call: the answers are the library's own =============================


@pytest.fixture
def in_request(monkeypatch, clock):
    """Inside a recorded request with something buffered: every call carries a batch."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    reset()
    state = metrics.begin_request("/api/test")
    metrics.pending.add("lat:upstash:1")
    yield state
    metrics._recording.set(None)
    reset()


@pytest.mark.parametrize("command, expected", [
    (["SET", "k", "v"], True),  # upstash-redis casts SET's "OK" to True
    (["GET", "k"], "v"),  # base64 decoded
    (["GET", "missing"], None),
    (["INCR", "n"], 1),
    (["HSET", "h2", "a", "1"], 1),
    (["HMGET", "h", "a", "b"], ["1", None]),
    (["EVAL", "return {1, 'x', false}", 0], [1, "x", None]),
])
def test_a_carried_call_answers_exactly_what_the_plain_call_answers(redis, in_request, command, expected):
    redis.redis.set("k", "v")
    redis.redis.hset("h", "a", "1")
    metrics.pending.add("lat:upstash:1")
    assert upstash.execute(command) == expected
    assert redis.calls[-1][0] == "PIPELINE" and redis.calls[-1][1][-1][0] == "EVAL"
    metrics._recording.set(None)
    redis.redis.delete("n", "h2")
    assert upstash.execute(command) == expected
    assert redis.calls[-1][0] == command[0]


def test_a_command_error_is_raised_but_the_batch_counts_as_delivered(redis, in_request):
    redis.redis.set("k", "v")
    with pytest.raises(upstash.RedisCommandError, match="WRONGTYPE"):
        upstash.execute(["HGET", "k", "f"])
    assert (metrics.stats.writes, metrics.stats.lost_writes) == (1, 0)


def test_a_refused_metrics_write_never_touches_the_commands_result(in_request):
    with respx.mock() as router:
        router.post(f"{URL}/pipeline").respond(json=[{"result": "dmFsdWU="}, {"error": "OOM command not allowed"}])
        assert upstash.execute(["GET", "k"]) == "value"
    assert metrics.stats.lost_writes == 1
    assert pending_fields()["metrics:lost_writes"] == 1


@pytest.mark.parametrize("answer, error", [
    (httpx.Response(401, json={"error": "Unauthorized"}), upstash.RedisCommandError),  # the whole call refused
    (httpx.Response(502, text="<html>Bad gateway</html>"), upstash.RedisUnavailable),
    (httpx.Response(200, json=[{"result": 1}]), upstash.RedisUnavailable),  # one answer for two commands
    (httpx.ReadTimeout("slow"), upstash.RedisUnavailable),
])
def test_a_failed_call_loses_its_batch_and_raises_as_before(in_request, answer, error):
    with respx.mock() as router:
        router.post(f"{URL}/pipeline").mock(side_effect=[answer])
        with pytest.raises(error):
            upstash.execute(["GET", "k"])
    assert metrics.stats.lost_writes == 1


def test_pipeline_results_returns_each_refusal_in_place(redis):
    redis.redis.set("k", "v")
    ok, refused, size = upstash.pipeline_results([["GET", "k"], ["HGET", "k", "f"], ["DBSIZE"]])
    assert ok == "v" and isinstance(refused, upstash.RedisCommandError) and size == 1


@pytest.mark.parametrize("namespace, name, field", [
    (None, "dousell:lock:payment:lease123", "lock:payment:blocked"),
    (None, "dousell:lock:visit:prop789:20261127T140000Z", "lock:visit:blocked"),
    (None, "dousell:lock:test:x", "lock:other:blocked"),
    ("staging:dousell", "staging:dousell:lock:payment:lease1", "lock:payment:blocked"),  # a namespace with a colon
])
def test_a_lock_event_is_counted_under_its_kind(monkeypatch, namespace, name, field):
    if namespace:
        monkeypatch.setenv("CACHE_NAMESPACE", namespace)
    else:
        monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    metrics.pending.clear()
    state = metrics.begin_request("/api/payments")
    try:
        metrics.lock_event(name, "blocked")
        assert pending_fields() == {field: 1}
    finally:
        metrics._recording.reset(state.token)
        metrics.pending.clear()
