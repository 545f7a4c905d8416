"""Valkey over TCP: the edge's second transport, for the Dakar server (lib/edge/upstash dispatches here).

Outside Vercel, with `VALKEY_URL` set (`redis://[:password@]host:port/db`, `rediss://` for TLS),
lib/edge/upstash's `execute`, `pipeline`, `run`, `probe` and `sdk_call` speak RESP to Valkey
through valkey-py instead of Upstash REST. Everything above the edge sees the same contract:

- the same commands and answers: valkey-py's per-command reshaping (`SET` → True, `HGETALL` →
  dict...) is switched off, so an answer is what the server sent, as Upstash REST gives it;
- the same scripts: an Upstash-only flag (`allow-key-locking`, which stock Valkey refuses in a
  shebang: "Unexpected flag in script shebang") is taken out of the text, `no-writes` kept, and
  EVALSHA carries the SHA of that text; NOSCRIPT is answered by sending the text once;
- the same bounds (connect 0.3 s, answer 0.5 s), never retried (a resent write may run twice),
  the same breaker, error classes, per-request tally (one round trip = one REST call's place)
  and metrics;
- a connection pool of `MAX_CONNECTIONS`, the most requests one server process runs at once
  (host/ caps its threads at this number), so a request never waits for a connection.

Nothing is imported or connected until the first call: the Vercel cold start never sees this module.
Rate limits: upstash-ratelimit's own limiter runs unchanged over `sdk()`, an object with the one
method it calls (`eval`), sent through this transport (lib/web/ratelimit).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from lib import config
from lib.edge import upstash

# The most commands in flight from one process: one per request the host runs at once (host/server).
MAX_CONNECTIONS = 64
_KEY_LOCKING = "allow-key-locking"
_EVALSHA = {"EVALSHA": "EVAL", "EVALSHA_RO": "EVAL_RO"}
# valkey-py strips these words from the errors it maps to its own classes: put back, the edge reads them
# (NOSCRIPT: resend the text; OOM: RedisFull, a write refused at maxmemory).
_PREFIXES = {"NoScriptError": "NOSCRIPT", "OutOfMemoryError": "OOM", "ReadOnlyError": "READONLY",
             "ExecAbortError": "EXECABORT", "NoPermissionError": "NOPERM"}

_lock = threading.Lock()
_client: tuple[str, Any] | None = None  # (VALKEY_URL, valkey.Valkey) built at first use
_texts: dict[str, tuple[str, str]] = {}  # a script's text as sent to Upstash → (Valkey's text, its SHA)


def for_valkey(text: str) -> tuple[str, str]:
    """`text` without Upstash-only flags, and its SHA: what Valkey runs in its place."""
    known = _texts.get(text)
    if known is None:
        first, newline, body = text.lstrip().partition("\n")
        if first.startswith("#!"):
            words = first[2:].split()
            kept = [w for w in words if not w.startswith("flags=")]
            flags = [f for w in words if w.startswith("flags=") for f in w[len("flags="):].split(",")
                     if f and f != _KEY_LOCKING]
            first = "#!" + " ".join(kept + ([f"flags={','.join(flags)}"] if flags else []))
            text_out = first + newline + body
        else:
            text_out = text
        known = (text_out, hashlib.sha1(text_out.encode("utf-8")).hexdigest())
        _texts[text] = known
    return known


def _translate(command: list[Any]) -> list[Any]:
    """The command Valkey gets for `command`: scripts by their Valkey text or SHA."""
    name = str(command[0]).upper()
    if name in _EVALSHA and len(command) > 1 and command[1] in upstash._SCRIPTS:
        return [command[0], for_valkey(upstash._SCRIPTS[command[1]].text)[1], *command[2:]]
    if name in ("EVAL", "EVAL_RO") and len(command) > 1 and isinstance(command[1], str):
        return [command[0], for_valkey(command[1])[0], *command[2:]]
    return command


def client() -> Any:
    """The process's `valkey.Valkey` for VALKEY_URL, built (not connected) at first use."""
    global _client
    url = config.valkey_url()
    if url is None:
        raise RuntimeError("VALKEY_URL is not set (or this is Vercel): the edge speaks Upstash REST")
    built = _client
    if built is None or built[0] != url:
        with _lock:
            built = _client
            if built is None or built[0] != url:
                import valkey

                pool = valkey.BlockingConnectionPool.from_url(
                    url, max_connections=MAX_CONNECTIONS, timeout=upstash.CONNECT_TIMEOUT,
                    socket_connect_timeout=upstash.CONNECT_TIMEOUT, socket_timeout=upstash.CACHE_TIMEOUT,
                    socket_keepalive=True, decode_responses=True, encoding_errors="replace",
                    client_name="dousell")
                # retry=None with no retry_on_error: valkey-py sends each command once
                redis = valkey.Valkey(connection_pool=pool, retry=None)
                redis.response_callbacks.clear()  # answers as the server sent them, as over REST
                if built is not None:
                    built[1].connection_pool.disconnect()
                _client = built = (url, redis)
    return built[1]


