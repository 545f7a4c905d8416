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

Drill switches (token-protected): ``POST /__devstack/delay {"ms": 800}`` adds
that delay before every command request (0 turns it off); ``GET
/__devstack/status`` reports Redis up/down, the backend URL and the delay.

Start it::

    python -m devstack.upstash --port 8079 --redis-port 6379 --token dev-upstash-token

or from Python: ``server, thread = serve_in_thread(port=0, redis_url=...)``;
``server.url`` is its base URL; ``server.shutdown(); server.server_close()``.

The Redis client is redis-py (RESP2, ``decode_responses=False``) with a
connection pool: keep-alive HTTP connections reuse pooled Redis connections, so
a request costs no TCP connect.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import redis
from redis._parsers import _RESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devstack._server import StandInHandler, StandInServer, serve_until_stopped

log = logging.getLogger("devstack.upstash")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8079
DEFAULT_TOKEN = "dev-upstash-token"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_BODY = 64 * 1024 * 1024

# Commands that would change the state of a pooled connection (or hold it
# forever): refused on every endpoint (Upstash's REST API has no use for them:
# transactions go through /multi-exec).
_REFUSED = frozenset(
    b"MULTI EXEC DISCARD WATCH UNWATCH SELECT SUBSCRIBE PSUBSCRIBE SSUBSCRIBE "
    b"UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE MONITOR SYNC PSYNC QUIT RESET HELLO "
    b"AUTH SHUTDOWN CLIENT".split()
)

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
    "UpstashStandIn",
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


    def _reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        )
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

    def _authorized(self, query: str) -> bool:
        expected = self.server.token.encode()
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(
            auth[7:].strip().encode(), expected
        ):
            return True
        if "_token=" in query:
            for k, v in parse_qsl(query):
                if k == "_token" and hmac.compare_digest(v.encode(), expected):
                    return True
        return False

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
            if not with_body:
                body = b""
        except _BadRequest as exc:
            self.close_connection = True
            self._reply(400, {"error": str(exc)})
            return
        if not self._authorized(query):
            self._reply(401, {"error": "Unauthorized"})
            return
        b64 = self.headers.get("Upstash-Encoding", "").lower() == "base64"
        srv = self.server
        try:
            if path.startswith("/__devstack/"):
                status, payload = srv.admin(self.command, path, body)
            else:
                if path in ("/", "/pipeline", "/multi-exec") and self.command in (
                    "POST",
                    "PUT",
                ):
                    try:
                        data = json.loads(body)
                    except ValueError as exc:
                        raise _BadRequest(
                            f"ERR failed to parse the JSON body: {exc}"
                        ) from None
                    kind = path
                else:
                    data = self._path_command(path, query, body)
                    kind = "/"
                if srv.delay_ms > 0:
                    time.sleep(srv.delay_ms / 1000.0)
                if kind == "/":
                    reply = srv.run([_command(data)])[0]
                    status = 400 if isinstance(reply, ResponseError) else 200
                    payload = _entry(reply, b64)
                elif kind == "/pipeline":
                    cmds = self._commands(data)
                    status, payload = (
                        200,
                        [_entry(r, b64) for r in srv.run(cmds)] if cmds else [],
                    )
                else:
                    status, payload = self._multi_exec(self._commands(data), b64)
        except _BadRequest as exc:
            status, payload = 400, {"error": str(exc)}
        except _Unavailable as exc:
            status, payload = 503, {"error": str(exc)}
        self._reply(status, payload)

    @staticmethod
    def _commands(data: Any) -> list[list[bytes]]:
        if not isinstance(data, list):
            raise _BadRequest("ERR the body must be a JSON array of commands")
        return [_command(c) for c in data]

    @staticmethod
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

    def _multi_exec(self, cmds: list[list[bytes]], b64: bool) -> tuple[int, Any]:
        if not cmds:
            return 200, []
        replies = self.server.run([[b"MULTI"], *cmds, [b"EXEC"]])
        result = replies[-1]
        if isinstance(result, ResponseError):  # EXECABORT: refused while queueing
            return 400, {"error": str(result)}
        if result is None:
            return 400, {"error": "EXECABORT Transaction discarded"}
        return 200, [_entry(r, b64) for r in result]


class UpstashStandIn(StandInServer):
    """The HTTP server. Attributes drills may change at runtime: ``delay_ms``, ``token``."""

    log = log

    def __init__(
        self,
        address: tuple[str, int],
        *,
        token: str = DEFAULT_TOKEN,
        redis_url: str = DEFAULT_REDIS_URL,
        delay_ms: float = 0.0,
        socket_timeout: float = 3.0,
        connect_timeout: float = 1.0,
        verbose: bool = False,
    ) -> None:
        super().__init__(address, _Handler)
        self.token = token
        self.redis_url = redis_url
        self.delay_ms = float(delay_ms)
        self.verbose = verbose
        self.pool = redis.ConnectionPool.from_url(
            redis_url,
            protocol=2,
            parser_class=_FullErrorParser,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # -- Redis ------------------------------------------------------------
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
                    "delay_ms": self.delay_ms,
                }
            }
        return 404, {"error": f"ERR unknown devstack endpoint {path}"}

    # -- lifecycle --------------------------------------------------------
    def server_close(self) -> None:
        super().server_close()
        self.pool.disconnect()


def make_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    token: str = DEFAULT_TOKEN,
    redis_url: str = DEFAULT_REDIS_URL,
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
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    redis_url = args.redis_url or f"redis://{args.redis_host}:{args.redis_port}/0"
    server = make_server(
        args.host,
        args.port,
        token=args.token,
        redis_url=redis_url,
        delay_ms=args.delay_ms,
        socket_timeout=args.socket_timeout,
        verbose=args.verbose,
    )
    print(f"upstash stand-in: {server.url} -> {redis_url}", flush=True)
    return serve_until_stopped(server)


if __name__ == "__main__":
    sys.exit(main())
