"""The auth half of the Supabase stand-in: ES256 signing keys, tokens, and GoTrue's password grant.

What GoTrue does that the API relies on, over the stand-in's real PostgreSQL:

- ``POST /auth/v1/token?grant_type=password`` ``{"email", "password"}`` checks
  ``auth.users.encrypted_password`` with ``extensions.crypt()`` (the seed's bcrypt hashes) and
  answers a session: ``{"access_token", "token_type": "bearer", "expires_in", "expires_at",
  "refresh_token", "user"}``. Wrong email or password: 400 with GoTrue's codes.
- ``POST /auth/v1/token?grant_type=refresh_token`` ``{"refresh_token"}`` swaps a refresh token
  (kept in memory, single use) for a new session.
- ``GET /auth/v1/user`` with ``Authorization: Bearer <access token>``: the user.
- ``POST /auth/v1/logout``: forgets the session's refresh tokens.
- ``GET /auth/v1/.well-known/jwks.json``: the public key, as Supabase publishes it (no apikey).

Access tokens are ES256 with a ``kid`` header and GoTrue's claims: ``iss`` (``{public_url}/auth/v1``),
``aud`` and ``role`` (``authenticated``), ``sub``, ``email``, ``phone``, ``exp``, ``iat``,
``session_id``, ``aal``, ``amr``, ``app_metadata``, ``user_metadata``, ``is_anonymous``.
The same key set verifies them on ``/rest/v1`` (``TokenError`` carries PostgREST's code).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "AUDIENCE",
    "AuthService",
    "AuthResult",
    "SigningKey",
    "TokenError",
    "USER_ROLE",
]

AUDIENCE = "authenticated"
USER_ROLE = "authenticated"
# Seconds of clock skew PostgREST forgives on exp/nbf/iat.
LEEWAY = 30
DEFAULT_EXPIRES_IN = 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """An EC P-256 key pair that signs access tokens (ES256) and publishes its public half as a JWK."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != "secp256r1":
            raise ValueError("the signing key must be an EC P-256 private key")
        self.private_key = private_key
        self.public_key = private_key.public_key()
        numbers = self.public_key.public_numbers()
        x, y = _b64url(numbers.x.to_bytes(32, "big")), _b64url(numbers.y.to_bytes(32, "big"))
        # RFC 7638 thumbprint: stable for a given key, so tokens survive a restart with a saved key.
        thumbprint = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True)
        self.kid = _b64url(hashlib.sha256(thumbprint.encode()).digest())[:22]
        self.jwk = {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": self.kid,
                    "alg": "ES256", "use": "sig", "key_ops": ["verify"]}

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes | str) -> SigningKey:
        data = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, password=None)
        return cls(key)  # type: ignore[arg-type]

    @classmethod
    def coerce(cls, value: SigningKey | ec.EllipticCurvePrivateKey | bytes | str | None) -> SigningKey:
        """A SigningKey from a SigningKey, a private key object, PEM text, or None (a new key)."""
        if value is None:
            return cls.generate()
        if isinstance(value, SigningKey):
            return value
        if isinstance(value, (bytes, str)):
            return cls.from_pem(value)
        return cls(value)

    def pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.jwk)]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.private_key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})


class TokenError(Exception):
    """A bearer token PostgREST would refuse: `code` is PGRST301 (cannot decode/verify) or PGRST303 (claims)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def verify_token(key: SigningKey, token: str, *, audience: str = AUDIENCE, now: float | None = None) -> dict[str, Any]:
    """The claims of `token` if this key signed it and its claims hold, else TokenError with PostgREST's code/message."""
    if not token:
        raise TokenError("PGRST301", "Empty JWT is sent in Authorization header")
    parts = token.count(".") + 1
    if parts != 3:
        raise TokenError("PGRST301", f"Expected 3 parts in JWT; got {parts}")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise TokenError("PGRST301", "JWT couldn't be decoded") from exc
    if header.get("alg") != "ES256":
        raise TokenError("PGRST301", "Wrong or unsupported encoding algorithm")
    if header.get("kid") != key.kid:
        raise TokenError("PGRST301", "No suitable key or wrong key type")
    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=["ES256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.InvalidTokenError as exc:
        raise TokenError("PGRST301", "JWT cryptographic operation failed") from exc
    # Claims checked by hand so each failure gets PostgREST's own message.
    current = time.time() if now is None else now
    for name in ("exp", "nbf", "iat"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], (int, float))):
            raise TokenError("PGRST303", f"The JWT '{name}' claim must be a number")
    if "exp" in claims and current - LEEWAY >= claims["exp"]:
        raise TokenError("PGRST303", "JWT expired")
    if "nbf" in claims and current + LEEWAY < claims["nbf"]:
        raise TokenError("PGRST303", "JWT not yet valid")
    if "iat" in claims and current + LEEWAY < claims["iat"]:
        raise TokenError("PGRST303", "JWT issued at future")
    aud = claims.get("aud")
    if isinstance(aud, str):
        auds = [aud]
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        auds = aud
    else:
        raise TokenError("PGRST303", "The JWT 'aud' claim must be a string or an array of strings")
    if audience not in auds:
        raise TokenError("PGRST303", "JWT not in audience")
    return claims


