"""The Dakar host: every api/ handler in one long-lived service, as Vercel's launcher composes them.

Why this server and not gunicorn: each api/ file's `handler` is a `BaseHTTPRequestHandler` that
reads the request and writes the raw HTTP answer itself; Vercel's Python launcher (vercel-runtime,
`vc_init.py`) serves it by composing `class Handler(BaseHandler, handler)` on a stdlib
`ThreadingHTTPServer`. A WSGI server would need a bridge faking a socket for every request,
and the handlers would no longer run the way production runs them. So the host is that same
composition, with what a launcher on a server must add:

- one route table for every file in api/ (host/routes), static public/ at the root, 404 and
  405 in the contract's shape;
- several worker processes (forked after the handlers are imported) accepting on one shared
  listening socket, each with threads, at most `valkey.MAX_CONNECTIONS` requests at once (the
  size of its Valkey pool, so a request never waits for a connection);
- HTTP/1.1 keep-alive; a connection idle for `IDLE_TIMEOUT` is closed (longer than the reverse
  proxy's own idle timeout, so the proxy never reuses a connection the host is closing);
- the body read here, at most lib/web/http.MAX_BODY_BYTES (the handler answers 413 past it), so
  a body a handler did not read can never be taken for the next request on the connection;
- the client address from `X-Forwarded-For` only from TRUSTED_PROXIES (host/proxy);
- SIGTERM: stop accepting, let every request in flight finish and answer, close idle
  connections, write the metrics the process holds, exit.

Every request still writes lib/web/http's JSON log line; the host adds its own lines (in the same
shape) for what it answers itself and for starting and stopping.
"""

from __future__ import annotations

import faulthandler
import io
import json
import mimetypes
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from host import proxy
from host.routes import ROOT, Routes
from lib import config
from lib.edge import valkey
from lib.errors import BadRequest, DousellError, MethodNotAllowed, NotFound
from lib.ops import recorder
from lib.web.http import MAX_BODY_BYTES, Endpoint, _log, _path_of

