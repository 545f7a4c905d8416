"""lib/context: a request's timings and cache status, kept per request and per thread, harmless outside one."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from lib import context


@pytest.fixture(autouse=True)
def outside_any_request() -> None:
    context._current.set(None)


def test_timed_blocks_add_up_under_their_name() -> None:
    ctx = context.begin()
    for _ in range(3):
        with context.timed("db"):
            pass
    with context.timed("cache"):
        pass
    assert set(ctx.timings_ms) == {"db", "cache"}
    assert ctx.timings_ms["db"] >= 0.0


def test_a_block_that_raises_is_timed_too() -> None:
    ctx = context.begin()
    with pytest.raises(ValueError), context.timed("db"):
        raise ValueError("the query failed")
    assert "db" in ctx.timings_ms


def test_the_cache_status_is_the_last_one_set() -> None:
    ctx = context.begin()
    context.set_cache_status("MISS")
    context.set_cache_status("HIT")
    assert ctx.cache_status == "HIT" and context.current() is ctx


def test_outside_a_request_nothing_is_recorded_and_nothing_fails() -> None:
    with context.timed("db"):
        context.set_cache_status("HIT")
    assert context.current() is None


def test_a_new_request_starts_from_nothing() -> None:
    first = context.begin()
    context.set_cache_status("HIT")
    with context.timed("db"):
        pass
    second = context.begin()
    assert second is not first and (second.timings_ms, second.cache_status) == ({}, None)


def test_two_threads_keep_their_own_request() -> None:
    seen: dict[str, str | None] = {}
    started = threading.Barrier(2)

    def request(status: str) -> None:
        ctx = context.begin()
        started.wait(timeout=5)  # both requests are open at once
        context.set_cache_status(status)
        started.wait(timeout=5)
        seen[status] = ctx.cache_status

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(request, s)) for s in ("HIT", "MISS")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert seen == {"HIT": "HIT", "MISS": "MISS"}


def test_a_call_is_tallied_only_while_a_tally_is_started():
    context.record_call(time.perf_counter(), 3)  # before: not counted
    tally, token = context.start_tally()
    try:
        context.record_call(time.perf_counter(), 2)
        context.record_call(time.perf_counter(), 1)
    finally:
        context.stop_tally(token)
    context.record_call(time.perf_counter(), 5)  # after: not counted
    assert tally.commands == 3 and len(tally.calls_ms) == 2 and all(ms >= 0 for ms in tally.calls_ms)
