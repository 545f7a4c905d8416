"""The Upstash Redis REST client: created lazily, bounded in time, never retried behind our back.

upstash-redis sets no timeout and retries every failure after 3 s, writes included
(DESIGN.md). Here a call takes at most ~0.5 s and fails once: the cache degrades to the
database and a lock acquire checks what it holds, instead of a write silently running twice.

Every call is timed for lib/metrics, and carries the metrics the instance has buffered: they
go in the same `/pipeline` request as the call's own commands, so monitoring never costs a
round trip of its own on the hot path (lib/metrics explains the scheme).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from lib import config, metrics
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
    return _call([command], single=True)[0]


def pipeline(commands: list[list[Any]]) -> list[Any]:
    """Run several commands in one REST call (`/pipeline`); results in order."""
    return _call(commands)


def pipeline_results(commands: list[list[Any]]) -> list[Any]:
    """Like `pipeline`, but a command Redis refused comes back as its RedisCommandError instead
    of failing the others (the call itself failing still raises)."""
    return _call(commands, raise_errors=False)


def _call(commands: list[list[Any]], *, single: bool = False, raise_errors: bool = True) -> list[Any]:
    batch = metrics.outgoing()  # what this instance recorded and has not written yet, if anything
    if not commands and batch is None:
        return []
    start = None
    try:
        redis = client()  # built (and its imports paid) before the clock starts: a cold start is not Upstash
        start = time.perf_counter()
        if batch is None and raise_errors:
            if single:
                return [redis.execute(commands[0])]
            pipe = redis.pipeline()
            for command in commands:
                pipe.execute(command)
            return pipe.exec()
        return _carrying(redis, commands, batch, raise_errors)
    except (RedisError, ConfigurationError) as exc:
        if batch is not None:
            batch.lost(exc)
        raise
    except Exception as exc:  # httpx errors, a non-JSON answer, UpstashError: all one boundary
        if batch is not None:
            batch.lost(exc)
        raise _translate(exc) from exc
    finally:
        if start is not None:
            metrics.upstash_call((time.perf_counter() - start) * 1000)


def _carrying(redis: Any, commands: list[list[Any]], batch: metrics.Batch | None, raise_errors: bool) -> list[Any]:
    """One `/pipeline` request: `commands`, then the metrics batch. Each answer is read on its own,
    so the batch's fate never changes the commands' results (the library's pipeline raises for
    any error in it)."""
    from upstash_redis.errors import UpstashError
    from upstash_redis.format import cast_response
    from upstash_redis.http import format_response

    sent = [*commands, batch.command] if batch is not None else list(commands)
    if not sent:
        return []
    body = [[arg if isinstance(arg, (str, int, float)) else json.dumps(arg) for arg in cmd] for cmd in sent]
    answers = redis._http._client.post(f"{redis._url}/pipeline", headers=redis._headers, json=body).json()
    if isinstance(answers, dict) and answers.get("error"):  # the whole request refused (token, limits)
        raise RedisCommandError(str(answers["error"]))
    if not isinstance(answers, list) or len(answers) != len(sent):
        raise RedisUnavailable(f"unexpected answer to a pipeline of {len(sent)}: {str(answers)[:200]}")
    if batch is not None:
        batch.delivered(answers[-1])
    results: list[Any] = []
    for command, answer in zip(commands, answers, strict=False):
        try:
            results.append(cast_response(command, format_response(answer, redis._http._encoding), redis))
        except UpstashError as exc:
            if raise_errors:
                raise RedisCommandError(str(exc)) from exc
            results.append(RedisCommandError(str(exc)))
    return results


def probe() -> bool:
    """True if Upstash answers PING within the cache timeout."""
    try:
        return execute(["PING"]) == "PONG"
    except (RedisError, ConfigurationError):
        return False