PUBLIC = ROOT / "public"
# Seconds a kept-alive connection may stay idle (and a client may take for one read). Longer than
# the proxy's own idle timeout (deploy/dakar: 60 s), or the proxy may reuse a connection the host is
# closing and answer 502.
IDLE_TIMEOUT = 75.0
GRACE = 25.0  # seconds the workers get to finish their requests after SIGTERM (systemd gives 30)
# Seconds a kept-alive connection may still send one last request after SIGTERM (answered with
# `Connection: close`) before it is closed as idle: a busy client's next request is already on its
# way, and closing under it would leave that request unanswered.
LAST_CALL = 1.0
STATIC_METHODS = ["GET", "HEAD", "OPTIONS"]
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Connection(Endpoint):
    """One client connection. For each request, once its line and headers are read, the instance
    becomes (`__class__`) the composition `(Connection, route.handler)` and runs the handler's
    `do_<METHOD>`: BaseHTTPRequestHandler serves a whole connection from its constructor, so the
    handler class can only be chosen after the request line, where Vercel knows it in advance."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # An answer leaves in one write: its headers and body are buffered and flushed together at the
    # end of the request, and sent at once (no Nagle). Written in two small packets, the second one
    # waits for the client's delayed ACK, 40 ms on Linux, on every kept-alive request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: HostServer

    def setup(self) -> None:
        super().setup()
        self.server.opened(self)

    def end_headers(self) -> None:
        if self.server.stopping and not self.close_connection:
            self.send_header("Connection", "close")  # stopping: the client must not send another here
        super().end_headers()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self)

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        with self.server.serving(self):
            try:
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(414)
                    return
                if not self.parse_request():
                    return
                self._route()  # stopping: end_headers says `Connection: close`
            finally:
                try:
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

    # -- one request -------------------------------------------------------------------------

    def _route(self) -> None:
        self._believe_the_client_address()
        path = _path_of(self.path)
        if path is None:
            self._answer_error(BadRequest("Adresse de la requête illisible."))
            return
        route = self.server.routes.match(path)
        if route is None:
            if path == "/api" or path.startswith("/api/"):
                self._answer_error(NotFound(), path)
            else:
                self._static(path)
            return
        body = self._take_body()
        real = self.rfile
        if body is not None:
            self.rfile = io.BytesIO(body)
        else:
            self.close_connection = True  # a body the handler refuses unread: never the next request
        self.__class__ = self.server.composed[route.pattern]
        try:
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501)  # lib/web/http answers an unknown method 405 in the contract's shape
            else:
                method()
        finally:
            self.__class__ = Connection
            self.rfile = real

    def _take_body(self) -> bytes | None:
        """The body, read whole (b"" without one); None when the handler must see it unread and
        refuse it (chunked, a bad or doubled Content-Length, over MAX_BODY_BYTES)."""
        if self.headers.get("Transfer-Encoding"):
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return b""
        raw = values[0].strip()
        if len(values) > 1 or not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) > MAX_BODY_BYTES:
            return None
        length = int(raw)
        return self.rfile.read(length) if length else b""

    def _believe_the_client_address(self) -> None:
        """`X-Forwarded-For` becomes the one address the host believes (host/proxy), as on Vercel."""
        client = proxy.client_address(self.client_address[0], self.headers.get_all("X-Forwarded-For") or [],
                                      self.server.trusted)
        del self.headers["X-Forwarded-For"]
        del self.headers["X-Real-IP"]
        self.headers["X-Forwarded-For"] = client
        self.headers["X-Real-IP"] = client

    def _static(self, path: str) -> None:
        """A file of public/ (`/` is index.html), as Vercel serves the folder."""
        if self.command == "OPTIONS":
            self._answer(204, b"", {"Allow": ", ".join(STATIC_METHODS)}, path)
            return
        if self.command not in STATIC_METHODS:
            self._answer_error(MethodNotAllowed(STATIC_METHODS), path)
            return
        relative = "index.html" if path == "/" else unquote(path).lstrip("/")
        file = (PUBLIC / relative).resolve()
        if not file.is_relative_to(PUBLIC) or not file.is_file():
            self._answer_error(NotFound(), path)
            return
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        self._answer(200, file.read_bytes(), {"Content-Type": kind,
                                              "Cache-Control": "public, max-age=0, must-revalidate"}, path)

    def _answer_error(self, err: DousellError, path: str = "-") -> None:
        body = json.dumps(err.to_body(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.close_connection = self.close_connection or self.command not in ("GET", "HEAD", "OPTIONS")
        self._answer(err.status, body, {**err.headers, "Content-Type": "application/json; charset=utf-8",
                                        "Cache-Control": "no-store"}, path, err.code)

    def _answer(self, status: int, body: bytes, headers: dict[str, str], path: str, code: str | None = None) -> None:
        record: dict[str, Any] = {"level": "info", "method": self.command, "path": path, "status": status}
        if code:
            record["code"] = code
        _log(record)
        try:
            self.send_response(status)
            for name, value in {**headers, "X-Content-Type-Options": "nosniff",
                                "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class HostServer(ThreadingHTTPServer):
    """One worker's server on the shared listening socket. Request threads are joined on close:
    the requests in flight finish before the process exits."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, listener: socket.socket, routes: Routes, trusted: tuple[proxy.Network, ...]) -> None:
        super().__init__(listener.getsockname()[:2], Connection, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_name, self.server_port = "dousell", listener.getsockname()[1]
        self.routes, self.trusted = routes, trusted
        self.composed = {r.pattern: type(f"Served_{i}", (Connection, r.handler), {"__module__": __name__})
                         for i, r in enumerate(routes.routes)}
        self.stopping = False
        self._slots = threading.BoundedSemaphore(valkey.MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._connections: dict[Connection, bool] = {}  # → busy with a request

    def opened(self, conn: Connection) -> None:
        with self._lock:
            self._connections[conn] = False

    def closed(self, conn: Connection) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    @contextmanager
    def serving(self, conn: Connection) -> Iterator[None]:
        """A request in flight on `conn`: counted against the process's slots, never cut by `stop`."""
        with self._lock:
            self._connections[conn] = True
        try:
            with self._slots:
                yield
        finally:
            with self._lock:
                if conn in self._connections:
                    self._connections[conn] = False

    def stop(self) -> None:
        """Graceful: accept nothing more, let kept-alive connections send a last request (LAST_CALL),
        close the idle ones, wait for the requests in flight."""
        self.stopping = True
        self.shutdown()  # the accept loop ends
        self.socket.close()  # this worker's copy: once every process closed it, a connect is refused
        deadline = time.monotonic() + LAST_CALL
        while True:
            with self._lock:
                idle = [c for c, busy in self._connections.items() if not busy]
            if not idle or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for conn in idle:  # waiting for a next request that will not come: end the wait now
            try:
                conn.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self.server_close()  # joins every request thread


# -- processes ----------------------------------------------------------------------------------


def _event(event: str, **fields: Any) -> None:
    _log({"level": "info", "event": event, "pid": os.getpid(), **fields})


def _worker(listener: socket.socket, routes: Routes, trusted: tuple[proxy.Network, ...]) -> None:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <worker>`: every thread's stack to the log
    server = HostServer(listener, routes, trusted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept")
    thread.start()  # its threads inherit the blocked STOP_SIGNALS: only the wait below takes them
    signal.sigwait(STOP_SIGNALS)
    started = time.monotonic()
    server.stop()
    thread.join()
    try:
        recorder.flush(force=True)  # what this process counted and has not written yet
    except Exception as exc:  # noqa: BLE001 (the metrics are best effort; the process must still exit)
        _event("metrics-not-written", error=type(exc).__name__)
    _event("worker-stopped", drained_ms=round((time.monotonic() - started) * 1000))


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=1024)
    # Every worker is woken for each connection and one gets it: the others' accept() must fail
    # at once (skipped by socketserver), not block until the next connection, or past a stop.
    listener.setblocking(False)
    return listener


def serve(host: str, port: int, workers: int) -> int:
    """Run the host until SIGTERM or SIGINT; the process's exit status."""
    # Blocked before anything starts and taken with sigtimedwait, never by a Python handler: a
    # handler that sets a threading.Event deadlocks the thread it interrupts when that thread is
    # inside the same Event's wait (its lock is not reentrant), and the host then never exits. The
    # workers inherit the mask, so a SIGTERM that reaches one before it is ready waits for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: the master's stack to the log, as a worker's
    trusted = proxy.networks(config.trusted_proxies())  # a bad entry stops the start, named
    routes = Routes.load()  # imported once, before forking: every worker shares them
    listener = listen(host, port)

    def fork() -> int:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _worker(listener, routes, trusted)
            except BaseException:  # noqa: BLE001 (a worker never returns into the master's code)
                code = 1
            finally:
                os._exit(code)
        return pid

    children = {fork() for _ in range(workers)}
    _event("host-started", address=f"{host}:{listener.getsockname()[1]}", workers=workers,
           environment=config.environment(), redis="valkey-tcp" if config.valkey_url() else "upstash-rest",
           # Empty behind a proxy: every client is counted as the proxy's address (one rate-limit bucket).
           trusted_proxies=[str(net) for net in trusted])
    while signal.sigtimedwait(STOP_SIGNALS, 0.2) is None:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid and pid in children:
            children.discard(pid)
            _event("worker-died", worker=pid, status=status)
            children.add(fork())
    listener.close()
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while children and time.monotonic() < deadline:
        for pid in list(children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
        time.sleep(0.05)
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    _event("host-stopped", killed=len(children))
    return 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
