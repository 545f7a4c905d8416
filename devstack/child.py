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
from pathlib import Path

from devstack.__main__ import REPO, Ports
from devstack.redis_server import free_port

STOP_TIMEOUT = 60.0


@dataclass
class ChildStack:
    """A running `python -m devstack up` and where to reach it."""

    ports: Ports
    state: Path
    env: dict[str, str]
    process: subprocess.Popen = field(repr=False)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    def logs(self, chars: int = 4000) -> str:
        text = (self.state / "stack.log").read_text(errors="replace")[-chars:]
        vercel = self.state / "vercel-dev.log"
        if vercel.exists():
            text += "\n--- vercel dev ---\n" + vercel.read_text(errors="replace")[-chars:]
        return text

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would: the stack stops PostgreSQL, Redis and vercel dev itself."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.state, ignore_errors=True)


def start(*, api: bool, purpose: str, timeout: float) -> ChildStack:
    """Start the stack (with `vercel dev` when `api`) and wait, up to `timeout` s, for its `ready` file."""
    ports = Ports(**{name: free_port() for name in asdict(Ports())})
    state = Path(tempfile.mkdtemp(prefix=f"dousell-{purpose}-"))
    env = {
        **os.environ,
        "DEVSTACK_STATE": str(state),
        # PostgreSQL runs as its own user when we are root: its data folder must be reachable by it.
        "DEVSTACK_PG_DIR": f"/tmp/dousell-{purpose}-pg-{ports.postgres}",
        **{f"DEVSTACK_{name.upper()}_PORT": str(port) for name, port in asdict(ports).items()},
    }
    command = [sys.executable, "-m", "devstack", "up", "--timeout", str(timeout)] + ([] if api else ["--no-api"])
    with open(state / "stack.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    stack = ChildStack(ports, state, env, process)
    deadline = time.monotonic() + timeout + 30
    while not (state / "ready").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            logs = stack.logs()
            stack.stop()
            raise RuntimeError(f"the local stack did not start (exit {process.poll()}):\n{logs}")
        time.sleep(0.2)
    return stack
