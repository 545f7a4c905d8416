"""lib/cache/locks: acquire and release by token, the retry schedule, timed-out acquires, the one compare-and-delete.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py), reached through respx.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest
import respx

from lib import metrics
from lib.cache import locks
from lib.cache.locks import Lock, LockBusy, LockError, LockNotOwned, LockUnavailable
from lib.edge import upstash
from tests.fakes import FakeUpstash
from tests.support import FakeClock

URL = "https://upstash.test"
NAME = "dousell:lock:payment:lease123"


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(locks, "clock", fake)
    monkeypatch.setattr(locks, "sleep", fake.sleep)
    monkeypatch.setattr(locks, "draw", lambda: 0.5)
    return fake


@pytest.fixture
def events(monkeypatch):
    """What lib/metrics is told about each lock (acquired, blocked, expired, unavailable)."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(metrics, "lock_event", lambda name, event: seen.append((name, event)))
    return seen


@pytest.fixture
def router(monkeypatch, clock):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    upstash.breaker.reset()
    with respx.mock(assert_all_called=False) as mock:
        yield mock
    upstash.breaker.reset()


@pytest.fixture
def redis(router) -> FakeUpstash:
    return FakeUpstash(router, URL)


def commands(fake: FakeUpstash) -> list[str]:
    return [call[0] for call in fake.calls]


def held_by(fake: FakeUpstash, name: str = NAME) -> str | None:
    value = fake.redis.get(name)
    return value.decode() if value is not None else None


def warm_scripts() -> None:
    """Load the compare-and-delete once, as any earlier request on this Redis would have."""
    lock = Lock("warm:release", ttl=30)
    lock.acquire()
    lock.release()


# Per REST call, what the network does with it (the commands after the plan are answered normally).
ANSWER = "answer"
LANDS_THEN_TIMES_OUT = "runs, but the answer is lost"
TIMES_OUT = "times out before running"
REFUSED = "connection refused"


def plan(router: respx.Router, fake: FakeUpstash, *steps: str) -> None:
    """Make the next single-command calls behave as `steps` say."""
    pending = list(steps)

    def side_effect(request: httpx.Request) -> httpx.Response:
        step = pending.pop(0) if pending else ANSWER
        if step == ANSWER:
            return fake._single(request)
        if step == LANDS_THEN_TIMES_OUT:
            fake._single(request)
            raise httpx.ReadTimeout("timed out", request=request)
        fake.calls.append(json.loads(request.content))
        if step == TIMES_OUT:
            raise httpx.ReadTimeout("timed out", request=request)
        raise httpx.ConnectError("refused", request=request)

    router.post(URL).mock(side_effect=side_effect)  # same pattern: replaces FakeUpstash's route


# -- acquire and release -----------------------------------------------------------------------


def test_a_free_lock_is_taken_with_a_random_token_and_the_ttl_then_released(redis, events):
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    assert lock.token is not None and len(lock.token) == 32 and held_by(redis) == lock.token
    assert 29_000 < redis.redis.pttl(NAME) <= 30_000
    lock.release()
    assert held_by(redis) is None and lock.token is None
    assert events == [(NAME, "acquired")]


@pytest.mark.parametrize("ttl, px", [
    (0.25, 250),
    (30, 30_000),
    (0.0001, 1),  # rounds to 0 ms, which would be no lock at all: the least is 1 ms
])
def test_the_set_is_nx_px_in_milliseconds(redis, ttl, px):
    Lock(NAME, ttl=ttl).acquire()
    set_command = redis.calls[0]
    assert set_command[:2] == ["SET", NAME] and set_command[3:] == ["NX", "PX", px]


def test_each_acquire_draws_a_new_token(redis):
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    first = lock.token
    lock.release()
    lock.acquire()
    assert lock.token != first


