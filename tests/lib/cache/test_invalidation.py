"""lib/cache/invalidation: the one map from a table and a row's old and new versions to the tags a change bumps."""

from __future__ import annotations

import json

import pytest

from lib import keys
from lib.cache import invalidation


@pytest.fixture(autouse=True)
def default_namespace(monkeypatch):
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)


AWA, IBRAHIMA, MOUSSA = "owner-awa", "owner-ibrahima", "tenant-moussa"
P123 = {"id": 123, "owner_id": AWA, "city": "Dakar", "status": "published", "price": 50000}


@pytest.mark.parametrize("table, old, new, owners, expected", [
    # a published property: its lists, its city, every search, its detail and slots, its owner's dashboard
    ("properties", P123, {**P123, "price": 60000}, (),
     {"properties:public", "properties:city:dakar", "search", "property:123", "slots:123", f"dashboard:{AWA}"}),
    # moved to Thiès: both cities' lists
    ("properties", P123, {**P123, "city": "Thiès"}, (),
     {"properties:public", "properties:city:dakar", "properties:city:thies", "search", "property:123", "slots:123",
      f"dashboard:{AWA}"}),
    # a draft edited as a draft: no public list or search ever showed it
    ("properties", {**P123, "status": "draft"}, {**P123, "status": "draft", "price": 1}, (),
     {"property:123", "slots:123", f"dashboard:{AWA}"}),
    # published from a draft (Studio): the cached 404 of its detail and slots goes too
    ("properties", {**P123, "status": "draft"}, P123, (),
     {"properties:public", "properties:city:dakar", "search", "property:123", "slots:123", f"dashboard:{AWA}"}),
    # created by the web app, deleted in SQL
    ("properties", None, P123, (),
     {"properties:public", "properties:city:dakar", "search", "property:123", "slots:123", f"dashboard:{AWA}"}),
    ("properties", P123, None, (),
     {"properties:public", "properties:city:dakar", "search", "property:123", "slots:123", f"dashboard:{AWA}"}),
    # handed to another owner: both dashboards, and who may read its leases' payments
    ("properties", P123, {**P123, "owner_id": IBRAHIMA}, (),
     {"properties:public", "properties:city:dakar", "search", "property:123", "slots:123", f"dashboard:{AWA}",
      f"dashboard:{IBRAHIMA}", "leases:parties"}),
    # a lease: who its parties are (a cached "no such lease" included), the owner's active leases
    ("leases", None, {"id": 124, "property_id": 202, "tenant_id": MOUSSA, "status": "active"}, (IBRAHIMA,),
     {"lease:124", f"dashboard:{IBRAHIMA}"}),
    ("rental_payments", {"id": 9, "lease_id": 123, "status": "pending"}, {"id": 9, "lease_id": 123, "status": "completed"},
     (AWA,), {"payments:lease:123", f"dashboard:{AWA}"}),
    ("visits", None, {"id": 1, "property_id": 789, "visitor_id": MOUSSA, "status": "booked"}, (AWA,),
     {"slots:789", f"dashboard:{AWA}", f"visits:user:{MOUSSA}", f"visits:user:{AWA}"}),
    ("visit_slots", None, {"id": 5, "property_id": 789}, (AWA,), {"slots:789"}),
    # a profile: itself, and the dashboard that caches "not an owner" for a tenant
    ("profiles", {"id": MOUSSA, "role": "tenant"}, {"id": MOUSSA, "role": "owner"}, (),
     {f"profile:{MOUSSA}", f"dashboard:{MOUSSA}"}),
    ("notifications", None, {"id": 3, "user_id": MOUSSA}, (), {f"notifications:{MOUSSA}"}),
])
def test_a_change_bumps_every_tag_its_row_can_appear_under(table, old, new, owners, expected):
    assert set(invalidation.change_tags(table, old, new, owners)) == expected


def test_every_table_the_api_shows_is_in_the_map():
    assert set(invalidation.TABLES) == {"properties", "leases", "rental_payments", "visits", "visit_slots", "profiles",
                                "notifications"}


