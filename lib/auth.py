"""Verify Supabase access tokens locally (JWKS or the legacy HS256 secret) and say who is signed in.

The JWKS, its cache and the client that fetches it are one `JWKS` object, the process's built at first
use (lib/slot); a test installs its own with `with auth.using(JWKS(http=..., clock=...)):`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib import bearer, config
from lib.errors import InvalidToken, ServiceUnavailable
from lib.slot import Slot

if TYPE_CHECKING:
    import httpx

# PyJWT with cryptography (~65 ms) and httpx (~20 ms) are imported inside the functions that
# need them: importing this module (for `User`, say) must stay cheap on a cold start.

# Supabase signs with one of these and publishes the public half in its JWKS. HS256 is not
# here: it is only ever checked against SUPABASE_JWT_SECRET, never against a JWKS key,
# so a token cannot get a public key used as an HMAC secret (algorithm confusion).
JWKS_ALGORITHMS = frozenset({"ES256", "RS256"})
AUDIENCE = "authenticated"
# Supabase's `role` claim for a signed-in user; `anon` and `service_role` keys are not users.
USER_ROLE = "authenticated"
# Claims PyJWT must find before it checks their values (`aud` and `iss` are checked too).
REQUIRED_CLAIMS = ("exp", "sub", "aud", "iss")
# Seconds of clock skew forgiven on `exp`, `nbf` and `iat`.
LEEWAY = 30
# Seconds. A JWKS fetch is on the request path: slower than this, answer 503 rather than hang.
JWKS_TIMEOUT = 2.0
# Seconds a fetched JWKS is trusted; past this, a key Supabase revoked must stop working.
JWKS_MAX_AGE = 600.0
# Seconds between fetches forced by an unknown `kid`, so a flood of made-up kids costs at most
# one JWKS request per interval (and a JWKS we just fetched is not fetched again).
JWKS_REFETCH_INTERVAL = 30.0

@dataclass(frozen=True)
class User:
    """The signed-in user; `token` lets lib/db act as them against PostgREST, so RLS applies."""

    id: str
    email: str | None
    role: str
    token: str = field(repr=False)  # a bearer credential: never in logs or tracebacks
    # Supabase's anonymous sign-in (`is_anonymous` claim): a session anyone gets without an address.
    # Signed in for reads; refused on every write (lib/web/request.Request.user).
    is_anonymous: bool = False


def authenticate(authorization: str | None) -> User:
    """The user whose Supabase access token is in this `Authorization` header value.

    Raises `AuthenticationRequired` without a header, `InvalidToken` (with a log-safe
    `reason` attribute and the PyJWT error as `__cause__`) for anything but a valid user
    token, and `ServiceUnavailable` when the JWKS is needed but cannot be had.
    """
    token = bearer.token(authorization)

    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise _rejected("malformed_token") from exc

    issuer = config.supabase_jwt_issuer()
    alg = header.get("alg")
    key: Any
    if alg == "HS256":
        secret = config.supabase_jwt_secret()
        if secret is None:
            raise _rejected("hs256_not_configured")
        if not config.supabase_jwt_keep_legacy_hs256() and _jwks_has_signing_keys():
            # The project moved to asymmetric keys: its legacy secret is being (or was) revoked in
            # Supabase, and a copy of it must not keep minting users here. SECURITY.md, "Retiring HS256".
            raise _rejected("hs256_retired")
        key, algorithms = secret, ["HS256"]
    elif isinstance(alg, str) and alg in JWKS_ALGORITHMS:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _rejected("missing_kid")
        key = _keysets.get().signing_key(_jwks_url(), kid)
        # The allowed algorithm comes from the key, not from the token: PyJWT refuses a
        # token whose `alg` differs from the one the JWK is bound to.
        algorithms = [key.algorithm_name]
    else:
        raise _rejected("algorithm_not_allowed")  # `none`, HS512, missing, anything else

    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=AUDIENCE,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.InvalidTokenError as exc:
        raise _rejected(_reason(exc)) from exc
    return _user(claims, token)


# ---------------------------------------------------------------------------------------
# Claims


def _reason(exc: Exception) -> str:
    """A fixed, log-safe word for why PyJWT refused the token (never the token itself)."""
    import jwt

    # Most specific first: InvalidSignatureError is a DecodeError.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not_yet_valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing_claim:{exc.claim}"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong_audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong_issuer"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad_signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm_not_allowed"
    if isinstance(exc, jwt.DecodeError):
        return "malformed_token"
    return "invalid_claim"  # e.g. `sub` or `iat` of the wrong type


def _user(claims: Mapping[str, Any], token: str) -> User:
    sub = claims["sub"]  # PyJWT checked it is present and a string
    if not sub.strip():
        raise _rejected("missing_claim:sub")
    role = claims.get("role")
    if role != USER_ROLE:
        raise _rejected("wrong_role")
    email = claims.get("email")
    # Phone sign-ups carry `"email": ""`: no address, not an empty one. `is_anonymous` must be
    # exactly false to count as an account: any other value (a string, a number) is taken as anonymous.
    return User(id=sub, email=email if isinstance(email, str) and email else None, role=role, token=token,
                is_anonymous=claims.get("is_anonymous", False) is not False)


def _rejected(reason: str) -> InvalidToken:
    """An InvalidToken whose `reason` is for logs; the client only sees the generic message."""
    return InvalidToken(reason=reason)


def _unavailable(reason: str) -> ServiceUnavailable:
    return ServiceUnavailable(reason=reason)


# ---------------------------------------------------------------------------------------
# JWKS: fetched lazily, kept at most JWKS_MAX_AGE in the warm instance


@dataclass(frozen=True)
class _KeySet:
    url: str
    keys: Mapping[str, Any]  # kid -> jwt.PyJWK, parsed once per fetch
    fetched_at: float


class JWKS:
    """The project's JWKS as this process knows it: the copy fetched (trusted JWKS_MAX_AGE), when a
    fetch was last tried (failed ones too, or an outage would be hammered), and the httpx client that
    fetches it (`http` if given, a test's on a mock transport; else built at first fetch). `clock`
    (seconds, monotonic) dates the copy: tests drive expiry with a fake one. Token times (`exp`, `nbf`,
    `iat`) are checked by PyJWT against the wall clock."""

    def __init__(self, http: httpx.Client | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self._owned = http is None  # built here, so closed here
        self.clock = clock
        self.keyset: _KeySet | None = None
        self.last_fetch_attempt = float("-inf")
        self._lock = threading.Lock()  # one fetch at a time; waiters re-read what the winner stored

    def signing_key(self, url: str, kid: str) -> Any:
        """The PyJWK for `kid`: from the cache, refetched once if unknown, else InvalidToken."""
        keyset = self.fresh(url)
        key = keyset.keys.get(kid)
        if key is None:
            # Supabase may have rotated its keys since we fetched: look once more, but at most
            # once per JWKS_REFETCH_INTERVAL whatever the kids sent.
            keyset = self._refetch(url, keyset)
            key = keyset.keys.get(kid)
        if key is None:
            raise _rejected("unknown_kid")
        return key

    def _usable(self, keyset: _KeySet, url: str) -> bool:
        return keyset.url == url and self.clock() - keyset.fetched_at < JWKS_MAX_AGE

    def fresh(self, url: str) -> _KeySet:
        """The JWKS at `url`: the copy held while within JWKS_MAX_AGE, else fetched (ServiceUnavailable)."""
        keyset = self.keyset
        if keyset is not None and self._usable(keyset, url):
            return keyset
        with self._lock:
            keyset = self.keyset
            if keyset is not None and self._usable(keyset, url):
                return keyset  # another thread fetched it while we waited
            return self._fetch(url)

    def _refetch(self, url: str, seen: _KeySet) -> _KeySet:
        with self._lock:
            current = self.keyset
            if current is not None and current is not seen and self._usable(current, url):
                return current  # another thread refetched while we waited
            if self.clock() - self.last_fetch_attempt < JWKS_REFETCH_INTERVAL:
                return seen
            try:
                return self._fetch(url)
            except ServiceUnavailable as exc:
                # The copy we hold is still within JWKS_MAX_AGE: keep verifying with it.
                import logging

                logging.getLogger(__name__).warning(
                    "JWKS refetch failed (%s); keeping the copy fetched %.0f s ago",
                    exc.reason, self.clock() - seen.fetched_at,
                )
                return seen

    def _fetch(self, url: str) -> _KeySet:
        """Fetch, parse, store and return the JWKS, or ServiceUnavailable. Call with `_lock` held."""
        import httpx

        self.last_fetch_attempt = self.clock()
        if self.http is None:
            self.http = httpx.Client(timeout=JWKS_TIMEOUT, headers={"Accept": "application/json"})
        try:
            # The timeout is passed here too, so an injected client cannot make this unbounded.
            response = self.http.get(url, timeout=JWKS_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except httpx.HTTPError as exc:
            raise _unavailable("jwks_unreachable") from exc
        except ValueError as exc:  # not JSON
            raise _unavailable("jwks_invalid") from exc
        try:
            keys = _parse_jwks(document)
        except TypeError as exc:
            raise _unavailable("jwks_invalid") from exc
        self.keyset = _KeySet(url=url, keys=keys, fetched_at=self.clock())
        return self.keyset

    def close(self) -> None:
        """Close the httpx client if this object built it (a test's own client is the test's to close)."""
        if self._owned and self.http is not None:
            self.http.close()


_keysets: Slot[JWKS] = Slot(JWKS)


def using(jwks: JWKS) -> AbstractContextManager[JWKS]:
    """`with auth.using(JWKS(http=..., clock=...)):` every token of the process is checked against
    `jwks` inside the block (tests: a cold cache, a fake clock); the process's is back after it."""
    return _keysets.using(jwks)


def current() -> JWKS:
    """The JWKS in use: a test's (`using`), else the process's, built at first use."""
    return _keysets.get()


def _jwks_url() -> str:
    # From the URL we are configured to reach (a custom domain serves it too), not from the issuer.
    return f"{config.supabase_url()}/auth/v1/.well-known/jwks.json"


def _jwks_has_signing_keys() -> bool:
    """Whether the project's JWKS serves a key we verify with (ES256/RS256): then it has moved off
    the legacy HS256 secret. A legacy project's JWKS is empty. Unreachable with no copy in hand:
    ServiceUnavailable, never a guess that would let a revoked secret through."""
    return bool(_keysets.get().fresh(_jwks_url()).keys)


def _parse_jwks(document: Any) -> dict[str, Any]:
    """kid -> PyJWK for the signing keys we accept; other keys are skipped, a wrong shape is TypeError."""
    import jwt

    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TypeError("JWKS is not an object with a `keys` list")
    keys: dict[str, Any] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        # Only the shapes ES256/RS256 verify with; an `oct` key here would be an HMAC secret.
        if not (jwk.get("kty") == "RSA" or (jwk.get("kty") == "EC" and jwk.get("crv") == "P-256")):
            continue
        try:
            key = jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            continue  # one unreadable key must not take the others down
        if key.algorithm_name in JWKS_ALGORITHMS:
            keys.setdefault(jwk["kid"], key)
    return keys
