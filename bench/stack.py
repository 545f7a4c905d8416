"""The stand-ins for one bench run: `python -m devstack up --no-api` on free ports, stopped at the end.

The stack runs in its own process with its own state folder, so a developer's `make dev` on the
default ports is left alone; the bench talks to it on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.__main__ import UPSTASH_TOKEN, Ports
from devstack.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0  # PostgreSQL init + migrations + seed take ~10 s here
STOP_TIMEOUT = 60.0


@dataclass
class LocalStack:
    """A running `devstack up --no-api`: its ports, state folder and process."""

    ports: Ports
    state: Path
    process: subprocess.Popen
    admin: httpx.Client

    @property
    def supabase_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.supabase}"

    @property
    def upstash_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.upstash}"

    # -- the Supabase stand-in's drill endpoints ------------------------------------------------

    def set_db_delay(self, ms: float) -> None:
        """Sleep `ms` before every /rest/v1 request (the seed's ~300 ms to Supabase)."""
        self._supabase("POST", "delay", {"ms": ms})

    def db_stats(self) -> dict[str, Any]:
        """Requests that reached the database since the last reset."""
        return self._supabase("GET", "stats")

    def reset_db_stats(self) -> None:
        self._supabase("POST", "stats/reset", {})

    def db_requests(self) -> int:
        return int(self.db_stats()["rest_requests"])

    def upstash_status(self) -> dict[str, Any]:
        response = self.admin.get(f"{self.upstash_url}/__devstack/status",
                                  headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"})
        response.raise_for_status()
        body = response.json()
        return body.get("result", body)

    def _supabase(self, method: str, path: str, payload: dict | None = None) -> Any:
        response = self.admin.request(method, f"{self.supabase_url}/__devstack/{path}", json=payload)
        response.raise_for_status()
        return response.json()

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would; the stack stops PostgreSQL and redis-server itself."""
        self.admin.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.state, ignore_errors=True)


def start(timeout: float = START_TIMEOUT) -> LocalStack:
    """Start the stand-ins on free ports and wait for the `ready` file the stack writes."""
    ports = Ports(api=free_port(), supabase=free_port(), upstash=free_port(), paydunya=free_port(),
                  redis=free_port(), postgres=free_port())
    state = Path(tempfile.mkdtemp(prefix="dousell-bench-"))
    env = {
        **os.environ,
        "DEVSTACK_STATE": str(state),
        # PostgreSQL runs as its own user when we are root: its data folder must be reachable by it.
        "DEVSTACK_PG_DIR": f"/tmp/dousell-bench-pg-{ports.postgres}",
        **{f"DEVSTACK_{name.upper()}_PORT": str(port) for name, port in asdict(ports).items()},
    }
    log = open(state / "stack.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "devstack", "up", "--no-api"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()  # the child holds its own descriptor
    stack = LocalStack(ports, state, process, httpx.Client(timeout=10))
    deadline = time.monotonic() + timeout
    while not (state / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (state / "stack.log").read_text(errors="replace")[-3000:]
            stack.stop()
            raise RuntimeError(f"the local stack did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.2)
    return stack
