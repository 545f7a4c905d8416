"""The Upstash Redis REST client: created lazily, bounded in time, never retried behind our back.

upstash-redis sets no timeout and retries every failure after 3 s, writes included
(DESIGN.md). Here a call takes at most ~0.5 s and fails once: the cache degrades to the
database and a lock acquire checks what it holds, instead of a write silently running twice.
"""

from __future__ import annotations

import threading
from typing import Any

from lib import config
from lib.errors import ConfigurationError

# Seconds. A cache call that takes longer is worth less than going to the database.
CACHE_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.3


class RedisError(Exception):
    """Base of the failures of an Upstash call; never shown to a user as such."""


class RedisUnavailable(RedisError):
    """Upstash could not be reached, timed out, or answered something that is not its protocol."""


class RedisCommandError(RedisError):
    """Upstash answered `{"error": ...}` for a command (wrong type, Lua error, bad token)."""


_lock = threading.Lock()
_client: Any = None


def _bounded(client: Any) -> Any:
    """Give upstash-redis's HTTP client a timeout; the library has no option for it."""
    import httpx

    client._http._client.close()
    client._http._client = httpx.Client(
        timeout=httpx.Timeout(CACHE_TIMEOUT, connect=CONNECT_TIMEOUT),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )
    return client


def client() -> Any:
    """The shared `upstash_redis.Redis`, created at first use and kept for the warm instance."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                from upstash_redis import Redis

                settings = config.upstash()
                _client = _bounded(Redis(
                    settings.url,
                    settings.token,
                    rest_retries=0,  # a timed-out SET NX or INCR may have run: never send it twice
                    allow_telemetry=False,
                    read_your_writes=False,
                ))
    return _client


def set_client(new: Any) -> None:
    """Inject a client (tests), or `None` to build a fresh one from the environment at next use."""
    global _client
    with _lock:
        _client = new


def _translate(exc: Exception) -> RedisError:
    from upstash_redis.errors import UpstashError

    if isinstance(exc, UpstashError):
        return RedisCommandError(str(exc))
    return RedisUnavailable(f"{type(exc).__name__}: {exc}")


def execute(command: list[Any]) -> Any:
    """Run one command (`["GET", key]`) in one REST call."""
    try:
        return client().execute(command)
    except (RedisError, ConfigurationError):
        raise
    except Exception as exc:  # httpx errors, a non-JSON answer, UpstashError: all one boundary
        raise _translate(exc) from exc


def pipeline(commands: list[list[Any]]) -> list[Any]:
    """Run several commands in one REST call (`/pipeline`); results in order."""
    try:
        pipe = client().pipeline()
        for command in commands:
            pipe.execute(command)
        return pipe.exec()
    except (RedisError, ConfigurationError):
        raise
    except Exception as exc:
        raise _translate(exc) from exc


def probe() -> bool:
    """True if Upstash answers PING within the cache timeout."""
    try:
        return execute(["PING"]) == "PONG"
    except (RedisError, ConfigurationError):
        return False
