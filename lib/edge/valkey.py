"""Valkey over TCP: the edge's second transport, for the Dakar server (lib/edge/upstash sends through it).

Outside Vercel, with `VALKEY_URL` set (`redis://[:password@]host:port/db`, `rediss://` for TLS),
each round trip of lib/edge/upstash (`execute`, `pipeline`, `run`, `probe`) goes here instead of
to Upstash REST, after the edge's breaker gate. Everything above the edge sees the same contract:

- the same commands and answers: valkey-py's per-command reshaping (`SET` → True, `HGETALL` →
  dict...) is switched off, so an answer is what the server sent, as Upstash REST gives it;
- the same scripts: an Upstash-only flag (`allow-key-locking`, which stock Valkey refuses in a
  shebang: "Unexpected flag in script shebang") is taken out of the text, `no-writes` kept, and
  EVALSHA carries the SHA of that text; a NOSCRIPT answer keeps its word, so the edge sends the
  text once as it does for Upstash;
- the same bounds (connect 0.3 s, answer 0.5 s), never retried (a resent write may run twice),
  and the edge's own breaker, error classes and per-request tally (one round trip where a REST
  call would be), handed in as `edge` (lib/edge/upstash itself: this module never imports it);
- a connection pool of `MAX_CONNECTIONS`, the most requests one server process runs at once
  (host/ caps each worker at this number), so a request never waits for a connection.

Nothing is imported or connected until the first call: the Vercel cold start never loads valkey-py.
Rate limits: upstash-ratelimit's own limiter runs unchanged over an `Evaluator`, an object with the
one method it calls (`eval`), sent through the edge (lib/web/ratelimit).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lib.slot import Slot

# The most commands in flight from one process: one per request the host runs at once (host/server).
MAX_CONNECTIONS = 64
CONNECT_TIMEOUT = 0.3  # seconds: lib/edge/upstash's bounds (tests/lib/edge/test_valkey checks they agree)
ANSWER_TIMEOUT = 0.5
_KEY_LOCKING = "allow-key-locking"
_EVALSHA = {"EVALSHA": "EVAL", "EVALSHA_RO": "EVAL_RO"}
# valkey-py strips these words from the errors it maps to its own classes: put back, the edge reads them
# (NOSCRIPT: resend the text; OOM: RedisFull, a write refused at maxmemory).
_PREFIXES = {"NoScriptError": "NOSCRIPT", "OutOfMemoryError": "OOM", "ReadOnlyError": "READONLY",
             "ExecAbortError": "EXECABORT", "NoPermissionError": "NOPERM"}

_texts: dict[str, tuple[str, str]] = {}  # a script's text as sent to Upstash → (Valkey's text, its SHA)


class _Script(Protocol):
    text: str


class Edge(Protocol):
    """What lib/edge/upstash shares with its transports: scripts, breaker, tally and error classes."""

    _SCRIPTS: Mapping[str, _Script]
    breaker: Any
    RedisUnavailable: type[Exception]
    RedisRejected: type[Exception]

    def _record(self, start: float, commands: int) -> None: ...
    def _command_error(self, message: str) -> Exception: ...


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


def _translate(command: list[Any], scripts: Mapping[str, _Script]) -> list[Any]:
    """The command Valkey gets for `command`: scripts by their Valkey text or SHA."""
    name = str(command[0]).upper()
    if name in _EVALSHA and len(command) > 1 and command[1] in scripts:
        return [command[0], for_valkey(scripts[command[1]].text)[1], *command[2:]]
    if name in ("EVAL", "EVAL_RO") and len(command) > 1 and isinstance(command[1], str):
        return [command[0], for_valkey(command[1])[0], *command[2:]]
    return command


class ValkeyPool:
    """The process's connections to Valkey: one `valkey.Valkey` (its pool of MAX_CONNECTIONS) for the
    URL last asked for, built (not connected) at first use and built again when the URL changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: tuple[str, Any] | None = None  # (VALKEY_URL, valkey.Valkey: valkey-py is untyped)

    def client(self, url: str) -> Any:
        """The `valkey.Valkey` for `url`, built at first use; the one for another URL is disconnected."""
        built = self._built
        if built is None or built[0] != url:
            with self._lock:
                built = self._built
                if built is None or built[0] != url:
                    import valkey  # valkey-py, untyped: its pool is built by an untyped from_url

                    pool = valkey.BlockingConnectionPool.from_url(  # type: ignore[no-untyped-call]
                        url, max_connections=MAX_CONNECTIONS, timeout=CONNECT_TIMEOUT,
                        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=ANSWER_TIMEOUT,
                        socket_keepalive=True, decode_responses=True, encoding_errors="replace",
                        client_name="dousell")
                    # retry=None with no retry_on_error: valkey-py sends each command once
                    redis = valkey.Valkey(connection_pool=pool, retry=None)
                    redis.response_callbacks.clear()  # answers as the server sent them, as over REST
                    if built is not None:
                        built[1].connection_pool.disconnect()
                    self._built = built = (url, redis)
        return built[1]

    def close(self) -> None:
        """Close the pool's connections; the next call builds it again."""
        with self._lock:
            if self._built is not None:
                self._built[1].connection_pool.disconnect()
            self._built = None


