"""The Supabase stand-in's /rest/v1, driven by the real postgrest client (as lib/db builds it) and raw
HTTP, over a fresh copy of the seeded database: filters, paging, count, single, writes, RPC,
errors, RLS, keys and tokens, and the drill switches."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError

from devstack.supabase import SupabaseStandIn, _is_loopback, serve_in_thread
from devstack.supabase_auth import SigningKey
from tests.sql.demo import (
    ALL_PROPERTIES,
    AWA,
    AWA_PROPERTIES,
    FATOU,
    FREE_SLOTS_789,
    IBRAHIMA,
    LEASE_123,
    MOUSSA,
    PROPERTY_123,
    PUBLISHED,
    PUBLISHED_BY_CITY,
    VILLA_789,
)
from tests.support import wait_for

ANON = "test-anon-key"
SERVICE = "test-service-role-key"
EMAILS = {AWA: "awa.ndiaye@example.sn", IBRAHIMA: "ibrahima.fall@example.sn",
          MOUSSA: "moussa.diop@example.sn", FATOU: "fatou.sarr@example.sn"}


# -- fixtures -----------------------------------------------------------------------------
# Reading tests share one copy of the seed and one stand-in per module; a test that writes,
# or changes the stand-in's drill state, asks for `writes` and gets its own of both.


def _serve(dsn: str) -> SupabaseStandIn:
    server, _ = serve_in_thread("127.0.0.1", 0, dsn=dsn, anon_key=ANON, service_role_key=SERVICE, delay_ms=0)
    return server


def _stop(server: SupabaseStandIn) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def shared_dsn(pg_cluster: Any, pg_template: str) -> Iterator[str]:
    name = f"test_rest_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def shared_standin(shared_dsn: str) -> Iterator[SupabaseStandIn]:
    server = _serve(shared_dsn)
    yield server
    _stop(server)


@pytest.fixture
def writes() -> None:
    """Ask for it in a test that changes data or drill state: it gets a private database and stand-in."""


@pytest.fixture
def dsn(request: pytest.FixtureRequest, shared_dsn: str) -> str:
    if "writes" in request.fixturenames:
        return request.getfixturevalue("seeded_db").dsn()
    return shared_dsn


@pytest.fixture
def standin(request: pytest.FixtureRequest, dsn: str, shared_dsn: str) -> Iterator[SupabaseStandIn]:
    if dsn == shared_dsn:
        yield request.getfixturevalue("shared_standin")
        return
    server = _serve(dsn)
    yield server
    _stop(server)


@pytest.fixture
def admin_sql(dsn: str, pg_connect: Callable[..., psycopg.Connection]) -> Callable[..., list[tuple]]:
    """Run SQL on the test's database as the superuser (RLS off): the reference answers."""
    conn = pg_connect(dsn)

    def run(query: str, params: Any = None) -> list[tuple]:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []

    return run


# Built once: a default httpx.Client loads the CA bundle each time (~75 ms), needless over http://.
TLS = ssl.create_default_context()


@pytest.fixture
def http(standin: SupabaseStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, timeout=10.0, verify=TLS) as client:
        yield client


@pytest.fixture
def rest(standin: SupabaseStandIn, http: httpx.Client) -> Callable[..., SyncPostgrestClient]:
    """`rest()` anon, `rest(SERVICE)`, `rest(token=user_jwt)`: a client built exactly as lib/db builds one."""

    def make(key: str = ANON, token: str | None = None) -> SyncPostgrestClient:
        return SyncPostgrestClient(
            f"{standin.url}/rest/v1",
            headers={"Accept": "application/json", "Content-Type": "application/json",
                     "apikey": key, "Authorization": f"Bearer {token or key}"},
            http_client=http,
            retry_enabled=False,
        )

    return make


@pytest.fixture
def token_of(standin: SupabaseStandIn) -> Callable[..., str]:
    return lambda user, **kw: standin.mint_token(user, EMAILS.get(user), **kw)


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return sorted(r["id"] for r in rows)


def anon_headers(**extra: str) -> dict[str, str]:
    return {"apikey": ANON, "Authorization": f"Bearer {ANON}", **extra}


# -- reads --------------------------------------------------------------------------------


def test_anon_reads_only_the_published_properties(rest: Callable[..., SyncPostgrestClient]) -> None:
    result = rest().from_("properties").select("id,status", count="exact").execute()
    assert result.count == PUBLISHED
    assert {r["status"] for r in result.data} == {"published"}


def test_the_service_key_reads_past_rls(rest: Callable[..., SyncPostgrestClient]) -> None:
    assert rest(SERVICE).from_("properties").select("id", count="exact").execute().count == ALL_PROPERTIES


