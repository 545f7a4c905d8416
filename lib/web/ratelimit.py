"""Rate limits over upstash-ratelimit: per user and per address on every write, per address on IPNs that fail the hash check.

    ratelimit.hit("write", user.id)         POST/PATCH/PUT/DELETE, once the token is checked (Request.rate_limit)
    ratelimit.hit("write_address", ip)      the same writes, per client address (client_ip)
    ratelimit.hit("ipn", client_ip(headers)) a PayDunya callback whose hash is wrong (api/paydunya/ipn.py)

Over the limit: 429 `rate_limited` with `Retry-After` (seconds until the window lets one more
through). Each limit is a sliding window (upstash-ratelimit's `SlidingWindow`: one EVAL of a
script flagged `allow-key-locking`, so Upstash locks only its two keys, never the whole
database) under `dousell:ratelimit:{limit}:{identifier}:{window number}`.

It fails open: Redis down, slow (0.5 s, the edge's bound) or skipped by the edge's circuit
breaker → the request goes on, and the database's fences (unique indexes, RPCs, the booking
cap) still hold. A limiter is a courtesy to the service, not a guard of correctness.

The upstash-redis client comes from lib/edge/upstash (`sdk_call`: the same URL, token, connections,
time bound and circuit breaker as every other Redis call, never retrying, errors translated). On
the Dakar server (VALKEY_URL, lib/edge/valkey) the same limiter runs over an object with the one
method it calls, `eval`, sent through the edge's `execute`: the library's own script, keys and
arithmetic over TCP, behind the same breaker and errors.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from lib import config, keys
from lib.edge import upstash
from lib.errors import ConfigurationError, RateLimited

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """`requests` per `window` seconds; `variable` overrides `requests` (an operator's knob)."""

    requests: int
    window: int
    variable: str

    def allowed(self) -> int:
        raw = os.environ.get(self.variable, "").strip()
        if not raw:
            return self.requests
        if not (raw.isascii() and raw.isdigit() and 0 < int(raw) <= 100_000):
            raise ConfigurationError(self.variable, "a whole number of requests per minute, 1 to 100000")
        return int(raw)


LIMITS = {
    # A person does a handful of writes a minute (pay, book, cancel, edit a listing); 30 leaves
    # room for a busy owner and stops a script: one account booked every free slot in a loop.
    "write": Limit(30, 60, "RATE_LIMIT_WRITES_PER_MINUTE"),
    # The same writes per client address: accounts are free, so one person with many of them is
    # stopped here. Generous, because Senegal's mobile carriers put many customers behind one
    # public address (carrier-grade NAT): 120 is four users at their own full limit at once.
    "write_address": Limit(120, 60, "RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE"),
    # Only refused callbacks count (a valid IPN is never throttled): someone guessing the hash.
    "ipn": Limit(10, 60, "RATE_LIMIT_BAD_IPN_PER_MINUTE"),
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNKNOWN_ADDRESS = "unknown"  # what client_ip answers when no header names the caller

# (limit, requests, window) → the client a limiter was built on, and the limiter
_limiters: dict[tuple[str, int, int], tuple[Any, Any]] = {}


def _limiter(redis: Any, name: str, requests: int, window: int) -> Any:
    from upstash_ratelimit import Ratelimit, SlidingWindow  # only writes pay for the import

    built = _limiters.get((name, requests, window))
    if built is None or built[0] is not redis:  # a new client (tests, rotated settings)
        built = (redis, Ratelimit(redis=redis, limiter=SlidingWindow(max_requests=requests, window=window, unit="s"),
                                  prefix=keys.ratelimit_prefix(name)))
        _limiters[(name, requests, window)] = built
    return built[1]


_evaluators: list[Any] = []  # the one valkey.Evaluator, built at the first limit checked over TCP


def _evaluator() -> Any:
    if not _evaluators:
        from lib.edge import valkey

        _evaluators.append(valkey.Evaluator(upstash.execute))
    return _evaluators[0]


def hit(name: str, identifier: str) -> None:
    """Count one request of `identifier` against limit `name`; RateLimited (429) past it."""
    limit = LIMITS[name]
    requests = limit.allowed()
    try:
        if config.valkey_url() is not None:  # the Dakar server: the limiter's one `eval` over TCP
            answer = _limiter(_evaluator(), name, requests, limit.window).limit(keys.escape(identifier))
        else:
            answer = upstash.sdk_call(lambda redis: _limiter(redis, name, requests, limit.window)
                                      .limit(keys.escape(identifier)))
    except (upstash.RedisError, ConfigurationError) as exc:
        # An unset Upstash variable is reported by every cached read; a write is not refused for it.
        log.warning("rate limit %s not checked, the request goes on: %s", name, exc)
        return
    if not answer.allowed:
        raise RateLimited(math.ceil(max(1.0, answer.reset - time.time())))


def for_writes(method: str, user_id: str, address: str | None = None) -> None:
    """The per-user limit, then the per-address one when `address` is given, for a write method;
    reads are never limited here (the cache carries them)."""
    if method in WRITE_METHODS:
        hit("write", user_id)
        # No address known (no proxy header: a laptop, or a server whose proxy is not trusted) would
        # put every user in one bucket: a global limit, not a per-address one. Not counted then.
        if address is not None and address != UNKNOWN_ADDRESS:
            hit("write_address", address)


def client_ip(headers: Any) -> str:
    """The caller's address as Vercel gives it: the first `X-Forwarded-For` entry (Vercel overwrites the
    header with the client's public address, so a caller cannot choose it), else `X-Real-IP`."""
    forwarded = (headers.get("X-Forwarded-For") or "").split(",")[0].strip()
    return (forwarded or (headers.get("X-Real-IP") or "").strip() or UNKNOWN_ADDRESS)[:64]
