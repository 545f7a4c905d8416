"""upstash-redis for the libraries built on it (upstash-ratelimit): a client bounded in time, never retrying.

upstash-redis 1.8 builds its own `httpx.Client(timeout=None)` and has no option to bound it or to
pass one in; `rest_retries=0` is public, the time bound is not. The one reach into its private
members is here: `Redis._http._client` is replaced by lib/edge/upstash's bounded httpx client (same
connections, same 0.5 s). `adapt` checks that shape first and raises if a new version of the
library stopped matching it, and tests/lib/edge/test_upstash_sdk.py runs the check against the pinned
version: an upgrade that moves the client fails the tests instead of leaving requests unbounded.
Never call `close()` on the shared client: it would close lib/edge/upstash's connections too.
`classify` names what a failed call through it means, for lib/edge/upstash's `sdk_call` to translate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from lib import config

if TYPE_CHECKING:  # imported at first use: only the rate-limited writes pay for them
    import httpx
    from upstash_redis import Redis as Redis  # re-exported: lib/edge/upstash names the type


class IncompatibleUpstashRedis(RuntimeError):
    """The installed upstash-redis no longer keeps its HTTP client where this adapter replaces it."""


def adapt(sdk: Redis, http: httpx.Client) -> Redis:
    """Make `sdk` (an `upstash_redis.Redis`) send through `http` (a bounded httpx.Client)."""
    import httpx
    from upstash_redis.http import SyncHttpClient

    transport = getattr(sdk, "_http", None)
    if not isinstance(transport, SyncHttpClient) or not isinstance(getattr(transport, "_client", None),
                                                                    httpx.Client):
        raise IncompatibleUpstashRedis(
            "upstash_redis.Redis no longer keeps an httpx.Client at ._http._client: "
            "lib/edge/upstash_sdk.py must be updated before this version can be used")
    if getattr(transport, "_retries", None) != 0:
        raise IncompatibleUpstashRedis("upstash_redis.Redis ignored rest_retries=0: it would resend writes")
    transport._client.close()
    transport._client = http
    return sdk


def build(settings: config.Upstash, http: httpx.Client) -> Redis:
    """An `upstash_redis.Redis` for `settings` sending through `http`, never retrying (lib/edge/upstash's
    UpstashREST builds one at first use and keeps it)."""
    from upstash_redis import Redis

    return adapt(Redis(settings.url, settings.token, rest_retries=0, allow_telemetry=False), http)


def classify(exc: BaseException) -> Literal["answer", "outage"] | None:
    """What an exception from a call through the shared client means: "answer" (Upstash answered
    `{"error"}`: it is up), "outage" (no usable answer: unreachable, timed out, or a body that is not
    Upstash's protocol, such as a proxy's HTML page), or None (not the client's: a bug, re-raised)."""
    import httpx
    from upstash_redis.errors import UpstashError

    if isinstance(exc, UpstashError):
        return "answer"
    if isinstance(exc, httpx.HTTPError | ValueError | KeyError | TypeError):
        return "outage"  # ValueError: not JSON; KeyError/TypeError: JSON without Upstash's `result`
    return None
