"""Distributed locks over Upstash, so one rent payment or visit booking runs at a time per lease or slot.

A random token is set with `SET NX PX`; Lua releases or extends the lock only while it still
holds that token. Why the lock is only a courtesy: a lock can expire while its holder still
works (a slow PayDunya call, a paused function), and then a second holder enters (Kleppmann,
"How to do distributed locking", 2016). Only the storage can reject the late write, so the
database's unique constraints and RPCs are the fence (DESIGN.md, Principle 1); the lock spares
users a second invoice and answers a double click with "Paiement en cours", not a conflict.

    with locks.with_lock(keys.payment_lock(lease_id)) as lock:   # LockBusy → PaymentInProgress
        ...

    LockError            base; carries the lock's `name`
    ├── LockBusy         still held by someone else after the retry policy
    ├── LockNotOwned     expired or taken over before we released or extended it
    └── LockUnavailable  Redis could not tell us: fall back to the database fence

A `Lock` is a per-request object; do not share one between threads.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lib import cache, context, metrics, upstash
from lib.upstash import RedisCommandError, RedisError, RedisUnavailable

log = logging.getLogger(__name__)

# Replaceable in tests: the sleep between attempts, the clock that times a holding, the jitter draw.
sleep = time.sleep
clock = time.monotonic
draw = random.random


def _no_event(name: str, event: str) -> None:
    pass


# `on_event(name, event)` is called with event "acquired", "blocked" (LockBusy), "expired"
# (LockNotOwned on release or extend) or "unavailable" (LockUnavailable), after lib/metrics has
# counted it; a failing hook is logged, never allowed to fail a payment.
on_event: Callable[[str, str], None] = _no_event


# KEYS[1] the lock; ARGV[1] our token. Deletes the lock only if it still holds our token, so a
# holder whose lock expired never deletes the next holder's. Returns 1 if deleted, 0 if not ours.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] the lock; ARGV[1] our token, ARGV[2] milliseconds to add to the remaining lifetime.
# Returns the new remaining lifetime in ms, or 0 if the lock is no longer ours (expired, taken
# over, or without a TTL, which our `SET PX` never leaves: like redis-py, refuse rather than guess).
EXTEND_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local remaining = redis.call('PTTL', KEYS[1])
if remaining < 0 then return 0 end
local ttl = remaining + tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return ttl
"""


class LockError(Exception):
    """Base of the lock failures; never shown to a user as such (callers map them to errors.*)."""

    def __init__(self, message: str, *, name: str):
        super().__init__(message)
        self.name = name


class LockBusy(LockError):
    """Someone else still held the lock after every attempt of the retry policy."""


class LockNotOwned(LockError):
    """The lock expired or was taken over before we released or extended it."""


class LockUnavailable(LockError):
    """Redis failed and could not tell whether we hold the lock; rely on the database fence."""


def _emit(name: str, event: str) -> None:
    for hook in (metrics.lock_event, on_event):
        try:
            hook(name, event)
        except Exception:
            log.exception("lock event hook failed for %s %s", event, name)


def _run(command: list[Any]) -> Any:
    with context.timed("lock"):
        return upstash.execute(command)


def _run_script(script: str, name: str, args: list[Any]) -> Any:
    with context.timed("lock"):
        return cache.run_script(script, [name], args)