@pytest.mark.parametrize(
    ("apply", "where"),
    [
        (lambda q: q.eq("city", "Dakar"), "city = 'Dakar'"),
        (lambda q: q.neq("city", "Dakar"), "city <> 'Dakar'"),
        (lambda q: q.gt("price", 400000), "price > 400000"),
        (lambda q: q.gte("price", 400000), "price >= 400000"),
        (lambda q: q.lt("price", 150000), "price < 150000"),
        (lambda q: q.lte("price", 150000), "price <= 150000"),
        # several filters on one column are ANDed
        (lambda q: q.gte("price", 100000).lte("price", 300000), "price between 100000 and 300000"),
        (lambda q: q.like("title", "Villa*"), "title like 'Villa%'"),
        # ilike folds case with the database's locale
        (lambda q: q.ilike("title", "*PISCINE*"), "title ilike '%piscine%'"),
        (lambda q: q.in_("city", ["Thiès", "Saint-Louis"]), "city in ('Thiès', 'Saint-Louis')"),
        # a list value with a space, and one with a comma (quoted by the client)
        (lambda q: q.in_("district", ["Point E", "Médina, centre", "Plateau"]), "district in ('Point E', 'Plateau')"),
        (lambda q: q.in_("id", []), "false"),
        (lambda q: q.is_("district", None), "district is null"),
        (lambda q: q.not_.is_("district", None), "district is not null"),
        (lambda q: q.not_.eq("type", "villa"), "type <> 'villa'"),
        (lambda q: q.not_.in_("type", ["villa", "house"]), "type not in ('villa', 'house')"),
        (lambda q: q.filter("title", "match", "^Villa"), "title ~ '^Villa'"),
        (lambda q: q.filter("title", "imatch", "^villa"), "title ~* '^villa'"),
        (lambda q: q.filter("district", "isdistinct", "Plateau"), "district is distinct from 'Plateau'"),
        # lib's text search
        (lambda q: q.or_("title.ilike.*plage*,description.ilike.*plage*"),
         "title ilike '%plage%' or description ilike '%plage%'"),
        (lambda q: q.or_("type.eq.villa,and(city.eq.Mbour,price.lt.200000)"),
         "type = 'villa' or (city = 'Mbour' and price < 200000)"),
        (lambda q: q.or_('title.eq."Studio, neuf",city.eq.Thiès,id.in.(123,789)'),
         "title = 'Studio, neuf' or city = 'Thiès' or id in (123, 789)"),
        (lambda q: q.not_.or_("city.eq.Dakar,city.eq.Mbour"), "not (city = 'Dakar' or city = 'Mbour')"),
    ],
)
def test_each_filter_selects_the_rows_postgres_selects(
    rest: Callable[..., SyncPostgrestClient], admin_sql: Callable[..., list[tuple]], apply: Any, where: str
) -> None:
    got = apply(rest().from_("properties").select("id")).execute().data
    expected = [r[0] for r in admin_sql(f"select id from properties where status = 'published' and ({where}) order by id")]
    assert ids(got) == expected


def test_order_limit_and_offset_page_through_rows_as_sql_does(
    rest: Callable[..., SyncPostgrestClient], admin_sql: Callable[..., list[tuple]]
) -> None:
    page = rest().from_("properties").select("id").order("price", desc=True).order("id").limit(5).offset(5).execute()
    expected = admin_sql("select id from properties where status = 'published' order by price desc, id limit 5 offset 5")
    assert [r["id"] for r in page.data] == [r[0] for r in expected]


def test_order_places_nulls_first_or_last_on_request(
    writes: None, rest: Callable[..., SyncPostgrestClient], admin_sql: Callable[..., list[tuple]]
) -> None:
    admin_sql("update properties set district = null where id in (101, 102) returning id")
    for nullsfirst, sql_nulls in ((True, "first"), (False, "last")):
        got = rest().from_("properties").select("id").order("district", nullsfirst=nullsfirst).order("id").execute()
        expected = admin_sql(f"select id from properties where status = 'published' order by district nulls {sql_nulls}, id")
        assert [r["id"] for r in got.data] == [r[0] for r in expected]


def test_select_lists_columns_and_renames_them_with_an_alias(rest: Callable[..., SyncPostgrestClient]) -> None:
    row = rest().from_("properties").select("id, name:title,city").eq("id", PROPERTY_123).execute().data[0]
    assert list(row) == ["id", "name", "city"]
    assert row["city"] == "Dakar"
    everything = rest().from_("properties").select("*,name:title").eq("id", PROPERTY_123).execute().data[0]
    assert everything["name"] == everything["title"] and everything["currency"] == "XOF"


def test_count_exact_reports_the_total_and_a_partial_page_is_206(http: httpx.Client) -> None:
    response = http.get("/rest/v1/properties", params={"select": "id", "limit": "10"},
                        headers=anon_headers(Prefer="count=exact"))
    assert response.status_code == 206
    assert response.headers["content-range"] == f"0-9/{PUBLISHED}"
    full = http.get("/rest/v1/properties", params={"select": "id", "city": "eq.Mbour"},
                    headers=anon_headers(Prefer="count=exact"))
    assert full.status_code == 200
    assert full.headers["content-range"] == f"0-{PUBLISHED_BY_CITY['Mbour'] - 1}/{PUBLISHED_BY_CITY['Mbour']}"


def test_without_count_the_total_is_a_star_and_the_status_200(http: httpx.Client) -> None:
    response = http.get("/rest/v1/properties", params={"select": "id", "limit": "5", "offset": "10"},
                        headers=anon_headers())
    assert response.status_code == 200
    assert response.headers["content-range"] == "10-14/*"


def test_an_empty_result_counts_zero_rows(rest: Callable[..., SyncPostgrestClient], http: httpx.Client) -> None:
    result = rest().from_("properties").select("id", count="exact").eq("city", "Ziguinchor").execute()
    assert (result.data, result.count) == ([], 0)
    response = http.get("/rest/v1/properties", params={"city": "eq.Ziguinchor"}, headers=anon_headers(Prefer="count=exact"))
    assert response.headers["content-range"] == "*/0"


def test_an_offset_past_the_counted_rows_is_416_pgrst103(rest: Callable[..., SyncPostgrestClient]) -> None:
    with pytest.raises(APIError) as caught:
        rest().from_("properties").select("id", count="exact").limit(10).offset(PUBLISHED + 1).execute()
    assert caught.value.code == "PGRST103"


WHOLE_416 = (f'{{"code":"PGRST103","details":"An offset of {PUBLISHED + 1} was requested, but there are only '
             f'{PUBLISHED} rows.","hint":null,"message":"Requested range not satisfiable"}}').encode()


