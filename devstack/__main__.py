"""The local stack: real PostgreSQL and Valkey behind stand-ins for Supabase, Upstash and PayDunya, and `vercel dev`.

    python -m devstack up            # everything, API on http://127.0.0.1:3000 (make dev)
    python -m devstack up --no-api   # only the stand-ins (benchmarks, debugging)
    python -m devstack dakar         # the Dakar server: host/ on http://127.0.0.1:3100, Valkey over TCP (make dakar)
    python -m devstack stop          # stop a running stack (make stop)
    python -m devstack redis-stop    # drill: stop only the Redis behind the Upstash stand-in
    python -m devstack redis-start   # and start it again
    python -m devstack env           # print the variables handed to the functions

Ports and the state folder come from DEVSTACK_* variables (defaults: docs/api.md's), so the
test suite can run a second stack beside a developer's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack import warmup

REPO = Path(__file__).resolve().parent.parent
VERCEL_BIN = REPO / ".tools" / "node_modules" / ".bin" / "vercel"
VERCEL_CONFIG = REPO / "vercel.json"

ANON_KEY = "dev-anon-key"
SERVICE_ROLE_KEY = "dev-service-role-key"
UPSTASH_TOKEN = "dev-upstash-token"
METRICS_TOKEN = "dev-metrics-token"
DATABASE_WEBHOOK_SECRET = "dev-database-webhook-secret"  # issue 12: the webhook and the cron (docs/invalidation.md)
CRON_SECRET = "dev-cron-secret"
RATE_LIMIT_VARIABLES = ("RATE_LIMIT_WRITES_PER_MINUTE", "RATE_LIMIT_BAD_IPN_PER_MINUTE")
PAYDUNYA_KEYS = {
    "PAYDUNYA_MASTER_KEY": "dev-paydunya-master-key",
    "PAYDUNYA_PRIVATE_KEY": "test_private_dev-paydunya-private-key",
    "PAYDUNYA_TOKEN": "dev-paydunya-token",
}
DEMO_USERS = [
    ("owner", "awa.ndiaye@example.sn", "properties 123 and 789 (Dakar)"),
    ("owner", "ibrahima.fall@example.sn", "properties in Thiès, Saint-Louis, Mbour"),
    ("tenant", "moussa.diop@example.sn", "lease 123, 50 000 XOF a month"),
    ("tenant", "fatou.sarr@example.sn", "no lease"),
]
DEMO_PASSWORD = "dousell-demo"


@dataclass(frozen=True)
class Ports:
    api: int = 3000
    supabase: int = 54321
    upstash: int = 8079
    paydunya: int = 8089
    redis: int = 6390
    postgres: int = 54322
    dakar: int = 3100

    @classmethod
    def from_env(cls) -> Ports:
        defaults = cls()
        return cls(**{name: int(os.environ.get(f"DEVSTACK_{name.upper()}_PORT", getattr(defaults, name)))
                      for name in asdict(defaults)})


def state_dir() -> Path:
    return Path(os.environ.get("DEVSTACK_STATE", REPO / ".devstack")).absolute()


def function_env(ports: Ports) -> dict[str, str]:
    """What the functions see: every variable of docs/api.md, pointed at the stand-ins."""
    return {
        "UPSTASH_REDIS_REST_URL": f"http://127.0.0.1:{ports.upstash}",
        "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN,
        "SUPABASE_URL": f"http://127.0.0.1:{ports.supabase}",
        "SUPABASE_ANON_KEY": ANON_KEY,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
        **PAYDUNYA_KEYS,
        "PAYDUNYA_MODE": "test",
        "PAYDUNYA_BASE_URL": f"http://127.0.0.1:{ports.paydunya}/sandbox-api/v1",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports.api}",
        "CACHE_NAMESPACE": "dousell",
        "METRICS_TOKEN": METRICS_TOKEN,
        "DATABASE_WEBHOOK_SECRET": DATABASE_WEBHOOK_SECRET,
        "CRON_SECRET": CRON_SECRET,
        # The rate limits (lib/web/ratelimit): production's defaults unless the stack is started with them set.
        **{name: os.environ[name] for name in RATE_LIMIT_VARIABLES if os.environ.get(name, "").strip()},
    }


def dakar_env(ports: Ports, redis_url: str) -> dict[str, str]:
    """What the Dakar host sees: the same variables, but Valkey over TCP instead of Upstash (no Upstash
    variable at all: a call that still went over REST would fail) and its own address."""
    env = {name: value for name, value in function_env(ports).items() if not name.startswith("UPSTASH_")}
    return {**env, "VALKEY_URL": redis_url, "DOUSELL_DEPLOYMENT": "dakar",
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports.dakar}"}


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _wait_http(url: str, timeout: float, accept=lambda r: r.status_code < 500) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if accept(response):
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s: {last}")


def base_python() -> str:
    """The real interpreter this virtualenv was made from (not a pyenv or asdf shim)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def vercel_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `vercel dev` runs in: this virtualenv's tools (uv) first on PATH, then the
    interpreter it was made from.

    Vercel's builder runs `uv venv` without `--python` in dev, so uv looks on PATH for the
    `.python-version` it finds (3.12), skipping virtualenvs: behind a pyenv or asdf shim that
    another choice (PYENV_VERSION, ...) turns away, it tries to download one and, offline, every
    function fails. With the base interpreter right after the virtualenv, uv finds it on every run.
    (Not UV_PYTHON: it would also point the builder's `uv pip install` at the base interpreter.)
    """
    base = dict(os.environ if base is None else base)
    path = [str(Path(sys.executable).parent), str(Path(base_python()).parent), base.get("PATH", "")]
    return {**base, "PATH": os.pathsep.join(path), "VERCEL_TELEMETRY_DISABLED": "1", "NO_UPDATE_NOTIFIER": "1"}


def dev_config_for(ports: Ports) -> dict[str, Any]:
    """vercel.json as `vercel dev` can take it, with the stand-ins' addresses as the functions' env.

    `vercel dev` hands the functions only the config's `env` and .env files, not its own
    environment; and it refuses `functions.*.memory` / `maxDuration` (vercel/vercel#17620).
    Derived from vercel.json at each start, so the two cannot drift.
    """
    config = json.loads(VERCEL_CONFIG.read_text())
    for settings in config.get("functions", {}).values():
        settings.pop("memory", None)
        settings.pop("maxDuration", None)
    config.pop("crons", None)  # `vercel dev` does not run crons; the stack calls them itself
    config["env"] = function_env(ports)
    return config


def sign_in(ports: Ports, email: str) -> str:
    """A demo user's access token from the Supabase stand-in."""
    response = httpx.post(f"http://127.0.0.1:{ports.supabase}/auth/v1/token", params={"grant_type": "password"},
                          headers={"apikey": ANON_KEY}, json={"email": email, "password": DEMO_PASSWORD},
                          timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


class Stack:
    """Everything `up` starts, in start order; `stop()` undoes it in reverse."""

    def __init__(self, ports: Ports, state: Path):
        self.ports, self.state = ports, state
        self.cluster: Any = None
        self.redis: Any = None
        self.replicas: Any = None
        self.servers: list[Any] = []
        self.vercel: subprocess.Popen | None = None
        self.host: subprocess.Popen | None = None
        self.supabase: Any = None

    def start_services(self, api_port: int | None = None) -> None:
        from devstack import paydunya, supabase, supabase_net, upstash
        from devstack.postgres import Cluster
        from devstack.redis_server import RedisServer
        from devstack.replicas import ReplicaSet, lag_from_env, replicas_from_env

        self.state.mkdir(parents=True, exist_ok=True)
        pg_dir = Path(os.environ.get("DEVSTACK_PG_DIR", f"/tmp/dousell-devstack-pg-{self.ports.postgres}"))
        stale = Cluster.running(pg_dir)
        if stale is not None:
            stale.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)  # every `make dev` starts from the demo data
        print(f"· PostgreSQL on 127.0.0.1:{self.ports.postgres} (data in {pg_dir})", flush=True)
        self.cluster = Cluster.start(pg_dir, self.ports.postgres)
        self.cluster.create_template("dousell_template")
        dsn = self.cluster.create_database("dousell", template="dousell_template")

        self.redis = RedisServer(self.ports.redis, self.state / "redis")
        self.redis.start()
        print(f"· Redis on 127.0.0.1:{self.ports.redis}: {self.redis.describe()}", flush=True)
        # As Upstash is deployed: the leader and its read replicas, each applying writes late.
        self.replicas = ReplicaSet(self.redis, replicas_from_env(), lag_from_env(), self.state / "replicas").start()
        if self.replicas.count:
            print(f"· {self.replicas.count} read replica(s), {self.replicas.lag_ms:g} ms behind the leader "
                  f"(DEVSTACK_UPSTASH_REPLICAS, DEVSTACK_UPSTASH_REPLICA_LAG_MS)", flush=True)

        server, _ = upstash.serve_in_thread("127.0.0.1", self.ports.upstash, token=UPSTASH_TOKEN,
                                            redis_url=self.redis.url, replica_urls=self.replicas.urls,
                                            daily_requests=upstash.daily_from_env())
        server.engine.replicas = self.replicas
        self.servers.append(server)
        self.supabase, _ = supabase.serve_in_thread(
            "127.0.0.1", self.ports.supabase, dsn=dsn, anon_key=ANON_KEY, service_role_key=SERVICE_ROLE_KEY,
            public_url=f"http://127.0.0.1:{self.ports.supabase}")
        self.servers.append(self.supabase)
        supabase_net.configure_webhook(dsn, f"http://127.0.0.1:{api_port or self.ports.api}/api/hooks/database",
                                       DATABASE_WEBHOOK_SECRET)  # what the operator puts in Vault
        server, _ = paydunya.serve_in_thread(
            "127.0.0.1", self.ports.paydunya, master_key=PAYDUNYA_KEYS["PAYDUNYA_MASTER_KEY"],
            private_key=PAYDUNYA_KEYS["PAYDUNYA_PRIVATE_KEY"], token=PAYDUNYA_KEYS["PAYDUNYA_TOKEN"])
        self.servers.append(server)

    def start_api(self, timeout: float) -> None:
        if not VERCEL_BIN.exists():
            raise RuntimeError("the Vercel CLI is missing: run `make tools` (make dev does)")
        env = vercel_env()
        dev_config = self.state / "vercel.dev.json"
        dev_config.write_text(json.dumps(dev_config_for(self.ports), indent=2))
        log = open(self.state / "vercel-dev.log", "ab")
        self.vercel = subprocess.Popen(
            [str(VERCEL_BIN), "dev", "--local", "--yes", "--listen", f"127.0.0.1:{self.ports.api}", "-A", str(dev_config)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends the Python workers it spawns too
        )
        api = f"http://127.0.0.1:{self.ports.api}"
        _wait_http(f"{api}/api/health", timeout,
                   accept=lambda r: r.headers.get("content-type", "").startswith("application/json"))
        print("· building and waking every function (the first `make dev` installs each one: a minute or two)",
              flush=True)
        results = warmup.warm(api, sign_in(self.ports, DEMO_USERS[2][1]), timeout=timeout)
        print("\n".join(warmup.report(results)), flush=True)

    def start_host(self, timeout: float) -> None:
        """The Dakar host (python -m host), as systemd runs it on the server, over Valkey by TCP."""
        env = {**os.environ, **dakar_env(self.ports, self.redis.url)}
        for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "KV_REST_API_URL", "KV_REST_API_TOKEN"):
            env.pop(name, None)
        log = open(self.state / "dakar.log", "ab")
        self.host = subprocess.Popen(
            [sys.executable, "-m", "host", "--bind", f"127.0.0.1:{self.ports.dakar}",
             "--workers", os.environ.get("DEVSTACK_DAKAR_WORKERS", "2")],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{self.ports.dakar}/api/health", timeout,
                   accept=lambda r: r.status_code == 200)

    def stop(self) -> None:
        if self.host is not None and self.host.poll() is None:
            self.host.send_signal(signal.SIGTERM)  # graceful: requests in flight finish
            try:
                self.host.wait(40)
            except subprocess.TimeoutExpired:
                self.host.kill()
                self.host.wait(10)
        if self.vercel is not None:
            try:
                os.killpg(self.vercel.pid, signal.SIGTERM)
                self.vercel.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                # Its Python workers may outlive it (frozen ones ignore SIGTERM): end the whole group.
                os.killpg(self.vercel.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for server in reversed(self.servers):
            server.shutdown()
            server.server_close()
        if self.replicas is not None:
            self.replicas.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop(remove=True)


def up(args: argparse.Namespace) -> int:
    ports, state = Ports.from_env(), state_dir()
    pidfile = state / "stack.pid"
    running = _read_pid(pidfile)
    if running is not None:
        print(f"The local stack already runs (pid {running}) on http://127.0.0.1:{ports.api}. "
              "Stop it with `make stop`.", file=sys.stderr)
        return 1
    dakar = getattr(args, "dakar", False)
    wanted = [p for p in asdict(ports).items()
              if (p[0] != "api" or (args.api and not dakar)) and (p[0] != "dakar" or dakar)]
    busy = [f"{name} {port}" for name, port in wanted if _port_in_use(port)]
    if busy:
        print(f"Ports already in use: {', '.join(busy)}. Something else listens there; stop it, or set "
              "DEVSTACK_<NAME>_PORT.", file=sys.stderr)
        return 1
    state.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{os.getpid()}\n")
    (state / "stack.json").write_text(json.dumps({"ports": asdict(ports), "pid": os.getpid()}))
    stack = Stack(ports, state)
    # A flag, not a threading.Event: a handler that sets an Event deadlocks the main thread when
    # the signal lands inside that Event's own wait (its lock is not reentrant).
    stopping: list[int] = []

    def on_signal(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start_services(api_port=ports.dakar if dakar else None)
        if dakar:
            print(f"· the Dakar host on 127.0.0.1:{ports.dakar}, Valkey over TCP (log in {state / 'dakar.log'})",
                  flush=True)
            stack.start_host(args.timeout)
            from devstack.cron import CronCaller  # on the server: the systemd timer (deploy/dakar)

            stack.servers.append(CronCaller(f"http://127.0.0.1:{ports.dakar}", CRON_SECRET).start())
        elif args.api:
            print(f"· vercel dev on 127.0.0.1:{ports.api} (log in "
                  f"{state / 'vercel-dev.log'})", flush=True)
            stack.start_api(args.timeout)
            from devstack.cron import CronCaller  # Vercel Cron: vercel dev runs none

            stack.servers.append(CronCaller(f"http://127.0.0.1:{ports.api}", CRON_SECRET).start())
        _banner(ports, args.api, dakar)
        (state / "ready").write_text("ready\n")
        while not stopping:
            if stack.host is not None and stack.host.poll() is not None:
                print(f"the Dakar host exited ({stack.host.returncode}); see {state / 'dakar.log'}", file=sys.stderr)
                return 1
            if stack.vercel is not None and stack.vercel.poll() is not None:
                print(f"vercel dev exited ({stack.vercel.returncode}); see {state / 'vercel-dev.log'}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except Exception as exc:
        print(f"The local stack could not start: {exc}", file=sys.stderr)
        return 1
    finally:
        print("Stopping the local stack…", flush=True)
        stack.stop()
        for name in ("stack.pid", "stack.json", "ready"):
            (state / name).unlink(missing_ok=True)


def _banner(ports: Ports, api: bool, dakar: bool = False) -> None:
    lines = ["", "Dousell Immo — local stack ready", ""]
    if dakar:
        lines += [f"  API (Dakar host)   http://127.0.0.1:{ports.dakar}   (Valkey over TCP: "
                  f"redis://127.0.0.1:{ports.redis}/0; try /api/health)"]
    elif api:
        lines += [f"  API                http://127.0.0.1:{ports.api}   (try /api/health)"]
    lines += [
        f"  Supabase (REST)    http://127.0.0.1:{ports.supabase}/rest/v1   apikey {ANON_KEY}",
        f"  Supabase (auth)    http://127.0.0.1:{ports.supabase}/auth/v1",
        f"  Upstash REST       http://127.0.0.1:{ports.upstash}   token {UPSTASH_TOKEN}",
        f"  PayDunya sandbox   http://127.0.0.1:{ports.paydunya}",
        f"  Metrics token      {METRICS_TOKEN}",
        "",
        f"  Demo users (password {DEMO_PASSWORD}):",
        *[f"    {role:<7} {email:<28} {holds}" for role, email, holds in DEMO_USERS],
        "",
        "  Sign in:",
        f"    curl -s -X POST 'http://127.0.0.1:{ports.supabase}/auth/v1/token?grant_type=password' \\",
        f"      -H 'apikey: {ANON_KEY}' -H 'Content-Type: application/json' \\",
        f"      -d '{{\"email\": \"moussa.diop@example.sn\", \"password\": \"{DEMO_PASSWORD}\"}}'",
        "",
        "  Ctrl-C or `make stop` stops everything; `make redis-stop` / `make redis-start` drill the cache.",
        "",
    ]
    print("\n".join(lines), flush=True)


def stop(args: argparse.Namespace) -> int:
    pidfile = state_dir() / "stack.pid"
    pid = _read_pid(pidfile)
    if pid is None:
        print("No local stack is running.")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _read_pid(pidfile) is None:
            print("Local stack stopped.")
            return 0
        time.sleep(0.2)
    print(f"The stack (pid {pid}) did not stop within 60 s.", file=sys.stderr)
    return 1


def redis_stop(args: argparse.Namespace) -> int:
    from devstack.redis_server import RedisServer

    server = RedisServer(Ports.from_env().redis, state_dir() / "redis")
    server.stop()
    print("Redis stopped: the API now answers from the database (X-Cache: BYPASS).")
    return 0


def redis_start(args: argparse.Namespace) -> int:
    from devstack.redis_server import RedisServer

    server = RedisServer(Ports.from_env().redis, state_dir() / "redis").start()
    server.detach()  # keep it running after this command exits; the stack's stop() finds it by pidfile
    print(f"Redis started: {server.describe()}")
    return 0


def print_env(args: argparse.Namespace) -> int:
    for name, value in function_env(Ports.from_env()).items():
        print(f"{name}={value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the stack and wait for Ctrl-C")
    up_parser.add_argument("--no-api", dest="api", action="store_false", help="only the stand-ins, no vercel dev")
    up_parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the API")
    up_parser.set_defaults(func=up)
    dakar_parser = commands.add_parser("dakar", help="the stand-ins and the Dakar host (Valkey over TCP); Ctrl-C stops")
    dakar_parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the host")
    dakar_parser.set_defaults(func=up, api=False, dakar=True)
    for name, func in (("stop", stop), ("redis-stop", redis_stop), ("redis-start", redis_start), ("env", print_env)):
        commands.add_parser(name).set_defaults(func=func)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
