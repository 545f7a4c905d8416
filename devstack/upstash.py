"""A local stand-in for Upstash Redis's REST API, in front of a real Redis.

It speaks the protocol as upstash-redis 1.8 uses it:

- ``POST /`` with one command as a JSON array -> ``{"result": ...}``; a command
  error -> HTTP 400 ``{"error": "ERR ..."}``.
- ``POST /pipeline`` with an array of commands -> one ``{"result"}`` or
  ``{"error"}`` per command; a failing command does not stop the others.
- ``POST /multi-exec`` -> the same shape, run inside MULTI/EXEC. A command that
  Redis refuses while queueing discards the whole transaction: HTTP 400
  ``{"error": "EXECABORT ..."}``.
- ``GET|POST /<command>/<arg>/...`` (Upstash's path style; a POST body is the
  last argument, query parameters other than ``_token`` come after it).
- ``Authorization: Bearer <token>`` (or ``?_token=``), else 401.
- ``Upstash-Encoding: base64`` -> every string in the result is base64 of the
  raw bytes, except the simple string ``OK``; integers and null unchanged.
  Without it strings are the bytes decoded as UTF-8.
- Redis unreachable -> HTTP 503 ``{"error": "ERR Redis is unavailable: ..."}``
  at once (connection refused) or after ``socket_timeout`` at most; the
  connection pool reconnects by itself once Redis is back.

Where Upstash differs from the Valkey behind it, the stand-in does what Upstash does:

- Replication (devstack/replicas.py, devstack/README.md): a leader and read replicas; a request
  that only reads (every command flagged ``readonly`` by Valkey, ``EVAL_RO``/``EVALSHA_RO``, a
  script flagged ``no-writes``) goes to the next node in turn, anything else to the leader. Every
  answer to a command request carries ``upstash-sync-token`` (the node's replication offset); a
  request that sends one back is served by its replica once it has caught up (else, after
  ``SYNC_WAIT``, by the leader). A replica that lost its link to the leader is out of the rotation.
- Quota: with ``daily_requests`` (``DEVSTACK_UPSTASH_DAILY_REQUESTS``), once that many billed
  commands were counted in the UTC day, every request is refused with HTTP 400 ``{"error": "ERR
  max daily request limit exceeded. Limit: N, Usage: N."}``.

- Script flags (devstack/upstash_scripts.py): ``#!lua flags=allow-key-locking``
  is accepted and stripped before Valkey sees it (Valkey refuses it), the
  other flags (``no-writes``) are kept; a key-locked script that calls a key
  not passed in ``KEYS`` is refused with Upstash's ``ERR Dynamic keys are not
  allowed in Lua scripts when 'allow-key-locking' flag is set. Key was: <key>``.
  ``EVALSHA`` takes the SHA of the script as the client sent it (flags
  included), as Upstash does.
- Locking: a script without ``allow-key-locking``, and any script inside
  ``/multi-exec``, runs under Upstash's global lock; they are counted.
- Billing: every command is counted, each one inside a pipeline or
  transaction too, except the operational ones Upstash does not charge
  (``INFO``, ``PING``, ``AUTH``, ``QUIT``, ``COMMAND``).
- Capacity: Valkey runs with a ``maxmemory`` and no eviction, as Upstash's
  default; its ``OOM command not allowed ...`` becomes Upstash's ``ERR DB
  capacity quota exceeded. Threshold: <max> bytes, Usage: <used> bytes``.

``GET /__devstack/stats`` (token-protected, like every request) answers
``{"result": {"requests", "commands", "billed", "scripts_global_lock",
"scripts_key_locked", "capacity_refusals", "quota_refusals", "sync_waits", "sync_fallbacks",
"by_command", "by_node", "reads_by_node"}}`` since the last
``POST /__devstack/stats/reset``; tests and the bench read it.

Drill switches (token-protected): ``POST /__devstack/delay {"ms": 800}`` adds
that delay before every command request (0 turns it off); ``POST /__devstack/replicas
{"lag_ms": 500}`` changes the replicas' lag; ``POST /__devstack/quota {"daily": N}`` sets the
daily quota (``null``: none); ``GET /__devstack/status`` reports Redis up/down, the backend
URL, the replicas, their lag, the quota and the delay.

Start it::

    python -m devstack.upstash --port 8079 --redis-port 6379 --token dev-upstash-token

or from Python: ``server, thread = serve_in_thread(port=0, redis_url=...)``;
``server.url`` is its base URL; ``server.shutdown(); server.server_close()``.
Without HTTP (tests faking the network at the boundary): ``UpstashEngine(
redis_url, token).answer(method, path, query, headers, body)``.

The Redis client is redis-py (RESP2, ``decode_responses=False``) with a
connection pool: keep-alive HTTP connections reuse pooled Redis connections, so
a request costs no TCP connect.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hmac
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import redis
from redis._parsers import _RESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devstack._server import StandInHandler, StandInServer, serve_until_stopped
from devstack.upstash_scripts import DATABASE_WIDE, DYNAMIC_KEY, Prepared, literal_commands, prepare, sha1

log = logging.getLogger("devstack.upstash")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8079
DEFAULT_TOKEN = "dev-upstash-token"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_BODY = 64 * 1024 * 1024
SYNC_TOKEN = "upstash-sync-token"
DAILY_VARIABLE = "DEVSTACK_UPSTASH_DAILY_REQUESTS"
# Seconds a read carrying a sync token waits for its replica before the leader (which has every
# write) serves it instead: Upstash publishes no lag figure; a wait past the clients' time bound
# (lib/edge/upstash: 0.5 s) would read as an outage, where Upstash's replicas are milliseconds late.
SYNC_WAIT = 0.05

# Commands that would change the state of a pooled connection (or hold it
# forever): refused on every endpoint (Upstash's REST API has no use for them:
# transactions go through /multi-exec).
_REFUSED = frozenset(
    b"MULTI EXEC DISCARD WATCH UNWATCH SELECT SUBSCRIBE PSUBSCRIBE SSUBSCRIBE "
    b"UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE MONITOR SYNC PSYNC QUIT RESET HELLO "
    b"AUTH SHUTDOWN CLIENT".split()
)

# Operational commands Upstash does not bill (upstash/docs redis/overall/pricing.mdx: "Operational
# commands like AUTH, INFO, PING, QUIT, COMMAND are not charged"; billing.mdx names INFO, PING, AUTH).
_FREE = frozenset({"INFO", "PING", "AUTH", "QUIT", "COMMAND"})

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    503: "Service Unavailable",
}

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TOKEN",
    "UpstashEngine",
    "UpstashStandIn",
    "daily_from_env",
    "main",
    "make_server",
    "serve_in_thread",
]


class _FullErrorParser(_RESP2Parser):
    """redis-py strips the error code (``ERR``, ``NOSCRIPT``...) and maps some
    errors to exception classes (even ConnectionError); Upstash passes Redis's
    error line through, so keep it whole, always as a ResponseError."""

    @classmethod
    def parse_error(cls, response: str) -> ResponseError:
        return ResponseError(response)


class _BadRequest(Exception):
    pass


class _Unavailable(Exception):
    pass


class _Quota(Exception):
    """The plan's request quota is used up: Upstash refuses the request."""