def test_a_free_lock_costs_one_command_to_acquire_and_one_key_locked_script_to_release(redis):
    warm_scripts()
    redis.calls.clear()
    redis.engine.reset_stats()
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    assert commands(redis) == ["SET"]
    lock.release()
    assert commands(redis) == ["SET", "EVALSHA"]
    assert (redis.stats.billed, redis.stats.scripts_key_locked, redis.stats.scripts_global_lock) == (2, 1, 0)


def test_the_first_release_after_a_redis_restart_costs_one_extra_call_to_load_the_script(redis):
    redis.redis.script_flush()
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    lock.release()
    assert commands(redis) == ["SET", "EVALSHA", "EVAL"]
    assert held_by(redis) is None


def test_acquiring_a_lock_this_object_already_holds_is_a_programming_error(redis):
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    with pytest.raises(LockError, match="already holds"):
        lock.acquire()


def test_releasing_a_lock_never_acquired_is_an_error_without_a_call(redis):
    lock = Lock(NAME, ttl=30)
    with pytest.raises(LockError, match="Cannot release an unlocked lock") as caught:
        lock.release()
    assert not isinstance(caught.value, LockNotOwned)
    assert redis.calls == []


@pytest.mark.parametrize("kwargs", [
    {"ttl": 0},  # a lock that never holds
    {"ttl": -1},
    {"retries": -1},
    {"retry_delay": -0.1},
    {"jitter": -0.01},
])
def test_a_nonsensical_policy_is_refused_at_construction(kwargs):
    with pytest.raises(ValueError):
        Lock(NAME, **{"ttl": 30, **kwargs})


def test_a_policy_of_zeros_is_one_attempt_at_once():
    lock = Lock(NAME, ttl=30, retries=0, retry_delay=0, jitter=0)
    assert (lock.retries, lock.retry_delay, lock.jitter) == (0, 0, 0)


def test_the_repr_says_whether_this_object_holds_the_lock(redis):
    lock = Lock(NAME, ttl=30)
    assert repr(lock) == f"<Lock {NAME} ttl=30s free>"
    lock.acquire()
    assert repr(lock) == f"<Lock {NAME} ttl=30s held>"


# -- the retry policy --------------------------------------------------------------------------


def test_a_taken_lock_is_retried_once_after_about_100_ms_then_reported_busy(redis, clock, events):
    redis.redis.set(NAME, "other-holder", px=30_000)
    with pytest.raises(LockBusy, match="not free after trying 2 times") as caught:
        Lock(NAME, ttl=30).acquire()
    assert caught.value.name == NAME
    assert clock.sleeps == [pytest.approx(0.125)]  # 100 ms + 50 ms jitter × draw 0.5
    assert commands(redis) == ["SET", "SET"]
    assert held_by(redis) == "other-holder"
    assert events == [(NAME, "blocked")]


@pytest.mark.parametrize("draw, delay", [
    (0.0, 0.100),  # the lowest draw waits exactly the base delay
    (0.999_999, 0.15),  # the highest stays under base + jitter
])
def test_the_jitter_adds_between_zero_and_jitter_seconds_to_the_delay(redis, clock, monkeypatch, draw, delay):
    monkeypatch.setattr(locks, "draw", lambda: draw)
    redis.redis.set(NAME, "other-holder", px=30_000)
    with pytest.raises(LockBusy):
        Lock(NAME, ttl=30).acquire()
    assert clock.sleeps == [pytest.approx(delay, abs=1e-6)]


def test_fifty_double_clicks_do_not_retry_in_lockstep(redis, clock, monkeypatch):
    monkeypatch.setattr(locks, "draw", random.Random(7).random)
    redis.redis.set(NAME, "first-click", px=30_000)
    for _ in range(50):
        with pytest.raises(LockBusy):
            Lock(NAME, ttl=30).acquire()
    assert len(clock.sleeps) == 50
    assert all(0.1 <= s < 0.15 for s in clock.sleeps)
    assert len({round(s, 6) for s in clock.sleeps}) > 40


