"""Our own Redis for the local stack: a real ``redis-server``, or an embedded one.

``RedisServer(port, state_dir).start()`` runs ``redis-server`` on loopback with
persistence off, ``maxmemory 100mb`` / ``allkeys-lru`` (Upstash-like), and its
pidfile, logfile and working dir inside ``state_dir``. When no ``redis-server``
binary is installed it falls back to fakeredis (Lua through lupa) listening on
the same host and port; ``server.kind`` / ``server.embedded`` and a log line
say which one runs. ``stop()`` then ``start()`` reuses the same port, so the
Upstash stand-in in front of it reconnects by itself.

Command line (what ``make redis-start`` / ``make redis-stop`` can call)::

    python -m devstack.redis_server start  --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server stop   --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server status --port 6379 --state-dir .devstack/redis
    python -m devstack.redis_server serve  --port 6379 --state-dir .devstack/redis

``start`` returns once Redis answers PING and leaves it running in the
background; ``serve`` runs in the foreground until SIGINT/SIGTERM. Add
``--embedded`` to force fakeredis. ``stop`` works from any process: SHUTDOWN
NOSAVE, else SIGTERM to the pid in the pidfile, then waits until it is gone.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

log = logging.getLogger("devstack.redis")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
PIDFILE = "redis.pid"
LOGFILE = "redis.log"

Kind = Literal["redis-server", "fakeredis"]

__all__ = [
    "RedisServer",
    "find_redis_server",
    "free_port",
    "main",
    "ping",
]


# redis-server processes started (and not detached) by this process: stopped at
# interpreter exit, so a crashed test run or script leaves no Redis behind.
_owned: set[RedisServer] = set()


@atexit.register
def _stop_owned() -> None:
    for server in list(_owned):
        try:
            server.stop(timeout=2.0)
        except (
            OSError,
            RuntimeError,
            subprocess.SubprocessError,
        ) as exc:  # best effort
            log.warning("redis: could not stop %s at exit: %s", server.describe(), exc)


def find_redis_server() -> str | None:
    """Path of the ``redis-server`` binary (``$REDIS_SERVER`` first), or None."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (for tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _command(host: str, port: int, *args: str, timeout: float = 0.5) -> bytes | None:
    """Send one RESP command on a fresh socket; return the first reply line, or
    None when nothing answers (refused, reset, timeout)."""
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


def ping(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 0.5
) -> bool:
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
    return b"redis-server" in cmdline or b"devstack.redis_server" in cmdline