class _Node:
    """One Valkey of the database: the leader or a read replica, with its connection pool."""

    def __init__(self, name: str, url: str, pool: redis.ConnectionPool) -> None:
        self.name, self.url, self.pool = name, url, pool
        self.loaded: set[str] = set()  # SHAs of the scripts the stand-in loaded here

    def run(self, commands: list[list[bytes]]) -> list[Any]:
        """Send ``commands`` in one write on one pooled connection; return one
        reply per command (a ResponseError instance for an error reply)."""
        try:
            conn = self.pool.get_connection()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _Unavailable(f"ERR Redis is unavailable: {exc}") from None
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            conn.disconnect()
            raise _Unavailable(f"ERR Redis is unavailable: {exc}") from None
        except BaseException:
            conn.disconnect()  # never hand back a connection with unread replies
            raise
        finally:
            self.pool.release(conn)


def _sync_offset(token: Any) -> int | None:
    """The replication offset an ``upstash-sync-token`` carries (ours are decimal offsets); None
    for none or one of another format (served as without)."""
    if isinstance(token, str) and token.strip().isdigit():
        return int(token.strip())
    return None


def _offset(role: Any) -> int | None:
    """A node's replication offset from its ``ROLE`` reply (leader: [master, offset, ...];
    replica: [slave, host, port, state, offset])."""
    if not isinstance(role, list) or not role:
        return None
    value = role[1] if role[0] == b"master" else (role[4] if len(role) > 4 else None)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _linked(role: Any) -> bool:
    """A leader, or a replica whose link to its leader is up."""
    return isinstance(role, list) and bool(role) and (
        role[0] == b"master" or (len(role) > 3 and role[3] == b"connected"))


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):  # path-style requests
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or value is None:
        raise _BadRequest(
            f"ERR invalid argument {json.dumps(value)}: expected a string or a number"
        )
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return b"%d" % int(value)
        return repr(value).encode()
    raise _BadRequest(
        "ERR invalid argument: expected a string or a number, got "
        f"{type(value).__name__}"
    )