@pytest.mark.parametrize("policy, sleeps, sets, tries", [
    ({}, [0.125], 2, "2 times"),  # the seed's policy: one retry after ~100 ms
    ({"retries": 0}, [], 1, "once"),  # fail fast: one attempt, no sleep
    ({"retries": 3, "retry_delay": 0.05, "jitter": 0}, [0.05, 0.05, 0.05], 4, "4 times"),  # patient, no jitter
    ({"retries": 2, "retry_delay": 0.2, "jitter": 0.1}, [0.25, 0.25], 3, "3 times"),  # jitter × draw 0.5
])
def test_the_retry_policy_is_configurable_per_lock(redis, clock, policy, sleeps, sets, tries):
    redis.redis.set(NAME, "other-holder", px=30_000)
    with pytest.raises(LockBusy, match=f"not free after trying {tries}$"):
        Lock(NAME, ttl=30, **policy).acquire()
    assert clock.sleeps == pytest.approx(sleeps)
    assert commands(redis) == ["SET"] * sets


def test_a_lock_freed_during_the_pause_is_taken_by_the_retry(redis, clock):
    redis.redis.set(NAME, "other-holder", px=30_000)
    clock.during_sleep.append(lambda: redis.redis.delete(NAME))
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    assert held_by(redis) == lock.token
    assert commands(redis) == ["SET", "SET"]


# -- release and extend only while ours --------------------------------------------------------


@pytest.mark.parametrize("after_expiry", [
    None,  # our lock expired and nobody took it
    "next-holder",  # our lock expired and the next request took it
])
def test_releasing_a_lock_no_longer_ours_raises_and_never_deletes_the_other_holders_key(
        redis, clock, events, after_expiry):
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    redis.redis.delete(NAME)  # expired
    if after_expiry:
        redis.redis.set(NAME, after_expiry, px=30_000)
    clock.now += 31
    with pytest.raises(LockNotOwned, match="Cannot release a lock that's no longer owned") as caught:
        lock.release()
    assert caught.value.name == NAME
    assert "held 31.00 s, ttl 30 s" in str(caught.value)
    assert held_by(redis) == after_expiry
    assert events == [(NAME, "acquired"), (NAME, "expired")]


def test_a_lock_never_acquired_has_been_held_for_no_time(clock):
    lock = Lock(NAME, ttl=30)
    clock.now += 5
    assert lock.held_for() == 0.0


@pytest.mark.parametrize("acquired_at", [
    1000.0,
    10.0,  # the monotonic clock of an instance booted ten seconds before the acquire
])
def test_held_for_is_the_time_since_the_acquire_by_our_clock(redis, clock, acquired_at):
    clock.now = acquired_at
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    clock.advance(25.0)
    assert lock.held_for() == pytest.approx(25.0)


def test_the_compare_and_delete_is_one_script_shared_by_every_token_checked_key(redis):
    redis.redis.set("dousell:meta:idem:u:abc", "marker-1", px=60_000)
    assert locks.release_if_held("dousell:meta:idem:u:abc", "marker-2") is False
    assert redis.redis.get("dousell:meta:idem:u:abc") == b"marker-1"
    assert locks.release_if_held("dousell:meta:idem:u:abc", "marker-1") is True
    assert redis.redis.exists("dousell:meta:idem:u:abc") == 0


def test_a_release_that_cannot_reach_redis_raises_lock_unavailable(redis, events):
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    redis.down = httpx.ReadTimeout("slow")
    with pytest.raises(LockUnavailable, match="Cannot release lock"):
        lock.release()
    assert events == [(NAME, "acquired"), (NAME, "unavailable")]


# -- a timed-out acquire checks what it holds --------------------------------------------------


