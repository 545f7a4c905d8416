"""lib/auth: Supabase access tokens verified locally, with real keys and a JWKS faked by respx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lib import auth
from lib.errors import (
    AuthenticationRequired,
    ConfigurationError,
    InvalidToken,
    ServiceUnavailable,
)
from tests.support import FakeClock

SUPABASE_URL = "https://abcdefghijklmnop.supabase.co"
ISSUER = f"{SUPABASE_URL}/auth/v1"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"
LEGACY_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER_ID = "8d0fd2b3-9ca7-4d9e-a95f-9e13dded323e"
EMAIL = "awa.diop@example.sn"

# Real keys, made once per run: the project's EC P-256 and RSA signing keys, a stranger's EC
# key, and the key Supabase publishes after a rotation.
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROTATED_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    """The JWKS entry Supabase publishes for a key (same fields as the real endpoint)."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk, alg = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "ES256"
    else:
        jwk, alg = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "RS256"
    return {**jwk, "kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"], "ext": True}


EC_JWK = public_jwk(EC_KEY, "ec-1")
RSA_JWK = public_jwk(RSA_KEY, "rsa-1")
ROTATED_JWK = public_jwk(ROTATED_EC_KEY, "ec-2")


def pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes | str | dict[str, Any] | list[Any]) -> str:
    if isinstance(data, (dict, list)):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_DROP = object()


def claims(**overrides: Any) -> dict[str, Any]:
    """A signed-in user's claims as Supabase issues them; `name=_DROP` leaves a claim out."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": USER_ID,
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": EMAIL,
        "phone": "",
        "role": "authenticated",
        "aal": "aal1",
        "session_id": "0b6e4b8e-4a3f-4f3c-9d6b-3d2b1c0a9e8f",
        "is_anonymous": False,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not _DROP}


def mint(*, key: Any = EC_KEY, alg: str = "ES256", kid: str | None = "ec-1", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid} if kid else None)


def by_hand(header: Any, payload: Any, sign: Callable[[bytes], bytes] = lambda _: b"") -> str:
    """A token PyJWT would refuse to make: any header, any signature over `header.payload`."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def hs256_with(secret: bytes, kid: str | None = "ec-1") -> str:
    """HS256 over valid claims with any bytes as the secret, a public key's PEM included."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    return by_hand(header, claims(), lambda data: hmac.new(secret, data, hashlib.sha256).digest())


def tampered() -> str:
    """A genuine token whose payload was swapped for one naming another user."""
    header, _, signature = mint().split(".")
    return f"{header}.{b64(claims(sub='00000000-0000-0000-0000-000000000000'))}.{signature}"


@dataclass
class FakeJwks:
    """The project's JWKS endpoint: serves `keys`, or `failure` (a response or an exception)."""

    keys: list[dict[str, Any]] = field(default_factory=lambda: [EC_JWK, RSA_JWK])
    failure: httpx.Response | Exception | None = None
    route: respx.Route | None = None

    def respond(self, request: httpx.Request) -> httpx.Response:
        if isinstance(self.failure, Exception):
            raise self.failure
        if self.failure is not None:
            return self.failure
        return httpx.Response(200, json={"keys": self.keys})

    @property
    def calls(self) -> int:
        assert self.route is not None
        return self.route.call_count


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """A configured project, an empty JWKS cache, no HTTP client yet, and a fake clock."""
    monkeypatch.setenv("SUPABASE_URL", SUPABASE_URL)
    monkeypatch.delenv("SUPABASE_JWT_SECRET", raising=False)
    monkeypatch.delenv("SUPABASE_JWT_ISSUER", raising=False)
    monkeypatch.delenv("SUPABASE_JWT_KEEP_LEGACY_HS256", raising=False)
    fake = FakeClock(now=10_000.0)
    keys = auth.JWKS(clock=fake)
    with auth.using(keys):
        yield fake
    keys.close()


@pytest.fixture
def jwks() -> Iterator[FakeJwks]:
    with respx.mock(assert_all_called=False) as router:  # any other request fails the test
        fake = FakeJwks()
        fake.route = router.get(JWKS_URL).mock(side_effect=fake.respond)
        yield fake


