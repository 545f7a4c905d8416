"""lib/domain/locking.under_lock: the one lock policy every write follows (Idempotency-Key: tests/lib/web/test_idempotency.py).

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py), reached through respx.
"""

from __future__ import annotations

import httpx
import pytest

from lib import metrics
from lib.cache import locks
from lib.domain import locking
from lib.edge import upstash
from lib.errors import PaymentInProgress
from tests.fakes import fake_upstash

NAME = "dousell:lock:payment:lease123"


@pytest.fixture
def redis(monkeypatch):
    monkeypatch.setattr(locks, "sleep", lambda seconds: None)
    with fake_upstash(monkeypatch) as fake:
        yield fake


@pytest.fixture
def events(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(metrics, "lock_event", lambda name, event: seen.append(event))
    return seen


class Work:
    """The critical section: records whether the lock was held while it ran."""

    def __init__(self, redis, during=None):
        self.redis, self.during, self.held_by = redis, during, None

    def __call__(self):
        self.held_by = self.redis.redis.get(NAME)
        if self.during:
            self.during()
        return "done"


def test_the_work_runs_holding_the_lock_and_the_lock_is_released_after(redis, events):
    work = Work(redis)
    assert locking.under_lock(NAME, PaymentInProgress, work) == "done"
    assert work.held_by is not None and redis.redis.exists(NAME) == 0
    assert events == ["acquired"]


def test_a_busy_lock_is_the_callers_busy_error_and_the_work_never_runs(redis, events):
    redis.redis.set(NAME, "first-click", px=30_000)
    work = Work(redis)
    with pytest.raises(PaymentInProgress):
        locking.under_lock(NAME, PaymentInProgress, work)
    assert work.held_by is None and redis.redis.get(NAME) == b"first-click"
    assert events == ["blocked"]


def test_redis_down_the_work_runs_without_the_lock(redis, events, caplog):
    redis.down = httpx.ConnectError("refused")
    work = Work(redis)
    assert locking.under_lock(NAME, PaymentInProgress, work) == "done"
    assert "relying on the database fence" in caplog.text
    assert events == ["unavailable"]


def test_while_the_breaker_is_open_the_work_runs_without_a_single_redis_call(redis):
    upstash.breaker.failure()
    assert locking.under_lock(NAME, PaymentInProgress, Work(redis)) == "done"
    assert redis.calls == []


def test_a_lock_that_expired_while_the_work_ran_is_logged_not_an_error(redis, events, caplog):
    def expires_and_is_taken():
        redis.redis.set(NAME, "next-holder", px=30_000)

    assert locking.under_lock(NAME, PaymentInProgress, Work(redis, expires_and_is_taken)) == "done"
    assert redis.redis.get(NAME) == b"next-holder", "the next holder's lock is never deleted"
    assert "no longer owned" in caplog.text and events == ["acquired", "expired"]


def test_the_works_own_error_wins_and_the_lock_is_still_released(redis):
    def fails():
        raise RuntimeError("PayDunya exploded")

    with pytest.raises(RuntimeError, match="PayDunya exploded"):
        locking.under_lock(NAME, PaymentInProgress, Work(redis, fails))
    assert redis.redis.exists(NAME) == 0


def test_the_lock_lives_the_policys_ttl(redis):
    seen = {}
    locking.under_lock(NAME, PaymentInProgress, lambda: seen.update(pttl=redis.redis.pttl(NAME)))
    assert locking.LOCK_TTL * 1000 - 1000 < seen["pttl"] <= locking.LOCK_TTL * 1000


def test_redis_failing_at_the_release_is_logged_not_an_error(redis, events, caplog):
    def redis_goes_down():
        redis.down = httpx.ReadTimeout("slow")

    assert locking.under_lock(NAME, PaymentInProgress, Work(redis, redis_goes_down)) == "done"
    assert "it expires by itself" in caplog.text and events == ["acquired", "unavailable"]


def test_the_works_own_error_wins_over_a_failed_release(redis, events, caplog):
    def expires_is_taken_and_fails():
        redis.redis.set(NAME, "next-holder", px=30_000)
        raise RuntimeError("PayDunya exploded")

    with pytest.raises(RuntimeError, match="PayDunya exploded"):
        locking.under_lock(NAME, PaymentInProgress, Work(redis, expires_is_taken_and_fails))
    assert "no longer owned" in caplog.text and redis.redis.get(NAME) == b"next-holder"
    assert events == ["acquired", "expired"]


def test_a_lock_error_raised_by_the_work_is_not_taken_for_the_policys_own(redis, events):
    """Only the lock's acquire is read as busy or unavailable: the work is never run a second time."""
    runs = []

    def work():
        runs.append(True)
        raise locks.LockUnavailable("the work's own", name="other")

    with pytest.raises(locks.LockUnavailable, match="the work's own"):
        locking.under_lock(NAME, PaymentInProgress, work)
    assert runs == [True] and redis.redis.exists(NAME) == 0
