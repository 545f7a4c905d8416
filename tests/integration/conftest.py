"""The local stack for integration tests: `python -m devstack up` on free ports, once per session.

Everything is real but the cloud: PostgreSQL and redis-server behind the Supabase and Upstash
stand-ins, the PayDunya stand-in, and the API served by the pinned Vercel CLI (`vercel dev`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import child
from devstack.__main__ import METRICS_TOKEN

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600  # the stack builds and wakes every function before it says ready (a uv install each)


@pytest.fixture(scope="session")
def stack() -> Iterator[child.ChildStack]:
    """The running stack: `stack.api` (an httpx client to vercel dev), `.auth(email)`, `.redis(...)`,
    `.devstack("redis-stop")`, `.supabase_url`, `.paydunya_url`, `.ports`, `.env` (devstack/child.py)."""
    try:
        running = child.start(api=True, purpose="stack", timeout=START_TIMEOUT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def metrics_token() -> str:
    return METRICS_TOKEN