# --- accepted --------------------------------------------------------------------------

ACCEPTED = [
    # Supabase's default signing key today: ES256 from the JWKS.
    pytest.param(lambda: mint(), None, EMAIL, id="es256"),
    # Projects on an RSA signing key: RS256 from the JWKS.
    pytest.param(lambda: mint(key=RSA_KEY, alg="RS256", kid="rsa-1"), None, EMAIL, id="rs256"),
    # A legacy project: HS256 checked with SUPABASE_JWT_SECRET (its tokens carry no kid).
    pytest.param(lambda: mint(key=LEGACY_SECRET, alg="HS256", kid=None), LEGACY_SECRET, EMAIL, id="hs256-legacy-secret"),
    # Expired 10 s ago on our clock: within the 30 s allowed for clock skew.
    pytest.param(lambda: mint(exp=int(time.time()) - 10), None, EMAIL, id="skew-within-leeway"),
    # `aud` may also be a list that contains `authenticated`.
    pytest.param(lambda: mint(aud=["authenticated"]), None, EMAIL, id="aud-as-list"),
    # A phone sign-up has `"email": ""`: no address, not an empty one.
    pytest.param(lambda: mint(email="", phone="221771234567"), None, None, id="phone-user-no-email"),
]


@pytest.mark.parametrize(("make_token", "secret", "email"), ACCEPTED)
def test_a_valid_user_token_gives_the_user(
    jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch, make_token: Callable[[], str], secret: str | None, email: str | None
) -> None:
    if secret:
        monkeypatch.setenv("SUPABASE_JWT_SECRET", secret)
        jwks.keys = []  # a legacy project's JWKS serves no signing key
    token = make_token()

    user = auth.authenticate(f"Bearer {token}")

    assert user == auth.User(id=USER_ID, email=email, role="authenticated", token=token)


def test_the_scheme_is_case_insensitive(jwks: FakeJwks) -> None:
    assert auth.authenticate(f"bearer {mint()}").id == USER_ID
    assert auth.authenticate(f"BEARER {mint()}").id == USER_ID


