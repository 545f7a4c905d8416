"""lib/web/request: the body read as JSON, refusing what Python reads but JSON is not or nothing can store;
the query read by hand (`query_fields`) as a pydantic model would read it; the signed-in user read
(`user()`), and the write limits counted once per request (`rate_limit`).

How a refusal is answered over HTTP (400 in the contract's shape) is tests/lib/web/test_http.py's subject.
"""

from __future__ import annotations

import random
import time

import jwt
import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lib.errors import AnonymousNotAllowed, InvalidFilter, MalformedJSON, NotFound, ValidationFailed
from lib.web.request import QueryInt, Request, field_errors
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


# == the query read by hand: Request.query_fields ==============================================

# GET /api/properties's query (api/properties/index.py), and the pydantic model it replaced.
LIST = {"city": str, "page": QueryInt(1, ge=1), "per_page": QueryInt(20, ge=1, le=100)}


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    city: str | None = None
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=20, ge=1, le=100)


def with_query(query: dict[str, str], repeated: list[str] | None = None) -> Request:
    return Request("GET", "/api/properties", query, {}, None, b"", repeated or [])


def read(**query: str) -> dict:
    return with_query(query).query_fields(LIST, InvalidFilter)


def refused(query: dict[str, str], repeated: list[str] | None = None) -> list[dict]:
    with pytest.raises(InvalidFilter) as caught:
        with_query(query, repeated).query_fields(LIST, InvalidFilter)
    return caught.value.details


def test_an_absent_parameter_is_its_default_and_an_absent_text_is_none():
    assert read() == {"city": None, "page": 1, "per_page": 20}


def test_a_text_is_trimmed_of_what_pydantic_trims_and_an_empty_one_is_kept_for_the_endpoint_to_refuse():
    assert read(city=" Dakar\u3000")["city"] == "Dakar"
    assert read(city="\x1cDakar")["city"] == "\x1cDakar"  # str.strip() would take it; pydantic does not
    assert read(city="  ")["city"] == ""


@pytest.mark.parametrize("name, value, code, message", [
    ("page", "1", None, None),
    ("page", "0", "greater_than_equal", "Valeur trop petite."),
    ("page", "-1", "greater_than_equal", "Valeur trop petite."),
    ("per_page", "1", None, None),
    ("per_page", "100", None, None),
    ("per_page", "0", "greater_than_equal", "Valeur trop petite."),
    ("per_page", "101", "less_than_equal", "Valeur trop grande."),
    ("per_page", "9" * 30, "less_than_equal", "Valeur trop grande."),
])
def test_an_int_out_of_its_bounds_is_named_with_pydantics_code_in_french(name, value, code, message):
    if code is None:
        assert read(**{name: value})[name] == int(value)
    else:
        assert refused({name: value}) == [{"field": name, "code": code, "message": message}]


def test_a_page_has_no_upper_bound_here_the_endpoint_refuses_a_deep_one():
    assert read(page="9" * 4_300)["page"] == int("9" * 4_300)


@pytest.mark.parametrize("raw, value", [
    ("+5", 5),
    ("5.0", 5),
    ("5.000", 5),
    ("+5.0", 5),
    ("05", 5),
    ("0_5", 5),
    ("1_000", 1000),
    ("1_0.0", 10),
    (" 5 ", 5),
    ("\t5\n", 5),
    ("\xa05\u3000", 5),
    ("-0", 0),
    ("0.0", 0),
    ("0-5", -5),  # sic: pydantic's leading zeros; refused by every bound of ours
    ("-" + "9" * 4_300, -int("9" * 4_300)),  # the bound counts digits, not the sign
])
def test_an_int_is_read_as_pydantics_lax_mode_reads_it(raw, value):
    assert QueryInt(0).read(raw) == (value, None)