@pytest.mark.parametrize("mode, body, code", [
    ("PGRST103", WHOLE_416, "PGRST103"),  # PostgREST 12.x and 14.2+
    ("truncated", b'{"', "416"),  # 13.0.x, 14.0, 14.1: the error cut to the length of `[]` (PostgREST#4455)
])
def test_a_page_past_the_end_is_answered_as_the_chosen_postgrest_does(
    writes: None, standin: SupabaseStandIn, rest: Callable[..., SyncPostgrestClient], http: httpx.Client,
    mode: str, body: bytes | None, code: str,
) -> None:
    standin.rest.past_the_end = mode
    response = http.get("/rest/v1/properties", params={"select": "id", "offset": str(PUBLISHED + 1)},
                        headers=anon_headers(Prefer="count=exact"))
    assert response.status_code == 416
    assert response.headers["content-range"] == f"*/{PUBLISHED}"
    assert "proxy-status" not in response.headers  # a read's answer with its body swapped, not an error's
    assert response.content == body
    with pytest.raises(APIError) as caught:
        rest().from_("properties").select("id", count="exact").limit(10).offset(PUBLISHED + 1).execute()
    assert caught.value.code == code  # what postgrest-py makes of it


def test_single_returns_one_object(rest: Callable[..., SyncPostgrestClient], http: httpx.Client) -> None:
    row = rest().from_("properties").select("id,title").eq("id", VILLA_789).single().execute().data
    assert isinstance(row, dict) and row["id"] == VILLA_789
    raw = http.get("/rest/v1/properties", params={"id": f"eq.{VILLA_789}", "select": "id"},
                   headers=anon_headers(Accept="application/vnd.pgrst.object+json; charset=utf-8"))
    assert raw.json() == {"id": VILLA_789}
    assert raw.headers["content-type"] == "application/vnd.pgrst.object+json; charset=utf-8"


@pytest.mark.parametrize(("apply", "rows"), [
    (lambda q: q.eq("id", 117), 0),  # a draft: hidden from anon by RLS
    (lambda q: q.eq("city", "Mbour"), PUBLISHED_BY_CITY["Mbour"]),
])
def test_single_on_zero_or_several_rows_is_406_pgrst116(
    rest: Callable[..., SyncPostgrestClient], apply: Any, rows: int
) -> None:
    with pytest.raises(APIError) as caught:
        apply(rest().from_("properties").select("id")).single().execute()
    assert caught.value.code == "PGRST116"
    assert caught.value.details == f"The result contains {rows} rows"


def test_maybe_single_gives_none_or_the_row(rest: Callable[..., SyncPostgrestClient]) -> None:
    assert rest().from_("properties").select("id").eq("id", 117).maybe_single().execute() is None
    found = rest().from_("properties").select("id").eq("id", PROPERTY_123).maybe_single().execute()
    assert found is not None and found.data == {"id": PROPERTY_123}


def test_head_counts_without_a_body(http: httpx.Client) -> None:
    response = http.head("/rest/v1/properties", params={"city": "eq.Dakar"}, headers=anon_headers(Prefer="count=exact"))
    assert response.status_code == 200
    assert response.headers["content-range"].endswith(f"/{PUBLISHED_BY_CITY['Dakar']}")
    assert response.content == b""


# -- max-rows and estimated counts (hosted Supabase: db-max-rows = 1000) ----------------------


def test_max_rows_caps_a_read_whatever_its_limit_and_only_content_range_tells(
    writes: None, standin: SupabaseStandIn, http: httpx.Client
) -> None:
    standin.rest.max_rows = 10
    for params in ({"select": "id"}, {"select": "id", "limit": "50"}):
        response = http.get("/rest/v1/properties", params=params, headers=anon_headers())
        assert (response.status_code, len(response.json())) == (200, 10)
        assert response.headers["content-range"] == "0-9/*"  # no error, no warning: the page is simply short
    counted = http.get("/rest/v1/properties", params={"select": "id", "offset": "40"},
                       headers=anon_headers(Prefer="count=exact"))
    assert (counted.status_code, counted.headers["content-range"]) == (206, f"40-{PUBLISHED - 1}/{PUBLISHED}")
    smaller = http.get("/rest/v1/properties", params={"select": "id", "limit": "3"}, headers=anon_headers())
    assert len(smaller.json()) == 3


def test_max_rows_caps_a_functions_result_too_and_limit_offset_page_it(
    writes: None, standin: SupabaseStandIn, rest: Callable[..., SyncPostgrestClient], http: httpx.Client
) -> None:
    everything = rest().rpc("available_slots", {"p_property_id": VILLA_789}).execute().data
    assert len(everything) == FREE_SLOTS_789
    page = rest().rpc("available_slots", {"p_property_id": VILLA_789}).limit(4).offset(2).execute().data
    assert page == everything[2:6]
    standin.rest.max_rows = 5
    capped = http.post("/rest/v1/rpc/available_slots", json={"p_property_id": VILLA_789},
                       headers=anon_headers(Prefer="count=exact"))
    assert (capped.status_code, capped.headers["content-range"]) == (206, f"0-4/{FREE_SLOTS_789}")
    assert capped.json() == everything[:5]
    refused = http.post("/rest/v1/rpc/available_slots", params={"select": "starts_at"},
                        json={"p_property_id": VILLA_789}, headers=anon_headers())
    assert (refused.status_code, refused.json()["code"]) == (400, "PGRST100")


