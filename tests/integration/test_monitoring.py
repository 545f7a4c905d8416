"""/api/metrics on the local stack, through `vercel dev`: known traffic in, exact counts out.

Each function keeps its own buffer in its warm process, and a request's own durations leave
with that process's next Upstash call. So a test first empties the buffers of the functions it
drives (a request that makes no Redis call sends the buffer at its end), flushes Redis, then
drives its traffic and ends with one such request per function: every count is then in Redis.
"""

from __future__ import annotations

import pytest

from tests.support import wait_for

MOUSSA = "moussa.diop@example.sn"
# A request per function that answers without touching Redis (404/422): it sends the buffer.
NO_REDIS = {
    "/api/properties/[id]": "/api/properties/not-a-number",
    "/api/properties": "/api/properties?unknown=1",
    "/api/search": "/api/search?unknown=1",
}


def metrics(stack, token, window="last_hour"):
    response = stack.api.get("/api/metrics", params={"window": window}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def send_buffers(stack, *endpoints):
    for endpoint in endpoints:
        assert stack.api.get(NO_REDIS[endpoint]).status_code in (404, 422)


@pytest.fixture
def clean(stack):
    """Buffers sent, then Redis emptied: only what the test drives is counted."""
    send_buffers(stack, *NO_REDIS)
    stack.redis("FLUSHDB")


def test_without_the_token_it_is_401_and_with_a_wrong_one_too(stack):
    assert stack.api.get("/api/metrics").json()["error"]["code"] == "authentication_required"
    wrong = stack.api.get("/api/metrics", headers={"Authorization": "Bearer dev-metrics-tokenX"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_token")


def test_known_reads_give_exact_hits_misses_queries_and_request_counts(stack, metrics_token, clean):
    statuses = {
        "/api/properties/123": [stack.api.get("/api/properties/123").headers["x-cache"] for _ in range(5)],
        "/api/properties?city=Dakar": [stack.api.get("/api/properties?city=Dakar").headers["x-cache"]
                                       for _ in range(3)],
        "/api/search?city=Dakar": [stack.api.get("/api/search?city=Dakar").headers["x-cache"] for _ in range(2)],
    }
    assert statuses == {
        "/api/properties/123": ["MISS", "HIT", "HIT", "HIT", "HIT"],
        "/api/properties?city=Dakar": ["MISS", "HIT", "HIT"],
        "/api/search?city=Dakar": ["MISS", "HIT"],
    }
    send_buffers(stack, *NO_REDIS)

    body = metrics(stack, metrics_token)
    families = body["cache"]["families"]
    assert {f: (families[f]["hits"], families[f]["misses"]) for f in ("property_detail", "properties_list", "search")} \
        == {"property_detail": (4, 1), "properties_list": (2, 1), "search": (1, 1)}
    assert all(families[f]["reads"] == 0 for f in ("dashboard", "profile", "notifications", "payments", "visit_slots"))
    assert (body["cache"]["hits"], body["cache"]["misses"], body["cache"]["hit_rate"]) == (7, 3, 0.7)
    assert body["database"]["by_family"] == {"property_detail": 1, "properties_list": 1, "search": 1}
    assert (body["database"]["queries_served"], body["database"]["queries_avoided"]) == (3, 7)
    endpoints = body["latency"]["api"]["endpoints"]
    assert {name: figures["count"] for name, figures in endpoints.items()} == {
        "GET /api/properties/[id]": 5 + 1, "GET /api/properties": 3 + 1, "GET /api/search": 2 + 1}
    assert body["latency"]["api"]["count"] == 13 and body["latency"]["api"]["p50_ms"] is not None
    assert body["latency"]["upstash"]["count"] >= 10  # at least one call per read (more after a script reload)
    assert body["redis"]["keys"] >= 5 and body["redis"]["used_memory_bytes"] > 0
    assert body["redis"]["max_memory_bytes"] == 256 * 1024 * 1024  # the stack Valkey's maxmemory (Upstash's free plan)


def test_the_last_24_hours_see_the_same_traffic_in_the_hour_buckets(stack, metrics_token, clean):
    for _ in range(3):
        stack.api.get("/api/properties/123")
    hour = metrics(stack, metrics_token)["cache"]["families"]["property_detail"]
    day = metrics(stack, metrics_token, "last_24h")["cache"]["families"]["property_detail"]
    assert (hour["hits"], hour["misses"]) == (day["hits"], day["misses"]) == (2, 1)


def test_a_payment_refused_by_its_lock_is_a_double_operation_prevented(stack, metrics_token, clean):
    stack.redis("SET", "dousell:lock:payment:lease123", "another-request", "PX", 30_000)
    try:
        response = stack.api.post("/api/payments", headers=stack.auth(MOUSSA), json={"lease_id": 123})
        assert (response.status_code, response.json()["error"]["code"]) == (409, "payment_in_progress")
    finally:
        stack.redis("DEL", "dousell:lock:payment:lease123")
    locks = metrics(stack, metrics_token)["locks"]
    assert locks["kinds"]["payment"] == {"acquired": 0, "blocked": 1, "expired": 0, "unavailable": 0}
    assert (locks["double_operations_prevented"], locks["prevented_rate"]) == (1, 1.0)


def test_with_redis_stopped_metrics_are_503_and_the_bypasses_are_counted_once_it_is_back(stack, metrics_token,
                                                                                       clean):
    seen = []
    stack.devstack("redis-stop")
    try:
        down = stack.api.get("/api/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
        assert (down.status_code, down.json()["error"]["code"]) == (503, "metrics_unavailable")
        for _ in range(3):
            seen.append(stack.api.get("/api/properties/123").headers["x-cache"])
        assert seen == ["BYPASS"] * 3
    finally:
        stack.devstack("redis-start")

    def read_cached():
        seen.append(stack.api.get("/api/properties/123").headers["x-cache"])
        return seen[-1] != "BYPASS"

    wait_for(read_cached, timeout=40, interval=0.5, what="reads to use Redis again")
    send_buffers(stack, "/api/properties/[id]")
    detail = metrics(stack, metrics_token)["cache"]["families"]["property_detail"]
    assert detail["bypasses"] == seen.count("BYPASS")
    assert detail["misses"] + detail["hits"] == len(seen) - seen.count("BYPASS")
