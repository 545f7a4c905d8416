"""Signed platform calls: `X-Dousell-Signature`, the HMAC the database puts on its webhook, checked here.

The database webhook (supabase/migrations/20261207000010_security.sql) cannot send its secret:
on hosted Supabase pg_net's queue, headers included, is readable by every database role until
the request is sent. So it sends a signature instead, as Stripe and GitHub sign their webhooks:

    X-Dousell-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

keyed with the secret both sides hold (Vault's `dousell_database_webhook_secret`, the API's
`DATABASE_WEBHOOK_SECRET`). The HMAC covers the body's exact bytes, so it is checked before the
body is parsed, and the time, so a call read from the queue cannot be replayed more than
`TOLERANCE_SECONDS` later (replaying it within the window only drains the outbox once more).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable

from lib.errors import AuthenticationRequired, InvalidToken

HEADER = "X-Dousell-Signature"
TOLERANCE_SECONDS = 300
# Several `v1=` are allowed (a sender signing with two keys while a secret is rotated); at most a few.
_FORMAT = re.compile(r"t=(?P<t>[0-9]{1,12})(?P<v1>(?:,v1=[0-9a-f]{64}){1,4})")

# Replaceable in tests: the wall clock the timestamp is compared with.
now: Callable[[], float] = time.time


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp` (what the database's trigger computes)."""
    return f"t={timestamp},v1={_digest(secret, body, str(timestamp))}"


def require_signature(header: str | None, body: bytes, secret: str, realm: str) -> None:
    """401 unless `header` is a signature of `body` with `secret`, made within TOLERANCE_SECONDS.

    The caller reads `secret` first (`config.require`: unset, a 500 `configuration_error` naming
    it, so the endpoint is never open). No header: 401 `authentication_required`; a malformed,
    wrong or stale one: 401 `invalid_token` (reason `malformed_signature`, `bad_signature`,
    `stale_signature` in the log). Digests are compared in constant time, and a malformed header
    is compared too.
    """
    challenge = {"WWW-Authenticate": f'Signature realm="{realm}", header="{HEADER}"'}
    if header is None or not header.strip():
        raise AuthenticationRequired(f"Signature requise (en-tête {HEADER}).", headers=challenge)
    found = _FORMAT.fullmatch(header.strip())
    timestamp = found["t"] if found else "0"
    given = found["v1"].split(",v1=")[1:] if found else ["0" * 64]
    expected = _digest(secret, body, timestamp).encode("ascii")
    matched = False
    for candidate in given:
        matched |= hmac.compare_digest(candidate.encode("ascii"), expected)
    if not found:
        raise InvalidToken("Signature invalide.", headers=challenge, reason="malformed_signature")
    if not matched:
        raise InvalidToken("Signature invalide.", headers=challenge, reason="bad_signature")
    if abs(now() - int(timestamp)) > TOLERANCE_SECONDS:
        raise InvalidToken("Signature expirée.", headers=challenge, reason="stale_signature")


def _digest(secret: str, body: bytes, timestamp: str) -> str:
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