def test_max_rows_leaves_writes_and_single_values_alone(
    writes: None, standin: SupabaseStandIn, rest: Callable[..., SyncPostgrestClient], token_of: Callable[..., str]
) -> None:
    standin.rest.max_rows = 2
    changed = rest(SERVICE).from_("properties").update({"bedrooms": 3}).eq("city", "Mbour").execute().data
    assert len(changed) == PUBLISHED_BY_CITY["Mbour"]  # PostgREST never caps a mutation's representation
    assert rest(token=token_of(AWA)).rpc("owner_dashboard", {}).execute().data["properties"] == AWA_PROPERTIES


def test_the_default_max_rows_is_hosted_supabases_1000_and_an_unpaged_read_is_cut_there(
    writes: None, standin: SupabaseStandIn, rest: Callable[..., SyncPostgrestClient], dsn: str,
    pg_connect: Callable[..., psycopg.Connection], http: httpx.Client,
) -> None:
    from devstack import catalogue

    assert standin.rest.max_rows == 1000
    catalogue.add_slots(pg_connect(dsn), VILLA_789, 1_200)
    http.post("/__devstack/stats/reset")
    slots = rest().rpc("available_slots", {"p_property_id": VILLA_789}).execute().data
    assert len(slots) == 1000  # 1,212 free slots: the rest is silently gone
    assert http.get("/__devstack/stats").json() == {
        "rest_requests": 1, "by_table": {}, "rpc": {"available_slots": 1}, "auth_requests": 0,
        "most_rows": 1000, "at_max_rows": 1}


@pytest.mark.parametrize(("value", "expected"), [
    ("", 1000),  # unset: hosted Supabase's default
    ("250", 250),
    ("0", None),  # PostgREST's own default: no limit
])
def test_devstack_postgrest_max_rows_sets_the_cap(monkeypatch: pytest.MonkeyPatch, value: str,
                                                  expected: int | None) -> None:
    from devstack.supabase_rest import RestEngine

    monkeypatch.setenv("DEVSTACK_POSTGREST_MAX_ROWS", value)
    assert RestEngine(lambda: None, lambda: None).max_rows == expected  # type: ignore[arg-type,return-value]
    monkeypatch.setenv("DEVSTACK_POSTGREST_MAX_ROWS", "lots")
    with pytest.raises(ValueError):
        RestEngine(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]


def planned_rows(admin_sql: Callable[..., list[tuple]], where: str) -> int:
    """The planner's rows for `select 1 from properties where ...` as anon: what PostgREST reads."""
    admin_sql("begin")
    try:
        admin_sql("select set_config('role', 'anon', true)")
        plan = admin_sql(f"explain (format json) select 1 from public.properties where {where}")[0][0]
    finally:
        admin_sql("rollback")
    return int(plan[0]["Plan"]["Plan Rows"])


def test_count_planned_is_the_planners_row_estimate(http: httpx.Client, admin_sql: Callable[..., list[tuple]]) -> None:
    response = http.get("/rest/v1/properties", params={"select": "id", "limit": "1", "city": "eq.Dakar"},
                        headers=anon_headers(Prefer="count=planned"))
    assert response.headers["content-range"] == f"0-0/{planned_rows(admin_sql, "city = 'Dakar'")}"


def test_count_estimated_is_exact_up_to_max_rows_then_the_planners_at_least(
    writes: None, standin: SupabaseStandIn, http: httpx.Client, admin_sql: Callable[..., list[tuple]]
) -> None:
    def total() -> str:
        response = http.get("/rest/v1/properties", params={"select": "id", "limit": "1"},
                            headers=anon_headers(Prefer="count=estimated"))
        return response.headers["content-range"].split("/")[1]

    assert total() == str(PUBLISHED)  # under max-rows: counted
    standin.rest.max_rows = 10
    # Counted only to max-rows + 1, then the planner's figure if higher (PostgREST's MainTx.hs).
    assert total() == str(max(11, planned_rows(admin_sql, "true")))
    admin_sql("analyze public.properties")  # the planner now knows the table: its figure follows
    assert total() == str(max(11, planned_rows(admin_sql, "true")))


# -- errors -------------------------------------------------------------------------------


def test_an_unknown_table_is_404_pgrst205_with_a_hint(rest: Callable[..., SyncPostgrestClient]) -> None:
    with pytest.raises(APIError) as caught:
        rest().from_("propertie").select("*").execute()
    assert caught.value.code == "PGRST205"
    assert caught.value.message == "Could not find the table 'public.propertie' in the schema cache"
    assert caught.value.hint == "Perhaps you meant the table 'public.properties'"


@pytest.mark.parametrize("apply", [
    lambda q: q.select("id,nope"),
    lambda q: q.select("id").eq("nope", 1),
    lambda q: q.select("id").order("nope"),
])
def test_an_unknown_column_is_400_42703(rest: Callable[..., SyncPostgrestClient], apply: Any) -> None:
    with pytest.raises(APIError) as caught:
        apply(rest().from_("properties")).execute()
    assert (caught.value.code, caught.value.message) == ("42703", "column properties.nope does not exist")


def test_a_value_postgres_cannot_read_as_the_column_type_is_400_22p02(http: httpx.Client) -> None:
    response = http.get("/rest/v1/properties", params={"id": "eq.abc"}, headers=anon_headers())
    assert response.status_code == 400
    assert response.json() == {"code": "22P02", "details": None, "hint": None,
                               "message": 'invalid input syntax for type bigint: "abc"'}


