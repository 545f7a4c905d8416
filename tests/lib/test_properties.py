"""lib/properties against the real stand-ins: the Supabase one over a fresh copy of the seeded PostgreSQL,
the Upstash one over a real Valkey server. What the owner is answered after an update, what the cache
shows afterwards, and a search page past the end whichever PostgREST answers it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from devstack import supabase
from devstack import upstash as upstash_standin
from devstack.redis_server import RedisServer, free_port
from lib import auth, db, properties, upstash
from lib.errors import ConfigurationError, InvalidFilter, ValidationFailed
from tests.sql.demo import AWA, PROPERTY_123, PUBLISHED, PUBLISHED_BY_CITY, USERS

ANON, SERVICE, UPSTASH_TOKEN = "test-anon-key", "test-service-role-key", "test-upstash-token"


@pytest.fixture(scope="module")
def valkey(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstash_url(valkey: RedisServer) -> Iterator[str]:
    server, thread = upstash_standin.serve_in_thread(port=0, token=UPSTASH_TOKEN, redis_url=valkey.url)
    yield server.url
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def standin(seeded_db) -> Iterator[supabase.SupabaseStandIn]:
    server, _ = supabase.serve_in_thread("127.0.0.1", 0, dsn=seeded_db.dsn(), anon_key=ANON, service_role_key=SERVICE,
                                         delay_ms=0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def configured(monkeypatch, standin: supabase.SupabaseStandIn, upstash_url: str, valkey: RedisServer) -> Iterator[None]:
    """lib pointed at the stand-ins, every shared client reset, an empty Redis."""
    for name, value in {"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON, "SUPABASE_SERVICE_ROLE_KEY": SERVICE,
                        "UPSTASH_REDIS_REST_URL": upstash_url, "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    with redis.Redis(host=valkey.host, port=valkey.port) as direct:
        direct.flushdb()
    reset()
    yield
    reset()


def reset() -> None:
    db.set_http_client(None)
    upstash.set_client(None)
    upstash.breaker.reset()


@pytest.fixture
def admin(seeded_db, pg_connect) -> psycopg.Connection:
    return pg_connect(seeded_db.dsn())


@pytest.fixture
def awa(standin: supabase.SupabaseStandIn) -> auth.User:
    email = USERS[AWA][0]
    return auth.User(id=AWA, email=email, role="authenticated", token=standin.mint_token(AWA, email))


def shown(rows: list[dict[str, Any]], property_id: int) -> dict[str, Any] | None:
    return next((row for row in rows if row["id"] == property_id), None)


# -- the owner's update -------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [
    "St. Louis",  # the web app's spelling: `?city=` refuses the dot, so canonical_city() raises on it
    "Saint Louis (Sor)",
    "Dakar ",  # a trailing space: in no list (ilike is exact), yet canonical_city() tidies it to Dakar
])
def test_an_update_answers_the_changed_row_whatever_city_the_web_app_stored(admin, awa, stored):
    admin.execute("update properties set city = %s where id = %s", (stored, PROPERTY_123))
    properties.get_public(PROPERTY_123)  # cached as it was
    properties.list_public()

    after = properties.update(awa, PROPERTY_123, {"price": 65_000})

    assert after["price"] == 65_000
    assert admin.execute("select price from properties where id = %s", (PROPERTY_123,)).fetchone() == (65_000,)
    # Invalidated at once: the detail and the public list show the new price, not the cached one.
    assert properties.get_public(PROPERTY_123)["price"] == 65_000
    assert shown(properties.list_public(), PROPERTY_123)["price"] == 65_000


def test_moving_a_listing_off_a_city_no_list_can_name_updates_the_new_citys_list(admin, awa):
    admin.execute("update properties set city = 'St. Louis' where id = %s", (PROPERTY_123,))
    before = properties.list_public("Saint-Louis")  # cached without it
    assert shown(before, PROPERTY_123) is None and len(before) == PUBLISHED_BY_CITY["Saint-Louis"]

    after = properties.update(awa, PROPERTY_123, {"city": "saint-louis"})

    assert after["city"] == "Saint-Louis"
    assert shown(properties.list_public("Saint-Louis"), PROPERTY_123)["city"] == "Saint-Louis"


def test_a_stored_city_in_another_case_has_its_list_invalidated_too(admin, awa):
    admin.execute("update properties set city = 'DAKAR' where id = %s", (PROPERTY_123,))
    assert shown(properties.list_public("Dakar"), PROPERTY_123)["price"] == 50_000  # ilike: it is in Dakar's list

    properties.update(awa, PROPERTY_123, {"city": "Thiès"})

    assert shown(properties.list_public("Dakar"), PROPERTY_123) is None
    assert shown(properties.list_public("Thiès"), PROPERTY_123)["city"] == "Thiès"


def test_a_city_the_api_refuses_is_a_422_and_nothing_is_written(admin, awa):
    with pytest.raises(ValidationFailed) as refused:
        properties.update(awa, PROPERTY_123, {"city": "St. Louis", "price": 70_000})
    assert refused.value.details[0]["field"] == "city"
    assert admin.execute("select city, price from properties where id = %s", (PROPERTY_123,)).fetchone() == (
        "Dakar", 50_000)


def test_without_upstash_configured_the_update_is_refused_before_anything_is_written(admin, awa, monkeypatch):
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL")
    upstash.set_client(None)
    with pytest.raises(ConfigurationError):
        properties.update(awa, PROPERTY_123, {"price": 70_000})
    assert admin.execute("select price from properties where id = %s", (PROPERTY_123,)).fetchone() == (50_000,)


@pytest.mark.parametrize("stored, listed", [
    ("Dakar", "Dakar"),
    ("dakar", "Dakar"),
    ("THIES", "Thiès"),  # the key a `?city=thies` query uses
    ("Ndangalma", "Ndangalma"),  # a city we do not know keeps its words
    ("St. Louis", None),  # no `?city=` can spell it, so no list shows it
    ("Dakar\x00", None),
    ("", None),
    (None, None),
])
def test_listed_under_names_the_list_a_stored_city_can_appear_in_and_never_raises(stored, listed):
    assert properties.listed_under(stored) == listed


def test_canonical_city_still_refuses_what_a_query_may_not_say():
    with pytest.raises(InvalidFilter):
        properties.canonical_city("St. Louis")


# -- a search page past the end -----------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    "PGRST103",  # PostgREST 12.x and 14.2+
    "truncated",  # 13.0.x, 14.0, 14.1: 416 with the body `{"`, which postgrest-py reports as code "416"
])
def test_a_search_page_past_the_end_is_empty_with_the_total(standin, answer):
    standin.rest.past_the_end = answer
    found = properties.search({"page": 500, "per_page": 50})
    assert found == {"results": [], "page": 500, "per_page": 50, "total": PUBLISHED}
    dakar = properties.search({"city": "Dakar", "page": 2, "per_page": 50})
    assert (dakar["results"], dakar["total"]) == ([], PUBLISHED_BY_CITY["Dakar"])


def test_a_search_page_within_the_results_is_served(standin):
    standin.rest.past_the_end = "truncated"
    found = properties.search({"page": 1, "per_page": 5})
    assert len(found["results"]) == 5 and found["total"] == PUBLISHED


def test_the_owner_patches_every_field_the_api_accepts_through_the_column_grants(admin, awa):
    changes = {"title": "Villa rénovée aux Almadies", "description": "Piscine refaite.", "city": "saly",
               "district": "Ngaparou", "type": "house", "price": 1_300_000, "bedrooms": 5, "status": "draft"}
    after = properties.update(awa, 789, dict(changes))
    assert {name: after[name] for name in changes} == {**changes, "city": "Saly"}
    after = properties.update(awa, 789, {"district": None})  # the only field that may be emptied
    assert after["district"] is None
