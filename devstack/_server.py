"""What the Upstash and Supabase stand-ins share: a keep-alive HTTP server that takes a burst of
connections, tracks its open sockets, and closes them all when it stops."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandInServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose `server_close()` also ends its keep-alive connections."""

    # A burst of 100 clients overflows the default listen backlog of 5: dropped connects look
    # like an outage to lib (0.3 s connect timeout), so accept a burst as a cloud service would.
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False  # keep-alive clients must not block server_close()
    allow_reuse_address = True
    log = logging.getLogger("devstack")
    verbose = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._live_lock:
            (self._live.add if alive else self._live.discard)(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away mid-request
            return
        self.log.exception("error while serving %s", client_address)

    def server_close(self) -> None:
        super().server_close()
        with self._live_lock:
            live = list(self._live)
        for sock in live:  # wake keep-alive handler threads so they end
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class StandInHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive without Nagle's 40 ms stall; registers its socket with the server."""

    server: StandInServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms Nagle/delayed-ACK stall on small answers

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            self.server.log.info("%s %s", self.address_string(), format % args)


def serve_until_stopped(server: ThreadingHTTPServer) -> int:
    """A stand-in's command line: serve until Ctrl-C or SIGTERM, then close; the exit status."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