@pytest.mark.parametrize(("method", "path", "params", "headers", "status", "code", "names"), [
    ("GET", "properties", {"select": "id,owner:profiles(full_name)"}, {}, 400, "PGRST100", "Embedded"),
    ("GET", "properties", {"select": "id::text"}, {}, 400, "PGRST100", "Casts"),
    ("GET", "properties", {"select": "title->>fr"}, {}, 400, "PGRST100", "JSON paths"),
    ("GET", "properties", {"title": "fts.villa"}, {}, 400, "PGRST100", "fts operator"),
    ("GET", "properties", {"title": "like(any).{a*,b*}"}, {}, 400, "PGRST100", "modifiers"),
    ("GET", "properties", {"profiles.full_name": "eq.Awa"}, {}, 400, "PGRST100", "embedded resources"),
    ("GET", "properties", {"order": "profiles(full_name).asc"}, {}, 400, "PGRST100", "Embedded"),
    ("GET", "properties", {}, {"Range": "0-9"}, 400, "PGRST127", "Range header"),
    ("PUT", "properties", {"id": "eq.1"}, {}, 400, "PGRST127", "PUT"),
    ("GET", "rpc/available_slots", {"p_property_id": "789"}, {}, 400, "PGRST127", "GET on /rpc"),
    ("GET", "properties", {}, {"Prefer": "timezone=Africa/Dakar"}, 400, "PGRST100", "timezone"),
    ("GET", "properties", {}, {"Accept": "text/csv"}, 406, "PGRST107", "text/csv"),
])
def test_what_the_stand_in_does_not_implement_is_refused_by_name(
    http: httpx.Client, method: str, path: str, params: dict[str, str], headers: dict[str, str],
    status: int, code: str, names: str
) -> None:
    response = http.request(method, f"/rest/v1/{path}", params=params, headers=anon_headers(**headers))
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert names in body["message"]


def test_a_unique_violation_is_409_23505(writes: None, rest: Callable[..., SyncPostgrestClient]) -> None:
    # Property 123 already has an active lease; one active lease per property.
    with pytest.raises(APIError) as caught:
        rest(SERVICE).from_("leases").insert({"property_id": PROPERTY_123, "tenant_id": FATOU, "monthly_rent": 50000,
                                              "status": "active", "starts_on": "2026-01-01"}).execute()
    assert caught.value.code == "23505"
    assert "leases_one_active_per_property" in caught.value.message


def test_a_foreign_key_violation_is_409_23503_and_a_check_violation_400_23514(writes: None, http: httpx.Client) -> None:
    service = {"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}", "Prefer": "return=representation"}
    fk = http.post("/rest/v1/notifications", json={"user_id": "00000000-0000-4000-8000-000000000000",
                                                   "kind": "x", "title": "x"}, headers=service)
    assert (fk.status_code, fk.json()["code"]) == (409, "23503")
    check = http.patch("/rest/v1/properties", params={"id": f"eq.{PROPERTY_123}"}, json={"price": -5}, headers=service)
    assert (check.status_code, check.json()["code"]) == (400, "23514")


def test_a_raised_exception_in_a_function_passes_its_message_as_400_p0001(writes: None, http: httpx.Client) -> None:
    response = http.post("/rest/v1/rpc/reserve_payment",
                         json={"p_lease_id": LEASE_123, "p_tenant_id": FATOU, "p_period": "2026-11"},
                         headers={"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}"})
    assert response.status_code == 400
    assert response.json()["code"] == "P0001"
    assert response.json()["message"] == "not_lease_tenant"


@pytest.mark.parametrize(("request_args", "expected"), [
    # names: a quoted "column" is only ever an identifier
    (("GET", "/rest/v1/properties", {"select": '"id; drop table leases"'}), (400, "42703")),
    (("GET", "/rest/v1/properties", {"select": "id;drop table leases"}), (400, "PGRST100")),
    (("GET", "/rest/v1/properties", {'"id) or (1=1"': "eq.1"}), (400, "42703")),
    (("GET", "/rest/v1/properties", {'"a%s"': "eq.1", "id": "eq.123"}), (400, "42703")),
    (("GET", "/rest/v1/properties", {"order": '"id desc; drop table leases"'}), (400, "42703")),
    (("GET", "/rest/v1/properties", {"order": "id;drop table leases"}), (400, "PGRST100")),
    (("GET", "/rest/v1/properties;drop table leases", {}), (404, "PGRST205")),
    (("POST", "/rest/v1/rpc/available_slots(1);--", {}), (404, "PGRST202")),
    # values: always bound parameters
    (("GET", "/rest/v1/properties", {"title": "eq.' or '1'='1"}), (200, [])),
    (("GET", "/rest/v1/properties", {"id": "eq.1; delete from leases"}), (400, "22P02")),
    (("GET", "/rest/v1/properties", {"id": "in.(1,2);delete from leases"}), (400, "PGRST100")),
    (("GET", "/rest/v1/properties", {"or": "(id.eq.1) or true --,title.eq.x)"}), (400, "PGRST100")),
    (("GET", "/rest/v1/properties", {"city": "like.%' or 1=1 --"}), (200, [])),
])
def test_injection_attempts_through_names_and_values_change_nothing(
    http: httpx.Client, admin_sql: Callable[..., list[tuple]], request_args: tuple, expected: tuple
) -> None:
    method, path, params = request_args
    response = http.request(method, path, params=params, headers=anon_headers())
    status, outcome = expected
    assert response.status_code == status
    assert (response.json() if status == 200 else response.json()["code"]) == outcome
    assert admin_sql("select count(*) from properties")[0][0] == ALL_PROPERTIES
    assert admin_sql("select count(*) from leases")[0][0] > 0


def test_an_insert_with_an_unknown_key_is_400_pgrst204(http: httpx.Client) -> None:
    response = http.post("/rest/v1/notifications", json={"user_id": MOUSSA, 'title"); drop table leases; --': "x"},
                         headers={"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}"})
    assert response.status_code == 400
    assert response.json()["code"] == "PGRST204"


