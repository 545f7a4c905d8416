"""Distributed locks over Upstash, so one rent payment or visit booking runs at a time per lease or slot.

A random token is set with `SET NX PX`; a Lua compare-and-delete releases the lock only while it
still holds that token. Why the lock is only a courtesy: a lock can expire while its holder still
works (a slow PayDunya call, a paused function), and then a second holder enters (Kleppmann, "How
to do distributed locking", 2016). Only the storage can reject the late write, so the database's
unique constraints and RPCs are the fence (docs/write-path.md, "The rule"); the lock spares users a second
invoice and answers a double click with "Paiement en cours", not a conflict.

This module is the mechanism; the policy every write follows (what a busy lock answers, what
"Redis down" means, what an expired lock means) is written once, in lib/domain/locking.under_lock.

    LockError            base; carries the lock's `name`
    ├── LockBusy         still held by someone else after the retry policy
    ├── LockNotOwned     expired or taken over before we released it
    └── LockUnavailable  Redis could not tell us (down, slow, skipped by the breaker, refused)

A `Lock` is a per-request object; do not share one between threads. Like redis-py's, it is a
context manager: `with Lock(name, ttl) as lock:` acquires on entering (raising what `acquire`
raises: the block then never runs) and releases on leaving, whatever the block raised.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from types import TracebackType
from typing import Any

from lib import context, metrics
from lib.edge import upstash
from lib.edge.upstash import RedisError, RedisRejected, RedisSkipped, RedisUnavailable

log = logging.getLogger(__name__)

# Replaceable in tests: the sleep between attempts, the clock that times a holding, the jitter draw.
sleep = time.sleep
clock = time.monotonic
draw = random.random

# KEYS[1] a key holding a token (a lock, an Idempotency-Key's "running" marker); ARGV[1] our token.
# Deletes the key only if it still holds our token, so a holder whose lock expired never deletes
# the next holder's. Returns 1 if deleted, 0 if not ours. The one compare-and-delete in lib.
RELEASE = upstash.Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""", writes=True)


def release_if_held(name: str, token: str) -> bool:
    """Delete `name` if it still holds `token`; True if it did. Raises RedisError if Redis fails."""
    return bool(upstash.run(RELEASE, [name], [token]))


class LockError(Exception):
    """Base of the lock failures; never shown to a user as such (callers map them to errors.*)."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class LockBusy(LockError):
    """Someone else still held the lock after every attempt of the retry policy."""


class LockNotOwned(LockError):
    """The lock expired or was taken over before we released it."""


class LockUnavailable(LockError):
    """Redis failed and could not tell whether we hold the lock; rely on the database fence."""


def _run(command: list[Any], *, force: bool = False) -> Any:
    with context.timed("lock"):
        return upstash.execute(command, force=force)


class Lock:
    """A lock on the Redis key `name` for `ttl` seconds, like redis-py's (the writes' ttl is
    lib/domain/locking.LOCK_TTL: the policy, not the mechanism, says how long a write may take).

    `acquire()` tries `1 + retries` times, `retry_delay + jitter * U(0, 1)` seconds apart (the
    jitter keeps fifty double clicks from retrying in lockstep); the defaults are the seed's
    policy, one retry after ~100 ms. Each REST call is bounded by lib.edge.upstash and never retried
    behind our back: a free lock costs one command to acquire and one to release.

    `raise_on_release_error` (redis-py's name): whether leaving a `with` block raises what
    `release` raises (LockNotOwned, LockUnavailable); False logs it instead, and the block's own
    error, if any, is what propagates.
    """

    def __init__(self, name: str, ttl: float, *, retries: int = 1, retry_delay: float = 0.1,
                 jitter: float = 0.05, raise_on_release_error: bool = True) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if retries < 0 or retry_delay < 0 or jitter < 0:
            raise ValueError("retries, retry_delay and jitter must not be negative")
        self.name = name
        self.ttl = ttl
        self.retries = retries
        self.retry_delay = retry_delay
        self.jitter = jitter
        self.raise_on_release_error = raise_on_release_error
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

    def acquire(self) -> None:
        """Take the lock. Raises LockBusy, or LockUnavailable if Redis cannot say."""
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
                metrics.lock_event(self.name, "acquired")
                return
        # A SET that timed out and was never seen may still land and hold the lock for its ttl:
        # the user waits that long at worst, and the database fence keeps the data right.
        metrics.lock_event(self.name, "blocked")
        tries = "once" if self.retries == 0 else f"{1 + self.retries} times"
        raise LockBusy(f"Cannot acquire lock {self.name}: not free after trying {tries}", name=self.name)

    def release(self) -> None:
        """Delete the lock if it is still ours. Raises LockNotOwned (and deletes nothing) if not,
        LockUnavailable if Redis cannot say (the lock then expires by itself within its ttl)."""
        if self.token is None:
            raise LockError(f"Cannot release an unlocked lock ({self.name})", name=self.name)
        token, self.token = self.token, None
        try:
            with context.timed("lock"):
                released = release_if_held(self.name, token)
        except RedisError as exc:
            raise self._unavailable("release", exc) from exc
        if not released:
            metrics.lock_event(self.name, "expired")
            raise LockNotOwned(f"Cannot release a lock that's no longer owned: {self.name} "
                               f"(held {self.held_for():.2f} s, ttl {self.ttl} s)", name=self.name)

    # -- as a context manager --------------------------------------------------------------------

    def __enter__(self) -> Lock:
        """`acquire()`, and the lock for the `with` block."""
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """`release()`, whatever the block raised. A release that fails raises (then the block's
        error, if any, is its `__context__`), or is logged when `raise_on_release_error` is False:
        the lock expired under us (the database fenced any overlap) or Redis could not say (it
        expires by itself within its ttl)."""
        try:
            self.release()
        except LockNotOwned as error:
            if self.raise_on_release_error:
                raise
            log.warning("%s; the database fenced any overlap", error)
        except LockUnavailable as error:
            if self.raise_on_release_error:
                raise
            log.warning("%s; it expires by itself", error)

    # -- small steps -----------------------------------------------------------------------------

    def do_acquire(self, token: str) -> tuple[bool, bool]:
        """One `SET NX PX`; returns (acquired, timed_out). A timeout is followed by a GET to learn
        whether the SET landed; the SET itself is never sent twice."""
        try:
            return _run(["SET", self.name, token, "NX", "PX", self.ttl_ms]) == "OK", False
        except (RedisSkipped, RedisRejected) as exc:  # nothing ran: there is nothing to check
            raise self._unavailable("acquire", exc) from exc
        except RedisUnavailable as exc:
            log.warning("lock %s: SET timed out or failed (%s); checking whether it landed", self.name, exc)
            return self.do_holds(token), True
        except RedisError as exc:  # refused, so it did not run; nothing to check
            raise self._unavailable("acquire", exc) from exc

    def do_holds(self, token: str) -> bool:
        """One GET: does `name` hold `token`? Sent even though the breaker just opened (it must know
        whether its own SET landed). LockUnavailable if Redis cannot say."""
        try:
            held: object = _run(["GET", self.name], force=True)
            return held == token
        except RedisError as exc:
            raise self._unavailable("acquire", exc) from exc

    def _unavailable(self, action: str, exc: Exception) -> LockUnavailable:
        metrics.lock_event(self.name, "unavailable")
        return LockUnavailable(f"Cannot {action} lock {self.name}: Redis did not answer ({exc})", name=self.name)