@pytest.mark.parametrize("raw", [
    "", " ", "abc", "5.", ".5", "5.5", "5.0_0", "5._0", "1e3", "5e0", "0x10", "inf", "nan", "1__000", "_1", "1_",
    "++5", "+-5", "--5", "-+5", "1 0", "5 .0", "5.0.0",
    "\u0663", "\uff15", "\u00b2",  # ٣, ５, ²: digits to str.isdigit(), not to pydantic
    "\x1c5", "5\x00", "\u200b5",  # neither is White_Space
    " " + "9" * 4_301, "+" + "9" * 4_301, "0" + "9" * 4_301,  # too long once cleaned: int_parsing, not _size
])
def test_what_is_not_an_int_is_int_parsing(raw):
    assert QueryInt(0).read(raw) == (None, "int_parsing")
    assert refused({"page": raw}) == [{"field": "page", "code": "int_parsing", "message": "Doit être un nombre entier."}]


@pytest.mark.parametrize("raw", ["9" * 4_301, "-" + "9" * 4_301, "1" * 4_301 + "x", "9" * 4_301 + ".0"])
def test_more_than_4300_digits_in_a_row_is_int_parsing_size(raw):
    assert refused({"page": raw}) == [{"field": "page", "code": "int_parsing_size", "message": "Valeur invalide."}]


def test_unknown_names_come_after_the_fields_in_the_querys_order():
    assert [(d["field"], d["code"]) for d in refused({"zz": "1", "page": "abc", "aa": "2", "per_page": "0"})] == [
        ("page", "int_parsing"), ("per_page", "greater_than_equal"), ("zz", "extra_forbidden"),
        ("aa", "extra_forbidden")]
    assert refused({"sort": "price"}) == [{"field": "sort", "code": "extra_forbidden", "message": "Champ inconnu."}]


def test_a_name_pydantic_could_not_print_is_named_body_as_it_was():
    assert [d["field"] for d in refused({"": "1", "__root__": "2", "Page": "3"})] == ["body", "body", "Page"]


def test_a_repeated_name_is_refused_before_anything_else():
    assert refused({"page": "2", "sort": "x"}, repeated=["page"]) == [
        {"field": "page", "code": "repeated", "message": "Paramètre répété."}]
    assert [d["field"] for d in refused({"city": "b", "q": "d"}, repeated=["city", "q"])] == ["city", "q"]


def test_without_an_error_class_a_refusal_is_a_plain_validation_error():
    with pytest.raises(ValidationFailed) as caught:
        with_query({"page": "0"}).query_fields(LIST)
    assert type(caught.value) is ValidationFailed and caught.value.code == "validation_error"


def by_pydantic(query: dict[str, str]) -> tuple[str, object]:
    try:
        return "ok", ListQuery.model_validate(query).model_dump()
    except ValidationError as exc:
        return "refused", field_errors(exc)


def by_hand(query: dict[str, str]) -> tuple[str, object]:
    try:
        return "ok", with_query(query).query_fields(LIST, InvalidFilter)
    except InvalidFilter as exc:
        return "refused", exc.details


def test_the_hand_reader_answers_as_the_model_did_on_a_random_sample():
    # api/search.py still reads its page and per_page with pydantic: both must read them alike.
    rng = random.Random(20261207)
    alphabet = [*"0000111256789+-_. ", "\t", "\xa0", "\x1c", "\u3000", "e", "x", "\u0663", "\x00"]
    names = ["city", "page", "per_page", "sort", ""]
    for _ in range(3_000):
        query = {rng.choice(names): "".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(rng.randint(0, 3))}
        assert by_hand(query) == by_pydantic(query), query
    for raw in ("9" * 4_299, "9" * 4_300, "9" * 4_301, "-" + "9" * 4_301, " " + "9" * 4_301):
        assert QueryInt(0).read(raw)[0] == _pydantic_int(raw), raw[:3]


def _pydantic_int(raw: str) -> int | None:
    try:
        return TypeAdapter(int).validate_python(raw)
    except ValidationError:
        return None


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