# -- writes -------------------------------------------------------------------------------


def test_an_insert_returns_the_stored_row_with_its_defaults(writes: None, rest: Callable[..., SyncPostgrestClient]) -> None:
    row = rest(SERVICE).from_("notifications").insert({"user_id": MOUSSA, "kind": "test", "title": "Bonjour"}).execute().data[0]
    assert row["title"] == "Bonjour"
    assert row["data"] == {} and row["body"] == "" and row["read_at"] is None and isinstance(row["id"], int)


def test_a_bulk_insert_sends_columns_and_missing_keys_become_null_or_default(
    writes: None, rest: Callable[..., SyncPostgrestClient], http: httpx.Client
) -> None:
    rows = [{"user_id": MOUSSA, "kind": "a", "title": "one", "read_at": "2026-01-01T00:00:00Z"},
            {"user_id": FATOU, "kind": "b", "title": "two"}]
    stored = rest(SERVICE).from_("notifications").insert(rows).execute().data
    assert [r["title"] for r in stored] == ["one", "two"]
    assert stored[1]["read_at"] is None
    # missing=default: a key absent from a row takes the column's default instead of null
    response = http.post("/rest/v1/notifications", params={"columns": "user_id,kind,title,body"},
                         json=[{"user_id": FATOU, "kind": "c", "title": "three"}],
                         headers={"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}",
                                  "Prefer": "return=representation,missing=default"})
    assert response.status_code == 201
    assert response.json()[0]["body"] == ""


def test_an_insert_with_return_minimal_is_201_without_a_body(writes: None, http: httpx.Client) -> None:
    response = http.post("/rest/v1/notifications", json={"user_id": MOUSSA, "kind": "t", "title": "x"},
                         headers={"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}", "Prefer": "return=minimal"})
    assert (response.status_code, response.content) == (201, b"")
    assert response.headers["content-range"] == "*/*"


def test_an_upsert_merges_on_the_primary_key(writes: None, rest: Callable[..., SyncPostgrestClient]) -> None:
    created = rest(SERVICE).from_("notifications").insert({"user_id": MOUSSA, "kind": "t", "title": "v1"}).execute().data[0]
    merged = rest(SERVICE).from_("notifications").upsert({"id": created["id"], "user_id": MOUSSA, "kind": "t",
                                                          "title": "v2"}).execute().data
    assert [(r["id"], r["title"]) for r in merged] == [(created["id"], "v2")]


def test_update_and_delete_return_the_rows_they_changed(writes: None, rest: Callable[..., SyncPostgrestClient]) -> None:
    service = rest(SERVICE)
    row = service.from_("notifications").insert({"user_id": MOUSSA, "kind": "t", "title": "avant"}).execute().data[0]
    updated = service.from_("notifications").update({"title": "après"}).eq("id", row["id"]).execute().data
    assert [(r["id"], r["title"]) for r in updated] == [(row["id"], "après")]
    deleted = service.from_("notifications").delete().eq("id", row["id"]).execute().data
    assert [r["id"] for r in deleted] == [row["id"]]
    assert service.from_("notifications").select("id").eq("id", row["id"]).execute().data == []


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_an_update_or_delete_without_a_filter_is_refused(writes: None, http: httpx.Client, admin_sql: Callable[..., list[tuple]],
                                                          method: str) -> None:
    response = http.request(method, "/rest/v1/notifications", json={"title": "x"} if method == "PATCH" else None,
                            headers={"apikey": SERVICE, "Authorization": f"Bearer {SERVICE}"})
    assert response.status_code == 400
    verb = "UPDATE" if method == "PATCH" else "DELETE"
    assert response.json() == {"code": "21000", "details": None, "hint": None, "message": f"{verb} requires a WHERE clause"}
    assert admin_sql("select count(*) from notifications where title = 'x'")[0][0] == 0


def test_a_patch_of_a_single_object_that_matches_no_row_is_406_and_changes_nothing(
    writes: None, http: httpx.Client, token_of: Callable[..., str]
) -> None:
    response = http.patch("/rest/v1/properties", params={"id": "in.(123,789)"}, json={"title": "Deux à la fois"},
                          headers={"apikey": ANON, "Authorization": f"Bearer {token_of(AWA)}",
                                   "Prefer": "return=representation",
                                   "Accept": "application/vnd.pgrst.object+json"})
    assert (response.status_code, response.json()["code"]) == (406, "PGRST116")
    again = http.get("/rest/v1/properties", params={"id": "eq.123", "select": "title"}, headers=anon_headers())
    assert again.json()[0]["title"] != "Deux à la fois"


# -- RLS and roles ------------------------------------------------------------------------


def test_an_owner_updates_their_own_property(writes: None, rest: Callable[..., SyncPostgrestClient], token_of: Callable[..., str]) -> None:
    updated = rest(token=token_of(AWA)).from_("properties").update({"price": 55000}).eq("id", PROPERTY_123).execute().data
    assert [(r["id"], r["price"]) for r in updated] == [(PROPERTY_123, 55000)]


def test_an_owner_cannot_update_another_owners_property_it_simply_matches_no_row(
    writes: None, rest: Callable[..., SyncPostgrestClient], token_of: Callable[..., str], admin_sql: Callable[..., list[tuple]]
) -> None:
    result = rest(token=token_of(IBRAHIMA)).from_("properties").update({"price": 1}).eq("id", PROPERTY_123).execute()
    assert result.data == []
    assert admin_sql("select price from properties where id = 123")[0][0] != 1


