"""The local stack for integration tests: `python -m devstack up` on free ports, once per session.

Everything is real but the cloud: PostgreSQL and redis-server behind the Supabase and Upstash
stand-ins, the PayDunya stand-in, and the API served by the pinned Vercel CLI (`vercel dev`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import child
from devstack.__main__ import METRICS_TOKEN
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600  # the stack builds and wakes every function before it says ready (a uv install each)
# Bursts of 50 simultaneous clicks by one user (test_write_path) test the lock and the fences, not the
# limiter: writes get 60 a minute here (production: 30), each test starting afresh (below), so a burst
# of 50 passes and a burst of 100 (test_money_and_visits) meets the limit. Refused IPNs keep production's 10.
WRITES_PER_MINUTE = 60
STACK_ENV = {"RATE_LIMIT_WRITES_PER_MINUTE": str(WRITES_PER_MINUTE)}


@pytest.fixture(scope="session")
def stack() -> Iterator[child.ChildStack]:
    """The running stack: `stack.api` (an httpx client to vercel dev), `.auth(email)`, `.redis(...)`,
    `.devstack("redis-stop")`, `.supabase_url`, `.paydunya_url`, `.ports`, `.env` (devstack/child.py)."""
    try:
        running = child.start(api=True, purpose="stack", timeout=START_TIMEOUT, extra_env=STACK_ENV)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def fresh_rate_limits(request: pytest.FixtureRequest) -> None:
    """Each stack test starts with every user's and address's allowance whole: the limits count per
    minute, and the tests before it in that minute (often as the same demo users) are not its own."""
    if "stack" not in request.fixturenames:
        return
    stack = request.getfixturevalue("stack")
    for key in stack.redis("KEYS", "dousell:ratelimit:*") or []:
        stack.redis("DEL", key)


def within_one_rate_limit_window(seconds: float) -> None:
    """Return once the next `seconds` fall inside one minute of the rate limiter's (upstash-ratelimit's
    sliding window is keyed by the minute, on the functions' clock, this machine's): hits that straddle
    a minute boundary count the earlier minute's a little less than whole, and "the eleventh is
    refused" would then fail by chance. Waits for the next minute to begin if fewer are left."""
    left = 60.0 - time.time() % 60.0
    if left < seconds:
        time.sleep(left + 0.05)


@pytest.fixture(scope="session")
def metrics_token() -> str:
    return METRICS_TOKEN


# A path per function: an OPTIONS request there is answered without Redis and counted under
# `OPTIONS <endpoint>`, never as a cached read.
FUNCTIONS = {
    "/api/properties/[id]": "/api/properties/1",
    "/api/properties": "/api/properties",
    "/api/search": "/api/search",
    "/api/visits/slots": "/api/visits/slots",
    "/api/payments": "/api/payments",
}


class Drain:
    """Makes functions write the metrics they hold (lib/metrics: at most once every 5 s each).

    `drain(*endpoints)` sends each function an OPTIONS request until /api/metrics shows all of
    them: the function then wrote everything it held before. `Drain.clean(stack, token)` drains
    every function and empties Redis, so only what a test drives afterwards is counted.
    """

    def __init__(self, stack: child.ChildStack, token: str):
        self.stack, self.token = stack, token
        self.sent: collections.Counter = collections.Counter()

    @classmethod
    def clean(cls, stack: child.ChildStack, token: str) -> Drain:
        drain = cls(stack, token)
        drain(*FUNCTIONS)
        stack.redis("FLUSHDB")
        drain.sent.clear()
        return drain

    def __call__(self, *functions: str) -> None:
        def written() -> bool:
            response = self.stack.api.get("/api/metrics", headers={"Authorization": f"Bearer {self.token}"})
            assert response.status_code == 200, response.text
            endpoints = response.json()["latency"]["api"]["endpoints"]
            waiting = [f for f in functions
                       if not self.sent[f] or endpoints.get(f"OPTIONS {f}", {}).get("count", 0) < self.sent[f]]
            for function in waiting:  # one more request: it writes the buffer once 5 s have passed
                assert self.stack.api.options(FUNCTIONS[function]).status_code == 204
                self.sent[function] += 1
            return not waiting

        # Generous: the first request to a function makes `vercel dev` build it (10-20 s each here).
        wait_for(written, timeout=180, interval=1.0, what=f"{', '.join(functions)} to write their metrics")
