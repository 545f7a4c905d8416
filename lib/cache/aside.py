"""Cache-aside over Upstash: a hit is one command on the leader, stampede protection, tag invalidation, a fail-safe.

    value = aside.fetch(keys.property_detail(123), lambda: db_read_property(123))
    aside.invalidate(invalidation.change_tags("properties", before, after), changes=[change_id])

An entry is a string: a header (when it expires by Redis's clock, how long it took to load, its
stale window, the version of each tag when the database was read) and the JSON value. A tag's
version lives in `dousell:meta:tag:<tag>`; invalidating a tag writes a new random version, so
every entry built on the old one reads as a miss (O(1), no KEYS, no SCAN), and a fill that read
the database before the invalidation is refused when it tries to land (the versions it carries
are no longer current): no stale set survives a write.

A read is one READ of the entry, its fill lock and its tags: a key-locked script that writes
nothing and runs on Upstash's leader (no `no-writes` flag, so never on a replica that has not yet
seen a bump another instance made: docs/cache-strategy.md). Present, built on the current tag
versions, inside its TTL and not drawn for an early refresh (XFetch, Vattani et al.) → HIT. That is
all a hit costs: one billed command, no global lock, no write (not even a counter: lib/metrics
counts in the instance). READ also says:
- entry past its TTL but inside its stale window, someone reloading → STALE, served meanwhile;
- no valid entry, someone loading → WAIT: poll briefly (READ again) for its value instead of
  querying the database;
Anything else goes to CLAIM, one key-locked script that decides again, atomically, and may answer
LOAD (or REFRESH, early): this caller takes the fill lock, loads, and FILLs. A miss is three commands. Upstash failing or timing out is a BYPASS (answered from the
database; lib/edge/upstash's breaker then skips Redis a while); a full database refuses the claim or
the fill and the value is not stored. A failed invalidation is not kept here: the database's
outbox keeps every change until its tags are bumped (lib/cache/outbox, docs/invalidation.md).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar, cast

from lib import context, keys, metrics
from lib.cache import entries, locks
from lib.edge import upstash
from lib.edge.upstash import RedisCommandError, RedisError, RedisFull

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replaceable in tests: the clock of the waiters' deadline, the sleep between polls, XFetch's draw,
# the wall clock an MGET-judged hit (the drills' negative control) compares an entry's expiry with (the entry's is Redis's: a few ms of skew
# between an instance and Upstash moves an expiry by as much).
clock = time.monotonic
sleep = time.sleep
draw = random.random
wall = time.time

XFETCH_BETA = 1.0
FILL_LOCK_MS = 6_000  # longer than a database call may take (lib.db bounds it at 5 s)
WAIT_DEADLINE = 2.5  # seconds a caller waits for another's fill before loading itself
# A waiter wakes when the filler's value is expected (the fill lock says when: the key's last load
# time, or its family's, plus the family's deviation), POLL_MARGIN later: the filler's FILL travels
# to Upstash as the waiter's READ does. A filler late past that is polled at OVERDUE_POLL, doubling
# up to MAX_POLL (the lock said nothing: the same).
POLL_MARGIN = 0.002
OVERDUE_POLL = 0.02
MAX_POLL = 0.2


def wake_after(expected_in_ms: int | None, overdue_polls: int) -> float:
    """Seconds a waiter sleeps before its next poll: until the filler's value is expected plus
    POLL_MARGIN; once the filler is overdue (or its lock said nothing), OVERDUE_POLL doubling up to
    MAX_POLL. `overdue_polls`: the polls that already found it overdue."""
    if expected_in_ms is not None and expected_in_ms > 0:
        return expected_in_ms / 1000 + POLL_MARGIN
    return min(OVERDUE_POLL * 2.0 ** overdue_polls, MAX_POLL)


# Run by the read that probes Redis after an outage, before it reads an entry (lib/cache/outbox
# registers its drain, which sends with force=True: the breaker is half-open). Each returns False
# if Redis failed again. Kept as a list, not an import, so lib/cache/aside imports nothing that imports it.
_recovery_hooks: list[Callable[[], bool]] = []


def _bypass(loader: Callable[[], T], family: str) -> T:
    context.set_cache_status("BYPASS")
    metrics.count_cache(family, "BYPASS")
    return loader()


def fetch(entry: keys.CacheKey, loader: Callable[[], T]) -> T:
    """`get_or_load` with the family's TTL and tags."""
    return get_or_load(entry.key, loader, entry.ttl, entry.tags, family=entry.family)