def reset() -> None:
    """Close the pool and build it again at next use (tests, a changed VALKEY_URL)."""
    global _client
    with _lock:
        if _client is not None:
            _client[1].connection_pool.disconnect()
        _client = None


def _error(exc: Exception) -> upstash.RedisCommandError:
    message = str(exc)
    prefix = _PREFIXES.get(type(exc).__name__)
    return upstash._command_error(f"{prefix} {message}" if prefix and not message.startswith(prefix) else message)


def call(commands: list[list[Any]], *, force: bool) -> list[Any]:
    """lib/edge/upstash's `_call` over TCP: each answer a value or a RedisCommandError, in its place."""
    sent = [_translate(c) for c in commands]
    answers = _send(sent, force=force)
    lost = [i for i, (command, answer) in enumerate(zip(sent, answers, strict=True))
            if isinstance(answer, upstash.RedisCommandError) and str(answer).startswith("NOSCRIPT")
            and str(command[0]).upper() in _EVALSHA and commands[i][1] in upstash._SCRIPTS]
    if lost:  # Valkey does not know the script (restarted, flushed): send its text once
        resent = [[_EVALSHA[str(sent[i][0]).upper()], for_valkey(upstash._SCRIPTS[commands[i][1]].text)[0],
                   *sent[i][2:]] for i in lost]
        for i, answer in zip(lost, _send(resent, force=True), strict=True):
            answers[i] = answer
    return answers


def _send(commands: list[list[Any]], *, force: bool) -> list[Any]:
    """One round trip: the answers, each a value or a RedisCommandError; raises RedisUnavailable."""
    upstash._gate(force=force)
    redis = client()
    import valkey.exceptions as errors

    start = time.perf_counter()
    try:
        if len(commands) == 1:
            try:
                answers: list[Any] = [redis.execute_command(*commands[0])]
            except errors.ResponseError as exc:
                answers = [exc]
        else:
            pipe = redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            answers = pipe.execute(raise_on_error=False)
    except errors.DataError as exc:  # refused by the client before sending (None, a bool): a bug, not an outage
        raise upstash.RedisCommandError(f"not sent to Valkey: {exc}") from exc
    except (errors.AuthenticationError, errors.AuthorizationError) as exc:
        upstash.breaker.failure()
        raise upstash.RedisRejected(f"Valkey refused the credentials: {type(exc).__name__}") from exc
    except (errors.ValkeyError, OSError) as exc:  # refused, reset, timed out, not RESP...
        upstash.breaker.failure()
        raise upstash.RedisUnavailable(f"Valkey did not answer: {type(exc).__name__}: {exc}") from exc
    finally:
        upstash._record(start, len(commands))
    upstash.breaker.success()
    return [_error(a) if isinstance(a, errors.ResponseError) else a for a in answers]


class _Evaluator:
    """What upstash-ratelimit calls on its client (`eval`), sent through the edge: its own script,
    keys and arithmetic, over TCP (the script's Upstash-only flag taken out like every other)."""

    def eval(self, script: str, keys: Sequence[str] | None = None, args: Sequence[Any] | None = None) -> Any:
        keys, args = list(keys or ()), list(args or ())
        return upstash.execute(["EVAL", script, len(keys), *keys, *args])


_evaluator = _Evaluator()


def sdk() -> Any:
    """The client handed to libraries built on upstash-redis when the edge speaks TCP."""
    return _evaluator
