"""lib/keys: the contract's key names, and no user input reaching a key unescaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lib import keys, properties
from lib.errors import InvalidFilter


@pytest.fixture(autouse=True)
def default_namespace(monkeypatch):
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)


def test_the_contract_names_are_what_an_operator_finds():
    assert keys.properties_all().key == "dousell:properties:all_public"
    assert keys.property_detail(123).key == "dousell:properties:detail:123"
    assert keys.properties_city("Dakar").key == "dousell:properties:city:Dakar"
    assert keys.dashboard("456").key == "dousell:dashboard:owner_456"
    assert keys.visit_slots(789).key == "dousell:visits:available_slots:789"
    assert keys.payments(123).key == "dousell:payments:lease:123"
    assert keys.payment_lock(123) == "dousell:lock:payment:lease123"
    slot = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
    assert keys.visit_lock(789, slot) == "dousell:lock:visit:prop789:20261127T140000Z"


def test_one_instant_is_one_lock_whatever_its_offset():
    utc = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert keys.visit_lock(789, utc) == keys.visit_lock(789, paris)


def test_the_namespace_prefixes_every_key(monkeypatch):
    monkeypatch.setenv("CACHE_NAMESPACE", "staging")
    assert keys.properties_all().key == "staging:properties:all_public"
    assert keys.tag_key("search") == "staging:meta:tag:search"


@pytest.mark.parametrize("raw, escaped", [
    ("Dakar", "Dakar"),
    ("Thiès", "Thiès"),  # letters stay readable, accents included
    ("Saint-Louis", "Saint-Louis"),
    ("a:b", "a%3Ab"),  # no new key segment
    ("*", "%2A"),  # no pattern
    ("x y", "x%20y"),
    ("{tag}", "%7Btag%7D"),  # no cluster hash tag
    ("%3A", "%253A"),  # an escape cannot be forged
    ("", "%00"),
])
def test_escape_keeps_letters_and_encodes_everything_else(raw, escaped):
    assert keys.escape(raw) == escaped


@pytest.mark.parametrize("user_id", ["a:b", "*", "../x", "x\r\nFLUSHALL"])
def test_a_user_id_never_changes_the_shape_of_its_keys(user_id):
    for entry in (keys.dashboard(user_id), keys.profile(user_id), keys.notifications(user_id)):
        assert entry.key.count(":") == 2 and "*" not in entry.key and "\n" not in entry.key


@pytest.mark.parametrize("raw, canonical", [
    ("dakar", "Dakar"),
    ("  DAKAR ", "Dakar"),
    ("thies", "Thiès"),  # accents optional in a query
    ("saint-louis", "Saint-Louis"),
    ("saint  louis", "Saint Louis"),  # unknown spelling: words capitalised, spaces collapsed
])
def test_a_city_has_one_canonical_name(raw, canonical):
    assert properties.canonical_city(raw) == canonical


@pytest.mark.parametrize("raw", ["a:b", "*", "Dakar%", "x" * 61, "", "Dakar;DROP", "\x00"])
def test_a_city_with_anything_but_words_is_refused(raw):
    with pytest.raises(InvalidFilter):
        properties.canonical_city(raw)


def test_one_search_is_one_key_however_its_filters_are_ordered():
    a = keys.search({"city": "Dakar", "min_price": 1000, "page": 1, "per_page": 20})
    b = keys.search({"per_page": 20, "page": 1, "min_price": 1000, "city": "Dakar"})
    assert a.key == b.key and len(a.key.rsplit(":", 1)[1]) == 32
    assert keys.search({"city": "Dakar"}).key != keys.search({"city": "Thiès"}).key


def test_a_property_change_invalidates_everything_that_shows_it():
    tags = keys.property_changed(123, "owner-1", {"Dakar", "Thiès"})
    assert set(tags) == {"properties:public", "property:123", "search", "dashboard:owner-1", "slots:123",
                         "properties:city:Dakar", "properties:city:Thiès"}
