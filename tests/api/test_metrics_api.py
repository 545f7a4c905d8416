"""GET /api/metrics on a real loopback server: the bearer token, the windows, one Upstash call, 503.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py).
"""

from __future__ import annotations

import importlib
import types

import httpx
import pytest
from redis.exceptions import ResponseError

from lib import bearer, metrics
from tests.fakes import fake_upstash
from tests.support import serve

metrics_api = importlib.import_module("api.metrics")
TOKEN = "s3cret-metrics-token"
NOW = 1_800_000_030.0
MINUTE, HOUR = int(NOW) // 60, int(NOW) // 3600


@pytest.fixture
def redis(monkeypatch):
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    monkeypatch.setattr(metrics, "clock", lambda: NOW)
    metrics.pending.clear()
    with fake_upstash(monkeypatch, local=True) as fake:
        yield fake
    metrics.pending.clear()


@pytest.fixture(scope="module")
def base():
    with serve(metrics_api.handler) as url:
        yield url


@pytest.fixture
def client(redis, base):
    with httpx.Client(base_url=base, timeout=10) as http:
        yield http


def authorized(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def known_traffic(redis):
    """What the read path would have written: 9 hits and 1 miss on property_detail, spread over
    two minutes of the last hour and, in the 24 h view, an older hour with 30 more hits."""
    for kind, number, fields in [
        ("m", MINUTE, {"property_detail:HIT": 5, "property_detail:LOAD": 1, "db:q:property_detail": 1,
                       "lat:api:GET /api/properties/[id]:3": 6, "lat:upstash:1": 7, "lock:payment:blocked": 1,
                       "lock:payment:acquired": 1}),
        ("m", MINUTE - 59, {"property_detail:HIT": 4, "lat:api:GET /api/properties/[id]:3": 4}),
        ("m", MINUTE - 60, {"property_detail:HIT": 1000}),  # 61 minutes ago: outside the last hour
        ("f", MINUTE // 5, {"property_detail:HIT": 9, "property_detail:LOAD": 1}),
        ("f", MINUTE // 5 - 287, {"property_detail:HIT": 30}),
        ("f", MINUTE // 5 - 288, {"property_detail:HIT": 1000}),  # outside the last 24 hours
        ("h", HOUR, {"property_detail:HIT": 9, "property_detail:LOAD": 1}),
        ("h", HOUR - 167, {"property_detail:HIT": 70}),
        ("h", HOUR - 168, {"property_detail:HIT": 1000}),  # outside the last 7 days
    ]:
        for name, amount in fields.items():
            redis.redis.hincrby(f"dousell:meta:metrics:{kind}:{number}", name, amount)


def test_without_a_token_it_is_401_authentication_required(client):
    response = client.get("/api/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_required"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x",  # one character more
    f"Bearer {TOKEN[:-1]}",  # one less
    f"Basic {TOKEN}",  # another scheme
    "Bearer",  # no token at all
    f"Bearer{TOKEN}",
])
def test_a_wrong_token_is_401_invalid_token(client, redis, header):
    response = client.get("/api/metrics", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert redis.calls == [], "nothing is read for a stranger"


def test_the_token_is_compared_in_constant_time(client, monkeypatch):
    seen = []
    real = bearer.hmac.compare_digest
    spy = types.SimpleNamespace(compare_digest=lambda a, b: seen.append((a, b)) or real(a, b))
    monkeypatch.setattr(bearer, "hmac", spy)
    assert client.get("/api/metrics", headers=authorized()).status_code == 200
    assert seen == [(TOKEN.encode(), TOKEN.encode())]


def test_the_scheme_is_case_insensitive(client):
    assert client.get("/api/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_without_metrics_token_configured_it_says_which_variable(client, monkeypatch):
    monkeypatch.delenv("METRICS_TOKEN")
    response = client.get("/api/metrics", headers=authorized())
    assert response.status_code == 500
    assert response.json()["error"]["details"] == {"variable": "METRICS_TOKEN"}


def test_the_last_hour_sums_sixty_minute_buckets_in_one_upstash_call(client, redis):
    known_traffic(redis)
    client.get("/api/metrics", headers=authorized())  # the script's first use: NOSCRIPT, then its text
    redis.calls.clear()
    redis.engine.reset_stats()
    metrics.pending.add("lat:upstash:1", minute=MINUTE)  # something buffered: never sent from here
    response = client.get("/api/metrics", headers=authorized())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert (body["window"], body["from"], body["to"]) == ("1h", "2027-01-15T07:01:00Z", "2027-01-15T08:00:30Z")
    detail = body["cache"]["families"]["property_detail"]
    assert (detail["hits"], detail["misses"], detail["hit_rate"]) == (9, 1, 0.9)
    assert (body["cache"]["hits"], body["cache"]["misses"], body["cache"]["hit_rate"]) == (9, 1, 0.9)
    assert body["latency"]["api"]["endpoints"]["GET /api/properties/[id]"] == {
        "count": 10, "p50_ms": 2.5, "p95_ms": 2.95, "p50_above": False, "p95_above": False}
    assert body["latency"]["upstash"]["count"] == 7
    assert (body["locks"]["acquired"], body["locks"]["blocked"], body["locks"]["prevented_rate"]) == (1, 1, 1.0)
    assert body["database"] == {"queries_served": 1, "queries_failed": 0, "queries_avoided": 9,
                                "by_family": {"property_detail": 1}}
    memory = redis.redis.info("memory")
    assert body["redis"]["max_memory_bytes"] == memory["maxmemory"] == 256 * 1024 * 1024
    assert 0 < body["redis"]["used_memory_bytes"] <= memory["used_memory"] * 2
    assert (body["redis"]["keys"], body["redis"]["refused_writes"]) == (9, 0)
    assert body["objectives"]["hit_rate"] == 0.9 and body["objectives"]["latency_p50_ms"] == 10
    assert len(redis.calls) == 1
    kind, commands = redis.calls[0]
    assert kind == "PIPELINE" and [c[0] for c in commands] == ["EVALSHA_RO", "INFO", "DBSIZE"]
    assert commands[0][2] == 61  # the sixty minute buckets and the alerts' state, read by one read-only script
    series = body["series"]
    assert (series["step_seconds"], len(series["t"]), series["t"][-1]) == (60, 60, MINUTE * 60)
    assert series["hit_rate"][0] == 1.0 and series["hit_rate"][-1] == 0.8333 and series["hit_rate"][1] is None
    assert series["requests"][-1] == 6 and series["locks"]["blocked"][-1] == 1
    assert body["alerts"] == []
    assert (redis.stats.billed, redis.stats.scripts_global_lock) == (2, 0), "INFO is not billed"
    assert len(metrics.pending) == 1, "a metrics request records nothing and writes nothing"


@pytest.mark.parametrize("window, points, hits", [
    ("24h", 288, 39),  # five-minute buckets
    ("last_24h", 288, 39),  # the first page's name, still answered
    ("7d", 168, 79),  # hour buckets
])
def test_the_longer_windows_read_their_own_buckets(client, redis, window, points, hits):
    known_traffic(redis)
    body = client.get("/api/metrics", params={"window": window}, headers=authorized()).json()
    assert body["window"] == window and len(body["series"]["t"]) == points
    assert body["cache"]["families"]["property_detail"]["hits"] == hits
    assert redis.calls[0][1][0][2] == points + 1, "the window's buckets and the alerts' state"


def test_the_alerts_firing_are_listed_with_their_start(client, redis):
    redis.redis.set("dousell:meta:alerts", '{"_minute": 1, "hit_rate": {"firing": true, "since": 1800000000, '
                                           '"message": "Taux bas."}, "locks": {"firing": false}}')
    body = client.get("/api/metrics", headers=authorized()).json()
    assert body["alerts"] == [{"name": "hit_rate", "since": "2027-01-15T08:00:00Z", "message": "Taux bas."}]


def test_an_empty_window_answers_zeros_not_an_error(client):
    body = client.get("/api/metrics", headers=authorized()).json()
    assert body["cache"]["reads"] == 0 and body["cache"]["hit_rate"] is None
    assert body["latency"]["api"]["p50_ms"] is None


@pytest.mark.parametrize("query, field", [
    ({"window": "last_week"}, "window"),  # not a window we keep
    ({"window": "last_hour", "family": "search"}, "family"),  # unknown parameter
])
def test_a_bad_query_is_422_invalid_filter(client, query, field):
    response = client.get("/api/metrics", params=query, headers=authorized())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_filter"
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


@pytest.mark.parametrize("down", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
def test_redis_down_is_503_metrics_unavailable(client, redis, down):
    redis.down = down
    response = client.get("/api/metrics", headers=authorized())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "metrics_unavailable"


def test_redis_without_info_still_answers_the_counts(client, redis, monkeypatch):
    real = redis.engine.execute

    def without_info(commands, **kwargs):  # a server that refuses INFO
        replies = real(commands, **kwargs)
        return [ResponseError("ERR unknown command 'info'") if c[0].upper() == b"INFO" else r
                for c, r in zip(commands, replies, strict=True)]

    monkeypatch.setattr(redis.engine, "execute", without_info)
    known_traffic(redis)
    body = client.get("/api/metrics", headers=authorized()).json()
    assert body["redis"]["used_memory_bytes"] is None and body["redis"]["keys"] == 9
    assert body["cache"]["hits"] == 9
