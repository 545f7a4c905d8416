"""lib/signature: X-Dousell-Signature, the database webhook's HMAC, checked over the raw body within five minutes."""

from __future__ import annotations

import pytest

from lib import signature
from lib.errors import AuthenticationRequired, InvalidToken

SECRET = "k3y"
BODY = b'{"a": 1}'
T = 1_796_647_388
# `printf '%s' '1796647388.{"a": 1}' | openssl dgst -sha256 -hmac k3y`: an HMAC computed outside Python.
OPENSSL = "552b85896bf8c3506019c114ca14d00c7c845e1162ad98a02ab72e5e02f65037"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(signature, "now", lambda: float(T))


def check(header: str | None, body: bytes = BODY, secret: str = SECRET) -> None:
    signature.require_signature(header, body, secret, "test")


def test_the_signature_is_hmac_sha256_of_the_time_a_dot_and_the_body():
    assert signature.sign(SECRET, BODY, T) == f"t={T},v1={OPENSSL}"
    check(f"t={T},v1={OPENSSL}")


@pytest.mark.parametrize("skew, accepted", [
    (0, True), (300, True), (-300, True),  # the window's edges, inclusive
    (301, False), (-301, False),  # a call held in the queue, or replayed, more than five minutes later
])
def test_the_time_must_be_within_five_minutes_of_the_clock(monkeypatch, skew, accepted):
    monkeypatch.setattr(signature, "now", lambda: float(T + skew))
    if accepted:
        check(signature.sign(SECRET, BODY, T))
    else:
        with pytest.raises(InvalidToken) as refused:
            check(signature.sign(SECRET, BODY, T))
        assert refused.value.reason == "stale_signature"


def test_a_stale_signature_with_a_wrong_digest_is_a_bad_signature_first(monkeypatch):
    monkeypatch.setattr(signature, "now", lambda: float(T + 10_000))
    with pytest.raises(InvalidToken) as refused:
        check(signature.sign("other", BODY, T))
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize("header, reason", [
    (f"t={T},v1={OPENSSL[:-1]}0", "bad_signature"),  # one hex digit off
    (f"t={T + 1},v1={OPENSSL}", "bad_signature"),  # another time, same digest
    (f"t={T},v1={OPENSSL.upper()}", "malformed_signature"),
    (f"t={T}", "malformed_signature"),
    (f"v1={OPENSSL}", "malformed_signature"),
    (f"t={T},v1={OPENSSL},x=1", "malformed_signature"),
    (f"t= {T},v1={OPENSSL}", "malformed_signature"),
    (f"t={T},v1={OPENSSL}" + f",v1={OPENSSL}" * 4, "malformed_signature"),  # five digests: more than rotation needs
    (f"Bearer {SECRET}", "malformed_signature"),
])
def test_a_bad_header_is_invalid_token_with_its_reason(header, reason):
    with pytest.raises(InvalidToken) as refused:
        check(header)
    assert (refused.value.status, refused.value.reason) == (401, reason)
    assert refused.value.headers["WWW-Authenticate"] == 'Signature realm="test", header="X-Dousell-Signature"'


def test_the_body_is_signed_byte_for_byte():
    for other in (BODY + b"\n", b'{"a":1}', BODY.replace(b"1", b"2")):
        with pytest.raises(InvalidToken):
            check(f"t={T},v1={OPENSSL}", body=other)


def test_any_of_several_digests_may_match_while_a_secret_is_rotated():
    check(f"t={T},v1={signature.sign('old', BODY, T).split('v1=')[1]},v1={OPENSSL}")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header_is_authentication_required(header):
    with pytest.raises(AuthenticationRequired):
        check(header)