@pytest.mark.parametrize("steps, other_holder, retries, outcome, sent", [
    # the SET ran but its answer was lost: the follow-up GET sees our token; no second SET
    ([LANDS_THEN_TIMES_OUT], None, 1, "acquired", ["SET", "GET"]),
    # the SET never ran and the lock is free: the retry takes it properly
    ([TIMES_OUT], None, 1, "acquired", ["SET", "GET", "SET"]),
    # the SET never ran and no retry is allowed: busy, and nothing was written
    ([TIMES_OUT], None, 0, LockBusy, ["SET", "GET"]),
    # the SET never ran and another request holds the lock: busy after the retry, whose busy
    # answer is checked once more in case our first SET landed late
    ([TIMES_OUT], "first-click", 1, LockBusy, ["SET", "GET", "SET", "GET"]),
    # the SET timed out and so did the GET: nobody can say, fall back to the database fence
    ([TIMES_OUT, TIMES_OUT], None, 1, LockUnavailable, ["SET", "GET"]),
    # the SET ran, then the GET failed: still unknown to us, so unavailable (the TTL frees it)
    ([LANDS_THEN_TIMES_OUT, REFUSED], None, 1, LockUnavailable, ["SET", "GET"]),
])
def test_a_timed_out_acquire_asks_redis_whether_it_holds_the_lock_instead_of_resending_the_set(
        redis, router, clock, steps, other_holder, retries, outcome, sent):
    if other_holder:
        redis.redis.set(NAME, other_holder, px=30_000)
    plan(router, redis, *steps)
    lock = Lock(NAME, ttl=30, retries=retries)
    if outcome == "acquired":
        lock.acquire()
        assert held_by(redis) == lock.token
    else:
        with pytest.raises(outcome) as caught:
            lock.acquire()
        assert caught.value.name == NAME and lock.token is None
    assert commands(redis) == sent


def test_a_set_that_lands_after_its_timeout_is_recognised_as_ours_by_the_retry(redis, router, clock):
    """The timed-out SET was still in flight when the GET looked; it lands during the pause."""
    plan(router, redis, TIMES_OUT)
    clock.during_sleep.append(lambda: redis.redis.set(NAME, redis.calls[0][2], px=30_000))  # our token
    lock = Lock(NAME, ttl=30)
    lock.acquire()
    assert held_by(redis) == lock.token == redis.calls[0][2]
    assert commands(redis) == ["SET", "GET", "SET", "GET"]


def test_redis_down_makes_acquire_raise_lock_unavailable_after_two_calls(redis, router, clock, events):
    route = router.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(LockUnavailable, match="Redis did not answer") as caught:
        Lock(NAME, ttl=30).acquire()
    assert isinstance(caught.value.__cause__, upstash.RedisUnavailable)
    assert route.call_count == 2, "the SET, then the GET that asks whether it landed"
    assert clock.sleeps == []
    assert events == [(NAME, "unavailable")]


def test_while_the_breaker_is_open_acquire_makes_no_call_at_all(redis, events):
    upstash.breaker.failure()
    with pytest.raises(LockUnavailable) as caught:
        Lock(NAME, ttl=30).acquire()
    assert isinstance(caught.value.__cause__, upstash.RedisSkipped)
    assert redis.calls == []
    assert events == [(NAME, "unavailable")]


def test_a_refused_set_is_unavailable_at_once_without_a_follow_up_get(redis, router):
    route = router.post(URL).mock(return_value=httpx.Response(401, json={"error": "Unauthorized"}))
    with pytest.raises(LockUnavailable):
        Lock(NAME, ttl=30).acquire()
    assert route.call_count == 1


# -- as a context manager (redis-py's `with lock:`) ---------------------------------------------


def test_with_a_lock_the_block_runs_holding_it_and_leaving_releases_it(redis, events):
    with Lock(NAME, ttl=30) as lock:
        assert lock.token is not None and held_by(redis) == lock.token
    assert held_by(redis) is None and lock.token is None
    assert commands(redis)[0] == "SET" and events == [(NAME, "acquired")]


