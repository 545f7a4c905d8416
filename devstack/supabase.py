"""A local stand-in for Supabase (PostgREST under /rest/v1, GoTrue under /auth/v1) over a real PostgreSQL.

Development and tests only. It answers on the wire as Supabase's gateway, PostgREST and
GoTrue do for what lib uses (devstack/README.md lists the subset); everything it cannot do
answers a PostgREST-style 400 saying so.

- Gateway: ``apikey`` (header or ``?apikey=``) must be the anon or the service-role key on
  /rest/v1 and /auth/v1 (not on the JWKS), else 401 ``{"message": "Invalid API key", "hint"}``.
- Roles: ``Authorization: Bearer <anon key | service key | user JWT>`` -> ``anon`` /
  ``service_role`` / the JWT's ``role`` claim; no Authorization: the apikey's role. A bad or
  expired JWT: 401 PGRST301/PGRST303, as PostgREST.
- /rest/v1: see devstack/supabase_rest.py. Each request is one transaction on a pooled
  connection logged in as ``authenticator`` (bootstrap.sql's PostgREST role) when the
  database has it, with ``set_config('role', ...)`` and ``request.jwt.claims``: RLS is real.
- /auth/v1: see devstack/supabase_auth.py (password grant, refresh, user, logout, JWKS).
- pg_net: devstack/supabase_net.py sends what `net.http_post` queued (the database webhook),
  after commit, as pg_net's background worker does; ``POST /__devstack/webhooks {"mode":
  "deliver"|"drop"|"hold"}`` loses or holds them for drills.

Drills and benchmarks, loopback only, no key: ``POST /__devstack/delay {"ms": 300}`` (sleep
before every /rest/v1 request; env ``DEVSTACK_DB_DELAY_MS`` sets the start value),
``GET /__devstack/stats`` ``{"rest_requests", "by_table", "rpc", "auth_requests", "most_rows", "at_max_rows"}``,
``POST /__devstack/stats/reset``, ``POST /__devstack/mode {"mode": "normal"|"down"|"hang",
"hang_seconds"?}`` (down: 503 PGRST001; hang: requests wait until the mode changes or
``hang_seconds`` pass, then 504 PGRST003), ``POST /__devstack/reload`` (schema cache),
``GET /__devstack/status``.

Start it::

    python -m devstack.supabase --port 54321 --dsn postgresql://postgres@127.0.0.1:5432/dousell

or from Python: ``server, thread = serve_in_thread("127.0.0.1", 0, dsn=..., anon_key=...,
service_role_key=...)``; ``server.url``; ``server.mint_token(user_id, email)``;
``server.shutdown(); server.server_close()``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from devstack._server import StandInHandler, StandInServer, serve_until_stopped
from devstack.supabase_auth import AuthResult, AuthService, SigningKey, TokenError
from devstack.supabase_net import NetWorker
from devstack.supabase_rest import (
    ApiError,
    DatabaseUnreachable,
    PoolExhausted,
    Response,
    RestEngine,
    RestRequest,
)

__all__ = [
    "DEFAULT_ANON_KEY",
    "DEFAULT_PORT",
    "DEFAULT_SERVICE_ROLE_KEY",
    "ConnectionPool",
    "SupabaseStandIn",
    "main",
    "make_server",
    "serve_in_thread",
]

log = logging.getLogger("devstack.supabase")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 54321
DEFAULT_ANON_KEY = "dev-anon-key"
DEFAULT_SERVICE_ROLE_KEY = "dev-service-role-key"
# PostgREST's login role, made by devstack/sql/bootstrap.sql.
AUTHENTICATOR = "authenticator"
MAX_BODY = 16 * 1024 * 1024
MODES = ("normal", "down", "hang")
DEFAULT_HANG_SECONDS = 30.0

_REASONS = {200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content", 300: "Multiple Choices",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 413: "Payload Too Large",
            416: "Range Not Satisfiable", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}


# ---------------------------------------------------------------------------------------
# Connections


class ConnectionPool:
    """A small thread-safe pool of autocommit psycopg connections (psycopg_pool is not installed).

    ``with pool.connection() as conn:`` lends one; a connection that comes back broken or
    inside a transaction is closed, never lent again. Opening fails with DatabaseUnreachable,
    waiting longer than ``acquire_timeout`` with PoolExhausted.
    """

    def __init__(self, conninfo: str, *, size: int = 10, acquire_timeout: float = 10.0,
                 connect_timeout: int = 3, name: str = "devstack-supabase"):
        self.conninfo = conninfo
        self.acquire_timeout = acquire_timeout
        self._connect_kwargs = {"autocommit": True, "prepare_threshold": None,
                                "connect_timeout": connect_timeout, "application_name": name}
        self._slots = threading.BoundedSemaphore(size)
        self._idle: collections.deque[psycopg.Connection] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=self.acquire_timeout):
            raise PoolExhausted(f"no connection free after {self.acquire_timeout} s")
        conn: psycopg.Connection | None = None
        try:
            conn = self._take()
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def _take(self) -> psycopg.Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.closed or conn.broken):
                    return conn
        try:
            return psycopg.connect(self.conninfo, **self._connect_kwargs)
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(str(exc).strip()) from exc

    def _give_back(self, conn: psycopg.Connection) -> None:
        reusable = not (conn.closed or conn.broken) and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), collections.deque()
        for conn in idle:
            conn.close()


def _rest_conninfo(dsn: str) -> str:
    """The DSN for /rest/v1: the same database as `authenticator` when that role can log in
    (PostgREST's way: it may only switch to the API roles), else `dsn` itself."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute("select rolcanlogin from pg_roles where rolname = %s", (AUTHENTICATOR,)).fetchone()
    except psycopg.OperationalError:
        return dsn  # the database is not up yet: the first request will say so
    if row is None or not row[0]:
        return dsn
    params = conninfo_to_dict(dsn)
    if params.get("user") == AUTHENTICATOR:
        return dsn
    params["user"] = AUTHENTICATOR
    params.pop("password", None)  # the local cluster trusts loopback; a password is the superuser's
    return make_conninfo(**params)


# ---------------------------------------------------------------------------------------
# The server


class SupabaseStandIn(StandInServer):
    """The HTTP server; its public methods are the drill and test hooks."""

    log = log

    def __init__(self, address: tuple[str, int], *, dsn: str, anon_key: str = DEFAULT_ANON_KEY,
                 service_role_key: str = DEFAULT_SERVICE_ROLE_KEY,
                 signing_key: SigningKey | Any | bytes | str | None = None, public_url: str | None = None,
                 delay_ms: float | None = None, pool_size: int = 10, verbose: bool = False, pg_net: bool = True):
        super().__init__(address, _Handler)
        if not anon_key or not service_role_key or anon_key == service_role_key:
            raise ValueError("anon_key and service_role_key must be two different non-empty strings")
        self.anon_key = anon_key
        self.service_role_key = service_role_key
        self.verbose = verbose
        host, port = self.server_address[:2]
        self.public_url = (public_url or f"http://{host}:{port}").rstrip("/")
        self.signing_key = SigningKey.coerce(signing_key)
        self.admin_pool = ConnectionPool(dsn, size=4, name="devstack-supabase-admin")
        self.rest_pool = ConnectionPool(_rest_conninfo(dsn), size=pool_size, name="devstack-supabase-rest")
        self.rest = RestEngine(self.rest_pool.connection, self.admin_pool.connection, on_query=self._count,
                               on_rows=self._count_rows)
        self.auth = AuthService(self.signing_key, f"{self.public_url}/auth/v1", self.admin_pool.connection)
        if delay_ms is None:
            delay_ms = float(os.environ.get("DEVSTACK_DB_DELAY_MS", "0") or 0)
        self._delay_ms = max(float(delay_ms), 0.0)
        self._mode = "normal"
        self._hang_seconds = DEFAULT_HANG_SECONDS
        self._state = threading.Condition()
        self._closing = False
        self._hanging = 0
        self._stats_lock = threading.Lock()
        self._stats = self._empty_stats()
        self.net = NetWorker(dsn).start() if pg_net else None  # hosted Supabase always runs pg_net

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def rest_url(self) -> str:
        return f"{self.url}/rest/v1"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/auth/v1"

    # -- tokens ----------------------------------------------------------------------------

    def mint_token(self, user_id: str, email: str | None = None, *, expires_in: int = 3600, **claims: Any) -> str:
        """A user access token as the password grant issues it; `claims` override (``role=``, ``aud=``, ``exp=``)."""
        return self.auth.mint_token(user_id, email, expires_in=expires_in, **claims)

    def jwks(self) -> dict[str, Any]:
        return self.signing_key.jwks()

    # -- drills ----------------------------------------------------------------------------

    @property
    def delay_ms(self) -> float:
        return self._delay_ms

    @delay_ms.setter
    def delay_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("delay_ms must be >= 0")
        self._delay_ms = float(value)

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, *, hang_seconds: float | None = None) -> None:
        """`normal`, `down` (503 PGRST001) or `hang` (wait, then 504); changing it releases hung requests."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        with self._state:
            self._mode = mode
            if hang_seconds is not None:
                if hang_seconds < 0:
                    raise ValueError("hang_seconds must be >= 0")
                self._hang_seconds = float(hang_seconds)
            self._state.notify_all()

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes."""
        deadline = time.monotonic() + seconds
        with self._state:
            while not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._state.wait(remaining)

    def _hang(self) -> bool:
        """Hold a request while the mode is `hang`; True if it was still hanging at the bound."""
        with self._state:
            deadline = time.monotonic() + self._hang_seconds
            self._hanging += 1
            try:
                while self._mode == "hang" and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return True
                    self._state.wait(remaining)
            finally:
                self._hanging -= 1
        return False

    @property
    def hanging(self) -> int:
        """Requests held by the `hang` drill right now."""
        with self._state:
            return self._hanging

    # -- stats -----------------------------------------------------------------------------

    @staticmethod
    def _empty_stats() -> dict[str, Any]:
        return {"rest_requests": 0, "by_table": {}, "rpc": {}, "auth_requests": 0, "most_rows": 0,
                "at_max_rows": 0}

    def _count(self, kind: str, name: str = "") -> None:
        """Count a request that goes to the database: kind ``table``, ``rpc`` or ``auth``."""
        with self._stats_lock:
            if kind == "auth":
                self._stats["auth_requests"] += 1
                return
            self._stats["rest_requests"] += 1
            bucket = self._stats["rpc" if kind == "rpc" else "by_table"]
            bucket[name] = bucket.get(name, 0) + 1

    def _count_rows(self, rows: int, at_max_rows: bool) -> None:
        """A read or a function answered `rows` rows; `at_max_rows`: max-rows bounded it (maybe cut)."""
        with self._stats_lock:
            self._stats["most_rows"] = max(self._stats["most_rows"], rows)
            self._stats["at_max_rows"] += at_max_rows

    def stats(self) -> dict[str, Any]:
        """Requests that reached the database: ``{"rest_requests", "by_table", "rpc", "auth_requests"}``,
        and the most rows one read or function answered (``most_rows``), and how many answers
        max-rows bounded (``at_max_rows``)."""
        with self._stats_lock:
            return json.loads(json.dumps(self._stats))

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counters; returns what they were."""
        with self._stats_lock:
            previous, self._stats = self._stats, self._empty_stats()
        return previous

    def reload_schema(self) -> dict[str, int]:
        cache = self.rest.schema_cache(reload=True)
        return {"tables": len(cache.tables), "functions": len(cache.routines)}

    # -- admin endpoints -------------------------------------------------------------------

    def admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        if not isinstance(data, dict):
            return 400, {"error": "the body must be a JSON object"}
        try:
            if path == "/__devstack/delay":
                if method == "POST":
                    self.delay_ms = float(data.get("ms", 0))
                    log.info("supabase stand-in: delay before each /rest/v1 request set to %s ms", self.delay_ms)
                return 200, {"delay_ms": self.delay_ms}
            if path == "/__devstack/mode":
                if method == "POST":
                    hang = data.get("hang_seconds")
                    self.set_mode(str(data.get("mode", "")), hang_seconds=None if hang is None else float(hang))
                    log.info("supabase stand-in: mode %s", self.mode)
                return 200, {"mode": self.mode, "hang_seconds": self._hang_seconds, "hanging": self.hanging}
            if path == "/__devstack/stats" and method == "GET":
                return 200, self.stats()
            if path == "/__devstack/stats/reset" and method == "POST":
                return 200, {"previous": self.reset_stats()}
            if path == "/__devstack/reload" and method == "POST":
                return 200, self.reload_schema()
            if path == "/__devstack/webhooks" and self.net is not None:
                if method == "POST":
                    self.net.mode = str(data.get("mode", ""))
                    log.info("supabase stand-in: pg_net worker mode %s", self.net.mode)
                return 200, self.net.stats()
            if path == "/__devstack/status" and method == "GET":
                return 200, {"url": self.url, "public_url": self.public_url, "mode": self.mode,
                             "hanging": self.hanging, "delay_ms": self.delay_ms,
                             "database": "up" if self._database_up() else "down"}
        except (TypeError, ValueError) as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": f"unknown devstack endpoint {method} {path}"}

    def _database_up(self) -> bool:
        try:
            with self.admin_pool.connection() as conn:
                conn.execute("select 1")
            return True
        except (psycopg.Error, DatabaseUnreachable, PoolExhausted):
            return False

    # -- lifecycle -------------------------------------------------------------------------

    def server_close(self) -> None:
        with self._state:
            self._closing = True
            self._state.notify_all()
        super().server_close()
        if self.net is not None:
            self.net.stop()
        self.rest_pool.close()
        self.admin_pool.close()


# ---------------------------------------------------------------------------------------
# Requests


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _Handler(StandInHandler):
    server: SupabaseStandIn
    server_version = "devstack-supabase/1"

    # -- plumbing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise _BadRequest(400, "invalid Content-Length") from None
            if n < 0 or n > MAX_BODY:
                self.close_connection = True
                raise _BadRequest(413, "request body too large")
            return self.rfile.read(n) if n else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                try:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    self.close_connection = True
                    raise _BadRequest(400, "bad chunked body") from None
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    raise _BadRequest(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _send(self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        send_body = self.command != "HEAD" and status not in (204, 304)
        self.wfile.write(head + (body if send_body else b""))
        if self.server.verbose:
            log.info("%s %s -> %d", self.command, self.path, status)

    def _json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = (),
              content_type: str = "application/json") -> None:
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        extra = [("Content-Type", content_type)] if payload is not None else []
        self._send(status, body, [*extra, *headers])

    def _reply(self, response: Response) -> None:
        self._send(response.status, response.body, response.headers)

    # -- methods ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PATCH = do_DELETE = do_PUT = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, split.query
        try:
            body = self._read_body()  # always drained, so a keep-alive connection stays in step
        except _BadRequest as exc:
            self._json(exc.status, {"message": str(exc)})
            return
        try:
            if path.startswith("/__devstack/"):
                self._admin(path, body)
            elif path == "/rest/v1" or path.startswith("/rest/v1/"):
                self._rest(path[len("/rest/v1"):], query, body)
            elif path == "/auth/v1" or path.startswith("/auth/v1/"):
                self._auth(path[len("/auth/v1"):], query, body)
            else:
                self._json(404, {"message": "no Route matched with those values"})
        except Exception as exc:  # a bug here must still answer, and keep the server up
            log.exception("supabase stand-in: %s %s failed", self.command, self.path)
            self.close_connection = True
            self._json(500, {"code": "PGRSTX00", "message": f"devstack stand-in error: {exc}",
                             "details": None, "hint": None})

    # -- gateway ---------------------------------------------------------------------------

    def _apikey_role(self, query: str) -> str | None:
        """`anon` / `service_role` for a valid apikey; None after answering 401 like Supabase's gateway."""
        key = self.headers.get("apikey")
        if key is None:
            key = next((v for k, v in parse_qsl(query) if k == "apikey"), None)
        if key is None:
            self._json(401, {"message": "No API key found in request",
                             "hint": "No `apikey` request header or url param was found."})
            return None
        if hmac.compare_digest(key.encode(), self.server.anon_key.encode()):
            return "anon"
        if hmac.compare_digest(key.encode(), self.server.service_role_key.encode()):
            return "service_role"
        self._json(401, {"message": "Invalid API key",
                         "hint": "Double check your Supabase `anon` or `service_role` API key."})
        return None

    def _identity(self, apikey_role: str) -> tuple[str, dict[str, Any]]:
        """PostgREST's role and claims for this request (raises ApiError 401 for a bad JWT)."""
        authorization = self.headers.get("Authorization")
        if authorization is None:
            return apikey_role, {"role": apikey_role}
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return apikey_role, {"role": apikey_role}
        token = token.strip()
        srv = self.server
        if hmac.compare_digest(token.encode(), srv.anon_key.encode()):
            return "anon", {"role": "anon"}
        if hmac.compare_digest(token.encode(), srv.service_role_key.encode()):
            return "service_role", {"role": "service_role"}
        try:
            claims = srv.auth.verify(token)
        except TokenError as exc:
            raise ApiError(401, exc.code, exc.message, headers=[
                ("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{exc.message}"')
            ]) from None
        role = claims.get("role")
        return (role if isinstance(role, str) and role else "anon"), claims

    # -- /rest/v1 ---------------------------------------------------------------------------

    def _rest(self, subpath: str, query: str, body: bytes) -> None:
        srv = self.server
        apikey_role = self._apikey_role(query)
        if apikey_role is None:
            return
        if srv.delay_ms > 0:
            srv._pause(srv.delay_ms / 1000.0)
        if srv.mode == "hang" and srv._hang():
            self._reply(ApiError(504, "PGRST003", "Timed out acquiring connection from connection pool.").response())
            return
        if srv.mode == "down":
            self._reply(ApiError(503, "PGRST001", "Database client error. Retrying the connection.",
                                 details="devstack drill: the stand-in is in mode 'down'").response())
            return
        try:
            role, claims = self._identity(apikey_role)
        except ApiError as exc:
            self._reply(exc.response())
            return
        request = RestRequest(self.command, subpath, query, self.headers, body, role, claims)
        self._reply(srv.rest.handle(request))

    # -- /auth/v1 ---------------------------------------------------------------------------

    def _auth(self, subpath: str, query: str, body: bytes) -> None:
        srv = self.server
        route = (self.command, subpath.rstrip("/") or "/")
        if route in (("GET", "/.well-known/jwks.json"), ("HEAD", "/.well-known/jwks.json")):
            self._json(200, srv.jwks(), [("Cache-Control", "public, max-age=600")])
            return
        if route[1] == "/health":
            self._json(200, {"version": "devstack", "name": "GoTrue",
                             "description": "devstack stand-in for Supabase Auth"})
            return
        if self._apikey_role(query) is None:
            return
        if srv.mode == "hang" and srv._hang():
            self._json(504, {"code": "request_timeout", "error_code": "request_timeout",
                             "msg": "Processing this request timed out, please retry after a moment."})
            return
        if srv.mode == "down":
            self._json(503, {"code": "unexpected_failure", "error_code": "unexpected_failure",
                             "msg": "Database error (devstack drill: mode 'down')"})
            return
        srv._count("auth")
        params = dict(parse_qsl(query))
        try:
            if route == ("POST", "/token"):
                try:
                    data = json.loads(body or b"null")
                except ValueError:
                    data = None
                result = srv.auth.token(params.get("grant_type"), data)
            elif route == ("GET", "/user"):
                result = srv.auth.user(self.headers.get("Authorization"))
            elif route == ("POST", "/logout"):
                result = srv.auth.logout(self.headers.get("Authorization"))
            else:
                result = AuthResult(404, {"code": "not_found", "error_code": "not_found",
                                          "msg": f"{self.command} /auth/v1{subpath} is not supported by the "
                                                 "devstack Supabase stand-in"})
        except (psycopg.Error, DatabaseUnreachable, PoolExhausted) as exc:
            log.warning("supabase stand-in: auth database error: %s", exc)
            result = AuthResult(500, {"code": "unexpected_failure", "error_code": "unexpected_failure",
                                      "msg": "Database error querying schema"})
        self._json(result.status, result.body, result.headers)

    # -- /__devstack -------------------------------------------------------------------------

    def _admin(self, path: str, body: bytes) -> None:
        if not _is_loopback(self.client_address[0]):
            self._json(403, {"error": "devstack endpoints answer loopback clients only"})
            return
        status, payload = self.server.admin(self.command, path, body)
        self._json(status, payload)


# ---------------------------------------------------------------------------------------
# Factories and CLI


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, dsn: str,
                anon_key: str = DEFAULT_ANON_KEY, service_role_key: str = DEFAULT_SERVICE_ROLE_KEY,
                signing_key: Any = None, public_url: str | None = None, **kwargs: Any) -> SupabaseStandIn:
    """Bind the stand-in (``port=0``: any free port, see ``server.url``); call ``serve_forever()`` on it.

    `dsn` must reach the database as a role that reads ``auth.users`` (the cluster superuser);
    /rest/v1 logs in as ``authenticator`` on the same database when it exists. `signing_key`:
    a SigningKey, an EC P-256 private key or its PEM; None generates one. `public_url`: the
    base URL clients use (the tokens' ``iss`` is ``{public_url}/auth/v1``); default the bound
    address. Extra keywords: ``delay_ms``, ``pool_size``, ``verbose``.
    """
    return SupabaseStandIn((host, port), dsn=dsn, anon_key=anon_key, service_role_key=service_role_key,
                           signing_key=signing_key, public_url=public_url, **kwargs)


