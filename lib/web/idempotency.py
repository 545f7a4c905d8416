"""The `Idempotency-Key` header of the write endpoints: a retried request gets the first answer.

`idempotent(header, user_id, scope, request, busy, run)` wraps a handler's write; the record
lives in Redis for 24 h under keys.idempotency (the user's id and a hash of the key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from lib import keys
from lib.cache import locks
from lib.edge import upstash
from lib.edge.upstash import RedisError
from lib.errors import DousellError, IdempotencyKeyReused, ValidationFailed
from lib.web.http import Reply

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL = 24 * 3600  # seconds a first answer is kept for retries
IDEMPOTENCY_RUNNING_MS = 60_000  # a request in flight holds its key at most this long
MAX_IDEMPOTENCY_KEY = 200

# KEYS[1] the record; ARGV[1] our "running" marker, ARGV[2] its ms. Returns the record already
# there, or nil after claiming the key with our marker (one round trip for both).
CLAIM = upstash.Script("""
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
""", writes=True)


def idempotent(header: str | None, user_id: str, scope: str, request: Any, busy: type[DousellError],
               run: Callable[[], Reply]) -> Reply:
    """Answer `run()`, or the first answer to the same `Idempotency-Key` (24 h).

    `request` is the validated input (canonical JSON is compared, not bytes). Only a success
    (2xx) is stored: an error is either transient (in progress, 502, 503) or given again by
    running the request again, which the database makes safe. The same key with another
    request is a 422 `idempotency_key_reused`; the same request still in flight is `busy()`.
    Redis down: the request simply runs; the database fence still returns the same payment.
    """
    if header is None:
        return run()
    if not header or len(header) > MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(details=[{
            "field": "Idempotency-Key", "code": "invalid_idempotency_key",
            "message": f"Clé d'idempotence de 1 à {MAX_IDEMPOTENCY_KEY} caractères attendue.",
        }])
    canonical = json.dumps({"scope": scope, "request": request}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    key = keys.idempotency(user_id, header)
    marker = json.dumps({"state": "running", "fp": fingerprint, "id": secrets.token_hex(8)})
    claimed = _idem_claim(key, marker)
    if isinstance(claimed, str):
        try:
            record = json.loads(claimed)
        except ValueError:
            record = {}
        if record.get("fp") != fingerprint:
            raise IdempotencyKeyReused()
        if record.get("state") == "done":
            return Reply(record.get("body"), int(record.get("status", 200)), {"Idempotent-Replayed": "true"})
        raise busy()
    try:
        reply = run()
    except BaseException:
        if claimed is True:
            _idem_forget(key, marker)
        raise
    if claimed is True:
        if 200 <= reply.status < 300:
            done = {"state": "done", "fp": fingerprint, "status": reply.status, "body": reply.body}
            _idem_store(key, json.dumps(done, ensure_ascii=False, separators=(",", ":"), default=str))
        else:
            _idem_forget(key, marker)
    return reply


def _idem_claim(key: str, marker: str) -> str | bool | None:
    """The record found (str), True if we claimed the key, None if Redis cannot say."""
    try:
        found = upstash.run(CLAIM, [key], [marker, IDEMPOTENCY_RUNNING_MS])
    except RedisError as exc:
        log.warning("idempotency: Redis failed (%s); running without a record", exc)
        return None
    return True if found is None else found


def _idem_store(key: str, record: str) -> None:
    try:
        upstash.execute(["SET", key, record, "EX", IDEMPOTENCY_TTL])
    except RedisError as exc:
        log.warning("idempotency: the answer could not be stored (%s)", exc)


def _idem_forget(key: str, marker: str) -> None:
    try:
        locks.release_if_held(key, marker)
    except RedisError as exc:
        log.warning("idempotency: the running marker stays until it expires (%s)", exc)
