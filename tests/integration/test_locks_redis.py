"""lib/cache/locks against a real Valkey server behind the Upstash REST stand-in: expiry, tokens, races, cost.

Both servers start once for the module on free ports in temporary folders, as in
tests/devstack/test_upstash.py. The measured latency is printed (run with `-s`), never asserted.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from lib.cache.locks import Lock, LockBusy, LockNotOwned
from lib.domain import locking
from lib.edge import upstash
from lib.errors import PaymentInProgress
from tests.support import UPSTASH_TOKEN, wait_for


@pytest.fixture(autouse=True)
def upstash_env(monkeypatch, upstash_server):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", upstash_server.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", UPSTASH_TOKEN)
    upstash.breaker.reset()
    yield
    upstash.breaker.reset()


@pytest.fixture
def direct(valkey):
    """A plain redis-py connection, to look at the keys behind the stand-in's back."""
    client = redis.Redis(host=valkey.host, port=valkey.port, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def name():
    return f"dousell:lock:test:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def billed(upstash_server):
    """`billed()`: what Upstash counted since the last call (the stand-in's own counters)."""
    upstash_server.engine.reset_stats()

    def take():
        stats = upstash_server.engine.stats
        upstash_server.engine.reset_stats()
        return stats

    return take


def try_acquire(lock: Lock) -> bool:
    try:
        lock.acquire()
    except LockBusy:
        return False
    return True


# -- expiry and tokens -------------------------------------------------------------------------


def test_a_lock_expires_after_its_ttl_and_then_another_request_can_take_it(name, direct):
    first = Lock(name, ttl=0.2)
    first.acquire()
    assert 0 < direct.pttl(name) <= 200
    with pytest.raises(LockBusy):
        Lock(name, ttl=30, retries=0).acquire()
    second = Lock(name, ttl=30, retries=0)
    wait_for(lambda: try_acquire(second), timeout=5, interval=0.02, what="the 0.2 s lock to expire")
    assert direct.get(name) == second.token != first.token
    second.release()


def test_a_holder_whose_lock_expired_cannot_release_the_next_holders_lock(name, direct):
    first = Lock(name, ttl=0.2)
    first.acquire()
    second = Lock(name, ttl=30, retries=0)
    wait_for(lambda: try_acquire(second), timeout=5, interval=0.02, what="the 0.2 s lock to expire")
    with pytest.raises(LockNotOwned, match="Cannot release a lock that's no longer owned"):
        first.release()
    assert direct.get(name) == second.token
    second.release()
    assert direct.exists(name) == 0


def test_release_deletes_only_the_key_holding_our_token(name, direct):
    lock = Lock(name, ttl=30)
    lock.acquire()
    direct.set(name, "someone-else", px=30_000)
    with pytest.raises(LockNotOwned):
        lock.release()
    assert direct.get(name) == "someone-else"
    direct.delete(name)
    lock.acquire()
    lock.release()
    assert direct.exists(name) == 0


def test_the_write_policy_releases_on_the_real_server_even_when_the_work_raises(name, direct):
    def work():
        assert direct.get(name) is not None
        raise RuntimeError("PayDunya timed out")

    with pytest.raises(RuntimeError):
        locking.under_lock(name, PaymentInProgress, work)
    assert direct.exists(name) == 0


# -- races -------------------------------------------------------------------------------------


def test_of_twenty_simultaneous_attempts_exactly_one_gets_the_lock(name):
    n = 20
    start = threading.Barrier(n)
    attempted = threading.Semaphore(0)
    outcomes: list[str] = []
    guard = threading.Lock()

    def attempt():
        lock = Lock(name, ttl=10, retries=0)
        start.wait(timeout=10)
        won = try_acquire(lock)
        with guard:
            outcomes.append("won" if won else "busy")
        attempted.release()
        if won:  # hold it until every thread has tried
            for _ in range(n):
                attempted.acquire(timeout=10)
            lock.release()

    with ThreadPoolExecutor(max_workers=n) as pool:
        for future in [pool.submit(attempt) for _ in range(n)]:
            future.result(timeout=30)
    assert sorted(outcomes) == ["busy"] * (n - 1) + ["won"]


def test_twenty_threads_taking_turns_never_hold_the_lock_together(name):
    n = 20
    start = threading.Barrier(n)
    guard = threading.Lock()
    state = {"inside": 0, "most": 0, "wins": 0, "busy": 0}

    def worker():
        start.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lock = Lock(name, ttl=5, retries=0)
            try:
                lock.acquire()
                try:
                    with guard:
                        state["inside"] += 1
                        state["most"] = max(state["most"], state["inside"])
                    time.sleep(0.005)  # work inside the critical section, widening any overlap
                    with guard:
                        state["inside"] -= 1
                        state["wins"] += 1
                finally:
                    lock.release()
                return
            except LockBusy:
                with guard:
                    state["busy"] += 1
                time.sleep(0.002)
        raise AssertionError("never got the lock within 20 s")

    with ThreadPoolExecutor(max_workers=n) as pool:
        for future in [pool.submit(worker) for _ in range(n)]:
            future.result(timeout=30)  # re-raises a worker's failure here
    assert state["wins"] == n
    assert state["most"] == 1
    assert state["busy"] > 0
    print(f"\n20 threads taking turns: {state['wins']} holds, {state['busy']} busy answers, "
          f"at most {state['most']} holder at a time")


# -- cost --------------------------------------------------------------------------------------


def test_acquire_and_release_through_the_stand_in_cost_two_commands_and_no_global_lock(name, direct, billed):
    direct.script_flush()  # a Redis that has just restarted: the first release loads the script
    cold = Lock(name, ttl=30)
    cold.acquire()
    cold.release()
    cold_commands = dict(billed().by_command)

    cycles, timings = 300, []
    for _ in range(cycles):
        lock = Lock(name, ttl=30)
        started = time.perf_counter()
        lock.acquire()
        lock.release()
        timings.append((time.perf_counter() - started) * 1000)
    stats = billed()
    assert cold_commands == {"SET": 1, "EVALSHA": 1, "EVAL": 1}
    assert stats.by_command == {"SET": cycles, "EVALSHA": cycles}
    assert (stats.billed, stats.scripts_global_lock, stats.scripts_key_locked) == (2 * cycles, 0, cycles)
    timings.sort()
    print(f"\nacquire+release through the Upstash stand-in, {cycles} cycles: "
          f"p50 {statistics.median(timings):.2f} ms, p90 {timings[int(0.9 * cycles)]:.2f} ms, "
          f"max {timings[-1]:.2f} ms; billed commands per cycle: 2 (SET, EVALSHA of a key-locked script), "
          f"3 on the first release after a Redis restart (SET, EVALSHA→NOSCRIPT, EVAL)")
