"""A throwaway PostgreSQL 15 cluster for the test suite and the local stack.

    cluster = Cluster.start(Path("/tmp/dousell-pg"), free_port())   # or Cluster.start_temporary()
    cluster.create_template()                      # bootstrap + migrations + seed, once
    cluster.create_database("t1", template=TEMPLATE_DB)
    psycopg.connect(cluster.dsn("t1"))
    cluster.stop(remove=True)

The cluster listens on 127.0.0.1 only, with `trust` authentication (any local user may
connect as any role, e.g. `postgres` or `authenticator`): a development and test tool,
never a server. Durability is switched off (fsync, full_page_writes, synchronous_commit)
because a crash only costs a throwaway database.

PostgreSQL refuses to run as root. When this process is root, the server binaries run as
the `postgres` system user (`runuser -u postgres -- ...`) on a data folder chowned to it,
so that folder must sit where that user can reach it (e.g. under /tmp, not under a
0700 home or pytest's private temp root).

`Cluster.running(datadir)` tells whether a data folder already has a live server (the
local stack's "is it already up?"); `Cluster.start` on such a folder returns it as is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql

__all__ = [
    "BOOTSTRAP_SQL",
    "MIGRATIONS_DIR",
    "REPO_ROOT",
    "SEED_SQL",
    "TEMPLATE_DB",
    "Cluster",
    "ClusterError",
    "SchemaError",
    "apply_schema",
    "free_port",
    "pg_bin_dir",
    "schema_files",
    "schema_fingerprint",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_SQL = REPO_ROOT / "devstack" / "sql" / "bootstrap.sql"
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"
SEED_SQL = REPO_ROOT / "supabase" / "seed.sql"

#: Name of the database `Cluster.create_template` builds by default.
TEMPLATE_DB = "dousell_template"

#: Where Debian puts PostgreSQL 15; `PG_BINDIR` overrides it.
DEFAULT_PG_BINDIR = "/usr/lib/postgresql/15/bin"

#: The system user the server runs as when we are root.
PG_SYSTEM_USER = "postgres"

#: The superuser initdb creates, whatever the OS user (so DSNs do not depend on who runs us).
SUPERUSER = "postgres"

HOST = "127.0.0.1"

# The server's settings, written to an included file at every start so a new port or a
# new setting applies to an existing data folder too.
_CONF_NAME = "dousell.conf"
_CONF_TEMPLATE = """\
# Written by devstack/postgres.py at every start; edits are overwritten.
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
log_min_messages = warning
"""
# A unix socket path longer than this (sun_path is 108 bytes) stops the server from starting.
_MAX_SOCKET_PATH = 100


class ClusterError(RuntimeError):
    """The cluster could not be created, started, reached or stopped."""


class SchemaError(RuntimeError):
    """An SQL file of the schema failed; the message names the file and the line."""

    def __init__(self, path: Path, message: str, line: int | None = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


def pg_bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: `PG_BINDIR`, Debian's PostgreSQL 15, else
    the newest Debian/Ubuntu PostgreSQL installed (GitHub's runners ship 16)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    if Path(DEFAULT_PG_BINDIR, "initdb").exists():
        return Path(DEFAULT_PG_BINDIR)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else Path(DEFAULT_PG_BINDIR)


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's pick; racy by nature, but rarely lost)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _is_root() -> bool:
    return os.geteuid() == 0


def _run(args: Sequence[str | os.PathLike[str]], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as the user allowed to run it (see the module docstring)."""
    cmd = [str(a) for a in args]
    if _is_root():
        cmd = ["runuser", "-u", PG_SYSTEM_USER, "--", *cmd]
    # cwd="/": the postgres user may not be allowed into our working directory.
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout, check=False)


def _tool(name: str) -> Path:
    path = pg_bin_dir() / name
    if not path.exists():
        raise ClusterError(f"{path} not found: install PostgreSQL 15 or set PG_BINDIR")
    return path


def _prepare_datadir(datadir: Path) -> None:
    """Create the data folder and hand it to the user the server runs as."""
    datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _is_root():
        return
    shutil.chown(datadir, PG_SYSTEM_USER, PG_SYSTEM_USER)
    datadir.chmod(0o700)
    # Every ancestor must be traversable by the postgres user, which root's private temp
    # folders are not; say so plainly rather than let initdb fail obscurely.
    probe = _run(["test", "-w", datadir], timeout=10)
    if probe.returncode != 0:
        raise ClusterError(
            f"the {PG_SYSTEM_USER!r} user cannot write {datadir}: put the cluster under a folder "
            "every user can traverse, or use Cluster.start_temporary()"
        )