class RedisServer:
    """One Redis on ``host:port`` with its state in ``state_dir``.

    ``embedded=None`` picks ``redis-server`` when installed, fakeredis otherwise;
    ``True`` forces fakeredis, ``False`` requires the binary. The embedded server
    runs in a thread of this process.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        state_dir: str | os.PathLike[str] = ".devstack/redis",
        *,
        host: str = DEFAULT_HOST,
        binary: str | None = None,
        embedded: bool | None = None,
        maxmemory: str = "100mb",
        maxmemory_policy: str = "allkeys-lru",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = int(port)
        self.state_dir = Path(state_dir)
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.extra_args = tuple(extra_args)
        if embedded is None:
            self.binary = binary or find_redis_server()
            self.embedded = self.binary is None
        elif embedded:
            self.binary, self.embedded = None, True
        else:
            self.binary = binary or find_redis_server()
            if self.binary is None:
                raise FileNotFoundError(
                    "redis-server is not installed (embedded=False)"
                )
            self.embedded = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._fake: object = None  # fakeredis.TcpFakeServer
        self._fake_thread: threading.Thread | None = None

    # -- facts -------------------------------------------------------------
    @property
    def kind(self) -> Kind:
        return "fakeredis" if self.embedded else "redis-server"

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
        if self._fake is not None:
            return os.getpid()
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ping(self, timeout: float = 0.5) -> bool:
        return ping(self.host, self.port, timeout)

    def is_running(self) -> bool:
        """True when our Redis answers PING on its port."""
        if self._proc is not None and self._proc.poll() is not None:
            return False
        if self._fake_thread is not None and not self._fake_thread.is_alive():
            return False
        return self.ping()

    def describe(self) -> str:
        if self.embedded:
            return f"embedded fakeredis (Lua via lupa) on {self.host}:{self.port}"
        return f"redis-server ({self.binary}) on {self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"RedisServer({self.describe()}, state_dir={str(self.state_dir)!r})"

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait (until ``timeout``) for PING. Idempotent when ours runs."""
        if self._proc is not None or self._fake is not None:
            if self.is_running():
                return self
            self._reap()
        if self.ping():
            raise RuntimeError(
                f"something already answers on {self.host}:{self.port}; "
                "stop it first (python -m devstack.redis_server stop) or choose another port"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            self._start_fake()
        else:
            self._start_binary()
        self._wait_ready(timeout)
        log.info("redis: using %s", self.describe())
        return self

    def _command_line(self) -> list[str]:
        assert self.binary is not None
        d = self.state_dir.resolve()
        return [
            self.binary,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
            "--pidfile",
            str(d / PIDFILE),
            "--logfile",
            str(d / LOGFILE),
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            self.maxmemory_policy,
            *self.extra_args,
        ]

    def _start_binary(self) -> None:
        self._proc = subprocess.Popen(
            self._command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.state_dir,
            start_new_session=True,  # a Ctrl-C in a terminal is the orchestrator's to handle
        )
        _owned.add(self)

    def detach(self) -> None:
        """Leave the redis-server running after this process exits (``stop()``
        from any process still finds it through the port and the pidfile)."""
        self._proc = None
        _owned.discard(self)

    def _start_fake(self) -> None:
        try:
            from fakeredis import TcpFakeServer
        except ImportError as exc:  # pragma: no cover - fakeredis is a dev dependency
            raise RuntimeError(
                "no redis-server binary and fakeredis is not installed"
            ) from exc
        try:
            import lupa  # noqa: F401
        except ImportError:
            log.warning("redis: lupa is missing, EVAL will fail on the embedded Redis")
        fake = TcpFakeServer(
            (self.host, self.port), server_type="redis", server_version=(7, 0)
        )
        thread = threading.Thread(
            target=fake.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakeredis:{self.port}",
            daemon=True,
        )
        thread.start()
        self._fake, self._fake_thread = fake, thread
        self.pidfile.write_text(f"{os.getpid()}\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                _owned.discard(self)
                raise RuntimeError(
                    f"redis-server exited with {code} while starting:\n{self._log_tail()}"
                )
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
            return "\n".join(
                self.logfile.read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Redis (ours, or whatever the pidfile names): SHUTDOWN NOSAVE,
        else SIGTERM, then SIGKILL at the deadline. No-op when not running."""
        deadline = time.monotonic() + timeout
        if self._fake is not None:
            self._stop_fake()
            return
        pid = self.pid
        if (
            self._proc is None
            and (pid is None or not _pid_alive(pid))
            and not self.ping()
        ):
            return
        reply = _command(self.host, self.port, "SHUTDOWN", "NOSAVE", timeout=1.0)
        # A real redis-server closes the connection without a reply.
        if (
            reply is not None
            and pid is not None
            and _pid_alive(pid)
            and _looks_like_redis(pid)
        ):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        stopped = self._wait_stopped(pid, deadline)
        if (
            not stopped
            and pid is not None
            and _pid_alive(pid)
            and _looks_like_redis(pid)
        ):
            log.warning("redis: pid %s ignored SHUTDOWN/SIGTERM, killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_stopped(pid, time.monotonic() + 2.0)
        self._reap()
        if self.ping():
            raise RuntimeError(
                f"Redis on {self.host}:{self.port} is still answering after stop()"
            )

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
        if self._fake is not None:
            self._stop_fake()

    def _stop_fake(self) -> None:
        fake, thread = self._fake, self._fake_thread
        self._fake = self._fake_thread = None
        if fake is not None:
            fake.shutdown()  # type: ignore[attr-defined]  # stops serve_forever and the client loops
            fake.server_close()  # type: ignore[attr-defined]
        if thread is not None:
            thread.join(timeout=5.0)
        try:
            if self.pidfile.read_text().strip() == str(os.getpid()):
                self.pidfile.unlink()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line -------------------------------------------------------------


def _spawn_detached(args: argparse.Namespace) -> int:
    """``start``: leave a Redis running in the background, return once it answers."""
    server = RedisServer(
        args.port, args.state_dir, host=args.host, embedded=args.embedded or None
    )
    if server.ping():
        print(f"redis: already running on {args.host}:{args.port}")
        return 0
    if server.embedded:
        # fakeredis lives in a process of its own so it outlives this command.
        server.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "devstack.redis_server",
            "serve",
            "--embedded",
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--state-dir",
            str(args.state_dir),
        ]
        with open(server.logfile, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        deadline = time.monotonic() + args.timeout
        while not server.ping(timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(
                    f"redis: embedded Redis failed to start, see {server.logfile}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.02)
    else:
        server.start(timeout=args.timeout)
        server.detach()  # leave it running after we exit
    print(f"redis: started {server.describe()} (state in {server.state_dir})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    server = RedisServer(
        args.port, args.state_dir, host=args.host, embedded=args.embedded or None
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start(timeout=args.timeout)
    print(f"redis: serving {server.describe()}", flush=True)
    try:
        while not stop.wait(0.5):
            if not server.is_running():
                print("redis: the server went away", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.redis_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status", "serve"])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("REDIS_PORT", DEFAULT_PORT))
    )
    parser.add_argument(
        "--state-dir", default=os.environ.get("REDIS_STATE_DIR", ".devstack/redis")
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="use fakeredis even if redis-server is installed",
    )
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.action == "start":
        return _spawn_detached(args)
    if args.action == "serve":
        return _serve(args)
    server = RedisServer(
        args.port, args.state_dir, host=args.host, embedded=args.embedded or None
    )
    if args.action == "stop":
        running = server.ping()
        server.stop(timeout=args.timeout)
        print(
            f"redis: {'stopped' if running else 'was not running'} on {args.host}:{args.port}"
        )
        return 0
    up = server.ping()
    print(f"redis: {'up' if up else 'down'} on {args.host}:{args.port}")
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
