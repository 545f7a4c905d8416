"""The local stack in a child process on free ports, with its own state folder: what the
integration tests, the benchmarks and the drills run beside a developer's `make dev`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import httpx

from devstack.__main__ import ANON_KEY, DEMO_PASSWORD, REPO, UPSTASH_TOKEN, Ports
from devstack.redis_server import free_port

STOP_TIMEOUT = 60.0


@dataclass
class ChildStack:
    """A running `python -m devstack up` and where to reach it."""

    ports: Ports
    state: Path
    env: dict[str, str]
    process: subprocess.Popen = field(repr=False)
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    @cached_property
    def api(self) -> httpx.Client:
        """A client to the API (`vercel dev`), closed by `stop()`."""
        return httpx.Client(base_url=self.url("api"), timeout=60)  # a shared 2-core machine: cold processes under load

    @property
    def supabase_url(self) -> str:
        return self.url("supabase")

    @property
    def upstash_url(self) -> str:
        return self.url("upstash")

    @property
    def paydunya_url(self) -> str:
        return self.url("paydunya")

    def token(self, email: str) -> str:
        """A demo user's access token, signed in once per stack."""
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
        """`python -m devstack <command>` against this stack (e.g. `redis-stop`)."""
        subprocess.run([sys.executable, "-m", "devstack", *command], cwd=REPO, env=self.env, check=True,
                       capture_output=True, timeout=60)

    def redis(self, *command: object) -> object:
        """One Redis command through the Upstash stand-in."""
        response = httpx.post(self.upstash_url, json=[str(c) for c in command],
                              headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}, timeout=5)
        body = response.json()
        if "error" in body:
            raise RuntimeError(body["error"])
        return body["result"]

    def logs(self, chars: int = 4000) -> str:
        text = (self.state / "stack.log").read_text(errors="replace")[-chars:]
        host = self.state / "dakar.log"
        if host.exists():
            text += "\n--- the Dakar host ---\n" + host.read_text(errors="replace")[-chars:]
        vercel = self.state / "vercel-dev.log"
        if vercel.exists():
            text += "\n--- vercel dev ---\n" + vercel.read_text(errors="replace")[-chars:]
        return text

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would: the stack stops PostgreSQL, Redis and vercel dev itself."""
        if "api" in self.__dict__:
            self.api.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.state, ignore_errors=True)


def start[S: ChildStack](*, api: bool, purpose: str, timeout: float, cls: type[S] = ChildStack,
                         extra_env: dict[str, str] | None = None, dakar: bool = False) -> S:
    """Start the stack (with `vercel dev` when `api`; with the Dakar host instead when `dakar`) and wait, up to `timeout` s, for its `ready` file;
    `cls` (a ChildStack subclass) is what is returned; `extra_env` is added to the stack's environment
    (e.g. `RATE_LIMIT_WRITES_PER_MINUTE`, which devstack hands on to the functions)."""
    ports = Ports(**{name: free_port() for name in asdict(Ports())})
    state = Path(tempfile.mkdtemp(prefix=f"dousell-{purpose}-"))
    env = {
        **os.environ,
        "DEVSTACK_STATE": str(state),
        # PostgreSQL runs as its own user when we are root: its data folder must be reachable by it.
        "DEVSTACK_PG_DIR": f"/tmp/dousell-{purpose}-pg-{ports.postgres}",
        **{f"DEVSTACK_{name.upper()}_PORT": str(port) for name, port in asdict(ports).items()},
        **(extra_env or {}),
    }
    if dakar:
        command = [sys.executable, "-m", "devstack", "dakar", "--timeout", str(timeout)]
    else:
        command = [sys.executable, "-m", "devstack", "up", "--timeout", str(timeout)] + ([] if api else ["--no-api"])
    with open(state / "stack.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    stack = cls(ports, state, env, process)
    deadline = time.monotonic() + timeout + 30
    while not (state / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            logs = stack.logs()
            stack.stop()
            raise RuntimeError(f"the local stack did not start (exit {process.poll()}):\n{logs}")
        time.sleep(0.2)
    return stack
