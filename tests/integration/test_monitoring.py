"""/api/metrics on the local stack, through `vercel dev`: known traffic in, exact counts out.

Each function keeps its counts in its warm process and writes them at most once every 5 s, so a
test drains the functions it drives before it reads the figures (tests/integration/conftest.py,
`Drain`): every count is then exactly the traffic's.
"""

from __future__ import annotations

import httpx
import pytest

from devstack.__main__ import UPSTASH_TOKEN
from tests.integration.conftest import Drain
from tests.support import wait_for

MOUSSA = "moussa.diop@example.sn"


def metrics(stack, token, window="last_hour"):
    response = stack.api.get("/api/metrics", params={"window": window}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def upstash_stats(stack, *, reset: bool = False) -> dict:
    """What the Upstash stand-in counted (billed commands, scripts by lock) since its last reset."""
    headers = {"Authorization": f"Bearer {UPSTASH_TOKEN}"}
    if reset:
        httpx.post(f"{stack.upstash_url}/__devstack/stats/reset", headers=headers, timeout=5).raise_for_status()
    response = httpx.get(f"{stack.upstash_url}/__devstack/stats", headers=headers, timeout=5)
    response.raise_for_status()
    return response.json()["result"]


@pytest.fixture
def drain(stack, metrics_token):
    """Every function drained, then Redis emptied: only what the test drives is counted."""
    return Drain.clean(stack, metrics_token)


def test_without_the_token_it_is_401_and_with_a_wrong_one_too(stack):
    assert stack.api.get("/api/metrics").json()["error"]["code"] == "authentication_required"
    wrong = stack.api.get("/api/metrics", headers={"Authorization": "Bearer dev-metrics-tokenX"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_token")


def test_known_reads_give_exact_hits_misses_queries_and_request_counts(stack, metrics_token, drain):
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
    drain("/api/properties/[id]", "/api/properties", "/api/search")

    body = metrics(stack, metrics_token)
    families = body["cache"]["families"]
    assert {f: (families[f]["hits"], families[f]["misses"]) for f in ("property_detail", "properties_list", "search")} \
        == {"property_detail": (4, 1), "properties_list": (2, 1), "search": (1, 1)}
    assert all(families[f]["reads"] == 0 for f in ("dashboard", "profile", "notifications", "payments", "visit_slots"))
    assert (body["cache"]["hits"], body["cache"]["misses"], body["cache"]["hit_rate"]) == (7, 3, 0.7)
    assert body["database"]["by_family"] == {"property_detail": 1, "properties_list": 1, "search": 1}
    assert (body["database"]["queries_served"], body["database"]["queries_avoided"]) == (3, 7)
    endpoints = body["latency"]["api"]["endpoints"]
    assert {name: figures["count"] for name, figures in endpoints.items() if name.startswith("GET ")} == {
        "GET /api/properties/[id]": 5, "GET /api/properties": 3, "GET /api/search": 2}
    assert body["latency"]["api"]["p50_ms"] is not None
    assert body["latency"]["upstash"]["count"] >= 10  # at least one call per read (more for a miss)
    assert body["redis"]["keys"] >= 5 and body["redis"]["used_memory_bytes"] > 0
    assert body["redis"]["max_memory_bytes"] == 256 * 1024 * 1024  # the stack Valkey's maxmemory (Upstash's free plan)
    assert body["redis"]["refused_writes"] == 0


def test_a_hit_costs_one_billed_command_on_the_stack(stack, drain):
    stack.api.get("/api/properties/123")  # filled
    upstash_stats(stack, reset=True)
    for _ in range(10):
        assert stack.api.get("/api/properties/123").headers["x-cache"] == "HIT"
    stats = upstash_stats(stack)
    # Ten hits: ten READs on the leader (EVALSHA), plus at most the function's own metrics write (once per 5 s).
    assert 10 <= stats["by_command"].get("EVALSHA", 0) <= 11 and "MGET" not in stats["by_command"]
    assert stats["by_node"].get("leader", 0) >= 10
    assert 10 <= stats["billed"] <= 11 and stats["scripts_global_lock"] == 0


def test_the_last_24_hours_see_the_same_traffic_in_the_hour_buckets(stack, metrics_token, drain):
    for _ in range(3):
        stack.api.get("/api/properties/123")
    drain("/api/properties/[id]")
    hour = metrics(stack, metrics_token)["cache"]["families"]["property_detail"]
    day = metrics(stack, metrics_token, "last_24h")["cache"]["families"]["property_detail"]
    assert (hour["hits"], hour["misses"]) == (day["hits"], day["misses"]) == (2, 1)


def test_a_payment_refused_by_its_lock_is_a_double_operation_prevented(stack, metrics_token, drain):
    stack.redis("SET", "dousell:lock:payment:lease123", "another-request", "PX", 30_000)
    try:
        response = stack.api.post("/api/payments", headers=stack.auth(MOUSSA), json={"lease_id": 123})
        assert (response.status_code, response.json()["error"]["code"]) == (409, "payment_in_progress")
    finally:
        stack.redis("DEL", "dousell:lock:payment:lease123")
    drain("/api/payments")
    locks = metrics(stack, metrics_token)["locks"]
    assert locks["kinds"]["payment"] == {"acquired": 0, "blocked": 1, "expired": 0, "unavailable": 0}
    assert (locks["double_operations_prevented"], locks["prevented_rate"]) == (1, 1.0)


def test_with_redis_stopped_metrics_are_503_and_the_bypasses_are_counted_once_it_is_back(stack, metrics_token,
                                                                                       drain):
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
    drain("/api/properties/[id]")
    detail = metrics(stack, metrics_token)["cache"]["families"]["property_detail"]
    assert detail["bypasses"] == seen.count("BYPASS")
    assert detail["misses"] + detail["hits"] == len(seen) - seen.count("BYPASS")