def get_or_load(key: str, loader: Callable[[], T], ttl: int, tags: Sequence[str] = (), *, family: str = "other") -> T:
    """The cached value of `key`, or `loader()`'s, stored for about `ttl` seconds under `tags`.

    `loader` may return any JSON value, `None` included (a cached `None` or `[]` is a hit).
    Never raises for a Redis problem: the database answers instead. A bug raises.
    """
    loader = metrics.attributed(family, loader)  # its queries count for the queries-avoided estimate
    if not upstash.breaker.closed and upstash.breaker.allow() and not _after_outage():
        return _bypass(loader, family)
    keys_ = entries.entry_keys(key, tags, family)
    odds = [max(draw(), 1e-12), XFETCH_BETA]
    deadline = clock() + WAIT_DEADLINE
    overdue = 0
    first = True
    while True:
        try:
            with context.timed("cache"):
                # The first look, and a waiter's polls, are READ on the leader: a hit ends there.
                # Anything else is decided by CLAIM, which may take the lock.
                if not first:
                    context.count_poll()
                look = first_look(keys_, odds)
                if look.status not in ("HIT", "STALE", "WAIT"):
                    look = entries.claim(keys_, odds, lock_ms=FILL_LOCK_MS)
        except RedisFull:  # the database is full: nothing new can be stored, reads still work
            metrics.count_refused_write()
            return _answer_unstored(loader, family)
        except RedisCommandError as exc:  # Upstash answered, and refused: a wrong key type, a script bug
            log.error("cache: Upstash refused a %s read (%s); answering from the database", family, exc)
            return _bypass(loader, family)
        except RedisError:  # down, slow, or skipped by the breaker
            return _bypass(loader, family)
        first = False
        metrics.count_cache(family, look.status)
        if look.status in ("HIT", "STALE"):
            context.set_cache_status(look.status)
            return cast(T, json.loads(look.value or ""))  # a hit is the loader's value after a JSON round trip
        if look.status != "WAIT":
            context.set_cache_status("MISS")
            return _load_and_fill(keys_, look, loader, ttl)
        left = deadline - clock()
        if left <= 0:
            # The filler is slow or gone: answer from the database without storing anything.
            context.set_cache_status("MISS")
            metrics.count_cache(family, "TIMEOUT")
            return loader()
        pause = wake_after(look.expected_in, overdue)  # when the filler is expected, by its fill lock
        if look.expected_in is None or look.expected_in <= 0:
            overdue += 1
        sleep(min(pause, left))


# Replaceable in drills and tests only: how a read looks (the drills' negative control puts back a
# hit judged from one MGET, which a replica may answer, to show the stale reads READ prevents).
first_look: Callable[[list[str], list[float]], entries.Look] = entries.read


def _answer_unstored(loader: Callable[[], T], family: str) -> T:
    context.set_cache_status("MISS")
    metrics.count_cache(family, "LOAD")
    return loader()


def _load_and_fill(keys_: list[str], claimed: entries.Look, loader: Callable[[], T], ttl: int) -> T:
    lock = claimed.lock or ""
    start = time.perf_counter()
    try:
        value = loader()
    except BaseException:
        _release(keys_[1], lock)
        raise
    load_ms = int((time.perf_counter() - start) * 1000) + 1
    payload = entries.serialize(value)
    try:
        with context.timed("cache"):
            entries.fill(keys_, payload, load_ms=load_ms, ttl=ttl, lock=lock, versions=claimed.versions)
    except RedisFull:  # not stored; the fill lock expires by itself after FILL_LOCK_MS
        metrics.count_refused_write()
    except RedisError:
        pass  # not stored; a failure already opened the breaker, and the fill lock expires by itself
    # JSON round trip, so a miss answers exactly what a hit will (dates as strings, etc.).
    return cast(T, json.loads(payload))


def _release(fill_key: str, lock: str) -> None:
    try:
        locks.release_if_held(fill_key, lock)
    except RedisError:
        pass  # the fill lock expires by itself after FILL_LOCK_MS; a failure already opened the breaker


def invalidate(tags: Sequence[str], *, changes: Sequence[str] = (), delete: Sequence[str] = (),
               force: bool = False) -> bool:
    """Give each tag a new version (every entry built on the old one becomes a miss), mark `changes`
    (ids of the API's own writes, lib/cache/outbox) applied with these tags and delete `delete` keys, in
    one command. `force`: send it while the breaker is half-open (the probe's recovery hook). A
    writer that also refills the keys it knows calls lib/cache/refill.invalidate instead.

    Returns False if Redis could not be told. Nothing is kept in memory for later: the change
    waits in the database's outbox, and the webhook, the cron or the first read after the
    outage applies it (lib/cache/outbox).
    """
    tags = sorted(set(tags))
    if not (tags or changes or delete):
        return True
    return bump(tags, changes=changes, delete=delete, force=force) is not None


def bump(tags: Sequence[str], *, changes: Sequence[str] = (), delete: Sequence[str] = (), refills: Sequence[str] = (),
         seen: Mapping[str, str | None] | None = None, lock_ms: int = 0, expected_ms: int = 0,
         force: bool = False) -> entries.Bumped | None:
    """`invalidate`'s one command (lib/cache/entries.bump, which says what `refills`, `seen`, `lock_ms`
    and `expected_ms` are), timed as the cache's. None if Redis could not be told (down, slow,
    skipped by the breaker: the outbox keeps the change). A full database cannot take new versions:
    the tags are dropped instead, which invalidates just as well, with no marker (the outbox's drain
    does it again, which is harmless) and nothing read or taken for a refill."""
    try:
        with context.timed("cache"):
            try:
                return entries.bump(tags, changes=changes, delete=delete, refills=refills, seen=seen,
                                    lock_ms=lock_ms, expected_ms=expected_ms, force=force)
            except RedisFull:
                upstash.execute(["DEL", *(keys.tag_key(tag) for tag in tags), *delete], force=force)
                return entries.Bumped(taken=False, now=0, before={}, after={}, olds=(), lock="")
    except RedisError:
        return None


def on_recovery(hook: Callable[[], bool]) -> None:
    """Run `hook` when a read probes Redis after an outage (see `_recovery_hooks`); once per hook."""
    if hook not in _recovery_hooks:
        _recovery_hooks.append(hook)


def _after_outage() -> bool:
    """This caller is the breaker's probe: it applies what the outage held back before it reads an
    entry. False if Redis failed again (the caller bypasses it)."""
    if not all(hook() for hook in list(_recovery_hooks)):
        return False
    if upstash.breaker.probing:  # nothing to drain: the probe is still to be made
        try:
            upstash.execute(["PING"], force=True)
        except RedisError:
            return False
    return True