def _default_temp_parent() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None  # tempfile's default


def _read_pidfile(datadir: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid, or None when there is no such file."""
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        return int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None  # being written right now, or garbage: treat as absent


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


@dataclass(frozen=True)
class Cluster:
    """A running PostgreSQL server: its data folder and TCP port on 127.0.0.1."""

    datadir: Path
    port: int
    host: str = HOST

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def start(cls, datadir: Path, port: int | None = None, *, timeout: float = 30.0) -> Cluster:
        """Start a cluster in `datadir` (initdb first when the folder holds none) and wait until it answers.

        A folder whose server already runs is returned as is; asking for another port
        then is an error. `port=None` picks a free one (new folders) or keeps the running one.
        """
        datadir = Path(datadir).absolute()
        running = cls.running(datadir)
        if running is not None:
            if port is not None and running.port != port:
                raise ClusterError(f"{datadir} already runs on port {running.port}, not {port}")
            running.wait_ready(timeout=timeout)
            return running
        if port is None:
            port = free_port()
        if not (datadir / "PG_VERSION").exists():
            cls._initdb(datadir, timeout=timeout)
        cluster = cls(datadir, port)
        cluster._write_conf()
        deadline = time.monotonic() + timeout
        result = _run(
            [_tool("pg_ctl"), "start", "-D", datadir, "-l", datadir / "postgres.log", "-w", "-t", str(int(timeout)), "-s"],
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            raise ClusterError(f"pg_ctl start failed ({result.returncode}): {result.stderr.strip()}\n{cluster.log_tail()}")
        cluster.wait_ready(timeout=max(deadline - time.monotonic(), 1.0))
        return cluster

    @classmethod
    def start_temporary(cls, port: int | None = None, *, parent: Path | None = None, timeout: float = 30.0) -> Cluster:
        """Start a brand-new cluster in a fresh folder; `stop(remove=True)` deletes it all.

        The folder goes under `parent`, by default /dev/shm when it is a writable tmpfs
        (copying a database there takes ~10 ms against ~250 ms on disk), else the system
        temp dir.
        """
        if parent is None:
            parent = _default_temp_parent()
        # The folder itself is the data folder: mkdtemp makes it empty and private, and
        # _prepare_datadir hands it to the postgres user when we are root.
        datadir = Path(tempfile.mkdtemp(prefix="dousell-pg-", dir=parent))
        try:
            return cls.start(datadir, port, timeout=timeout)
        except BaseException:
            cls(datadir, port or 0).stop(remove=True)  # nothing of a failed start may linger
            raise

    @staticmethod
    def _initdb(datadir: Path, *, timeout: float) -> None:
        _prepare_datadir(datadir)
        base = [_tool("initdb"), "-D", datadir, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
        # C.UTF-8 so lower()/upper() know accented letters ("Thiès"); plain C only knows ASCII.
        result = _run([*base, "--locale=C.UTF-8"], timeout=timeout + 60)
        if result.returncode != 0:
            for leftover in datadir.iterdir():  # initdb may leave a half-made folder behind
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            result = _run([*base, "--no-locale"], timeout=timeout + 60)
        if result.returncode != 0:
            raise ClusterError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")

    def _write_conf(self) -> None:
        socket_dir = str(self.datadir) if len(str(self.datadir)) + 16 <= _MAX_SOCKET_PATH else ""
        path = self.datadir / _CONF_NAME
        path.write_text(_CONF_TEMPLATE.format(host=self.host, port=self.port, socket_dir=socket_dir), encoding="utf-8")
        if _is_root():
            shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)

    @classmethod
    def running(cls, datadir: Path) -> Cluster | None:
        """The live server of `datadir`, or None (no pid file, or a stale one left by a crash)."""
        datadir = Path(datadir).absolute()
        found = _read_pidfile(datadir)
        if found is None or not _pid_alive(found[0]):
            return None
        return cls(datadir, found[1])

    def is_running(self) -> bool:
        """Whether the server of this folder is alive (it may still be starting up)."""
        return Cluster.running(self.datadir) is not None

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Block until the server accepts a connection, or raise ClusterError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise ClusterError(f"PostgreSQL on port {self.port} not ready after {timeout:.0f} s: {last}\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, *, remove: bool = False, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown, immediate if that hangs); `remove=True` also deletes the data folder."""
        found = _read_pidfile(self.datadir)
        if found is not None and _pid_alive(found[0]):
            pg_ctl = _tool("pg_ctl")
            result = _run([pg_ctl, "stop", "-D", self.datadir, "-m", "fast", "-w", "-t", str(int(timeout)), "-s"], timeout=timeout + 10)
            if result.returncode != 0 and _pid_alive(found[0]):
                _run([pg_ctl, "stop", "-D", self.datadir, "-m", "immediate", "-w", "-t", "10", "-s"], timeout=20)
            if _pid_alive(found[0]):
                os.kill(found[0], signal.SIGKILL)  # last resort: this very postmaster, by its pid
        if remove:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        """As a context manager the cluster is throwaway: stopped and deleted on exit."""
        self.stop(remove=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for error messages."""
        try:
            text = (self.datadir / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- connections and databases -----------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq URL for `dbname` as `user` (no password: the cluster trusts local connections)."""
        quote = urllib.parse.quote
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER) -> psycopg.Connection:
        """An autocommit connection; close it (or use it as a context manager)."""
        return psycopg.connect(self.dsn(dbname, user), autocommit=True)

    def database_exists(self, name: str) -> bool:
        with self.connect() as conn:
            return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database `name`, empty or as a copy of `template`; returns its DSN.

        Copying a small template is a file copy (tens of milliseconds), which is what makes
        a fresh seeded database per test affordable.
        """
        query = sql.SQL("create database {}").format(sql.Identifier(name))
        if template is not None:
            # FILE_COPY beats the default WAL_LOG for small databases when fsync is off.
            query = sql.SQL("{} template {} strategy = file_copy").format(query, sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, disconnecting whoever is still on it (and un-marking a template)."""
        with self.connect() as conn:
            conn.execute("update pg_database set datistemplate = false where datname = %s", (name,))
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    def create_template(self, name: str = TEMPLATE_DB, *, seed: bool = True) -> str:
        """(Re)build `name` with the whole schema (and the seed), then freeze it as a template.

        Copies are made with `create_database(x, template=name)`. The template refuses
        connections, so nothing can dirty it or block a copy.
        """
        self.drop_database(name)
        self.create_database(name)
        apply_schema(self.dsn(name), seed=seed)
        with self.connect() as conn:
            conn.execute(sql.SQL("alter database {} with is_template true allow_connections false").format(sql.Identifier(name)))
        return name


# -- schema -----------------------------------------------------------------------------


def schema_files(*, seed: bool = True) -> list[Path]:
    """The SQL files that make a database, in order: Supabase stand-ins, migrations by name, seed."""
    files = [BOOTSTRAP_SQL, *sorted(MIGRATIONS_DIR.glob("*.sql"), key=lambda p: p.name)]
    if seed:
        files.append(SEED_SQL)
    return files


def schema_fingerprint(files: Iterable[Path] | None = None) -> str:
    """A digest of the schema files' names and contents: changes whenever a migration does."""
    digest = hashlib.sha256()
    for path in files if files is not None else schema_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def apply_schema(dsn: str, *, seed: bool = True, files: Sequence[Path] | None = None) -> None:
    """Run bootstrap.sql, every migration sorted by name, then (if `seed`) seed.sql against `dsn`.

    Each file runs in its own transaction, as the Supabase CLI does with migrations; the
    first failure raises SchemaError naming the file and line, and leaves that file undone.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files if files is not None else schema_files(seed=seed):
            text = path.read_text(encoding="utf-8")
            try:
                with conn.transaction():
                    # No parameters: psycopg sends the file as one simple query, several statements allowed.
                    conn.execute(text)
            except psycopg.Error as exc:
                raise SchemaError(path, _describe(exc), _error_line(text, exc)) from exc


def _error_line(text: str, exc: psycopg.Error) -> int | None:
    position = exc.diag.statement_position
    if not position:
        return None
    return text[: int(position)].count("\n") + 1


def _describe(exc: psycopg.Error) -> str:
    parts = [f"{exc.sqlstate or ''} {exc.diag.message_primary or exc}".strip()]
    for extra in (exc.diag.message_detail, exc.diag.message_hint, exc.diag.context):
        if extra:
            parts.append(extra.strip())
    return "\n".join(parts)