def test_a_table_the_map_does_not_know_voids_every_public_list_and_search():
    assert invalidation.change_tags("auth_users", None, {"id": 1}) == ["properties:public", "search"]


@pytest.mark.parametrize("stored", ["Dakar", "dakar", "  DAKAR ", "DaKaR"])
def test_any_stored_spelling_of_a_city_bumps_the_list_of_its_canonical_name(stored):
    row = {**P123, "city": stored}
    assert keys.properties_city("Dakar").tags[0] in invalidation.change_tags("properties", None, row)


@pytest.mark.parametrize("stored, list_city", [("thies", "Thiès"), ("THIÈS", "Thiès"), ("saint-louis", "Saint-Louis")])
def test_accents_and_case_do_not_split_a_citys_tag(stored, list_city):
    assert keys.properties_city(list_city).tags[0] in invalidation.change_tags("properties", None, {**P123, "city": stored})


@pytest.mark.parametrize("city", ["a:b*", "Dakar!!", "x" * 5000, "\x00\r\nFLUSHALL", "{tag}", 42])
def test_a_city_the_api_would_refuse_never_breaks_the_map_nor_a_key(city):
    tags = invalidation.change_tags("properties", None, {**P123, "city": city})
    [city_tag] = [t for t in tags if t.startswith("properties:city:")]
    assert not any(c in city_tag.removeprefix("properties:city:") for c in ":*{}\r\n ")


@pytest.mark.parametrize("row", [{}, {"id": None}, {"id": "abc"}, {"id": True}, {"id": 1.5}, {"owner_id": 7}])
def test_rows_missing_their_keys_never_break_the_map(row):
    for table in invalidation.TABLES:
        invalidation.change_tags(table, row, row, [None, ""])


def test_every_tag_the_map_bumps_is_carried_by_a_key_the_api_reads_and_every_key_is_reached():
    # One list to review: the map and the key families must agree in both directions.
    read = {tag for entry in (
        keys.properties_all(), keys.properties_city("Dakar"), keys.property_detail(123), keys.search({}),
        keys.visit_slots(123), keys.visit_slots(789), keys.dashboard(AWA), keys.dashboard(MOUSSA),
        keys.profile(MOUSSA), keys.notifications(MOUSSA), keys.payments(123), keys.user_visits(MOUSSA),
        keys.user_visits(AWA), keys.lease_parties(124),
    ) for tag in entry.tags}
    bumped = set()
    for table, old, new, owners, _ in [
        ("properties", P123, {**P123, "owner_id": MOUSSA}, (), None),
        ("leases", None, {"id": 124}, (AWA,), None),
        ("rental_payments", None, {"lease_id": 123}, (AWA,), None),
        ("visits", None, {"property_id": 789, "visitor_id": MOUSSA}, (AWA,), None),
        ("profiles", None, {"id": MOUSSA}, (), None),
        ("notifications", None, {"user_id": MOUSSA}, (), None),
    ]:
        bumped |= set(invalidation.change_tags(table, old, new, owners))
    assert bumped - read == set(), "a tag nobody reads"
    assert read - bumped == set(), "a key no change invalidates"


def test_a_property_known_by_id_owner_and_cities_is_the_map_too():
    assert set(invalidation.property_changed(123, AWA, {"Dakar", "Thiès"})) == set(
        invalidation.change_tags("properties", P123, {**P123, "city": "Thiès"}))


def test_names_and_values_read_from_a_webhook_body_are_compared_by_value():
    # The webhook's and the outbox's rows come out of JSON: each string equal to the literal the map
    # compares it with, never the same object (`is` would tell them apart).
    body = json.loads(json.dumps({"table": "properties", "old_record": P123, "record": {**P123, "price": 1}}))
    tags = invalidation.change_tags(body["table"], body["old_record"], body["record"])
    assert "properties:public" in tags, "a published row stays public"
    assert "leases:parties" not in tags, "the same owner, read twice"
    draft = json.loads(json.dumps({**P123, "status": "draft"}))
    tags = invalidation.change_tags(body["table"], draft, {**draft, "owner_id": IBRAHIMA})
    assert "leases:parties" in tags and "properties:public" not in tags, "a draft handed to another owner"
