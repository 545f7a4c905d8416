"""Reads right after an owner's change, on the local stack: the keys the PATCH refilled are hits, with the new value."""

from __future__ import annotations

AWA = "awa.ndiaye@example.sn"
VIEWS = ("/api/properties/123", "/api/properties", "/api/properties?city=Dakar")


def get(stack, path):
    return stack.api.get(path)


def price_of(response, property_id=123):
    body = response.json()
    rows = body.get("properties") or [body.get("property")]
    return next(row["price"] for row in rows if row and row["id"] == property_id)


def patch(stack, changes):
    response = stack.api.patch("/api/properties/123", headers=stack.auth(AWA), json=changes)
    assert response.status_code == 200, response.text
    return response.json()["property"]


def test_after_a_price_change_its_detail_and_lists_are_hits_with_the_new_price(stack):
    stack.redis("FLUSHDB")
    for path in VIEWS:
        get(stack, path)
    original = price_of(get(stack, "/api/properties/123"))
    try:
        patch(stack, {"price": original + 1_000})
        for path in VIEWS:
            response = get(stack, path)
            assert (response.headers["x-cache"], price_of(response)) == ("HIT", original + 1_000), path
            assert "db;dur=" not in response.headers["server-timing"], f"{path} asked the database"
    finally:
        patch(stack, {"price": original})


def test_a_property_taken_off_the_market_is_a_404_at_once_and_leaves_the_lists(stack):
    stack.redis("FLUSHDB")
    for path in VIEWS:
        get(stack, path)
    try:
        patch(stack, {"status": "draft"})
        detail = get(stack, "/api/properties/123")
        assert (detail.status_code, detail.headers["x-cache"]) == (404, "HIT"), "refilled as not published"
        for path in VIEWS[1:]:
            response = get(stack, path)
            assert response.headers["x-cache"] == "MISS", f"{path}: the row leaves it, the writer cannot patch that"
            assert 123 not in {row["id"] for row in response.json()["properties"]}
    finally:
        patch(stack, {"status": "published"})
    assert get(stack, "/api/properties/123").status_code == 200
