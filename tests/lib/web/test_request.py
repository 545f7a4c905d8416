"""lib/web/request: the body read as JSON, refusing what Python reads but JSON is not or nothing can store;
the signed-in user read (`user()`), and the write limits counted once per request (`rate_limit`).

How a refusal is answered over HTTP (400 in the contract's shape) is tests/lib/web/test_http.py's subject.
"""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import BaseModel, ConfigDict, Field

from lib.errors import AnonymousNotAllowed, MalformedJSON, NotFound, ValidationFailed
from lib.web.request import Request
from tests.fakes import fake_upstash


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_id: int = Field(gt=0)
    note: str | None = None


def with_body(body: bytes) -> Request:
    return Request("PATCH", "/api/things/5", {}, {}, "5", body)


@pytest.mark.parametrize("content", [
    b"[" * 60_000,  # RecursionError inside json.loads
    b'{"lease_id": ' * 4_000 + b"1" + b"}" * 4_000,  # within the 64 KiB cap
    b'{"note": ' + b"[" * 5_000 + b"]" * 5_000 + b', "lease_id": 1}',  # deep, and complete
])
def test_a_deeply_nested_body_is_malformed_json_not_a_recursion_error(content):
    with pytest.raises(MalformedJSON, match="trop imbriqué"):
        with_body(content).body_as(Payment)


@pytest.mark.parametrize("content", [
    b'{"lease_id": NaN}',  # Python reads these; JSON has no such numbers
    b'{"lease_id": Infinity}',
    b'{"lease_id": -Infinity}',
    b'{"lease_id": 1e999}',  # a float that overflows to inf
    b'{"lease_id": ' + b"7" * 5_000 + b"}",  # more digits than int() converts
    b'{"lease_id": 1, "note": "\\ud800"}',  # a lone surrogate: cannot be encoded, stored or sent on
    b'{"lease_id": 1, "\\udfff": "x"}',  # the same in a key
    b'{"lease_id": 1, "note": "\xed\xa0\x80"}',  # a surrogate encoded in the bytes: not UTF-8
])
def test_json_that_python_reads_but_nothing_can_store_is_malformed(content):
    with pytest.raises(MalformedJSON):
        with_body(content).body_as(Payment)


def test_a_surrogate_pair_is_one_character_and_is_accepted():
    assert with_body(b'{"lease_id": 1, "note": "\\ud83c\\udfe0"}').body_as(Payment).note == "\U0001f3e0"


def test_a_large_but_finite_number_reaches_the_model_which_refuses_it():
    with pytest.raises(ValidationFailed) as refused:
        with_body(b'{"lease_id": 1.5e300}').body_as(Payment)
    assert refused.value.details[0]["field"] == "lease_id"


@pytest.mark.parametrize("segment", ["\u0663", "\u00b2", "\uff11", "1e3", "9" * 5_000, "-1", "0", ""])
def test_a_path_id_of_anything_but_ascii_digits_is_a_404(segment):
    with pytest.raises(NotFound):
        Request("GET", "/api/things/x", {}, {}, segment, b"").path_id()


@pytest.mark.parametrize("value", ["\u0663", "\u00b2", "1e3", "9" * 5_000, "", " 1"])
def test_a_query_id_of_anything_but_ascii_digits_is_a_422(value):
    with pytest.raises(ValidationFailed):
        Request("GET", "/api/payments", {"lease_id": value}, {}, None, b"").query_id("lease_id")


def test_a_path_or_query_id_has_at_most_eighteen_digits_as_openapi_json_says():
    eighteen, nineteen = "9" * 18, "1" + "0" * 18
    assert Request("GET", "/api/things/x", {}, {}, eighteen, b"").path_id() == int(eighteen)
    assert Request("GET", "/api/payments", {"lease_id": eighteen}, {}, None, b"").query_id("lease_id") == int(eighteen)
    with pytest.raises(NotFound):
        Request("GET", "/api/things/x", {}, {}, nineteen, b"").path_id()
    with pytest.raises(ValidationFailed):
        Request("GET", "/api/payments", {"lease_id": nineteen}, {}, None, b"").query_id("lease_id")


# -- the signed-in user and the write limits: `user()` reads, `rate_limit(user)` counts, once --------

SECRET = "a-legacy-hs256-secret-of-32-bytes!!"
USER_ID = "44444444-4444-4444-8444-444444444444"


@pytest.fixture
def limits(monkeypatch):
    """A project taking legacy HS256 tokens (no JWKS to fetch) and the write limits counted for real, in
    the Upstash stand-in's engine: yields the FakeUpstash."""
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.test")
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET)
    monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", "true")
    monkeypatch.delenv("SUPABASE_JWT_ISSUER", raising=False)
    for name in ("RATE_LIMIT_WRITES_PER_MINUTE", "RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    with fake_upstash(monkeypatch) as redis:
        yield redis


def signed(method: str, *, anonymous: bool = False, address: str | None = "196.207.1.2") -> Request:
    now = int(time.time())
    token = jwt.encode({"iss": "https://project.supabase.test/auth/v1", "sub": USER_ID, "aud": "authenticated",
                        "role": "authenticated", "exp": now + 3600, "iat": now, "is_anonymous": anonymous},
                       SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    if address:
        headers["X-Forwarded-For"] = address
    return Request(method, "/api/visits", {}, headers, None, b"{}")


def counted(redis, limit: str) -> int:
    """How many requests the limit `limit` has counted, all identifiers and windows together."""
    return sum(int(redis.redis.get(key)) for key in redis.redis.scan_iter(f"dousell:ratelimit:{limit}:*"))


def test_user_only_reads_however_often_it_is_called(limits):
    req = signed("POST")
    first = req.user()
    assert req.user() is first, "the token is verified once per request"
    assert first.id == USER_ID
    assert limits.calls == [], "no limit counted, no Redis call"


def test_a_write_is_counted_once_per_request_against_each_limit(limits):
    req = signed("POST")
    user = req.user()
    req.rate_limit(user)
    req.rate_limit(user)  # a second call in the same request counts nothing
    req.user()
    assert (counted(limits, "write"), counted(limits, "write_address")) == (1, 1)
    other = signed("POST")  # the next request counts again
    other.rate_limit(other.user())
    assert (counted(limits, "write"), counted(limits, "write_address")) == (2, 2)


def test_a_read_is_never_counted(limits):
    req = signed("GET")
    req.rate_limit(req.user())
    assert limits.calls == []


def test_an_anonymous_sign_in_is_refused_a_write_before_anything_is_counted(limits):
    req = signed("POST", anonymous=True)
    with pytest.raises(AnonymousNotAllowed):
        req.user()
    assert limits.calls == []
    assert signed("GET", anonymous=True).user().is_anonymous, "reads stay open to it"
