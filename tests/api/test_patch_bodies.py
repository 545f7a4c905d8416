"""PATCH bodies are validated before anything is written: each bad field listed, in French, as a 422."""

from __future__ import annotations

import httpx
import pytest

from lib import auth
from tests.fakes import fake_upstash
from tests.support import api_module, serve


def endpoint(relative: str):
    return api_module(relative).handler


@pytest.fixture
def limits(monkeypatch):
    """The write limits counted for real (the Upstash stand-in's engine), not failing open: yields it."""
    for name in ("RATE_LIMIT_WRITES_PER_MINUTE", "RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    with fake_upstash(monkeypatch, local=True) as redis:
        yield redis


@pytest.fixture
def signed_in(monkeypatch, limits):
    user = auth.User(id="11111111-1111-4111-8111-111111111111", email="awa.ndiaye@example.sn",
                     role="authenticated", token="t")
    monkeypatch.setattr(auth, "authenticate", lambda header: user)
    return user


def counted(redis, limit: str) -> int:
    """How many requests the limit `limit` has counted, all identifiers and windows together."""
    return sum(int(redis.redis.get(key)) for key in redis.redis.scan_iter(f"dousell:ratelimit:{limit}:*"))


@pytest.mark.parametrize("handler, path", [("api/properties/[id].py", "/api/properties/123"),
                                           ("api/profile.py", "/api/profile")])
def test_a_write_counts_each_rate_limit_exactly_once_per_request(signed_in, limits, handler, path):
    with serve(endpoint(handler)) as base:
        for n in (1, 2):
            response = httpx.patch(f"{base}{path}", json={}, headers={"X-Forwarded-For": "196.207.1.2"}, timeout=5)
            assert response.status_code == 422, response.text  # counted before the body is read, as before
            assert (counted(limits, "write"), counted(limits, "write_address")) == (n, n)


@pytest.mark.parametrize("body, fields", [
    ({}, {"body"}),  # nothing to change
    ({"price": "50000"}, {"price"}),  # a string is not a price
    ({"price": 0}, {"price"}),  # prices are positive
    ({"price": 12.5}, {"price"}),  # whole XOF only
    ({"title": None}, {"title"}),  # a title cannot be removed
    ({"type": "castle"}, {"type"}),
    ({"status": "sold"}, {"status"}),
    ({"owner_id": "22222222-2222-4222-8222-222222222222"}, {"owner_id"}),  # ownership never moves by PATCH
    ({"bedrooms": -1, "colour": "red"}, {"bedrooms", "colour"}),
])
def test_a_bad_property_patch_is_a_422_listing_each_field(signed_in, body, fields):
    with serve(endpoint("api/properties/[id].py")) as base:
        response = httpx.patch(f"{base}/api/properties/123", json=body, timeout=5)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert {d["field"] for d in error["details"]} == fields
    assert all(d["message"] for d in error["details"])


@pytest.mark.parametrize("body, fields", [
    ({}, {"body"}),
    ({"phone": "call me"}, {"phone"}),
    ({"full_name": "x" * 200}, {"full_name"}),
    ({"role": "owner"}, {"role"}),  # nobody promotes themselves
    ({"email": "other@example.sn"}, {"email"}),
])
def test_a_bad_profile_patch_is_a_422_listing_each_field(signed_in, body, fields):
    with serve(endpoint("api/profile.py")) as base:
        response = httpx.patch(f"{base}/api/profile", json=body, timeout=5)
    assert response.status_code == 422, response.text
    assert {d["field"] for d in response.json()["error"]["details"]} == fields


def test_a_patch_without_a_token_is_401_before_the_body_is_read():
    with serve(endpoint("api/properties/[id].py")) as base:
        response = httpx.patch(f"{base}/api/properties/123", content=b"{not json", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_required"


@pytest.mark.parametrize("body, field", [
    ({"title": "Villa\x00 piégée"}, "title"),  # Postgres refuses NUL in text (22P05)
    ({"description": "ligne\x07"}, "description"),
])
def test_control_characters_are_a_422_before_the_database(signed_in, body, field):
    with serve(endpoint("api/properties/[id].py")) as base:
        response = httpx.patch(f"{base}/api/properties/123", json=body, timeout=5)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == field
