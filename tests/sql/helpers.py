"""Tools for the SQL tests: error codes, races between connections, waiting for a lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def raised_code(exc: BaseException) -> str | None:
    """The stable code of an RPC error (`raise exception '<code>' using errcode = 'P0001'`)."""
    if isinstance(exc, psycopg.errors.RaiseException):
        return exc.diag.message_primary
    return None


def race(conns: Sequence[psycopg.Connection], work: Callable[[psycopg.Connection, int], T]) -> list[T | Exception]:
    """Run `work(conn, i)` on every connection at once (threads released by one barrier).

    Returns each call's result or the exception it raised, in connection order.
    """
    barrier = threading.Barrier(len(conns))

    def run(i: int) -> T | Exception:
        barrier.wait(timeout=30)
        try:
            return work(conns[i], i)
        except Exception as exc:  # noqa: BLE001 - the losers' errors are what the tests look at
            return exc

    with ThreadPoolExecutor(max_workers=len(conns)) as pool:
        return list(pool.map(run, range(len(conns))))


def wait_until_blocked(admin: psycopg.Connection, pid: int, timeout: float = 10.0) -> None:
    """Wait until backend `pid` waits on a lock (so a race is set up, not hoped for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked on a lock")


def in_thread(fn: Callable[[], T]) -> Callable[[], T | Exception]:
    """Start `fn` in a thread now; the returned function joins it and gives its result or exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who checks it
            box["result"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> T | Exception:
        thread.join(timeout=30)
        assert not thread.is_alive(), "the thread did not finish"
        return box["result"]

    return join
