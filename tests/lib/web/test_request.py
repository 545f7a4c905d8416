"""lib/web/request: the body read as JSON, refusing what Python reads but JSON is not or nothing can store.

How a refusal is answered over HTTP (400 in the contract's shape) is tests/lib/web/test_http.py's subject.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from lib.errors import MalformedJSON, NotFound, ValidationFailed
from lib.web.request import Request


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
