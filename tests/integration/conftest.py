"""The local stack for integration tests: `python -m devstack up` on free ports, once per session.

Everything is real but the cloud: PostgreSQL and redis-server behind the Supabase and Upstash
stand-ins, the PayDunya stand-in, and the API served by the pinned Vercel CLI (`vercel dev`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack import child
from devstack.__main__ import ANON_KEY, DEMO_PASSWORD, METRICS_TOKEN, UPSTASH_TOKEN, Ports

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
    try:
        running = child.start(api=True, purpose="stack", timeout=START_TIMEOUT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        with httpx.Client(base_url=running.url("api"), timeout=30) as api:
            yield Stack(running.ports, running.env, running.state, api)
    finally:
        running.stop()


@pytest.fixture(scope="session")
def metrics_token() -> str:
    return METRICS_TOKEN
