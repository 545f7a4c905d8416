"""lib/keys: the contract's key names, and no user input reaching a key unescaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lib import keys
from lib.cache import invalidation
from lib.domain import properties
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


# Keys are built inside the test (a lambda each), never at collection: the namespace is read when a key
# is made, and only the test's fixture has set it to the default by then.
@pytest.mark.parametrize("make, name", [
    (lambda: keys.properties_all(1, 20), "dousell:properties:all_public"),  # the first page at the default size: the seed's key
    (lambda: keys.properties_all(2, 20), "dousell:properties:all_public:page:2:20"),
    (lambda: keys.properties_all(1, 100), "dousell:properties:all_public:page:1:100"),  # another size is another entry
    (lambda: keys.properties_city("Dakar", 1, 20), "dousell:properties:city:Dakar"),
    (lambda: keys.properties_city("Dakar", 3, 5), "dousell:properties:city:Dakar:page:3:5"),
])
def test_each_page_of_a_list_is_its_own_key_under_the_lists_tag(make, name):
    entry = make()
    assert entry.key == name
    first = keys.properties_city("Dakar") if ":city:" in name else keys.properties_all()
    assert (entry.tags, entry.family, entry.ttl) == (first.tags, "properties_list", 300)


def test_every_page_of_a_city_is_invalidated_by_a_change_to_a_row_stored_in_any_case():
    tags = invalidation.change_tags("properties", None, {"id": 5, "owner_id": "o", "city": "DAKAR", "status": "published"})
    assert keys.properties_city("Dakar", 7, 50).tags[0] in tags and keys.properties_all(9, 10).tags[0] in tags


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


def test_the_helper_keys_live_under_meta():
    assert keys.lease_parties(123).key == "dousell:meta:lease:123"
    assert keys.applied_change("0a" * 16) == "dousell:meta:applied:" + "0a" * 16
    assert keys.idempotency("u:1", "k").startswith("dousell:meta:idem:u%3A1:")
    assert keys.user_visits("u1").key == "dousell:visits:user:u1"
    assert keys.payment_recheck(42) == "dousell:meta:recheck:payment:42"


def test_rate_limit_counters_live_under_their_own_prefix(monkeypatch):
    assert keys.ratelimit_prefix("write") == "dousell:ratelimit:write"
    monkeypatch.setenv("CACHE_NAMESPACE", "staging")
    assert keys.ratelimit_prefix("ipn") == "staging:ratelimit:ipn"


@pytest.mark.parametrize("make, kind", [
    (lambda: keys.payment_lock(123), "payment"),
    (lambda: keys.visit_lock(789, datetime(2026, 12, 1, 10, tzinfo=UTC)), "visit"),
    (lambda: keys.name("lock", "other", "x"), "other"),
    (lambda: "dousell:lock", "other"),
    (lambda: "elsewhere:lock:payment:lease1", "other"),
], ids=["payment", "visit", "other-kind", "no-kind", "another-namespace"])
def test_a_locks_kind_is_read_from_its_key(make, kind):
    assert keys.lock_kind(make()) == kind