def test_with_legacy_hs256_kept_explicitly_an_hs256_token_needs_no_jwks(jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", LEGACY_SECRET)
    monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", "true")
    jwks.failure = httpx.Response(500)

    assert auth.authenticate(f"Bearer {mint(key=LEGACY_SECRET, alg='HS256', kid=None)}").id == USER_ID
    assert jwks.calls == 0


# --- retiring HS256 (issue 24, finding 7) -------------------------------------------------


def test_once_the_jwks_serves_signing_keys_a_valid_hs256_token_is_refused(jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    # The attack: the project moved to asymmetric keys and revoked its legacy secret in Supabase,
    # but a copy of the secret (here, still in SUPABASE_JWT_SECRET) keeps minting any user.
    monkeypatch.setenv("SUPABASE_JWT_SECRET", LEGACY_SECRET)
    forged = mint(key=LEGACY_SECRET, alg="HS256", kid=None, sub="00000000-0000-4000-8000-000000000000")

    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {forged}")

    assert caught.value.reason == "hs256_retired"
    assert auth.authenticate(f"Bearer {mint()}").id == USER_ID  # the project's real tokens still pass


def test_a_legacy_project_whose_jwks_starts_serving_keys_stops_taking_hs256_within_ten_minutes(
        jwks: FakeJwks, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", LEGACY_SECRET)
    jwks.keys = []
    token = mint(key=LEGACY_SECRET, alg="HS256", kid=None)
    assert auth.authenticate(f"Bearer {token}").id == USER_ID
    jwks.keys = [EC_JWK]  # the operator rotated to an asymmetric key in the dashboard
    clock.advance(auth.JWKS_MAX_AGE)
    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {token}")
    assert caught.value.reason == "hs256_retired"


def test_without_a_jwks_to_ask_an_hs256_token_is_503_not_let_through(jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", LEGACY_SECRET)
    jwks.failure = httpx.Response(500)
    with pytest.raises(ServiceUnavailable):
        auth.authenticate(f"Bearer {mint(key=LEGACY_SECRET, alg='HS256', kid=None)}")


def test_a_keep_legacy_hs256_that_is_neither_yes_nor_no_is_a_configuration_error(
        jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", LEGACY_SECRET)
    monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", "peut-être")
    with pytest.raises(ConfigurationError):
        auth.authenticate(f"Bearer {mint(key=LEGACY_SECRET, alg='HS256', kid=None)}")


# --- anonymous sign-ins (issue 24, finding 6) ----------------------------------------------


@pytest.mark.parametrize(("claim", "anonymous"), [
    (_DROP, False),   # tokens from before anonymous sign-ins carry no claim
    (False, False),
    (True, True),
    ("false", True),  # not exactly false: taken as anonymous, never as an account
    (0, True),
])
def test_an_anonymous_sign_in_is_marked_as_such(jwks: FakeJwks, claim: Any, anonymous: bool) -> None:
    user = auth.authenticate(f"Bearer {mint(is_anonymous=claim)}")
    assert user.is_anonymous is anonymous


# --- refused ---------------------------------------------------------------------------


def test_no_header_asks_to_sign_in() -> None:
    for value in (None, "", "   "):
        with pytest.raises(AuthenticationRequired):
            auth.authenticate(value)


REFUSED = [
    # Another scheme: a password is not a session.
    pytest.param(lambda: "Basic dXNlcjpwYXNz", None, "malformed_header", id="basic-scheme"),
    # The scheme with nothing after it.
    pytest.param(lambda: "Bearer", None, "malformed_header", id="bearer-alone"),
    # Two words where one token belongs.
    pytest.param(lambda: "Bearer a b", None, "malformed_header", id="bearer-two-words"),
    # A valid token behind two spaces: not exactly `Bearer <token>` (GoTrue refuses it too).
    pytest.param(lambda: f"Bearer  {mint()}", None, "malformed_header", id="bearer-double-space"),
    # A token behind a tab.
    pytest.param(lambda: f"Bearer\t{mint()}", None, "malformed_header", id="bearer-tab"),
    # Not a JWT at all.
    pytest.param(lambda: "Bearer garbage", None, "malformed_token", id="garbage"),
    # Three segments, the header not base64url.
    pytest.param(lambda: "Bearer %%%.e30.c2ln", None, "malformed_token", id="header-not-base64"),
    # Base64url, but not JSON.
    pytest.param(lambda: f"Bearer {b64('not json')}.{b64(claims())}.c2ln", None, "malformed_token", id="header-not-json"),
    # JSON, but not an object.
    pytest.param(lambda: f"Bearer {b64([1, 2])}.{b64(claims())}.c2ln", None, "malformed_token", id="header-json-array"),
    # `alg: none` and an empty signature, crafted by hand: never a signature we skip.
    pytest.param(lambda: "Bearer " + by_hand({"alg": "none", "typ": "JWT"}, claims()), None, "algorithm_not_allowed", id="alg-none"),
    # The same with a known kid: the kid must not lend it a key.
    pytest.param(lambda: "Bearer " + by_hand({"alg": "none", "kid": "ec-1"}, claims()), None, "algorithm_not_allowed", id="alg-none-known-kid"),
    # No `alg` at all.
    pytest.param(lambda: "Bearer " + by_hand({"typ": "JWT", "kid": "ec-1"}, claims()), None, "algorithm_not_allowed", id="alg-missing"),
    # A real algorithm outside the allow-list.
    pytest.param(lambda: "Bearer " + mint(key=LEGACY_SECRET * 2, alg="HS512", kid=None), LEGACY_SECRET, "algorithm_not_allowed", id="alg-hs512"),
    # `alg` that is not even a string.
    pytest.param(lambda: "Bearer " + by_hand({"alg": ["ES256"], "kid": "ec-1"}, claims()), None, "algorithm_not_allowed", id="alg-list"),
    # ES256 claimed, but the kid names the RSA key: the key decides the algorithm.
    pytest.param(lambda: "Bearer " + mint(kid="rsa-1"), None, "algorithm_not_allowed", id="es256-on-rsa-kid"),
    # RS256 claimed, but the kid names the EC key.
    pytest.param(lambda: "Bearer " + mint(key=RSA_KEY, alg="RS256", kid="ec-1"), None, "algorithm_not_allowed", id="rs256-on-ec-kid"),
    # An asymmetric token without a kid: no key to pick.
    pytest.param(lambda: "Bearer " + mint(kid=None), None, "missing_kid", id="no-kid"),
    # A kid that is not a string.
    pytest.param(lambda: "Bearer " + by_hand({"alg": "ES256", "kid": 7}, claims()), None, "malformed_token", id="kid-not-string"),
    # A kid the (just fetched) JWKS does not have.
    pytest.param(lambda: "Bearer " + mint(kid="ghost"), None, "unknown_kid", id="unknown-kid"),
    # Signed by another EC key that borrows our kid.
    pytest.param(lambda: "Bearer " + mint(key=STRANGER_EC_KEY), None, "bad_signature", id="stranger-key-same-kid"),
    # A genuine signature over someone else's payload.
    pytest.param(lambda: "Bearer " + tampered(), None, "bad_signature", id="payload-swapped"),
    # HS256 on a project with no legacy secret configured.
    pytest.param(lambda: "Bearer " + mint(key=LEGACY_SECRET, alg="HS256", kid=None), None, "hs256_not_configured", id="hs256-secret-unset"),
    # HS256 signed with another secret.
    pytest.param(lambda: "Bearer " + mint(key="another-secret-another-secret-another-secret", alg="HS256", kid=None), LEGACY_SECRET, "bad_signature", id="hs256-wrong-secret"),
    # Algorithm confusion: HMAC keyed with our public EC key's PEM, no legacy secret.
    pytest.param(lambda: "Bearer " + hs256_with(pem(EC_KEY)), None, "hs256_not_configured", id="hs256-ec-pem-secret-unset"),
    # The same on a legacy project: only the secret is ever an HMAC key.
    pytest.param(lambda: "Bearer " + hs256_with(pem(EC_KEY)), LEGACY_SECRET, "bad_signature", id="hs256-ec-pem-secret-set"),
    # The classic one: HMAC keyed with the RSA public key's PEM.
    pytest.param(lambda: "Bearer " + hs256_with(pem(RSA_KEY), kid="rsa-1"), LEGACY_SECRET, "bad_signature", id="hs256-rsa-pem-secret-set"),
    # Expired beyond the 30 s skew allowance.
    pytest.param(lambda: "Bearer " + mint(exp=int(time.time()) - 120), None, "expired", id="expired"),
    # No `exp`: a token must end.
    pytest.param(lambda: "Bearer " + mint(exp=_DROP), None, "missing_claim:exp", id="exp-missing"),
    # `nbf` five minutes ahead.
    pytest.param(lambda: "Bearer " + mint(nbf=int(time.time()) + 300), None, "not_yet_valid", id="nbf-future"),
    # Issued five minutes in the future.
    pytest.param(lambda: "Bearer " + mint(iat=int(time.time()) + 300), None, "not_yet_valid", id="iat-future"),
    # Meant for another audience.
    pytest.param(lambda: "Bearer " + mint(aud="public"), None, "wrong_audience", id="wrong-aud"),
    # No audience.
    pytest.param(lambda: "Bearer " + mint(aud=_DROP), None, "missing_claim:aud", id="aud-missing"),
    # Issued by another Supabase project.
    pytest.param(lambda: "Bearer " + mint(iss="https://zzzzzzzzzzzzzzzz.supabase.co/auth/v1"), None, "wrong_issuer", id="wrong-iss"),
    # No issuer.
    pytest.param(lambda: "Bearer " + mint(iss=_DROP), None, "missing_claim:iss", id="iss-missing"),
    # No subject: nobody to act as.
    pytest.param(lambda: "Bearer " + mint(sub=_DROP), None, "missing_claim:sub", id="sub-missing"),
    # An empty subject is no subject.
    pytest.param(lambda: "Bearer " + mint(sub=""), None, "missing_claim:sub", id="sub-empty"),
    # A subject that is not a string.
    pytest.param(lambda: "Bearer " + mint(sub=42), None, "invalid_claim", id="sub-not-string"),
    # The anon role: a signed-out visitor, not a user.
    pytest.param(lambda: "Bearer " + mint(role="anon"), None, "wrong_role", id="role-anon"),
    # The service role bypasses RLS: never accepted as a user token.
    pytest.param(lambda: "Bearer " + mint(role="service_role"), None, "wrong_role", id="role-service"),
    # No role at all.
    pytest.param(lambda: "Bearer " + mint(role=_DROP), None, "wrong_role", id="role-missing"),
]


@pytest.mark.parametrize(("make_header", "secret", "reason"), REFUSED)
def test_anything_but_a_valid_user_token_is_refused(
    jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch, make_header: Callable[[], str], secret: str | None, reason: str
) -> None:
    if secret:
        monkeypatch.setenv("SUPABASE_JWT_SECRET", secret)
        # With the JWKS serving keys too: the forgeries below must fail on their own, not on HS256's retirement.
        monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", "true")
    header = make_header()

    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(header)

    # The reason is for logs; the client sees one generic message, and never the token.
    assert caught.value.reason == reason
    assert caught.value.to_body() == {"error": {"code": "invalid_token", "message": InvalidToken.message}}
    token = header.partition(" ")[2]
    assert not token or token not in str(caught.value)


# --- the JWKS cache --------------------------------------------------------------------


def test_the_jwks_is_fetched_once_while_fresh(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    clock.advance(599)
    auth.authenticate(f"Bearer {mint(key=RSA_KEY, alg='RS256', kid='rsa-1')}")

    assert jwks.calls == 1


def test_the_jwks_is_fetched_again_after_ten_minutes(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    clock.advance(601)
    auth.authenticate(f"Bearer {mint()}")

    assert jwks.calls == 2


def test_a_key_revoked_from_the_jwks_stops_working_within_ten_minutes(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    jwks.keys = [RSA_JWK]
    clock.advance(601)

    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {mint()}")
    assert caught.value.reason == "unknown_kid"


def test_an_unknown_kid_refetches_once_then_is_refused(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    clock.advance(60)

    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {mint(kid='ghost')}")

    assert caught.value.reason == "unknown_kid"
    assert jwks.calls == 2


def test_a_jwks_fetched_for_this_very_request_is_not_fetched_again_for_an_unknown_kid(jwks: FakeJwks) -> None:
    with pytest.raises(InvalidToken):
        auth.authenticate(f"Bearer {mint(kid='ghost')}")

    assert jwks.calls == 1


def test_a_flood_of_unknown_kids_refetches_at_most_once_per_thirty_seconds(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    clock.advance(60)
    for n in range(20):
        with pytest.raises(InvalidToken):
            auth.authenticate(f"Bearer {mint(kid=f'ghost-{n}')}")
    assert jwks.calls == 2

    clock.advance(29)
    with pytest.raises(InvalidToken):
        auth.authenticate(f"Bearer {mint(kid='ghost-late')}")
    assert jwks.calls == 2

    clock.advance(2)
    with pytest.raises(InvalidToken):
        auth.authenticate(f"Bearer {mint(kid='ghost-later')}")
    assert jwks.calls == 3


def test_a_rotated_key_is_accepted_once_the_jwks_shows_it(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    jwks.keys = [ROTATED_JWK, EC_JWK]
    clock.advance(60)

    user = auth.authenticate(f"Bearer {mint(key=ROTATED_EC_KEY, kid='ec-2')}")

    assert user.id == USER_ID
    assert jwks.calls == 2


def test_keys_we_cannot_use_are_skipped_without_losing_the_others(jwks: FakeJwks) -> None:
    p384 = public_jwk(ec.generate_private_key(ec.SECP384R1()), "p384")
    jwks.keys = [
        {"kty": "oct", "kid": "hmac", "k": b64(LEGACY_SECRET)},  # a symmetric key is never a JWKS key
        {**public_jwk(STRANGER_EC_KEY, "enc"), "use": "enc"},  # not for signatures
        {**p384, "alg": "ES384"},  # outside the allow-list
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},  # unreadable
        "not a key",
        EC_JWK,
    ]

    assert auth.authenticate(f"Bearer {mint()}").id == USER_ID
    for kid, key in (("hmac", EC_KEY), ("enc", STRANGER_EC_KEY), ("broken", EC_KEY)):
        with pytest.raises(InvalidToken) as caught:
            auth.authenticate(f"Bearer {mint(key=key, kid=kid)}")
        assert caught.value.reason == "unknown_kid"


def test_concurrent_requests_on_a_cold_instance_fetch_the_jwks_once(jwks: FakeJwks) -> None:
    serve = jwks.respond

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # a slow JWKS widens the window in which the others arrive
        return serve(request)

    jwks.route.side_effect = slow
    start = threading.Barrier(8)

    def sign_in() -> str:
        start.wait()
        return auth.authenticate(f"Bearer {mint()}").id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: sign_in(), range(8)))

    assert ids == [USER_ID] * 8
    assert jwks.calls == 1


def test_the_cached_jwks_belongs_to_one_project(jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    auth.authenticate(f"Bearer {mint()}")
    other = "https://qrstuvwxyzabcdef.supabase.co"
    monkeypatch.setenv("SUPABASE_URL", other)
    with respx.mock(assert_all_called=False) as router:
        route = router.get(f"{other}/auth/v1/.well-known/jwks.json").mock(
            return_value=httpx.Response(200, json={"keys": [ROTATED_JWK]})
        )
        with pytest.raises(InvalidToken) as caught:
            auth.authenticate(f"Bearer {mint(iss=f'{other}/auth/v1')}")  # ec-1 is not in its JWKS

    assert caught.value.reason == "unknown_kid"
    assert route.call_count == 1
    assert jwks.calls == 1  # the first project's key set was neither reused nor fetched again


CUSTOM_DOMAIN = "https://api.dousell.sn"


@pytest.fixture
def custom_domain(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.Route]:
    """SUPABASE_URL on the project's custom domain, which serves the same JWKS as its supabase.co address."""
    monkeypatch.setenv("SUPABASE_URL", CUSTOM_DOMAIN)
    with respx.mock(assert_all_called=False) as router:
        yield router.get(f"{CUSTOM_DOMAIN}/auth/v1/.well-known/jwks.json").mock(
            return_value=httpx.Response(200, json={"keys": [EC_JWK]}))


@pytest.mark.parametrize("configured", [ISSUER, f"{ISSUER}/"])  # a trailing slash pasted from a dashboard
def test_behind_a_custom_domain_the_configured_issuer_is_the_one_checked(
    custom_domain: respx.Route, monkeypatch: pytest.MonkeyPatch, configured: str
) -> None:
    monkeypatch.setenv("SUPABASE_JWT_ISSUER", configured)

    assert auth.authenticate(f"Bearer {mint()}").id == USER_ID  # iss stays https://<ref>.supabase.co/auth/v1
    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {mint(iss=f'{CUSTOM_DOMAIN}/auth/v1')}")
    assert caught.value.reason == "wrong_issuer"
    assert custom_domain.call_count == 1  # the key set comes from the URL we are configured to reach


def test_behind_a_custom_domain_without_the_issuer_every_real_token_is_refused(custom_domain: respx.Route) -> None:
    # What SUPABASE_JWT_ISSUER is for: Supabase's tokens do not name the custom domain.
    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {mint()}")
    assert caught.value.reason == "wrong_issuer"


JWKS_FAILURES = [
    # Supabase answers 500.
    pytest.param(httpx.Response(500), "jwks_unreachable", id="http-500"),
    # A redirect is not the JWKS (and is not followed).
    pytest.param(httpx.Response(302, headers={"Location": "https://evil.example/jwks"}), "jwks_unreachable", id="redirect"),
    # No answer within the timeout.
    pytest.param(httpx.ReadTimeout("timed out"), "jwks_unreachable", id="timeout"),
    # No connection at all.
    pytest.param(httpx.ConnectError("connection refused"), "jwks_unreachable", id="connect-error"),
    # 200 with a page that is not JSON (a proxy's error page).
    pytest.param(httpx.Response(200, text="<html>maintenance</html>"), "jwks_invalid", id="not-json"),
    # JSON, but not a key set.
    pytest.param(httpx.Response(200, json={"error": "nope"}), "jwks_invalid", id="no-keys-list"),
]


@pytest.mark.parametrize(("failure", "reason"), JWKS_FAILURES)
def test_no_jwks_and_no_cached_copy_is_a_503(jwks: FakeJwks, failure: Any, reason: str) -> None:
    jwks.failure = failure

    with pytest.raises(ServiceUnavailable) as caught:
        auth.authenticate(f"Bearer {mint()}")

    assert caught.value.status == 503
    assert caught.value.reason == reason
    assert caught.value.__cause__ is not None


def test_a_cached_jwks_keeps_verifying_while_the_endpoint_is_down(jwks: FakeJwks, clock: FakeClock) -> None:
    auth.authenticate(f"Bearer {mint()}")
    jwks.failure = httpx.Response(500)
    clock.advance(300)

    # Known kid: the cached copy answers, no fetch.
    assert auth.authenticate(f"Bearer {mint(key=RSA_KEY, alg='RS256', kid='rsa-1')}").id == USER_ID
    assert jwks.calls == 1

    # Unknown kid: the refetch fails, the cached copy still decides (401, not 503).
    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(f"Bearer {mint(kid='ghost')}")
    assert caught.value.reason == "unknown_kid"
    assert jwks.calls == 2

    # A failed refetch counts against the interval too: the outage is not hammered.
    with pytest.raises(InvalidToken):
        auth.authenticate(f"Bearer {mint(kid='ghost-2')}")
    assert jwks.calls == 2

    # Past ten minutes the copy is no longer trusted.
    clock.advance(301)
    with pytest.raises(ServiceUnavailable):
        auth.authenticate(f"Bearer {mint()}")


def test_the_jwks_request_is_bounded_in_time(jwks: FakeJwks) -> None:
    auth.authenticate(f"Bearer {mint()}")

    timeouts = jwks.route.calls.last.request.extensions["timeout"]
    assert set(timeouts) == {"connect", "read", "write", "pool"}
    assert all(value is not None and value <= 2.0 for value in timeouts.values())


def test_the_default_client_is_made_at_first_use_and_reused(jwks: FakeJwks, clock: FakeClock) -> None:
    assert auth.current().http is None
    auth.authenticate(f"Bearer {mint()}")
    first = auth.current().http
    clock.advance(601)
    auth.authenticate(f"Bearer {mint()}")

    assert first is not None
    assert auth.current().http is first
    assert jwks.calls == 2


def test_an_injected_client_fetches_the_jwks_with_the_bound_still_applied() -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"keys": [EC_JWK]})

    with httpx.Client(transport=httpx.MockTransport(serve)) as client:  # no timeout of its own
        with auth.using(auth.JWKS(http=client)):
            assert auth.authenticate(f"Bearer {mint()}").id == USER_ID

    assert [str(request.url) for request in seen] == [JWKS_URL]
    assert seen[0].extensions["timeout"]["read"] == 2.0


# --- the rest of the contract ----------------------------------------------------------


def test_the_user_repr_hides_the_token(jwks: FakeJwks) -> None:
    token = mint()
    user = auth.authenticate(f"Bearer {token}")

    assert token not in repr(user)
    assert token not in str(user)
    assert USER_ID in repr(user)


def test_without_supabase_url_the_missing_variable_is_named(jwks: FakeJwks, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPABASE_URL")

    with pytest.raises(ConfigurationError) as caught:
        auth.authenticate(f"Bearer {mint()}")
    assert caught.value.variable == "SUPABASE_URL"


def test_importing_lib_auth_loads_neither_jwt_nor_httpx_and_needs_no_env() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SUPABASE_")}
    probe = "import sys, lib.auth; print(sorted(m for m in ('jwt', 'httpx', 'cryptography') if m in sys.modules))"

    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