class Lock:
    """A lock on the Redis key `name` for `ttl` seconds, like redis-py's.

    `acquire()` tries `1 + retries` times, `retry_delay + jitter * U(0, 1)` seconds apart (the
    jitter keeps fifty double clicks from retrying in lockstep); the defaults are the seed's
    policy, one retry after ~100 ms. Each REST call is bounded by lib.upstash and never retried
    behind our back: a free lock costs one call to acquire and one to release.
    """

    def __init__(self, name: str, ttl: float = 30.0, *, retries: int = 1, retry_delay: float = 0.1,
                 jitter: float = 0.05):
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if retries < 0 or retry_delay < 0 or jitter < 0:
            raise ValueError("retries, retry_delay and jitter must not be negative")
        self.name = name
        self.ttl = ttl
        self.retries = retries
        self.retry_delay = retry_delay
        self.jitter = jitter
        self.token: str | None = None  # set while we believe we hold the lock
        self.acquired_at: float | None = None

    def __repr__(self) -> str:
        return f"<Lock {self.name} ttl={self.ttl}s {'held' if self.token else 'free'}>"

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def held_for(self) -> float:
        """Seconds since we acquired the lock (by our clock), 0 if we do not hold it."""
        return 0.0 if self.acquired_at is None else clock() - self.acquired_at

    # -- public steps ----------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lock; True once held. Raises LockBusy, or LockUnavailable if Redis fails."""
        if self.token is not None:
            raise LockError(f"Cannot acquire lock {self.name}: this Lock already holds it", name=self.name)
        # One token for every attempt: a SET that timed out may land later, and then a later
        # attempt must recognise the lock as ours instead of calling it busy.
        token = secrets.token_hex(16)
        uncertain = False  # an earlier SET timed out: it may still land
        for attempt in range(1 + self.retries):
            if attempt:
                sleep(self.retry_delay + self.jitter * draw())
            acquired, timed_out = self.do_acquire(token)
            uncertain = uncertain or timed_out
            if not acquired and uncertain and not timed_out:
                acquired = self.do_holds(token)  # the late SET may be what made it busy
            if acquired:
                self.token, self.acquired_at = token, clock()
                _emit(self.name, "acquired")
                return True
        # A SET that timed out and was never seen may still land and hold the lock for its ttl:
        # the user waits that long at worst, and the database fence keeps the data right.
        _emit(self.name, "blocked")
        tries = "once" if self.retries == 0 else f"{1 + self.retries} times"
        raise LockBusy(f"Cannot acquire lock {self.name}: not free after trying {tries}",
                       name=self.name)

    def release(self) -> None:
        """Delete the lock if it is still ours. Raises LockNotOwned (and deletes nothing) if not."""
        token = self._held("release")
        self.token = None
        try:
            released = _run_script(RELEASE_SCRIPT, self.name, [token])
        except RedisError as exc:
            raise self._unavailable("release", exc) from exc
        if not released:
            raise self._not_owned("Cannot release a lock that's no longer owned")

    def extend(self, additional: float) -> float:
        """Add `additional` seconds to the lock's remaining lifetime if it is still ours; returns
        the new remaining lifetime in seconds. Raises LockNotOwned if it is not."""
        if additional <= 0:
            raise ValueError("additional must be positive")
        token = self._held("extend")
        try:
            remaining_ms = _run_script(EXTEND_SCRIPT, self.name, [token, max(1, round(additional * 1000))])
        except RedisError as exc:
            raise self._unavailable("extend", exc) from exc
        if not remaining_ms:
            self.token = None
            raise self._not_owned("Cannot extend a lock that's no longer owned")
        return remaining_ms / 1000

    def owned(self) -> bool:
        """True if Redis still holds our token under `name` (one GET; no call if never acquired)."""
        if self.token is None:
            return False
        try:
            return _run(["GET", self.name]) == self.token
        except RedisError as exc:
            raise self._unavailable("check", exc) from exc

    # -- small steps -----------------------------------------------------------------------------

    def do_acquire(self, token: str) -> tuple[bool, bool]:
        """One `SET NX PX`; returns (acquired, timed_out). A timeout is followed by a GET to learn
        whether the SET landed; the SET itself is never sent twice."""
        try:
            reply = _run(["SET", self.name, token, "NX", "PX", self.ttl_ms])
            # upstash-redis casts SET's reply to `== "OK"`; null (taken) arrives as False.
            return reply is True or reply == "OK", False
        except RedisCommandError as exc:  # refused, so it did not run; nothing to check
            raise self._unavailable("acquire", exc) from exc
        except RedisUnavailable as exc:
            log.warning("lock %s: SET timed out or failed (%s); checking whether it landed", self.name, exc)
            return self.do_holds(token), True

    def do_holds(self, token: str) -> bool:
        """One GET: does `name` hold `token`? LockUnavailable if Redis cannot say."""
        try:
            return _run(["GET", self.name]) == token
        except RedisError as exc:
            raise self._unavailable("acquire", exc) from exc

    def _held(self, action: str) -> str:
        if self.token is None:
            raise LockError(f"Cannot {action} an unlocked lock ({self.name})", name=self.name)
        return self.token

    def _not_owned(self, message: str) -> LockNotOwned:
        _emit(self.name, "expired")
        return LockNotOwned(f"{message}: {self.name} (held {self.held_for():.2f} s, ttl {self.ttl} s)",
                            name=self.name)

    def _unavailable(self, action: str, exc: Exception) -> LockUnavailable:
        _emit(self.name, "unavailable")
        return LockUnavailable(f"Cannot {action} lock {self.name}: Redis did not answer ({exc})", name=self.name)


@contextmanager
def with_lock(name: str, ttl: float = 30.0, **policy: Any) -> Iterator[Lock]:
    """Acquire `name`, yield the Lock, always release it.

    Raises LockBusy or LockUnavailable before the block runs. On exit:
    - the block raised: its exception propagates; a failed release is only logged beside it;
    - the lock expired while the block worked: logged and LockNotOwned is raised, because
      another request may have run the same critical section meanwhile; the database fence
      decided which write won, and the caller decides what to answer;
    - Redis failed at release: logged only; the block's work is done and the lock expires
      by itself within `ttl`.
    """
    lock = Lock(name, ttl, **policy)
    lock.acquire()
    try:
        yield lock
    except BaseException:
        if lock.token is not None:  # not already released, or lost through extend()
            try:
                lock.release()
            except LockError as exc:
                log.warning("lock %s: release after a failure did not go through: %s", name, exc)
        raise
    if lock.token is None:
        return
    try:
        lock.release()
    except LockNotOwned as exc:
        log.warning("lock %s expired while its holder worked: %s", name, exc)
        raise
    except LockUnavailable as exc:
        log.warning("lock %s: %s; it expires by itself", name, exc)
