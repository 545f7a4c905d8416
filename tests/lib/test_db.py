"""lib/db: three PostgREST clients on one shared httpx client, bounded, unretried, failures translated."""

from __future__ import annotations

import httpx
import pytest
import respx

from lib import db
from lib.errors import DatabaseUnavailable, InvalidToken

SUPABASE = "https://project.supabase.test"
REST = f"{SUPABASE}/rest/v1"


@pytest.fixture(autouse=True)
def supabase_env(monkeypatch):
    monkeypatch.setenv("SUPABASE_URL", SUPABASE)
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon-key")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-key")


def select_one(client):
    return db.run(lambda: client.from_("properties").select("id").eq("id", 1).execute())


@pytest.mark.parametrize("make_client, apikey, bearer", [
    (lambda: db.anon(), "anon-key", "anon-key"),  # public reads as `anon`
    (lambda: db.as_user("user-jwt"), "anon-key", "user-jwt"),  # RLS sees the user
    (lambda: db.service(), "service-key", "service-key"),  # server-side writes
])
@respx.mock
def test_each_client_sends_its_key_and_bearer(make_client, apikey, bearer):
    route = respx.get(f"{REST}/properties").mock(return_value=httpx.Response(200, json=[{"id": 1}]))
    assert select_one(make_client()).data == [{"id": 1}]
    request = route.calls.last.request
    assert request.headers["apikey"] == apikey
    assert request.headers["authorization"] == f"Bearer {bearer}"
    assert request.url.params["id"] == "eq.1"


def test_all_clients_share_one_http_client_and_a_user_client_never_touches_the_anon_one():
    anon = db.anon()
    user = db.as_user("user-jwt")
    assert anon.session is user.session is db.service().session is db.http_client()
    assert db.anon() is anon
    assert anon.headers["authorization"] == "Bearer anon-key"


def test_the_shared_http_client_is_bounded_in_time():
    timeout = db.http_client().timeout
    assert timeout.read == db.QUERY_TIMEOUT and timeout.connect == db.CONNECT_TIMEOUT


def test_an_installed_postgrest_serves_every_query_inside_its_block_and_the_previous_one_is_back_after():
    served = []

    def answer(request: httpx.Request) -> httpx.Response:
        served.append(request.headers["apikey"])
        return httpx.Response(200, json=[{"id": 1}])

    before = db.current()
    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        with db.using(db.PostgREST(http=http)) as installed:
            assert db.current() is installed and db.http_client() is http
            assert select_one(db.service()).data == [{"id": 1}]
        assert db.current() is before
    assert served == ["service-key"]


def test_a_postgrest_made_with_a_longer_timeout_bounds_its_queries_by_it():
    postgrest = db.PostgREST(timeout=60.0)
    try:
        assert postgrest.http().timeout.read == 60.0 and postgrest.http().timeout.connect == db.CONNECT_TIMEOUT
    finally:
        postgrest.close()


@pytest.mark.parametrize("response, expected", [
    (httpx.ConnectError("refused"), DatabaseUnavailable),  # Supabase unreachable
    (httpx.ReadTimeout("slow"), DatabaseUnavailable),  # Supabase too slow
    (httpx.Response(503, json={"code": "PGRST001", "message": "Database client error"}), DatabaseUnavailable),
    (httpx.Response(502, text="<html>bad gateway</html>"), DatabaseUnavailable),  # a proxy's page
    (httpx.Response(401, json={"code": "PGRST301", "message": "JWT expired"}), InvalidToken),
])
@respx.mock
def test_failures_below_are_translated_and_never_retried(response, expected):
    route = respx.get(f"{REST}/properties").mock(side_effect=[response, httpx.Response(200, json=[])])
    with pytest.raises(expected):
        select_one(db.anon())
    assert route.call_count == 1


@respx.mock
def test_a_refused_query_keeps_postgrest_code_and_message_for_the_caller():
    respx.post(f"{REST}/rpc/reserve_payment").mock(return_value=httpx.Response(
        400, json={"code": "P0001", "message": "already_paid", "details": None, "hint": None}))
    with pytest.raises(db.DatabaseError) as raised:
        db.run(lambda: db.service().rpc("reserve_payment", {"p_lease_id": 1}).execute())
    assert (raised.value.code, raised.value.message) == ("P0001", "already_paid")


@respx.mock
def test_probe_is_true_only_for_a_200():
    route = respx.get(f"{REST}/properties").mock(return_value=httpx.Response(200, json=[]))
    assert db.probe() is True
    route.mock(return_value=httpx.Response(503, json={"code": "PGRST001"}))
    assert db.probe() is False
    route.mock(side_effect=httpx.ConnectTimeout("slow"))
    assert db.probe() is False


def test_probe_is_false_without_configuration(monkeypatch):
    monkeypatch.delenv("SUPABASE_URL")
    assert db.probe() is False


@pytest.mark.parametrize("code", ["22P05", "22001", "22003", "23514", "23502"])
@respx.mock
def test_a_value_the_database_refuses_is_a_422_not_a_500(code):
    from lib.errors import ValidationFailed

    respx.patch(f"{REST}/properties").mock(return_value=httpx.Response(400, json={"code": code, "message": "no"}))
    with pytest.raises(ValidationFailed):
        db.run(lambda: db.anon().from_("properties").update({"title": "x"}).eq("id", 1).execute())


@pytest.mark.parametrize("response", [
    # PostgREST 12.x and 14.2+: the PGRST103 error body.
    httpx.Response(416, json={"code": "PGRST103", "message": "Requested range not satisfiable",
                              "details": "An offset of 60 was requested, but there are only 44 rows.", "hint": None},
                   headers={"Content-Range": "*/44"}),
    # 13.0.x, 14.0, 14.1: the same body cut to two bytes, no Proxy-Status: postgrest-py says code "416".
    httpx.Response(416, content=b'{"', headers={"Content-Range": "*/44", "Content-Type": "application/json"}),
])
@respx.mock
def test_a_page_past_the_end_is_page_out_of_range_whichever_postgrest_answers(response):
    respx.get(f"{REST}/properties").mock(return_value=response)
    with pytest.raises(db.PageOutOfRange):
        db.run(lambda: db.anon().from_("properties").select("id", count="exact").range(60, 79).execute())


@respx.mock
def test_a_column_without_privilege_is_403_forbidden():
    from lib.errors import Forbidden

    respx.patch(f"{REST}/properties").mock(return_value=httpx.Response(
        403, json={"code": "42501", "message": "permission denied for table properties", "details": None,
                   "hint": None}))
    with pytest.raises(Forbidden):
        db.run(lambda: db.as_user("user-jwt").from_("properties").update({"created_at": "2099-01-01"})
               .eq("id", 1).execute())