def serve_in_thread(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: Any
                    ) -> tuple[SupabaseStandIn, threading.Thread]:
    """``make_server(...)`` serving in a daemon thread. Stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"supabase-standin:{server.server_address[1]}", daemon=True)
    thread.start()
    return server, thread


def _load_or_create_key(path: Path) -> SigningKey:
    if path.exists():
        return SigningKey.from_pem(path.read_bytes())
    key = SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.pem())
    path.chmod(0o600)
    return key


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m devstack.supabase",
                                description="Local Supabase stand-in (PostgREST + GoTrue subset) over PostgreSQL.")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=int(env("DEVSTACK_SUPABASE_PORT", DEFAULT_PORT)))
    p.add_argument("--dsn", default=env("DEVSTACK_SUPABASE_DSN"),
                   help="libpq URL of the database, as its superuser (env DEVSTACK_SUPABASE_DSN)")
    p.add_argument("--anon-key", default=env("SUPABASE_ANON_KEY", DEFAULT_ANON_KEY))
    p.add_argument("--service-role-key", default=env("SUPABASE_SERVICE_ROLE_KEY", DEFAULT_SERVICE_ROLE_KEY))
    p.add_argument("--public-url", default=None, help="base URL clients use (default http://HOST:PORT)")
    p.add_argument("--signing-key", type=Path, default=None,
                   help="PEM file of the EC P-256 signing key; created if missing (tokens survive restarts)")
    p.add_argument("--delay-ms", type=float, default=None, help="default: env DEVSTACK_DB_DELAY_MS or 0")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    if not args.dsn:
        p.error("--dsn (or DEVSTACK_SUPABASE_DSN) is required")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    key = _load_or_create_key(args.signing_key) if args.signing_key else None
    server = make_server(args.host, args.port, dsn=args.dsn, anon_key=args.anon_key,
                         service_role_key=args.service_role_key, signing_key=key, public_url=args.public_url,
                         delay_ms=args.delay_ms, verbose=args.verbose)
    print(f"supabase stand-in: {server.url} (REST {server.rest_url}, auth {server.auth_url}); "
          f"apikey {args.anon_key}", flush=True)
    return serve_until_stopped(server)


if __name__ == "__main__":
    sys.exit(main())
