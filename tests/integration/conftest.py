"""The local stack for integration tests: `python -m devstack up` on free ports, once per session.

Everything is real but the cloud: PostgreSQL and redis-server behind the Supabase and Upstash
stand-ins, the PayDunya stand-in, and the API served by the pinned Vercel CLI (`vercel dev`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack.__main__ import ANON_KEY, DEMO_PASSWORD, METRICS_TOKEN, UPSTASH_TOKEN, Ports
from devstack.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300  # first run: vercel dev builds each function (a uv install per function)


@dataclass
class Stack:
    ports: Ports
    env: dict[str, str]
    state: Path
    api: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def supabase_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.supabase}"

    @property
    def upstash_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.upstash}"

    @property
    def paydunya_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.paydunya}"

    def token(self, email: str) -> str:
        if email not in self.tokens:
            response = httpx.post(f"{self.supabase_url}/auth/v1/token", params={"grant_type": "password"},
                                  headers={"apikey": ANON_KEY}, json={"email": email, "password": DEMO_PASSWORD},
                                  timeout=10)
            response.raise_for_status()
            self.tokens[email] = response.json()["access_token"]
        return self.tokens[email]

    def auth(self, email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email)}"}

    def devstack(self, *command: str) -> None:
        subprocess.run([sys.executable, "-m", "devstack", *command], cwd=ROOT, env=self.env, check=True,
                       capture_output=True, timeout=60)

    def redis(self, *command: object) -> object:
        response = httpx.post(self.upstash_url, json=[str(c) for c in command],
                              headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}, timeout=5)
        body = response.json()
        if "error" in body:
            raise RuntimeError(body["error"])
        return body["result"]

    def db_admin(self, path: str, payload: dict | None = None) -> dict:
        url = f"{self.supabase_url}/__devstack/{path}"
        response = httpx.post(url, json=payload or {}, timeout=10) if payload is not None else httpx.get(url, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else {}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    ports = Ports(api=free_port(), supabase=free_port(), upstash=free_port(), paydunya=free_port(),
                  redis=free_port(), postgres=free_port())
    state = Path(tempfile.mkdtemp(prefix="dousell-stack-"))
    env = {**os.environ, "DEVSTACK_STATE": str(state), "DEVSTACK_PG_DIR": f"/tmp/dousell-stack-pg-{ports.postgres}",  # postgres must reach it
           **{f"DEVSTACK_{name.upper()}_PORT": str(port) for name, port in ports.__dict__.items()}}
    log = open(state / "stack.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "devstack", "up", "--timeout", str(START_TIMEOUT)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT + 60
    try:
        while not (state / "ready").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (state / "stack.log").read_text(errors="replace")[-4000:]
                vercel_log = state / "vercel-dev.log"
                if vercel_log.exists():
                    tail += "\n--- vercel dev ---\n" + vercel_log.read_text(errors="replace")[-4000:]
                pytest.fail(f"the local stack did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{ports.api}", timeout=30) as api:
            yield Stack(ports, env, state, api)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture(scope="session")
def metrics_token() -> str:
    return METRICS_TOKEN