def test_an_error_inside_the_block_still_releases_the_lock_and_propagates(redis):
    lock = Lock(NAME, ttl=30)
    with pytest.raises(RuntimeError, match="PayDunya exploded"), lock:
        assert held_by(redis) == lock.token
        raise RuntimeError("PayDunya exploded")
    assert held_by(redis) is None and lock.token is None


@pytest.mark.parametrize("raise_on_release_error", [True, False])
def test_a_lock_that_cannot_be_taken_never_runs_the_block(redis, clock, raise_on_release_error):
    redis.redis.set(NAME, "first-click", px=30_000)
    ran = []
    with pytest.raises(LockBusy), Lock(NAME, ttl=30, raise_on_release_error=raise_on_release_error):
        ran.append(True)
    assert ran == [] and held_by(redis) == "first-click"


def expires_and_is_taken(redis) -> None:
    redis.redis.set(NAME, "next-holder", px=30_000)


def test_leaving_a_lock_no_longer_ours_raises_lock_not_owned_by_default(redis, events):
    with pytest.raises(LockNotOwned, match="no longer owned"), Lock(NAME, ttl=30):
        expires_and_is_taken(redis)
    assert held_by(redis) == "next-holder", "the next holder's lock is never deleted"
    assert events == [(NAME, "acquired"), (NAME, "expired")]


def test_leaving_a_lock_redis_cannot_release_raises_lock_unavailable_by_default(redis, events):
    with pytest.raises(LockUnavailable, match="Cannot release lock"), Lock(NAME, ttl=30):
        redis.down = httpx.ReadTimeout("slow")
    assert events == [(NAME, "acquired"), (NAME, "unavailable")]


def test_a_release_failure_on_leaving_replaces_the_blocks_error_by_default_and_keeps_it_as_context(redis):
    with pytest.raises(LockNotOwned) as caught, Lock(NAME, ttl=30):
        expires_and_is_taken(redis)
        raise RuntimeError("the block's")
    assert isinstance(caught.value.__context__, RuntimeError)


@pytest.mark.parametrize("fails, logged", [
    (expires_and_is_taken, "no longer owned: dousell:lock:payment:lease123 (held 0.00 s, ttl 30 s); "
                           "the database fenced any overlap"),
    (lambda redis: setattr(redis, "down", httpx.ReadTimeout("slow")), "it expires by itself"),
])
def test_without_raise_on_release_error_a_failed_release_is_logged_not_raised(redis, caplog, fails, logged):
    with Lock(NAME, ttl=30, raise_on_release_error=False) as lock:
        fails(redis)
    assert lock.token is None and logged in caplog.text
    assert [record.levelname for record in caplog.records if logged in record.getMessage()] == ["WARNING"]


def test_without_raise_on_release_error_the_blocks_own_error_propagates_past_a_failed_release(redis, caplog):
    with pytest.raises(RuntimeError, match="the block's"), Lock(NAME, ttl=30, raise_on_release_error=False):
        expires_and_is_taken(redis)
        raise RuntimeError("the block's")
    assert "no longer owned" in caplog.text and held_by(redis) == "next-holder"


def test_leaving_a_lock_released_inside_the_block_is_a_programming_error_whatever_the_policy(redis):
    with pytest.raises(LockError, match="unlocked"), Lock(NAME, ttl=30, raise_on_release_error=False) as lock:
        lock.release()


def test_a_set_answered_with_a_command_error_is_unavailable_without_a_follow_up_get(redis, router, events):
    """Redis at its size limit answers the SET with an error: an answer, so nothing is in flight to
    check, and Redis cannot give us the lock: the database fence decides (lib/domain/locking)."""
    route = router.post(URL).mock(return_value=httpx.Response(
        400, json={"error": "OOM command not allowed when used memory > 'maxmemory'."}))
    with pytest.raises(LockUnavailable, match="Cannot acquire lock") as caught:
        Lock(NAME, ttl=30).acquire()
    assert isinstance(caught.value.__cause__, upstash.RedisFull)
    assert route.call_count == 1
    assert events == [(NAME, "unavailable")]
