"""The `Authorization: Bearer <token>` header, read in one place, and shared secrets checked against it.

Two kinds of caller send one: users (a Supabase access token, verified by lib/auth) and the
platform or an operator (a shared secret: Vercel Cron's `CRON_SECRET`, `METRICS_TOKEN`),
compared here in constant time before anything else is read. The database webhook sends no
secret but a signature (lib/signature). Both read the header with `token()`, so a header one accepts the other reads alike.
"""

from __future__ import annotations

import hmac

from lib import config
from lib.errors import AuthenticationRequired, InvalidToken


def token(authorization: str | None) -> str:
    r"""The token of exactly `Bearer <token>`: one space, one token, as Supabase's own auth server reads
    it (GoTrue: `^(?:B|b)earer (\S+$)`); the scheme's case is free (RFC 7235 §2.1), and spaces around
    the whole value are ignored.

    `AuthenticationRequired` without a header or with a blank one; `InvalidToken` (reason
    `malformed_header`) for another scheme, no token, a second space before the token or a
    second word smuggled behind it.
    """
    if authorization is None or not authorization.strip():
        raise AuthenticationRequired()
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value or any(c.isspace() for c in value):
        raise InvalidToken(reason="malformed_header")
    return value


def require_secret(authorization: str | None, variable: str, realm: str, *, label: str = "Secret") -> None:
    """401 unless `authorization` is `Bearer $<variable>`, compared in constant time.

    An unset variable is a 500 `configuration_error` naming it (checked first: an endpoint
    without its secret must never be open). The 401s carry `WWW-Authenticate: Bearer realm=...`;
    `label` names the secret in the French message (`Jeton de métriques requis ...`).
    """
    expected = config.require(variable)
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    try:
        given = token(authorization)
    except AuthenticationRequired as exc:
        raise AuthenticationRequired(f"{label} requis (en-tête Authorization: Bearer).", headers=challenge) from exc
    except InvalidToken:
        given = ""  # still compared, so a malformed header costs what a wrong secret costs
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise InvalidToken(f"{label} invalide.", headers=challenge)