def test_a_tenant_sees_their_payments_and_no_one_elses(rest: Callable[..., SyncPostgrestClient],
                                                       token_of: Callable[..., str]) -> None:
    moussa = rest(token=token_of(MOUSSA)).from_("rental_payments").select("lease_id").execute().data
    assert moussa and {r["lease_id"] for r in moussa} <= {LEASE_123, 124}
    assert rest(token=token_of(FATOU)).from_("rental_payments").select("id").execute().data == []
    assert rest().from_("rental_payments").select("id").execute().data == []


@pytest.mark.parametrize(("who", "status"), [(None, 401), (MOUSSA, 403)])
def test_a_write_rls_refuses_is_401_for_anon_and_403_for_a_user(
    writes: None, http: httpx.Client, token_of: Callable[..., str], who: str | None, status: int
) -> None:
    bearer = token_of(who) if who else ANON
    response = http.post("/rest/v1/properties", json={"owner_id": MOUSSA, "title": "Chez moi", "city": "Dakar",
                                                      "type": "studio", "price": 1000},
                         headers={"apikey": ANON, "Authorization": f"Bearer {bearer}"})
    assert (response.status_code, response.json()["code"]) == (status, "42501")


def test_an_owner_lists_a_property_in_their_own_name(writes: None, rest: Callable[..., SyncPostgrestClient],
                                                     token_of: Callable[..., str]) -> None:
    row = rest(token=token_of(AWA)).from_("properties").insert(
        {"owner_id": AWA, "title": "Studio à Yoff", "city": "Dakar", "type": "studio", "price": 90000}
    ).execute().data[0]
    assert (row["owner_id"], row["status"], row["currency"]) == (AWA, "draft", "XOF")


def test_a_token_cannot_switch_to_a_role_outside_the_api_roles(http: httpx.Client, token_of: Callable[..., str]) -> None:
    response = http.get("/rest/v1/properties", headers={"apikey": ANON,
                                                       "Authorization": f"Bearer {token_of(AWA, role='postgres')}"})
    assert (response.status_code, response.json()["code"]) == (403, "42501")


# -- RPC ----------------------------------------------------------------------------------


def test_a_table_function_answers_an_array_of_objects(rest: Callable[..., SyncPostgrestClient]) -> None:
    slots = rest().rpc("available_slots", {"p_property_id": VILLA_789}).execute().data
    assert len(slots) == FREE_SLOTS_789
    assert set(slots[0]) == {"starts_at", "ends_at"}
    assert slots == sorted(slots, key=lambda s: s["starts_at"])


def test_a_jsonb_function_answers_its_value_for_a_signed_in_owner(rest: Callable[..., SyncPostgrestClient],
                                                                   token_of: Callable[..., str]) -> None:
    dashboard = rest(token=token_of(AWA)).rpc("owner_dashboard", {}).execute().data
    assert dashboard["properties"] == AWA_PROPERTIES and dashboard["active_leases"] == 1


@pytest.mark.parametrize(("who", "function", "args", "status"), [
    (None, "owner_dashboard", {}, 401),  # execute revoked from anon
    (MOUSSA, "book_visit", {"p_property_id": VILLA_789, "p_starts_at": "2030-01-01T10:00:00Z", "p_visitor_id": MOUSSA}, 403),
])
def test_a_function_the_role_may_not_execute_is_401_for_anon_and_403_for_a_user(
    http: httpx.Client, token_of: Callable[..., str], who: str | None, function: str, args: dict, status: int
) -> None:
    bearer = token_of(who) if who else ANON
    response = http.post(f"/rest/v1/rpc/{function}", json=args, headers={"apikey": ANON, "Authorization": f"Bearer {bearer}"})
    assert (response.status_code, response.json()["code"]) == (status, "42501")
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("function", "args", "message"), [
    ("no_such_function", {}, "Could not find the function public.no_such_function without parameters in the schema cache"),
    ("available_slots", {"property_id": 789}, "Could not find the function public.available_slots(property_id) in the schema cache"),
])
def test_an_unknown_function_or_argument_name_is_404_pgrst202(
    rest: Callable[..., SyncPostgrestClient], function: str, args: dict, message: str
) -> None:
    with pytest.raises(APIError) as caught:
        rest().rpc(function, args).execute()
    assert (caught.value.code, caught.value.message) == ("PGRST202", message)


def test_a_function_created_after_start_is_found_and_void_answers_204(
    writes: None, http: httpx.Client, admin_sql: Callable[..., list[tuple]]
) -> None:
    assert http.get("/rest/v1/properties?select=id&limit=1", headers=anon_headers()).status_code == 200  # cache loaded
    admin_sql("create function public.ping(p_word text) returns void language sql as 'select'")
    response = http.post("/rest/v1/rpc/ping", json={"p_word": "salut"}, headers=anon_headers())
    assert (response.status_code, response.content) == (204, b"")


def test_request_headers_are_lower_cased_and_the_cookie_goes_to_request_cookies_as_postgrest_does(
    writes: None, http: httpx.Client, admin_sql: Callable[..., list[tuple]]
) -> None:
    # What the outbox trigger reads the API's change id from (supabase/migrations/20261202000020).
    admin_sql("create function public.echo_request() returns jsonb language sql as $$ select jsonb_build_object("
              "'headers', current_setting('request.headers', true)::jsonb, "
              "'cookies', current_setting('request.cookies', true)::jsonb) $$")
    response = http.post("/rest/v1/rpc/echo_request", json={}, headers=anon_headers(
        **{"X-Dousell-Change": "0a" * 16, "Cookie": "sb-token=abc; theme=dark"}))
    echoed = response.json()
    assert echoed["headers"]["x-dousell-change"] == "0a" * 16
    assert all(name == name.lower() for name in echoed["headers"]) and "cookie" not in echoed["headers"]
    assert echoed["cookies"] == {"sb-token": "abc", "theme": "dark"}


