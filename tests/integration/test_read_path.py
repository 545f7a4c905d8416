"""The read path on the local stack: cache statuses, updates visible at once, and Redis down."""

from __future__ import annotations

import pytest

from tests.support import wait_for

AWA = "awa.ndiaye@example.sn"
MOUSSA = "moussa.diop@example.sn"

PUBLIC_READS = [
    "/api/properties",
    "/api/properties?city=dakar",
    "/api/properties/123",
    "/api/search?city=Dakar&min_price=10000",
    "/api/visits/slots?property_id=789",
]
PRIVATE_READS = [
    ("/api/dashboard", AWA),
    ("/api/profile", MOUSSA),
    ("/api/notifications", MOUSSA),
]


def get(stack, path, email=None):
    return stack.api.get(path, headers=stack.auth(email) if email else None)


@pytest.mark.parametrize("path, email", [(p, None) for p in PUBLIC_READS] + PRIVATE_READS)
def test_a_read_is_a_miss_then_a_hit_with_the_same_body(stack, path, email):
    stack.redis("FLUSHDB")
    first = get(stack, path, email)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS"
    second = get(stack, path, email)
    assert second.headers["x-cache"] == "HIT"
    assert second.json() == first.json()
    timing = second.headers["server-timing"]
    assert "cache;dur=" in timing and "total;dur=" in timing and "db;dur=" not in timing


def test_the_contract_keys_are_where_an_operator_looks(stack):
    stack.redis("FLUSHDB")
    for path in ("/api/properties", "/api/properties?city=DAKAR", "/api/properties/123",
                 "/api/visits/slots?property_id=789"):
        get(stack, path)
    get(stack, "/api/dashboard", AWA)
    owner = get(stack, "/api/profile", AWA).json()["profile"]["id"]
    for key in ("dousell:properties:all_public", "dousell:properties:city:Dakar", "dousell:properties:detail:123",
                "dousell:visits:available_slots:789", f"dousell:dashboard:owner_{owner}"):
        assert stack.redis("EXISTS", key) == 1, key


def test_one_search_hits_however_its_query_string_is_ordered(stack):
    stack.redis("FLUSHDB")
    assert get(stack, "/api/search?city=Dakar&type=apartment&min_price=1000").headers["x-cache"] == "MISS"
    again = get(stack, "/api/search?min_price=1000&type=apartment&city=%20dakar%20&page=1")
    assert again.headers["x-cache"] == "HIT"


def test_after_a_patch_returns_every_get_that_can_show_the_property_shows_the_new_value(stack):
    stack.redis("FLUSHDB")
    views = ["/api/properties?per_page=100", "/api/properties?city=Dakar", "/api/properties?city=Thiès", "/api/properties/123",
             "/api/search?city=Dakar", "/api/search?city=Thies", "/api/search?q=appartement"]
    for path in views:
        get(stack, path)
    get(stack, "/api/dashboard", AWA)
    original = get(stack, "/api/properties/123").json()["property"]

    patch = stack.api.patch("/api/properties/123", headers=stack.auth(AWA),
                            json={"price": 654_321, "city": "Thiès", "title": "Appartement déplacé à Thiès"})
    assert patch.status_code == 200, patch.text
    assert patch.json()["property"]["price"] == 654_321

    def shown(path):
        body = get(stack, path).json()
        rows = body.get("properties") or body.get("results") or [body.get("property")]
        return {row["id"]: row for row in rows if row}

    assert shown("/api/properties/123")[123]["price"] == 654_321
    assert shown("/api/properties?per_page=100")[123]["city"] == "Thiès"  # one page holds the 44
    assert 123 not in shown("/api/properties?city=Dakar"), "the old city list still shows it"
    assert shown("/api/properties?city=Thiès")[123]["price"] == 654_321
    assert 123 not in shown("/api/search?city=Dakar")
    assert shown("/api/search?city=Thies")[123]["price"] == 654_321
    assert get(stack, "/api/dashboard", AWA).headers["x-cache"] == "MISS"

    restore = {name: original[name] for name in ("price", "city", "title")}
    back = stack.api.patch("/api/properties/123", headers=stack.auth(AWA), json=restore)
    assert back.status_code == 200
    assert shown("/api/properties?city=Dakar")[123]["price"] == original["price"]


def test_a_patch_by_another_owner_is_refused_and_changes_nothing(stack):
    before = get(stack, "/api/properties/123").json()
    response = stack.api.patch("/api/properties/123", headers=stack.auth("ibrahima.fall@example.sn"),
                               json={"price": 1})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert get(stack, "/api/properties/123").json() == before


def test_with_redis_stopped_every_read_still_answers_and_hits_again_once_it_is_back(stack):
    stack.devstack("redis-stop")
    try:
        health = stack.api.get("/api/health").json()
        assert health["redis"] == "down" and health["database"] == "up"
        for path, email in [(p, None) for p in PUBLIC_READS] + PRIVATE_READS:
            response = get(stack, path, email)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["x-cache"] == "BYPASS", path
    finally:
        stack.devstack("redis-start")
    wait_for(lambda: stack.api.get("/api/health").json()["redis"] == "up", timeout=30, what="redis back up")
    for path, email in [(p, None) for p in PUBLIC_READS] + PRIVATE_READS:
        wait_for(lambda p=path, e=email: get(stack, p, e).headers["x-cache"] == "HIT", timeout=40, interval=0.5,
                 what=f"{path} to hit again")


@pytest.mark.parametrize("path, status, code", [
    ("/api/search?colour=red&min_price=-1", 422, "invalid_filter"),  # unknown filter and a bad value, both listed
    ("/api/search?min_price=500&max_price=100", 422, "invalid_filter"),  # range upside down
    ("/api/search?q=%2A%2C%28", 422, "invalid_filter"),  # PostgREST syntax in the text search
    ("/api/search?per_page=1000", 422, "invalid_filter"),
    ("/api/properties?city=Dakar%3A%2A", 422, "invalid_filter"),  # key injection through the city
    ("/api/properties?town=Dakar", 422, "invalid_filter"),
    ("/api/properties/abc", 404, "not_found"),
    ("/api/properties/999999", 404, "not_found"),
    ("/api/properties/117", 404, "not_found"),  # a draft is not public
    ("/api/visits/slots", 422, "invalid_filter"),
    ("/api/visits/slots?property_id=-4", 422, "invalid_filter"),
    ("/api/visits/slots?property_id=999999", 404, "not_found"),
    ("/api/dashboard", 401, "authentication_required"),
])
def test_bad_reads_get_the_contract_error_and_never_a_500(stack, path, status, code):
    response = get(stack, path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_a_tenant_has_no_dashboard(stack):
    response = get(stack, "/api/dashboard", MOUSSA)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_a_search_page_past_the_end_is_empty_with_the_total(stack):
    body = get(stack, "/api/search?page=50").json()  # the deepest page paging reaches (1,000 listings)
    assert body["results"] == [] and body["page"] == 50 and body["total"] >= 40


def test_private_entries_are_per_user(stack):
    stack.redis("FLUSHDB")
    moussa = get(stack, "/api/profile", MOUSSA).json()["profile"]
    awa = get(stack, "/api/profile", AWA).json()["profile"]
    assert moussa["email"] == MOUSSA and awa["email"] == AWA
    assert get(stack, "/api/notifications", AWA).json() != get(stack, "/api/notifications", MOUSSA).json()