def _command(value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise _BadRequest('ERR a command must be a JSON array, like ["GET", "key"]')
    if not value:
        raise _BadRequest("ERR empty command")
    try:
        cmd = [_arg(v) for v in value]
    except UnicodeEncodeError:
        raise _BadRequest("ERR invalid string in command") from None
    if cmd[0].upper() in _REFUSED:
        raise _BadRequest(
            f"ERR Command is not available: '{cmd[0].decode('utf-8', 'replace').lower()}'"
        )
    return cmd


def _encode(value: Any, b64: bool) -> Any:
    if value is None or type(value) is int:
        return value
    if isinstance(value, bytes):
        if value == b"OK":
            return "OK"
        return (
            base64.b64encode(value).decode("ascii")
            if b64
            else value.decode("utf-8", "replace")
        )
    if isinstance(value, list):
        return [_encode(v, b64) for v in value]
    if isinstance(value, ResponseError):  # nested deeper than a transaction's result
        return _encode(str(value).encode("utf-8", "replace"), b64)
    return _encode(str(value).encode("utf-8", "replace"), b64)  # not produced by RESP2


def _entry(reply: Any, b64: bool) -> dict[str, Any]:
    if isinstance(reply, ResponseError):
        return {"error": str(reply)}
    return {"result": _encode(reply, b64)}


class _Headers(dict):
    """Request headers, keys lower-cased; ``get`` is case-insensitive."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    __getitem__ = get  # type: ignore[assignment]


class _Handler(StandInHandler):
    server: UpstashStandIn
    server_version = "devstack-upstash/1"
    error_content_type = "application/json"
    error_message_format = '{"error": "ERR %(code)d %(message)s"}'

    # -- plumbing ---------------------------------------------------------
    def parse_request(self) -> bool:
        """BaseHTTPRequestHandler.parse_request without the email-package header
        parser (a third of the per-request CPU): request line, then headers into
        a case-insensitive dict; Connection and Expect handled as upstream does."""
        self.command = None
        self.request_version = "HTTP/1.1"  # so that errors below get a status line
        self.close_connection = True
        self.requestline = line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400 if len(words) != 3 else 505, "Bad request line")
            return False
        command, path, version = words
        self.command, self.path, self.request_version = command, path, version
        if path.startswith("//"):
            self.path = "/" + path.lstrip("/")
        headers = _Headers()
        while True:
            raw = self.rfile.readline(65537)
            if len(raw) > 65536 or len(headers) > 100:
                self.send_error(431, "Request header fields too large")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("iso-8859-1").partition(":")
            if not sep:
                self.send_error(400, "Bad header line")
                return False
            headers[name.strip().lower()] = value.strip()
        self.headers = headers  # type: ignore[assignment]
        conntype = headers.get("connection", "").lower()
        self.close_connection = conntype == "close" or (
            version == "HTTP/1.0" and conntype != "keep-alive"
        )
        if (
            headers.get("expect", "").lower() == "100-continue"
            and version != "HTTP/1.0"
        ):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        )
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(
            head.encode("ascii") + b"\r\n" + (b"" if self.command == "HEAD" else body)
        )
        if self.server.verbose:
            log.info("%s %s -> %d", self.command, self.path, status)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise _BadRequest("ERR invalid Content-Length") from None
            if n < 0 or n > MAX_BODY:
                self.close_connection = True
                raise _BadRequest("ERR request body too large")
            return self.rfile.read(n) if n else b""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            try:
                return self._read_chunked()
            except ValueError:
                raise _BadRequest("ERR bad chunked body") from None
        return b""

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise _BadRequest("ERR request body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    # -- methods ----------------------------------------------------------
    def do_POST(self) -> None:
        self._handle(with_body=True)

    do_PUT = do_POST

    def do_GET(self) -> None:
        self._handle(with_body=False)

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self._reply(405, {"error": f"ERR method {self.command} is not allowed"})

    do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _handle(self, with_body: bool) -> None:
        path, _, query = self.path.partition("?")
        try:
            body = self._read_body()  # always drain it, to keep the connection in sync
        except _BadRequest as exc:
            self.close_connection = True
            self._reply(400, {"error": str(exc)})
            return
        status, payload, headers = self.server.engine.respond(
            self.command, path, query, self.headers, body if with_body else b""
        )
        self._reply(status, payload, headers)


@dataclass
class Stats:
    """What Upstash would have counted since the last reset (``/__devstack/stats``)."""

    requests: int = 0  # REST calls that reached Redis
    commands: int = 0  # every command sent to Redis on a client's behalf
    billed: int = 0  # the commands Upstash bills (not INFO, PING, AUTH, QUIT, COMMAND)
    scripts_global_lock: int = 0  # scripts run under the global lock (no flag, or in /multi-exec)
    scripts_key_locked: int = 0  # scripts run locking only their KEYS
    capacity_refusals: int = 0  # commands refused because the database is full
    quota_refusals: int = 0  # requests refused because the day's quota is used up
    sync_waits: int = 0  # reads that waited for their replica to reach the request's sync token
    sync_fallbacks: int = 0  # reads the leader served because their replica did not catch up in time
    by_command: collections.Counter = field(default_factory=collections.Counter)
    by_node: collections.Counter = field(default_factory=collections.Counter)  # requests each node served
    reads_by_node: collections.Counter = field(default_factory=collections.Counter)  # read-only ones

    def as_dict(self) -> dict[str, Any]:
        counters = ("by_command", "by_node", "reads_by_node")
        out = {k: v for k, v in self.__dict__.items() if k not in counters}
        return {**out, **{k: dict(sorted(getattr(self, k).items())) for k in counters}}


@dataclass
class _Sent:
    """One client command as it went to Valkey, and what Upstash would count for it."""

    name: str
    script: Prepared | None = None  # for EVAL*/EVALSHA* of a script the stand-in prepared
    is_script: bool = False
    load_sha: str | None = None  # SCRIPT LOAD: answer with the SHA of the client's text


class UpstashEngine:
    """Upstash's REST semantics over a pool of connections to a Redis (no HTTP here).

    ``answer(method, path, query, headers, body)`` returns ``(status, payload)``
    exactly as the HTTP server sends them; tests that fake the network at the
    boundary call it directly. Attributes drills change at runtime:
    ``delay_ms``, ``token``.
    """

    def __init__(
        self,
        redis_url: str = DEFAULT_REDIS_URL,
        token: str = DEFAULT_TOKEN,
        *,
        replica_urls: Sequence[str] = (),
        daily_requests: int | None = None,
        delay_ms: float = 0.0,
        socket_timeout: float = 3.0,
        connect_timeout: float = 1.0,
    ) -> None:
        self.redis_url = redis_url
        self.token = token
        self.delay_ms = float(delay_ms)
        self.daily_requests = daily_requests  # None: no daily quota (pay as you go without a cap)
        self.stats = Stats()
        self._stats_lock = threading.Lock()
        self._billed_day: tuple[str, int] = ("", 0)  # (UTC date, billed commands that day)
        self._scripts: dict[str, Prepared] = {}  # the client's SHA -> what Valkey runs
        # command -> (first, last, step) key positions, None when its keys move (COMMAND INFO)
        self._key_specs: dict[str, tuple[int, int, int] | None] = {}
        self._readonly: dict[str, bool] = {}  # command -> flagged `readonly` by the server (COMMAND INFO)
        self._local = threading.local()  # the node and sync token of this thread's last execute
        self.replicas: Any = None  # the devstack.replicas.ReplicaSet behind replica_urls, when known (its lag)

        def pool(url: str) -> redis.ConnectionPool:
            return redis.ConnectionPool.from_url(
                url,
                protocol=2,
                parser_class=_FullErrorParser,
                decode_responses=False,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                socket_keepalive=True,
            )

        self.nodes = [_Node("leader", redis_url, pool(redis_url))] + [
            _Node(f"replica-{i}", url, pool(url)) for i, url in enumerate(replica_urls, 1)]
        self.leader = self.nodes[0]
        self.pool = self.leader.pool
        self._turn = itertools.count()

    # -- one request --------------------------------------------------------
    def answer(
        self, method: str, path: str, query: str, headers: Any, body: bytes
    ) -> tuple[int, Any]:
        """``respond`` without the response headers."""
        status, payload, _ = self.respond(method, path, query, headers, body)
        return status, payload

    def respond(
        self, method: str, path: str, query: str, headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """``(status, payload, headers)`` as the HTTP server sends them; the headers carry
        ``upstash-sync-token`` after every command request."""
        if not self._authorized(headers, query):
            return 401, {"error": "Unauthorized"}, {}
        b64 = (headers.get("Upstash-Encoding") or "").lower() == "base64"
        self._local.token = None
        try:
            if path.startswith("/__devstack/"):
                return (*self.admin(method, path, body), {})
            if path in ("/", "/pipeline", "/multi-exec") and method in ("POST", "PUT"):
                try:
                    data = json.loads(body)
                except ValueError as exc:
                    raise _BadRequest(f"ERR failed to parse the JSON body: {exc}") from None
                kind = path
            else:
                data = _path_command(path, query, body)
                kind = "/"
            sync = _sync_offset(headers.get(SYNC_TOKEN))
            if self.delay_ms > 0:
                time.sleep(self.delay_ms / 1000.0)
            if kind == "/":
                reply = self.execute([_command(data)], sync=sync)[0]
                status, payload = (400 if isinstance(reply, ResponseError) else 200), _entry(reply, b64)
            elif kind == "/pipeline":
                cmds = _commands(data)
                status, payload = 200, [_entry(r, b64) for r in self.execute(cmds, sync=sync)] if cmds else []
            else:
                status, payload = self._multi_exec(_commands(data), b64, sync)
        except _BadRequest as exc:
            return 400, {"error": str(exc)}, {}
        except _Quota as exc:
            return 400, {"error": str(exc)}, {}
        except _Unavailable as exc:
            return 503, {"error": str(exc)}, {}
        token = getattr(self._local, "token", None)
        return status, payload, ({SYNC_TOKEN: str(token)} if token is not None else {})

    def _authorized(self, headers: Any, query: str) -> bool:
        expected = self.token.encode()
        auth = headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer " and hmac.compare_digest(
            auth[7:].strip().encode(), expected
        ):
            return True
        if "_token=" in query:
            for k, v in parse_qsl(query):
                if k == "_token" and hmac.compare_digest(v.encode(), expected):
                    return True
        return False

    def _multi_exec(self, cmds: list[list[bytes]], b64: bool, sync: int | None = None) -> tuple[int, Any]:
        if not cmds:
            return 200, []
        replies = self.execute(cmds, transaction=True, sync=sync)
        result = replies[-1]
        if isinstance(result, ResponseError):  # EXECABORT: refused while queueing
            return 400, {"error": str(result)}
        if result is None:
            return 400, {"error": "EXECABORT Transaction discarded"}
        return 200, [_entry(r, b64) for r in result]

    # -- what Upstash does that Valkey does not ------------------------------
    def execute(
        self, commands: list[list[bytes]], *, transaction: bool = False, sync: int | None = None
    ) -> list[Any]:
        """Run the clients' ``commands`` as Upstash would: on the leader, or, when they only read,
        on the next node in turn (leader and replicas, round-robin) once it has caught up to
        ``sync`` (a replication offset from an ``upstash-sync-token``); flags translated, scripts
        and billed commands counted, capacity errors in Upstash's words, the daily quota applied.
        With ``transaction``, inside MULTI/EXEC: the last reply is EXEC's."""
        self._check_quota()
        sent = [self._translate(cmd) for cmd in commands]
        wire = [s[0] for s in sent]
        node = self.leader
        reads = not transaction and self._reads_only(sent)
        if reads and len(self.nodes) > 1:
            node = self.nodes[next(self._turn) % len(self.nodes)]
        if node is not self.leader:
            node = self._caught_up(node, sync)
        if node is not self.leader:
            self._load_scripts(node, sent)
        if transaction:
            wire = [[b"MULTI"], *wire, [b"EXEC"]]
        if len(self.nodes) > 1:
            replies = node.run([*wire, [b"ROLE"]])
            role = replies.pop()
            if node is not self.leader and not _linked(role):
                # A replica without its link to the leader (the leader restarting, a resync) is out of
                # the rotation: the leader answers, or Upstash is down, never a stale replica.
                node = self.leader
                replies = node.run([*wire, [b"ROLE"]])
                role = replies.pop()
            self._local.token = _offset(role)
        else:
            replies = node.run(wire)
        with self._stats_lock:
            self.stats.by_node[node.name] += 1
            if reads:
                self.stats.reads_by_node[node.name] += 1
        if transaction:
            results = replies[-1] if isinstance(replies[-1], list) else None
            self._count(sent, results, transaction=True)
            if results is not None:
                replies[-1] = [self._upstash_reply(r, s[1]) for r, s in zip(results, sent, strict=True)]
            return replies
        self._count(sent, replies, transaction=False)
        return [self._upstash_reply(r, s[1]) for r, s in zip(replies, sent, strict=True)]

    # -- replicas -----------------------------------------------------------
    def _reads_only(self, sent: list[tuple[list[bytes], _Sent]]) -> bool:
        """True when every command may run on a replica: a read command (the server's `readonly`
        flag), EVAL_RO/EVALSHA_RO, or a script flagged `no-writes`."""
        plain = {what.name for _, what in sent if not what.is_script}
        flags = self._read_flags(plain)
        for _, what in sent:
            if what.is_script:
                if not (what.name.endswith("_RO") or (what.script is not None and what.script.read_only)):
                    return False
            elif not flags.get(what.name, False):
                return False
        return True

    def _read_flags(self, names: set[str]) -> dict[str, bool]:
        missing = sorted(names - self._readonly.keys())
        if missing:
            try:
                infos = self.leader.run([[b"COMMAND", b"INFO", *(n.encode() for n in missing)]])[0]
            except _Unavailable:
                infos = None
            if isinstance(infos, list):
                for name, info in zip(missing, infos, strict=True):
                    self._readonly[name] = (isinstance(info, list) and b"readonly" in info[2]
                                            and b"write" not in info[2])
        return {n: self._readonly.get(n, False) for n in names}

    def _caught_up(self, node: _Node, sync: int | None) -> _Node:
        """`node` once its replication offset reaches `sync` (Upstash's read-your-writes: a request
        carrying a sync token waits for its replica); the leader, which is never behind, if the
        replica has not caught up within SYNC_WAIT seconds (its link down, the leader restarted)."""
        if sync is None:
            return node
        deadline = time.monotonic() + SYNC_WAIT
        waited = False
        while True:
            try:
                role = node.run([[b"ROLE"]])[0]
            except _Unavailable:
                return self.leader
            offset = _offset(role)
            if offset is not None and offset >= sync and _linked(role):
                if waited:
                    with self._stats_lock:
                        self.stats.sync_waits += 1
                return node
            if time.monotonic() >= deadline:
                with self._stats_lock:
                    self.stats.sync_fallbacks += 1
                return self.leader
            waited = True
            time.sleep(0.001)

    def _load_scripts(self, node: _Node, sent: list[tuple[list[bytes], _Sent]]) -> None:
        """Upstash's scripts are known on every replica; Valkey does not replicate SCRIPT LOAD."""
        for _, what in sent:
            script = what.script
            if script is not None and script.sha not in node.loaded:
                node.run([[b"SCRIPT", b"LOAD", script.text.encode("utf-8", "surrogateescape")]])
                node.loaded.add(script.sha)

    def _check_quota(self) -> None:
        """``ERR max daily request limit exceeded`` once the day's billed commands reached the quota
        (Upstash's words; its day is UTC's)."""
        limit = self.daily_requests
        if limit is None:
            return
        today = time.strftime("%Y-%m-%d", time.gmtime())
        with self._stats_lock:
            day, used = self._billed_day
            if day != today:
                self._billed_day = (today, used := 0)
            if used >= limit:
                self.stats.quota_refusals += 1
                raise _Quota(f"ERR max daily request limit exceeded. Limit: {limit}, Usage: {used}.")

    def _translate(self, cmd: list[bytes]) -> tuple[list[bytes], _Sent]:
        name = cmd[0].upper().decode("ascii", "replace")
        if name in ("EVAL", "EVAL_RO") and len(cmd) > 1:
            prepared = self._prepare(cmd[1])
            return [cmd[0], prepared.text.encode("utf-8", "surrogateescape"), *cmd[2:]], _Sent(name, prepared, True)
        if name in ("EVALSHA", "EVALSHA_RO") and len(cmd) > 1:
            prepared = self._scripts.get(cmd[1].decode("ascii", "replace").lower())
            if prepared is None:  # a script sent without flags: Valkey knows it by the same SHA
                return cmd, _Sent(name, None, True)
            return [cmd[0], prepared.sha.encode(), *cmd[2:]], _Sent(name, prepared, True)
        if name == "SCRIPT" and len(cmd) > 2 and cmd[1].upper() == b"LOAD":
            prepared = self._prepare(cmd[2])
            return [cmd[0], cmd[1], prepared.text.encode("utf-8", "surrogateescape")], _Sent(
                name, prepared, load_sha=sha1(cmd[2]))
        if name == "SCRIPT" and len(cmd) > 1 and cmd[1].upper() == b"FLUSH":
            self._scripts.clear()
            for node in self.nodes[1:]:  # the replicas forget them too, as Upstash's do
                try:
                    node.run([[b"SCRIPT", b"FLUSH"]])
                except _Unavailable:
                    pass
                node.loaded.clear()
        return cmd, _Sent(name)

    def _prepare(self, script: bytes) -> Prepared:
        prepared = prepare(script, self._specs(literal_commands(script)))
        self._scripts[sha1(script)] = prepared
        return prepared

    def _specs(self, names: set[str]) -> dict[str, tuple[int, int, int]]:
        """Key positions of `names` with fixed ones, asked from Redis once per command."""
        missing = sorted(names - self._key_specs.keys())
        if missing:
            try:
                infos = self.run([[b"COMMAND", b"INFO", *(n.encode() for n in missing)]])[0]
            except _Unavailable:
                infos = None  # Valkey is down: the EVAL will say so; the check asks per call meanwhile
            if isinstance(infos, list):
                for name, info in zip(missing, infos, strict=True):
                    fixed = isinstance(info, list) and b"movablekeys" not in info[2]
                    self._key_specs[name] = (int(info[3]), int(info[4]), int(info[5])) if fixed else None
        return {n: spec for n in names if (spec := self._key_specs.get(n)) is not None}

    def _count(self, sent: list[tuple[list[bytes], _Sent]], replies: list[Any] | None,
               *, transaction: bool) -> None:
        with self._stats_lock:
            stats = self.stats
            stats.requests += 1
            for i, (_, what) in enumerate(sent):
                stats.commands += 1
                stats.by_command[what.name] += 1
                if what.name not in _FREE:
                    stats.billed += 1
                    day, used = self._billed_day
                    self._billed_day = (day, used + 1)
                reply = replies[i] if replies is not None else None
                full = isinstance(reply, ResponseError) and str(reply).startswith("OOM ")
                stats.capacity_refusals += full
                # A script refused before it ran (unknown SHA, database full) held no lock.
                ran = replies is not None and not full and not (
                    isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"))
                if what.is_script and ran:
                    if transaction or what.script is None or not what.script.key_locked:
                        stats.scripts_global_lock += 1
                    else:
                        stats.scripts_key_locked += 1

    def _upstash_reply(self, reply: Any, what: _Sent) -> Any:
        if what.load_sha is not None and isinstance(reply, bytes):
            return what.load_sha.encode()
        if not isinstance(reply, ResponseError):
            return reply
        message = str(reply)
        if message.startswith("OOM "):
            return ResponseError(self._capacity_message())
        if DYNAMIC_KEY in message or DATABASE_WIDE in message:
            return ResponseError(message.split(" script: ", 1)[0])
        return reply

    def _capacity_message(self) -> str:
        """Upstash's answer to a write at the size limit (eviction off)."""
        try:
            limit, info = self.run([[b"CONFIG", b"GET", b"maxmemory"], [b"INFO", b"memory"]])
            threshold = int(limit[1]) if isinstance(limit, list) and len(limit) == 2 else "?"
            fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
            usage = fields.get("used_memory", "?").strip()
        except (_Unavailable, ValueError, AttributeError):
            threshold = usage = "?"
        return f"ERR DB capacity quota exceeded. Threshold: {threshold} bytes, Usage: {usage} bytes"

    # -- Redis ------------------------------------------------------------
    def run(self, commands: list[list[bytes]]) -> list[Any]:
        """Send ``commands`` to the leader in one write (``_Node.run``)."""
        return self.leader.run(commands)

    def redis_up(self) -> bool:
        try:
            return self.run([[b"PING"]])[0] == b"PONG"
        except _Unavailable:
            return False

    # -- admin ------------------------------------------------------------
    def admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/__devstack/delay":
            if method in ("POST", "PUT"):
                try:
                    ms = float(json.loads(body or b"{}").get("ms", 0))
                except (ValueError, AttributeError, TypeError):
                    raise _BadRequest('ERR expected {"ms": <milliseconds>}') from None
                if ms < 0:
                    raise _BadRequest("ERR ms must be >= 0")
                self.delay_ms = ms
                log.info("upstash: artificial delay set to %s ms", ms)
            return 200, {"result": {"delay_ms": self.delay_ms}}
        if path == "/__devstack/status":
            return 200, {
                "result": {
                    "redis": "up" if self.redis_up() else "down",
                    "redis_url": self.redis_url,
                    "replicas": [node.url for node in self.nodes[1:]],
                    "replica_lag_ms": self.replicas.lag_ms if self.replicas is not None else None,
                    "daily_requests": self.daily_requests,
                    "delay_ms": self.delay_ms,
                }
            }
        if path == "/__devstack/replicas" and method in ("POST", "PUT"):
            try:
                lag = float(json.loads(body or b"{}")["lag_ms"])
            except (ValueError, KeyError, TypeError):
                raise _BadRequest('ERR expected {"lag_ms": <milliseconds>}') from None
            if self.replicas is None or lag < 0:
                raise _BadRequest("ERR no replicas to set a lag on, or a negative lag")
            self.replicas.lag_ms = lag
            return 200, {"result": {"replica_lag_ms": lag}}
        if path == "/__devstack/quota" and method in ("POST", "PUT"):
            try:
                daily = json.loads(body or b"{}").get("daily")
                self.daily_requests = None if daily is None else int(daily)
            except (ValueError, AttributeError, TypeError):
                raise _BadRequest('ERR expected {"daily": <billed commands a day, or null>}') from None
            with self._stats_lock:
                self._billed_day = ("", 0)  # a new day begins for the quota
            return 200, {"result": {"daily_requests": self.daily_requests}}
        if path == "/__devstack/stats":
            with self._stats_lock:
                return 200, {"result": self.stats.as_dict()}
        if path == "/__devstack/stats/reset" and method in ("POST", "PUT"):
            self.reset_stats()
            return 200, {"result": "OK"}
        return 404, {"error": f"ERR unknown devstack endpoint {path}"}

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats = Stats()

    def close(self) -> None:
        for node in self.nodes:
            node.pool.disconnect()


def daily_from_env() -> int | None:
    """``DEVSTACK_UPSTASH_DAILY_REQUESTS``: the daily quota in billed commands (unset: none)."""
    value = os.environ.get(DAILY_VARIABLE, "").strip()
    return int(value) if value else None


def _commands(data: Any) -> list[list[bytes]]:
    if not isinstance(data, list):
        raise _BadRequest("ERR the body must be a JSON array of commands")
    return [_command(c) for c in data]


def _path_command(path: str, query: str, body: bytes) -> list[bytes]:
    parts = [unquote_to_bytes(p) for p in path.strip("/").split("/") if p]
    if not parts:
        raise _BadRequest("ERR empty command")
    if body:
        parts.append(body)
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k != "_token":
            parts.append(k.encode())
            if v:
                parts.append(v.encode())
    return parts


class UpstashStandIn(StandInServer):
    """The HTTP server in front of an ``UpstashEngine`` (``server.engine``).
    Attributes drills may change at runtime: ``delay_ms``, ``token``."""

    log = log

    def __init__(
        self,
        address: tuple[str, int],
        *,
        token: str = DEFAULT_TOKEN,
        redis_url: str = DEFAULT_REDIS_URL,
        replica_urls: Sequence[str] = (),
        daily_requests: int | None = None,
        delay_ms: float = 0.0,
        socket_timeout: float = 3.0,
        connect_timeout: float = 1.0,
        verbose: bool = False,
    ) -> None:
        super().__init__(address, _Handler)
        self.verbose = verbose
        self.engine = UpstashEngine(
            redis_url,
            token,
            replica_urls=replica_urls,
            daily_requests=daily_requests,
            delay_ms=delay_ms,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def redis_url(self) -> str:
        return self.engine.redis_url

    @property
    def token(self) -> str:
        return self.engine.token

    @token.setter
    def token(self, value: str) -> None:
        self.engine.token = value

    @property
    def delay_ms(self) -> float:
        return self.engine.delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        self.engine.delay_ms = float(value)

    def redis_up(self) -> bool:
        return self.engine.redis_up()

    # -- lifecycle --------------------------------------------------------
    def server_close(self) -> None:
        super().server_close()
        self.engine.close()


def make_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    token: str = DEFAULT_TOKEN,
    redis_url: str = DEFAULT_REDIS_URL,
    replica_urls: Sequence[str] = (),
    daily_requests: int | None = None,
    delay_ms: float = 0.0,
    socket_timeout: float = 3.0,
    connect_timeout: float = 1.0,
    verbose: bool = False,
) -> UpstashStandIn:
    """Bind the stand-in (``port=0``: any free port, see ``server.url``); call
    ``serve_forever()`` on it. Does not contact Redis until the first request."""
    return UpstashStandIn(
        (host, port),
        token=token,
        redis_url=redis_url,
        replica_urls=replica_urls,
        daily_requests=daily_requests,
        delay_ms=delay_ms,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        verbose=verbose,
    )


def serve_in_thread(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: Any
) -> tuple[UpstashStandIn, threading.Thread]:
    """``make_server(...)`` serving in a daemon thread. Stop with
    ``server.shutdown(); server.server_close(); thread.join()``."""
    server = make_server(host, port, **kwargs)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"upstash-standin:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return server, thread


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m devstack.upstash",
        description="Local Upstash REST stand-in in front of a Redis.",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument(
        "--port", type=int, default=int(env("UPSTASH_STANDIN_PORT", DEFAULT_PORT))
    )
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=int(env("REDIS_PORT", 6379)))
    p.add_argument(
        "--redis-url", default=None, help="overrides --redis-host/--redis-port"
    )
    p.add_argument("--token", default=env("UPSTASH_STANDIN_TOKEN", DEFAULT_TOKEN))
    p.add_argument(
        "--delay-ms", type=float, default=float(env("UPSTASH_STANDIN_DELAY_MS", 0))
    )
    p.add_argument(
        "--socket-timeout",
        type=float,
        default=3.0,
        help="seconds to wait for Redis before answering 503",
    )
    p.add_argument("--replica-url", action="append", default=[],
                   help="a read replica of the Redis (repeat for several); reads go round-robin")
    p.add_argument("--daily-requests", type=int, default=daily_from_env(),
                   help="billed commands a day before 'ERR max daily request limit exceeded'")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    redis_url = args.redis_url or f"redis://{args.redis_host}:{args.redis_port}/0"
    server = make_server(
        args.host,
        args.port,
        token=args.token,
        redis_url=redis_url,
        replica_urls=args.replica_url,
        daily_requests=args.daily_requests,
        delay_ms=args.delay_ms,
        socket_timeout=args.socket_timeout,
        verbose=args.verbose,
    )
    print(f"upstash stand-in: {server.url} -> {redis_url}", flush=True)
    return serve_until_stopped(server)


if __name__ == "__main__":
    sys.exit(main())