# -- keys and tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "No API key found in request"),
    ({"apikey": "not-the-key"}, "Invalid API key"),
])
def test_a_missing_or_wrong_apikey_is_401(http: httpx.Client, headers: dict[str, str], message: str) -> None:
    response = http.get("/rest/v1/properties", headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == message


def test_without_authorization_the_apikey_gives_the_role(http: httpx.Client) -> None:
    anon = http.get("/rest/v1/properties", params={"select": "id"}, headers={"apikey": ANON, "Prefer": "count=exact"})
    service = http.get("/rest/v1/properties", params={"select": "id"}, headers={"apikey": SERVICE, "Prefer": "count=exact"})
    assert anon.headers["content-range"].endswith(f"/{PUBLISHED}")
    assert service.headers["content-range"].endswith(f"/{ALL_PROPERTIES}")


@pytest.mark.parametrize(("token", "code", "message"), [
    (lambda s: s.mint_token(AWA, expires_in=-120), "PGRST303", "JWT expired"),
    (lambda s: s.mint_token(AWA, aud="somebody-else"), "PGRST303", "JWT not in audience"),
    (lambda s: s.mint_token(AWA)[:-4] + "AAAA", "PGRST301", "JWT cryptographic operation failed"),
    (lambda s: SigningKey.generate().sign({"sub": AWA, "aud": "authenticated", "role": "authenticated"}),
     "PGRST301", "No suitable key or wrong key type"),
    (lambda s: "not-a-jwt", "PGRST301", "Expected 3 parts in JWT; got 1"),
])
def test_a_bad_or_expired_user_token_is_401_with_postgrests_code(
    rest: Callable[..., SyncPostgrestClient], standin: SupabaseStandIn, token: Any, code: str, message: str
) -> None:
    with pytest.raises(APIError) as caught:
        rest(token=token(standin)).from_("properties").select("id").execute()
    assert (caught.value.code, caught.value.message) == (code, message)


# -- drills ---------------------------------------------------------------------------------


def test_the_delay_switch_slows_every_rest_request(writes: None, http: httpx.Client, standin: SupabaseStandIn) -> None:
    assert http.post("/__devstack/delay", json={"ms": 150}).json() == {"delay_ms": 150.0}
    started = time.perf_counter()
    assert http.get("/rest/v1/properties", params={"select": "id", "limit": "1"}, headers=anon_headers()).status_code == 200
    assert time.perf_counter() - started >= 0.15
    http.post("/__devstack/delay", json={"ms": 0})
    assert standin.delay_ms == 0


def test_stats_count_the_requests_that_reached_the_database(
    writes: None, http: httpx.Client, rest: Callable[..., SyncPostgrestClient]
) -> None:
    http.post("/__devstack/stats/reset")
    rest().from_("properties").select("id").limit(1).execute()
    rest().from_("properties").select("id").eq("id", 123).execute()
    rest().rpc("available_slots", {"p_property_id": VILLA_789}).execute()
    http.get("/rest/v1/properties", headers={"apikey": "wrong"})  # stopped at the gateway: no query
    http.get("/rest/v1/properties", params={"select": "id::text"}, headers=anon_headers())  # refused before any query
    assert http.get("/__devstack/stats").json() == {
        "rest_requests": 3, "by_table": {"properties": 2}, "rpc": {"available_slots": 1}, "auth_requests": 0,
        "most_rows": FREE_SLOTS_789, "at_max_rows": 0}
    assert http.post("/__devstack/stats/reset").json()["previous"]["rest_requests"] == 3
    assert http.get("/__devstack/stats").json()["rest_requests"] == 0


def test_down_mode_answers_503_pgrst001_until_normal_again(writes: None, http: httpx.Client,
                                                           rest: Callable[..., SyncPostgrestClient]) -> None:
    http.post("/__devstack/mode", json={"mode": "down"})
    with pytest.raises(APIError) as caught:
        rest().from_("properties").select("id").limit(1).execute()
    assert caught.value.code == "PGRST001"
    assert http.get("/rest/v1/properties", headers=anon_headers()).status_code == 503
    http.post("/__devstack/mode", json={"mode": "normal"})
    assert len(rest().from_("properties").select("id").limit(1).execute().data) == 1


def test_hang_mode_holds_requests_until_the_mode_changes(writes: None, http: httpx.Client, standin: SupabaseStandIn) -> None:
    http.post("/__devstack/mode", json={"mode": "hang", "hang_seconds": 30})
    outcome: dict[str, Any] = {}

    def call() -> None:
        with httpx.Client(base_url=standin.url, timeout=30, verify=TLS) as other:
            outcome["status"] = other.get("/rest/v1/properties", params={"limit": "1"}, headers=anon_headers()).status_code

    worker = threading.Thread(target=call)
    worker.start()
    wait_for(lambda: standin.hanging == 1, what="the request to hang")
    assert "status" not in outcome
    http.post("/__devstack/mode", json={"mode": "normal"})
    worker.join(timeout=10)
    assert outcome["status"] == 200


def test_hang_mode_gives_up_after_hang_seconds_with_504_pgrst003(writes: None, http: httpx.Client) -> None:
    http.post("/__devstack/mode", json={"mode": "hang", "hang_seconds": 0.1})
    response = http.get("/rest/v1/properties", headers=anon_headers())
    assert (response.status_code, response.json()["code"]) == (504, "PGRST003")


def test_drill_endpoints_answer_loopback_clients_only() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("192.168.1.20") and not _is_loopback("10.0.0.1")