# ---------------------------------------------------------------------------------------
# GoTrue's endpoints


@dataclass(frozen=True)
class AuthResult:
    """An answer of an auth endpoint: status and JSON body (None: no body)."""

    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


def _gotrue_error(status: int, error_code: str, msg: str, *, oauth_error: str | None = None) -> AuthResult:
    """GoTrue's error body, readable by every supabase client generation.

    `code`/`msg` with `X-Supabase-Api-Version: 2024-01-01` is today's shape (supabase_auth reads
    `code` as the error code then); `error_code` is the older one; `error`/`error_description`
    is the OAuth shape the token endpoint once answered.
    """
    body: dict[str, Any] = {"code": error_code, "error_code": error_code, "msg": msg, "message": msg}
    if oauth_error is not None:
        body.update(error=oauth_error, error_description=msg)
    return AuthResult(status, body, (("X-Supabase-Api-Version", "2024-01-01"),))


_USER_COLUMNS = """
    id::text, aud, role, email, phone, email_confirmed_at, phone_confirmed_at, confirmed_at,
    last_sign_in_at, raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
    is_anonymous, banned_until, deleted_at
"""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class AuthService:
    """GoTrue's password grant, refresh, user and logout over `connect()` (a superuser connection factory).

    `connect` is a context manager factory yielding a psycopg connection that may read and
    write `auth.users` (the stand-in passes its admin pool).
    """

    def __init__(self, key: SigningKey, issuer: str, connect: Callable[[], Any], *, expires_in: int = DEFAULT_EXPIRES_IN):
        self.key = key
        self.issuer = issuer
        self.expires_in = expires_in
        self._connect = connect
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (user id, session id)

    # -- tokens ----------------------------------------------------------------------------

    def mint_token(self, user_id: str, email: str | None = None, *, expires_in: int = DEFAULT_EXPIRES_IN,
                   **claims: Any) -> str:
        """A signed access token as GoTrue issues it; `claims` override or add claims (tests: `role=`, `aud=`)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": str(user_id),
            "aud": AUDIENCE,
            "exp": now + int(expires_in),
            "iat": now,
            "email": email or "",
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "role": USER_ROLE,
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": str(uuid.uuid4()),
            "is_anonymous": False,
        }
        payload.update(claims)
        return self.key.sign(payload)

    def verify(self, token: str) -> dict[str, Any]:
        return verify_token(self.key, token)

    # -- endpoints -------------------------------------------------------------------------

    def token(self, grant_type: str | None, body: Any) -> AuthResult:
        if not isinstance(body, dict):
            return _gotrue_error(400, "bad_json", "Could not parse request body as JSON")
        if grant_type == "password":
            return self._password_grant(body)
        if grant_type == "refresh_token":
            return self._refresh_grant(body)
        return _gotrue_error(400, "unsupported_grant_type",
                             "unsupported_grant_type (the stand-in knows password and refresh_token)",
                             oauth_error="unsupported_grant_type")

    def user(self, authorization: str | None) -> AuthResult:
        token = _bearer(authorization)
        if token is None:
            return _gotrue_error(401, "no_authorization", "This endpoint requires a valid Bearer token")
        try:
            claims = self.verify(token)
        except TokenError as exc:
            return _gotrue_error(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {exc.message}")
        row = self._fetch_user("id = %s::uuid", claims.get("sub"))
        if row is None:
            return _gotrue_error(403, "user_not_found", "User from sub claim in JWT does not exist")
        return AuthResult(200, self._user_json(row))

    def logout(self, authorization: str | None) -> AuthResult:
        token = _bearer(authorization)
        if token is None:
            return _gotrue_error(401, "no_authorization", "This endpoint requires a valid Bearer token")
        try:
            claims = self.verify(token)
        except TokenError as exc:
            return _gotrue_error(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {exc.message}")
        with self._lock:
            for refresh, (_, session) in list(self._refresh_tokens.items()):
                if session == claims.get("session_id"):
                    del self._refresh_tokens[refresh]
        return AuthResult(204)

    # -- grants ----------------------------------------------------------------------------

    def _password_grant(self, body: dict[str, Any]) -> AuthResult:
        email, password = body.get("email"), body.get("password")
        if not isinstance(password, str) or not password:
            return _gotrue_error(400, "validation_failed", "Password is required", oauth_error="invalid_request")
        if not isinstance(email, str) or not email.strip():
            return _gotrue_error(400, "validation_failed", "An email address is required", oauth_error="invalid_request")
        with self._connect() as conn:
            row = conn.execute(
                f"""select {_USER_COLUMNS},
                       case when coalesce(encrypted_password, '') = '' then false
                            else encrypted_password = extensions.crypt(%s, encrypted_password) end
                  from auth.users where lower(email) = lower(%s) and deleted_at is null""",
                (password, email.strip()),
            ).fetchone()
        if row is None or not row[-1]:
            return _gotrue_error(400, "invalid_credentials", "Invalid login credentials", oauth_error="invalid_grant")
        user = self._row_dict(row[:-1])
        if user["email_confirmed_at"] is None:
            return _gotrue_error(400, "email_not_confirmed", "Email not confirmed", oauth_error="invalid_grant")
        if user["banned_until"] is not None and user["banned_until"] > datetime.now(UTC):
            return _gotrue_error(400, "user_banned", "User is banned", oauth_error="invalid_grant")
        with self._connect() as conn:
            signed_in = conn.execute(
                "update auth.users set last_sign_in_at = now() where id = %s::uuid returning last_sign_in_at",
                (user["id"],),
            ).fetchone()
        user["last_sign_in_at"] = signed_in[0] if signed_in else user["last_sign_in_at"]
        return AuthResult(200, self._session(user, str(uuid.uuid4())))

    def _refresh_grant(self, body: dict[str, Any]) -> AuthResult:
        refresh = body.get("refresh_token")
        with self._lock:
            entry = self._refresh_tokens.pop(refresh, None) if isinstance(refresh, str) else None
        if entry is None:
            return _gotrue_error(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found",
                                 oauth_error="invalid_grant")
        user_id, session_id = entry
        row = self._fetch_user("id = %s::uuid", user_id)
        if row is None:
            return _gotrue_error(400, "user_not_found", "User not found", oauth_error="invalid_grant")
        return AuthResult(200, self._session(self._row_dict(row), session_id))

    # -- helpers ---------------------------------------------------------------------------

    def _fetch_user(self, where: str, value: Any) -> tuple[Any, ...] | None:
        try:
            uuid.UUID(str(value))
        except ValueError:
            return None
        with self._connect() as conn:
            return conn.execute(
                f"select {_USER_COLUMNS} from auth.users where {where} and deleted_at is null", (str(value),)
            ).fetchone()

    @staticmethod
    def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
        names = [n.strip() for n in _USER_COLUMNS.replace("::text", "").split(",")]
        return dict(zip(names, row, strict=True))

    def _user_json(self, row: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
        user = row if isinstance(row, dict) else self._row_dict(row)
        app_metadata = {"provider": "email", "providers": ["email"], **(user["raw_app_meta_data"] or {})}
        return {
            "id": user["id"],
            "aud": user["aud"] or AUDIENCE,
            "role": user["role"] or USER_ROLE,
            "email": user["email"] or "",
            "email_confirmed_at": _iso(user["email_confirmed_at"]),
            "phone": user["phone"] or "",
            "phone_confirmed_at": _iso(user["phone_confirmed_at"]),
            "confirmed_at": _iso(user["confirmed_at"]),
            "last_sign_in_at": _iso(user["last_sign_in_at"]),
            "app_metadata": app_metadata,
            "user_metadata": user["raw_user_meta_data"] or {},
            "identities": [],
            "created_at": _iso(user["created_at"]),
            "updated_at": _iso(user["updated_at"]),
            "is_anonymous": bool(user["is_anonymous"]),
        }

    def _session(self, user: dict[str, Any], session_id: str) -> dict[str, Any]:
        user_json = self._user_json(user)
        now = int(time.time())
        access = self.mint_token(
            user_json["id"],
            user_json["email"],
            expires_in=self.expires_in,
            aud=user_json["aud"],
            role=user_json["role"],
            phone=user_json["phone"],
            app_metadata=user_json["app_metadata"],
            user_metadata=user_json["user_metadata"],
            session_id=session_id,
        )
        refresh = secrets.token_urlsafe(16)
        with self._lock:
            self._refresh_tokens[refresh] = (user_json["id"], session_id)
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "expires_at": now + self.expires_in,
            "refresh_token": refresh,
            "user": user_json,
        }


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
