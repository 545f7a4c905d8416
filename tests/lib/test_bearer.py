"""lib/bearer: the one reading of `Authorization: Bearer`, and shared secrets compared in constant time."""

from __future__ import annotations

import hmac
import types

import pytest

from lib import bearer
from lib.errors import AuthenticationRequired, ConfigurationError, InvalidToken

# == the header ================================================================================


@pytest.mark.parametrize("header", [
    "Bearer abc.def",
    "bearer abc.def",  # the scheme is case-insensitive (RFC 7235)
    "BEARER abc.def",
    "  Bearer abc.def  ",  # spaces around the whole value (a proxy's, a copy-paste's)
])
def test_the_token_is_read_from_bearer_one_space_token(header: str) -> None:
    assert bearer.token(header) == "abc.def"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header_asks_to_sign_in(header: str | None) -> None:
    with pytest.raises(AuthenticationRequired):
        bearer.token(header)


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",  # another scheme
    "Bearer",  # the scheme alone
    "Bearerabc.def",  # no space at all
    "Bearer a b",  # a second word behind the token
    "Bearer  abc.def",  # two spaces: GoTrue refuses it too
    "Bearer\tabc.def",  # a tab is not the RFC's SP
    "abc.def",  # a token without its scheme
])
def test_anything_else_is_a_malformed_header(header: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        bearer.token(header)
    assert caught.value.reason == "malformed_header"
    assert "abc" not in caught.value.message, "the client is never told what it sent"


# == shared secrets ============================================================================


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CRON_SECRET", "s3cret")
    return "s3cret"


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret "])
def test_the_configured_secret_is_let_in(secret: str, header: str) -> None:
    bearer.require_secret(header, "CRON_SECRET", "cron")


@pytest.mark.parametrize(("header", "error"), [
    (None, AuthenticationRequired),
    ("   ", AuthenticationRequired),
    ("Bearer wrong", InvalidToken),
    ("Bearer s3cretx", InvalidToken),  # one character more
    ("Bearer s3cre", InvalidToken),  # one less
    ("Basic s3cret", InvalidToken),  # the right secret under another scheme
    ("s3cret", InvalidToken),  # without a scheme
    ("Bearer s3cret s3cret", InvalidToken),  # a second word
    ("Bearer  s3cret", InvalidToken),  # read as the users' tokens are: one space
])
def test_anything_but_the_secret_is_a_401_with_a_challenge(secret: str, header: str | None,
                                                           error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        bearer.require_secret(header, "CRON_SECRET", "cron", label="Jeton de métriques")
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="cron"'}
    assert caught.value.message.startswith("Jeton de métriques ")


def test_an_unset_secret_is_a_configuration_error_even_for_a_caller_without_a_header(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRON_SECRET", raising=False)
    with pytest.raises(ConfigurationError) as caught:
        bearer.require_secret(None, "CRON_SECRET", "cron")
    assert caught.value.details == {"variable": "CRON_SECRET"}


@pytest.mark.parametrize(("header", "given"), [
    ("Bearer s3cret", b"s3cret"),
    ("Bearer nope", b"nope"),
    ("Basic s3cret", b""),  # a malformed header is compared too, as an empty secret
])
def test_every_header_is_compared_in_constant_time(secret: str, monkeypatch: pytest.MonkeyPatch, header: str,
                                                   given: bytes) -> None:
    seen: list[tuple[bytes, bytes]] = []
    spy = types.SimpleNamespace(compare_digest=lambda a, b: seen.append((a, b)) or hmac.compare_digest(a, b))
    monkeypatch.setattr(bearer, "hmac", spy)
    try:
        bearer.require_secret(header, "CRON_SECRET", "cron")
    except InvalidToken:
        pass  # refused: what matters here is how it was compared
    assert seen == [(given, b"s3cret")]
