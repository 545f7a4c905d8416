"""lib/metrics: known traffic in, exact counts out; one write per instance every 5 s at most; what is lost when.

Traffic goes through real `Endpoint`s on a loopback server, with Upstash the real stand-in's engine
over a real Valkey (tests/fakes.py) and the database stubbed inside `db.run`.
"""

from __future__ import annotations

import httpx
import pytest

from lib import context, db, keys, metrics
from lib.cache import aside
from lib.domain import locking
from lib.edge import upstash
from lib.errors import NotFound, PaymentInProgress
from lib.ops import recorder, report
from lib.web.http import Endpoint
from tests.fakes import fake_upstash
from tests.support import serve

NOW = 1_800_000_030.0  # 30 s into an epoch minute
MINUTE = int(NOW) // 60


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
        value = aside.fetch(keys.property_detail(pid), lambda: db.run(lambda: Row({"id": pid})).data)
        return {"property": value}

    def post(self, req):
        lease = req.path_id()

        def work():
            db.run(lambda: Row([]))
            if req.query.get("outlive") == "1":  # the lock expires and someone else takes it
                upstash.execute(["SET", keys.payment_lock(lease), "next-holder"])
            return {"ok": True}

        return locking.under_lock(keys.payment_lock(lease), PaymentInProgress, work)


class Clocks:
    """metrics' wall clock (which bucket) and monotonic clock (when the next write is due)."""

    def __init__(self):
        self.wall = NOW
        self.mono = 5000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clocks(monkeypatch):
    fake = Clocks()
    monkeypatch.setattr(metrics, "clock", lambda: fake.wall)
    monkeypatch.setattr(recorder, "monotonic", lambda: fake.mono)
    return fake


def reset():
    upstash.breaker.reset()
    metrics.pending.clear()
    recorder.stats.reset()
    recorder._last_flush = float("-inf")  # a fresh instance


@pytest.fixture
def redis(monkeypatch, clocks):
    monkeypatch.setattr(aside, "draw", lambda: 0.5)
    reset()
    with fake_upstash(monkeypatch, local=True) as fake:
        yield fake
    reset()


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

    def nothing(self):
        return self.client.get("/nothing/1")

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


def writes_sent(redis) -> int:
    """The metrics writes sent to Redis: one EVALSHA of WRITE each (its text follows once after a
    NOSCRIPT, the first time)."""
    return sum(1 for call in redis.calls if call[0] == "EVALSHA" and call[1] == recorder.WRITE.sha)


