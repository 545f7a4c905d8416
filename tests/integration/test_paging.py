"""Paged lists on the whole stack (vercel dev, the stand-ins, PostgreSQL, Valkey): every listing once across the
pages, each page its own key, a newly published listing reaches every page at once, bad paging is a 422, and the
free slots of a busy listing come bounded."""

from __future__ import annotations

import psycopg
import pytest

from tests.sql.demo import PUBLISHED, PUBLISHED_BY_CITY, VILLA_789
from tests.support import wait_for

FATOU = "fatou.sarr@example.sn"
AT_ONCE = 10.0  # seconds: the webhook's "at once" on a loaded machine (tests/integration/test_invalidation.py)


@pytest.fixture(scope="module")
def sql(stack):
    conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    yield conn
    conn.close()


def ids(stack, path: str) -> list[int]:
    response = stack.api.get(path)
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["properties"]]


def newest_first(sql, city: str | None = None) -> list[int]:
    where = "and lower(city) = lower(%s)" if city else "and %s::text is null"
    return [r[0] for r in sql.execute(
        f"select id from properties where status = 'published' {where} order by created_at desc, id desc", (city,))]


def test_the_pages_hold_every_published_listing_once_newest_first(stack, sql):
    pages = [stack.api.get(f"/api/properties?page={n}&per_page=10").json() for n in range(1, 6)]
    assert [p["count"] for p in pages] == [10, 10, 10, 10, 4]
    assert [row["id"] for p in pages for row in p["properties"]] == newest_first(sql)
    assert {(p["total"], p["per_page"], p["total_estimated"]) for p in pages} == {(PUBLISHED, 10, False)}
    assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]


def test_the_first_page_keeps_the_seeds_key_and_other_pages_have_their_own(stack):
    stack.redis("FLUSHDB")
    stack.api.get("/api/properties")
    stack.api.get("/api/properties?page=2")
    stack.api.get("/api/properties?city=dakar&page=2&per_page=5")
    stack.api.get("/api/properties?city=DAKAR&page=1&per_page=20")  # the default size: the seed's key
    for key in ("dousell:properties:all_public", "dousell:properties:all_public:page:2:20",
                "dousell:properties:city:Dakar:page:2:5", "dousell:properties:city:Dakar"):
        assert stack.redis("EXISTS", key) == 1, key


def test_a_city_is_paged_too(stack, sql):
    first = stack.api.get("/api/properties?city=dakar&per_page=10").json()
    second = stack.api.get("/api/properties?city=Dakar&per_page=10&page=2").json()
    assert first["total"] == second["total"] == PUBLISHED_BY_CITY["Dakar"]
    assert [r["id"] for r in first["properties"] + second["properties"]] == newest_first(sql, "Dakar")


def test_a_listing_published_in_sql_reaches_every_cached_page_at_once(stack, sql):
    paths = ["/api/properties", "/api/properties?page=5&per_page=10", "/api/properties?city=Thies&page=2&per_page=5"]
    for path in paths:
        stack.api.get(path)
        assert stack.api.get(path).headers["x-cache"] == "HIT", path
    owner = sql.execute("select owner_id from properties where id = 201").fetchone()[0]
    new = sql.execute("insert into properties (owner_id, title, description, city, district, type, price, bedrooms, "
                      "status) values (%s, 'Studio neuf à Randoulène', 'Tout neuf.', 'Thiès', 'Randoulène', "
                      "'studio', 90000, 0, 'published') returning id", (owner,)).fetchone()[0]
    try:
        # Newest first: it opens page 1, and every later page shifts by one (the last page gains a row).
        wait_for(lambda: ids(stack, paths[0])[0] == new, timeout=AT_ONCE, what="page 1 shows the new listing")
        last = stack.api.get(paths[1]).json()
        assert (last["total"], last["count"]) == (PUBLISHED + 1, 5)
        thies = stack.api.get(paths[2]).json()
        assert thies["total"] == PUBLISHED_BY_CITY["Thiès"] + 1
    finally:
        sql.execute("delete from properties where id = %s", (new,))
    wait_for(lambda: stack.api.get(paths[1]).json()["count"] == 4, timeout=AT_ONCE, what="deletion shown")


@pytest.mark.parametrize("query, field, code", [
    ("page=0", "page", "greater_than_equal"),
    ("page=abc", "page", "int_parsing"),
    ("page=", "page", "int_parsing"),
    ("per_page=0", "per_page", "greater_than_equal"),
    ("per_page=101", "per_page", "less_than_equal"),
    ("page=51", "page", "page_too_deep"),  # past the 1,000th listing at 20 a page
    ("page=11&per_page=100", "page", "page_too_deep"),
    ("page=99999999999999999999999", "page", "page_too_deep"),
    ("page=1&page=2", "page", "repeated"),
    ("sort=price", "sort", "extra_forbidden"),
])
def test_bad_paging_is_a_422_naming_the_parameter(stack, query, field, code):
    response = stack.api.get(f"/api/properties?{query}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_filter"
    assert [(d["field"], d["code"]) for d in error["details"]] == [(field, code)]


@pytest.mark.parametrize("query, field, code", [
    ("page=51", "page", "page_too_deep"),
    ("page=21&per_page=50", "page", "page_too_deep"),
    ("q=ab", "q", "too_short"),  # no trigram: it would read every listing
])
def test_a_search_too_deep_or_too_short_is_a_422(stack, query, field, code):
    response = stack.api.get(f"/api/search?{query}")
    assert response.status_code == 422, response.text
    assert [(d["field"], d["code"]) for d in response.json()["error"]["details"]] == [(field, code)]


def test_the_last_page_paging_reaches_past_the_end_is_empty_with_the_total(stack):
    body = stack.api.get("/api/properties?page=50").json()
    assert (body["properties"], body["count"], body["total"]) == ([], 0, PUBLISHED)


@pytest.fixture
def busy_villa(sql):
    """Villa 789 with 400 more free slots (a busy agency's listing), removed afterwards with their bookings."""
    added = [r[0] for r in sql.execute("""
        insert into visit_slots (property_id, starts_at, ends_at)
        select %s, t, t + interval '30 minutes'
        from (select date_trunc('hour', now()) + interval '60 days' + n * interval '1 hour' as t
              from generate_series(0, 399) as n) s
        returning id""", (VILLA_789,))]
    yield added
    sql.execute("delete from visits where slot_id = any(%s)", (added,))
    sql.execute("delete from visit_slots where id = any(%s)", (added,))


def test_a_busy_listings_slots_are_the_soonest_300_and_a_later_one_can_still_be_booked(stack, sql, busy_villa):
    path = f"/api/visits/slots?property_id={VILLA_789}"
    wait_for(lambda: len(stack.api.get(path).json()["slots"]) == 300, timeout=AT_ONCE, what="the bounded list")
    slots = stack.api.get(path).json()["slots"]
    assert [s["starts_at"] for s in slots] == sorted(s["starts_at"] for s in slots)
    later = sql.execute("select starts_at from visit_slots where id = %s", (busy_villa[-1],)).fetchone()[0]
    assert later.isoformat() not in {s["starts_at"] for s in slots}
    booked = stack.api.post("/api/visits", headers=stack.auth(FATOU),
                            json={"property_id": VILLA_789, "starts_at": later.isoformat()})
    assert booked.status_code == 201, booked.text