_pools: Slot[ValkeyPool] = Slot(ValkeyPool)


def using(pool: ValkeyPool) -> AbstractContextManager[ValkeyPool]:
    """`with valkey.using(ValkeyPool()):` every round trip of the process goes through `pool` inside
    the block (tests: connections of their own); the process's is back after it."""
    return _pools.using(pool)


def current() -> ValkeyPool:
    """The ValkeyPool in use: a test's (`using`), else the process's, built at first use."""
    return _pools.get()


def client(url: str) -> Any:
    """The process's `valkey.Valkey` for `url`, built (not connected) at first use."""
    return _pools.get().client(url)


def _message(exc: Exception) -> str:
    message = str(exc)
    prefix = _PREFIXES.get(type(exc).__name__)
    return f"{prefix} {message}" if prefix and not message.startswith(prefix) else message


def send(url: str, commands: list[list[Any]], edge: Edge) -> list[Any]:
    """One round trip to Valkey at `url`: the answers, each a value or the edge's command error in
    its place; raises the edge's RedisUnavailable (RedisRejected for refused credentials)."""
    redis = client(url)
    import valkey.exceptions as errors

    sent = [_translate(c, edge._SCRIPTS) for c in commands]
    start = time.perf_counter()
    try:
        if len(sent) == 1:
            try:
                answers: list[Any] = [redis.execute_command(*sent[0])]
            except errors.ResponseError as exc:
                answers = [exc]
        else:
            pipe = redis.pipeline(transaction=False)
            for command in sent:
                pipe.execute_command(*command)
            answers = pipe.execute(raise_on_error=False)
    except errors.DataError as exc:  # refused by the client before sending (None, a bool): a bug, as over REST
        raise TypeError(f"not a Redis argument: {exc}") from exc
    except (errors.AuthenticationError, errors.AuthorizationError) as exc:
        edge.breaker.failure()
        raise edge.RedisRejected(f"Valkey refused the credentials: {type(exc).__name__}") from exc
    except (errors.ValkeyError, OSError) as exc:  # refused, reset, timed out, not RESP...
        edge.breaker.failure()
        raise edge.RedisUnavailable(f"Valkey did not answer: {type(exc).__name__}: {exc}") from exc
    finally:
        edge._record(start, len(sent))
    edge.breaker.success()
    return [edge._command_error(_message(a)) if isinstance(a, errors.ResponseError) else a for a in answers]


class Evaluator:
    """What upstash-ratelimit calls on its client (`eval`), sent through `execute` (lib/edge/upstash's):
    the library's own script, keys and arithmetic over TCP (the script's Upstash-only flag taken out
    like every other's), behind the edge's breaker, errors and tally."""

    def __init__(self, execute: Callable[[list[Any]], Any]) -> None:
        self.execute = execute

    def eval(self, script: str, keys: Sequence[str] | None = None, args: Sequence[Any] | None = None) -> Any:
        keys, args = list(keys or ()), list(args or ())
        return self.execute(["EVAL", script, len(keys), *keys, *args])