def test_known_reads_give_exact_hits_misses_queries_and_latency_counts(api, redis, clocks):
    statuses = [api.read(7).headers["x-cache"] for _ in range(5)] + [api.read(8).headers["x-cache"] for _ in range(3)]
    assert statuses == ["MISS", "HIT", "HIT", "HIT", "HIT", "MISS", "HIT", "HIT"]
    calls_by_requests = len(redis.calls) - sum(1 for c in redis.calls if recorder.WRITE.sha in c or
                                                recorder.WRITE.text in c)
    clocks.advance(recorder.FLUSH_INTERVAL)
    assert api.nothing().status_code == 404  # due: this request writes what the instance holds
    assert len(metrics.pending) == 0

    figures = report.report("last_hour")
    detail = figures["cache"]["families"]["property_detail"]
    assert (detail["hits"], detail["misses"], detail["reads"], detail["hit_rate"]) == (6, 2, 8, 0.75)
    assert figures["database"] == {"queries_served": 2, "queries_failed": 0, "queries_avoided": 6,
                                  "by_family": {"property_detail": 2}}
    endpoints = figures["latency"]["api"]["endpoints"]
    assert (endpoints["GET /t/[id]"]["count"], endpoints["GET /nothing/[id]"]["count"]) == (8, 1)
    # Every Upstash call the requests made is one sample (a miss: read, claim, fill; a script's first
    # use also its text after NOSCRIPT); the metrics' own writes are not the requests' work.
    assert figures["latency"]["upstash"]["count"] == calls_by_requests
    assert bucket(redis, "h", int(clocks.wall) // 3600) == bucket(redis, "m", MINUTE), "the hour holds the minute"
    assert bucket(redis, "f", MINUTE // 5) == bucket(redis, "m", MINUTE), "and so do its five minutes"


def test_an_instance_writes_its_metrics_at_most_once_per_interval_in_one_command(api, redis, clocks):
    for _ in range(20):
        api.read(7)
        clocks.advance(0.2)  # 4 s in all: inside one interval
    assert writes_sent(redis) == 1, "only the instance's first request wrote (nothing written before)"
    clocks.advance(1.5)
    api.read(7)
    assert writes_sent(redis) == 2
    assert recorder.stats.writes == 2 and len(metrics.pending) == 0


def test_a_hit_stays_one_billed_command_while_it_is_counted(api, redis, clocks):
    api.read(7)  # the miss, and the instance's first write
    redis.engine.reset_stats()
    redis.calls.clear()
    assert api.read(7).headers["x-cache"] == "HIT"
    assert redis.stats.billed == 1 and [c[0] for c in redis.calls] == ["EVALSHA"]  # READ, on the leader
    assert pending_fields()["property_detail:HIT"] == 1, "counted in the instance, written later"


def test_a_frozen_instance_loses_at_most_what_it_counted_since_its_last_write(api, redis, clocks):
    api.read(7)  # t = 0: the first request writes at its end
    for _ in range(4):
        clocks.advance(1.0)  # t = 1..4 s: inside the interval, kept in the instance
        api.read(7)
    in_redis = report.summarize(bucket(redis), {}, None)["cache"]["families"]["property_detail"]
    assert (in_redis["misses"], in_redis["hits"]) == (1, 0)
    assert pending_fields()["property_detail:HIT"] == 4, "what a freeze now would lose: under 5 s of traffic"
    metrics.pending.clear()  # the instance is frozen, then recycled: its memory is gone
    clocks.advance(60)
    assert bucket(redis)["property_detail:LOAD"] == 1 and "property_detail:HIT" not in bucket(redis)


def test_an_instance_that_comes_back_writes_what_it_kept(api, redis, clocks):
    api.read(7)
    clocks.advance(1.0)
    api.read(7)
    clocks.advance(600)  # frozen ten minutes, then thawed by a request
    api.read(7)
    assert bucket(redis)["property_detail:HIT"] == 1, "kept in the bucket of the minute it happened"
    assert bucket(redis, "m", MINUTE + 10)["property_detail:HIT"] == 1


def test_while_redis_is_skipped_nothing_is_written_and_the_bypasses_follow_once_it_is_back(api, redis, clocks,
                                                                                         monkeypatch):
    from lib.edge import breaker as breaker_module

    now = {"t": 1000.0}
    monkeypatch.setattr(breaker_module, "clock", lambda: now["t"])
    redis.down = httpx.ConnectError("refused")
    assert [api.read(7).headers["x-cache"] for _ in range(3)] == ["BYPASS"] * 3
    assert len(redis.calls) == 0 and upstash.breaker.state == "open"
    assert pending_fields()["property_detail:BYPASS"] == 3

    redis.down = None
    now["t"] += upstash.breaker.interval
    clocks.advance(recorder.FLUSH_INTERVAL)
    assert api.read(7).headers["x-cache"] == "MISS"
    detail = report.report("last_hour")["cache"]["families"]["property_detail"]
    assert (detail["bypasses"], detail["misses"], detail["hit_rate"]) == (3, 1, 0.0)
    assert report.report("last_hour")["database"]["queries_served"] == 4


def test_a_write_that_fails_is_counted_dropped_never_an_error_and_reported_by_the_next(api, redis, clocks):
    redis.down = httpx.ReadTimeout("slow")
    assert api.nothing().status_code == 404  # the user's answer, whatever the metrics do
    assert recorder.stats.lost_writes == 1
    redis.down = None
    upstash.breaker.reset()
    clocks.advance(recorder.FLUSH_INTERVAL)
    api.nothing()
    figures = report.report("last_hour")
    assert figures["metrics"]["lost_writes"] == 1
    assert figures["latency"]["api"]["endpoints"]["GET /nothing/[id]"]["count"] == 1, "the lost write is not replayed"


def test_a_write_refused_by_a_full_database_is_counted_and_keeps_the_breaker_closed(api, redis, clocks):
    api.read(7)
    clocks.advance(recorder.FLUSH_INTERVAL)
    used = redis.redis.info("memory")["used_memory"]
    redis.redis.config_set("maxmemory", used // 2)  # full: writes refused, reads served
    assert api.read(7).headers["x-cache"] == "HIT"
    assert recorder.stats.refused_writes == 1 and upstash.breaker.state == "closed"
    redis.redis.config_set("maxmemory", "256mb")  # the operator raised the plan
    clocks.advance(recorder.FLUSH_INTERVAL)
    api.nothing()
    assert report.report("last_hour")["redis"]["refused_writes"] == 1


def test_an_increment_redis_refuses_is_counted_and_the_read_still_hits(api, redis, clocks):
    api.read(7)
    api.read(7)
    clocks.advance(300)  # five minutes later: the buffered samples belong to a bucket now broken
    redis.redis.set(f"dousell:meta:metrics:m:{MINUTE}", "not a hash")
    assert api.read(7).headers["x-cache"] == "HIT"
    assert recorder.stats.dropped > 0 and recorder.stats.lost_writes == 0


def test_locks_acquired_blocked_and_expired_are_counted_by_kind(api, redis, clocks, monkeypatch):
    from lib.cache import locks

    monkeypatch.setattr(locks, "sleep", lambda s: None)
    assert api.pay(1).status_code == 200
    redis.redis.set(keys.payment_lock(2), "someone-else", px=30_000)
    busy = api.pay(2)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "payment_in_progress"
    assert api.pay(3, outlive="1").status_code == 200
    recorder.flush(force=True)

    figures = report.report("last_hour")["locks"]
    assert figures["kinds"]["payment"] == {"acquired": 2, "blocked": 1, "expired": 1, "unavailable": 0}
    # Three locked operations; the one whose lock expired under it was not protected throughout.
    assert (figures["double_operations_prevented"], figures["prevented_rate"]) == (1, 0.6667)
    assert report.report("last_hour")["database"]["by_family"] == {"-": 2}


def test_nothing_is_recorded_outside_a_request(redis):
    context.begin()
    aside.fetch(keys.property_detail(5), lambda: db.run(lambda: Row(5)).data)
    aside.fetch(keys.property_detail(5), lambda: 5)
    assert len(metrics.pending) == 0


def test_a_bug_in_monitoring_is_logged_loudly_and_the_user_still_gets_the_answer(api, redis, monkeypatch, caplog):
    def broken(**kwargs):
        raise AttributeError("'Pending' object has no attribute 'take'")

    monkeypatch.setattr(recorder, "flush", broken)
    response = api.nothing()
    assert response.status_code == 404
    assert "writing the buffer failed" in caplog.text and "AttributeError" in caplog.text


def test_the_write_groups_each_minute_with_its_five_minutes_and_its_hour():
    names, args = recorder.write_arguments({(MINUTE, "lat:upstash:1"): 2, (MINUTE, "search:BYPASS"): 1,
                                            (MINUTE - 1, "db:failed"): 1})
    before = MINUTE - 1
    assert names == [f"dousell:meta:metrics:m:{before}", f"dousell:meta:metrics:f:{before // 5}",
                     f"dousell:meta:metrics:h:{before // 60}", f"dousell:meta:metrics:m:{MINUTE}",
                     f"dousell:meta:metrics:f:{MINUTE // 5}", f"dousell:meta:metrics:h:{MINUTE // 60}"]
    assert args == [2 * 3600, 25 * 3600, 8 * 86400, 1, "db:failed", 1, 2, "lat:upstash:1", 2, 2, "search:BYPASS", 1]


def test_each_bucket_is_kept_as_long_as_the_longest_window_reading_it(api, redis, clocks):
    api.read(7)
    ttls = {kind: redis.redis.ttl(f"dousell:meta:metrics:{kind}:{number}")
            for kind, number in zip("mfh", recorder.bucket_numbers(MINUTE), strict=True)}
    assert 3600 < ttls["m"] <= 2 * 3600 and 86400 < ttls["f"] <= 25 * 3600 and 7 * 86400 < ttls["h"] <= 8 * 86400


def test_a_5xx_and_a_request_served_while_redis_was_skipped_are_counted(monkeypatch):
    metrics.pending.clear()
    monkeypatch.setattr(recorder, "flush", lambda **kw: False)
    state = recorder.begin_request("/api/payments")
    upstash.breaker.failure()
    try:
        recorder.end_request(state, "POST", "/api/payments", 12.0, 503)
    finally:
        upstash.breaker.reset()
    assert pending_fields() == {"lat:api:POST /api/payments:15": 1, "http:5xx": 1, "breaker:open": 1}
    metrics.pending.clear()


@pytest.mark.parametrize("path, param, endpoint", [
    ("/api/properties/123", "id", "/api/properties/[id]"),
    ("/api/properties/", None, "/api/properties"),
    ("/api/health.py", None, "/api/health"),
    ("/api/search", None, "/api/search"),
    ("/api/x y:z", None, "/api/x_y_z"),  # nothing an operator would not expect in a field name
])
def test_a_path_is_reduced_to_its_endpoint(path, param, endpoint):
    assert recorder.route(path, param) == endpoint


def test_probes_and_dashboards_are_not_traffic():
    assert recorder.begin_request("/api/health") is None
    assert recorder.begin_request("/api/metrics") is None
