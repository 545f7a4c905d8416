"""Cache-aside over Upstash: a hit is one plain read command, stampede protection, tag invalidation, a fail-safe.

    value = cache.fetch(keys.property_detail(123), lambda: db_read_property(123))
    cache.invalidate(keys.change_tags("properties", before, after), changes=[change_id])

An entry is a string: a header (when it expires by Redis's clock, how long it took to load, its
stale window, the version of each tag when the database was read) and the JSON value. A tag's
version lives in `dousell:meta:tag:<tag>`; invalidating a tag writes a new random version, so
every entry built on the old one reads as a miss (O(1), no KEYS, no SCAN), and a fill that read
the database before the invalidation is refused when it tries to land (the versions it carries
are no longer current): no stale set survives a write.

A read is one `MGET` of the entry and its tags, judged here: present, built on the current tag
versions, inside its TTL and not drawn for an early refresh (XFetch, Vattani et al.) → HIT. That
is all a hit costs: one billed command, no script, no write (not even a counter: lib/metrics
counts in the instance). Anything else goes to CLAIM, one key-locked script that decides again,
atomically:
- entry past its TTL but inside its stale window, someone reloading → STALE, served meanwhile;
- no valid entry, someone loading → WAIT: poll briefly (READ, read-only) for its value instead
  of querying the database;
- otherwise → LOAD (or REFRESH, early): this caller takes the fill lock, loads, and FILLs.
A miss is three commands. When Upstash fails or times out, the read goes to the database
(BYPASS); lib/upstash's circuit breaker then skips Redis for a growing interval, so an outage
costs one timeout per warm instance, not one per request. A full database (Upstash's default: no
eviction) refuses the claim or the fill: the value is answered from the database and not
stored; hits go on.

An invalidation that cannot reach Redis is not kept here: every change is in the database's
outbox until its tags are bumped (lib/outbox, docs/invalidation.md). The read that probes
Redis after an outage first runs the recovery hooks (the outbox drain) before it trusts an entry.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lib import context, entries, keys, locks, metrics, upstash
from lib.entries import CLAIM, FILL, READ
from lib.upstash import RedisCommandError, RedisError, RedisFull

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replaceable in tests: the clock of the waiters' deadline, the sleep between polls, XFetch's draw,
# the wall clock a hit compares an entry's expiry with (the entry's is Redis's: a few ms of skew
# between an instance and Upstash moves an expiry by as much).
clock = time.monotonic
sleep = time.sleep
draw = random.random
wall = time.time

XFETCH_BETA = 1.0
JITTER = 0.1  # TTLs are spread ±10 % so keys filled together do not expire together
FILL_LOCK_MS = 6_000  # longer than a database call may take (lib.db bounds it at 5 s)
WAIT_DEADLINE = 2.5  # seconds a caller waits for another's fill before loading itself
TAG_TTL_MS = 2 * 24 * 3600 * 1000  # far beyond any entry; refreshed at each fill


def stale_window(ttl: int) -> int:
    """Seconds an entry past its TTL may still be served while one caller refreshes it."""
    return max(5, min(ttl // 2, 300))


# KEYS: the tag version keys, then one applied-change marker per change id (lib/outbox), then the
# keys to delete. ARGV[1] number of tags, ARGV[2] number of markers, ARGV[3] tag ttl ms, ARGV[4]
# marker ttl ms, ARGV[5] marker value (the tags, JSON), ARGV[6..] a new random version per tag.
# The markers are written after the tags, in the same script: a marker never claims a bump that
# did not happen. Returns the number of tags bumped.
BUMP = upstash.Script("""
local ntags, nmarks = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, ntags do redis.call('SET', KEYS[i], ARGV[5 + i], 'PX', ARGV[3]) end
for i = ntags + 1, ntags + nmarks do redis.call('SET', KEYS[i], ARGV[5], 'PX', ARGV[4]) end
if #KEYS > ntags + nmarks then redis.call('DEL', unpack(KEYS, ntags + nmarks + 1)) end
return ntags
""", writes=True)

# Run by the read that probes Redis after an outage, before it reads an entry (lib/outbox
# registers its drain, which sends with force=True: the breaker is half-open). Each returns False
# if Redis failed again. Kept as a list, not an import, so lib/cache imports nothing that imports it.
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
    if upstash.breaker.state != "closed" and upstash.breaker.allow() and not _after_outage():
        return _bypass(loader, family)
    keys_ = [key, keys.fill_lock_key(key), *(keys.tag_key(tag) for tag in tags)]
    odds = [max(draw(), 1e-12), XFETCH_BETA]
    deadline = clock() + WAIT_DEADLINE
    delay = 0.02
    first = True
    while True:
        try:
            with context.timed("cache"):
                # The first look is a plain MGET of the entry and its tags: a hit ends there. A
                # waiter polls with READ. Anything else is decided by CLAIM, which may take the lock.
                status, value = _plain_hit(keys_, odds) if first else upstash.run(READ, keys_, odds)
                if status not in ("HIT", "STALE", "WAIT"):
                    token = secrets.token_hex(8)
                    fresh = [secrets.token_hex(6) for _ in tags]
                    status, value, *versions = upstash.run(CLAIM, keys_, [*odds, token, FILL_LOCK_MS, TAG_TTL_MS,
                                                                          *fresh])
        except RedisFull:  # the database is full: nothing new can be stored, reads still work
            metrics.count_refused_write()
            return _answer_unstored(loader, family)
        except RedisCommandError as exc:  # Upstash answered, and refused: a wrong key type, a script bug
            log.error("cache: Upstash refused a %s read (%s); answering from the database", family, exc)
            return _bypass(loader, family)
        except RedisError:  # down, slow, or skipped by the breaker
            return _bypass(loader, family)
        first = False
        metrics.count_cache(family, status)
        if status in ("HIT", "STALE"):
            context.set_cache_status(status)
            return json.loads(value)
        if status != "WAIT":
            context.set_cache_status("MISS")
            return _load_and_fill(keys_, versions, token, loader, ttl)
        if clock() >= deadline:
            # The filler is slow or gone: answer from the database without storing anything.
            context.set_cache_status("MISS")
            metrics.count_cache(family, "TIMEOUT")
            return loader()
        sleep(delay)
        delay = min(delay * 2, 0.2)


def _plain_hit(keys_: list[str], odds: list[float]) -> tuple[str, str | None]:
    """("HIT", the JSON) if the entry is a plain hit (entries.fresh_value); ("LOAD", None) if CLAIM
    must decide. One MGET of the entry and its tags."""
    raw, *versions = upstash.execute(["MGET", keys_[0], *keys_[2:]])
    value = entries.fresh_value(raw, versions, odds[0], odds[1], wall() * 1000)
    return ("HIT", value) if value is not None else ("LOAD", None)


def _answer_unstored(loader: Callable[[], T], family: str) -> T:
    context.set_cache_status("MISS")
    metrics.count_cache(family, "LOAD")
    return loader()


def _load_and_fill(keys_: list[str], versions: list[str], token: str, loader: Callable[[], T], ttl: int) -> T:
    start = time.perf_counter()
    try:
        value = loader()
    except BaseException:
        _release(keys_[1], token)
        raise
    load_ms = int((time.perf_counter() - start) * 1000) + 1
    ttl_ms = int(ttl * 1000 * (1 + random.uniform(-JITTER, JITTER)))
    window_ms = stale_window(ttl) * 1000
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        with context.timed("cache"):
            upstash.run(FILL, keys_, [payload, load_ms, ttl_ms, window_ms, token, TAG_TTL_MS, *versions])
    except RedisFull:  # not stored; the fill lock expires by itself after FILL_LOCK_MS
        metrics.count_refused_write()
    except RedisError:
        pass  # not stored; a failure already opened the breaker, and the fill lock expires by itself
    # JSON round trip, so a miss answers exactly what a hit will (dates as strings, etc.).
    return json.loads(payload)


def _release(fill_key: str, token: str) -> None:
    try:
        locks.release_if_held(fill_key, token)
    except RedisError:
        pass  # the fill lock expires by itself after FILL_LOCK_MS; a failure already opened the breaker


def invalidation_command(tags: Sequence[str], delete: Sequence[str] = (), changes: Sequence[str] = ()) -> list[Any]:
    """The one command that invalidates `tags` (a new random version each: every entry built on
    the old one is a miss, and a fill that read the database before is refused), records `changes`
    (ids of the API's own writes, lib/outbox) as applied with these tags, and removes the `delete`
    keys: one billed command however many tags."""
    tags = sorted(set(tags))
    markers = [keys.applied_change(change) for change in changes]
    return BUMP.command([*(keys.tag_key(tag) for tag in tags), *markers, *delete],
                        [len(tags), len(markers), TAG_TTL_MS, keys.APPLIED_CHANGE_TTL * 1000,
                         json.dumps(tags, separators=(",", ":")), *(secrets.token_hex(6) for _ in tags)])


def invalidate(tags: Sequence[str], *, changes: Sequence[str] = (), delete: Sequence[str] = (),
               force: bool = False) -> bool:
    """Give each tag a new version (every entry built on the old one becomes a miss), mark `changes`
    applied and delete `delete` keys, in one command. `force`: send it while the breaker is
    half-open (the probe's recovery hook).

    Returns False if Redis could not be told. Nothing is kept in memory for later: the change
    waits in the database's outbox, and the webhook, the cron or the first read after the
    outage applies it (lib/outbox).
    """
    if not (tags or changes or delete):
        return True
    try:
        with context.timed("cache"):
            try:
                upstash.execute(invalidation_command(tags, delete, changes), force=force)
            except RedisFull:
                # No room for new versions: dropping them invalidates just as well. No marker then:
                # the outbox's drain does it again, which is harmless.
                upstash.execute(["DEL", *(keys.tag_key(tag) for tag in set(tags)), *delete], force=force)
    except RedisError:  # down, slow or skipped (lib/upstash's breaker): the outbox keeps the change
        return False
    return True


def on_recovery(hook: Callable[[], bool]) -> None:
    """Run `hook` when a read probes Redis after an outage (see `_recovery_hooks`); once per hook."""
    if hook not in _recovery_hooks:
        _recovery_hooks.append(hook)


def _after_outage() -> bool:
    """This caller is the breaker's probe: it applies what the outage held back before it reads an
    entry. False if Redis failed again (the caller bypasses it)."""
    if not all(hook() for hook in list(_recovery_hooks)):
        return False
    if upstash.breaker.state == "half-open":  # nothing to drain: the probe is still to be made
        try:
            upstash.execute(["PING"], force=True)
        except RedisError:
            return False
    return True
