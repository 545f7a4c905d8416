"""Cache-aside over Upstash: a hit is one plain read command, stampede protection, tag invalidation, a fail-safe.

    value = cache.fetch(keys.property_detail(123), lambda: db_read_property(123))
    cache.invalidate(keys.property_changed(123, owner_id, {"Dakar"}))

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
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lib import context, keys, locks, metrics, upstash
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


# What READ and CLAIM both know of an entry. KEYS[1] entry, KEYS[2] fill lock, KEYS[3..] tags;
# ARGV[1] a random draw in (0, 1], ARGV[2] XFetch's beta. Leaves: `value` (false unless the entry
# is there and built on every tag's current version), `remaining` (ms of its TTL left, <= 0 in the
# stale window, by Redis's clock), `early` (XFetch draws a refresh now) and `versions` (each
# tag's, false if missing). An entry is `<expires ms>|<load ms>|<window ms>|<v1,v2..>\n<json>`.
_LOOKUP = """
local ntags = #KEYS - 2
local versions = {}
for i = 1, ntags do versions[i] = redis.call('GET', KEYS[2 + i]) end
local raw = redis.pcall('GET', KEYS[1])  -- an entry of an older format (a hash) reads as missing
local value, remaining, early = false, 0, false
if type(raw) == 'string' then
  local expires, load, _, built, payload = string.match(raw, '^(%d+)|(%d+)|(%d+)|([^\\n]*)\\n(.*)$')
  local valid, n = payload ~= nil, 0
  if valid then
    for version in string.gmatch(built, '[^,]+') do
      n = n + 1
      if version ~= versions[n] then valid = false end
    end
  end
  if valid and n == ntags then
    local t = redis.call('TIME')
    remaining = tonumber(expires) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    value = payload
    early = remaining > 0 and tonumber(load) * tonumber(ARGV[2]) * -math.log(tonumber(ARGV[1])) >= remaining
  end
end
"""

# Read-only: what a waiter polls with. Returns {status, value or false}: HIT, STALE (past its TTL,
# someone reloads), WAIT (no valid entry, someone loads), REFRESH (XFetch: reload early) or LOAD
# (nobody loads, or the loader gave up: go).
READ = upstash.Script(_LOOKUP + """
if value and remaining > 0 and not early then return {'HIT', value} end
local loading = redis.call('EXISTS', KEYS[2]) == 1
if value and remaining > 0 then
  if loading then return {'HIT', value} end
  return {'REFRESH', value}
end
if value and loading then return {'STALE', value} end
if loading then return {'WAIT', false} end
return {'LOAD', value}
""", writes=False)

# What a read that is not a plain hit decides, atomically, taking the fill lock when this caller is
# to load. Also ARGV[3] the fill-lock token, ARGV[4] its ms, ARGV[5] the tag ttl ms, ARGV[6..] a
# fresh version per tag (set only where the tag key is missing). Returns {status, value or false,
# versions...}: HIT or STALE (served), WAIT, or LOAD / REFRESH with the tag versions to fill with.
CLAIM = upstash.Script(_LOOKUP + """
if value and remaining > 0 and not early then return {'HIT', value} end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  if value and remaining > 0 then return {'HIT', value} end
  if value then return {'STALE', value} end
  return {'WAIT', false}
end
local out = {'LOAD', false}
if value and remaining > 0 then out[1] = 'REFRESH' end
for i = 1, ntags do
  if not versions[i] then
    versions[i] = ARGV[5 + i]
    redis.call('SET', KEYS[2 + i], versions[i], 'PX', ARGV[5])
  end
  out[2 + i] = versions[i]
end
return out
""", writes=True)

# KEYS[1] entry, KEYS[2] fill lock, KEYS[3..] tags. ARGV[1] value, ARGV[2] load ms, ARGV[3] ttl ms,
# ARGV[4] stale window ms, ARGV[5] fill-lock token, ARGV[6] tag ttl ms, ARGV[7..] the versions the
# reader saw before reading the database. Returns 1 if stored, 0 if refused because a tag moved
# meanwhile (an invalidation happened while we read: our value may predate the write). The entry
# expires (by Redis's clock) after its TTL, and its key after the stale window too.
FILL = upstash.Script("""
local ntags = #KEYS - 2
local current = true
for i = 1, ntags do
  if redis.call('GET', KEYS[2 + i]) ~= ARGV[6 + i] then current = false; break end
end
if current then
  local versions = {}
  for i = 1, ntags do
    versions[i] = ARGV[6 + i]
    redis.call('PEXPIRE', KEYS[2 + i], ARGV[6])
  end
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
  local head = string.format('%d|%d|%d|', expires, tonumber(ARGV[2]), tonumber(ARGV[4]))
  redis.call('SET', KEYS[1], head .. table.concat(versions, ',') .. '\\n' .. ARGV[1],
             'PX', tonumber(ARGV[3]) + tonumber(ARGV[4]))
end
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
if current then return 1 end
return 0
""", writes=True)

# KEYS[1..ARGV[1]] tag version keys, then the keys to delete. ARGV[2] the tag ttl ms, ARGV[3..] a
# new random version per tag. Returns the number of tags bumped.
BUMP = upstash.Script("""
local ntags = tonumber(ARGV[1])
for i = 1, ntags do redis.call('SET', KEYS[i], ARGV[2 + i], 'PX', ARGV[2]) end
if #KEYS > ntags then redis.call('DEL', unpack(KEYS, ntags + 1)) end
return ntags
""", writes=True)

_pending_lock = threading.Lock()
_pending_tags: set[str] = set()  # invalidations that could not reach Redis, sent at the next chance


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
    if _pending_tags and not _flush_pending():
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
    """("HIT", the JSON) if the entry is there, built on every tag's current version, inside its TTL
    and not drawn for an early refresh; ("LOAD", None) otherwise: CLAIM decides. One MGET."""
    raw, *versions = upstash.execute(["MGET", keys_[0], *keys_[2:]])
    if raw is None:
        return "LOAD", None
    head, newline, payload = raw.partition("\n")
    fields = head.split("|")
    if not newline or len(fields) != 4 or not (fields[0].isdigit() and fields[1].isdigit()):
        return "LOAD", None  # not an entry of ours (an older format): CLAIM replaces it
    built = fields[3].split(",") if fields[3] else []
    if built != versions:  # a tag moved, or vanished: invalidated
        return "LOAD", None
    remaining = int(fields[0]) - wall() * 1000
    early = int(fields[1]) * odds[1] * -math.log(odds[0]) >= remaining
    return ("HIT", payload) if remaining > 0 and not early else ("LOAD", None)


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


def invalidation_command(tags: Sequence[str], delete: Sequence[str] = ()) -> list[Any]:
    """The one command that invalidates `tags` (a new random version each: every entry built on
    the old one is a miss, and a fill that read the database before is refused) and removes the
    `delete` keys: one billed command however many tags."""
    return BUMP.command([*(keys.tag_key(tag) for tag in tags), *delete],
                        [len(tags), TAG_TTL_MS, *(secrets.token_hex(6) for _ in tags)])


def invalidate(tags: Sequence[str], *, delete: Sequence[str] = ()) -> bool:
    """Give each tag a new version (every entry built on the old one becomes a miss) and delete
    `delete` keys, in one command. Returns False if Redis could not be told: the tags are kept
    and sent with this instance's next Redis call."""
    with _pending_lock:
        _pending_tags.update(tags)
    return _flush_pending(delete)


def _flush_pending(delete: Sequence[str] = ()) -> bool:
    with _pending_lock:
        tags = sorted(_pending_tags)
    if not tags and not delete:
        return True
    try:
        with context.timed("cache"):
            try:
                upstash.execute(invalidation_command(tags, delete))
            except RedisFull:  # no room for new versions: dropping them invalidates just as well
                upstash.execute(["DEL", *(keys.tag_key(tag) for tag in tags), *delete])
    except RedisError:  # down, slow or skipped (lib/upstash's breaker): kept for the next call
        return False
    with _pending_lock:
        _pending_tags.difference_update(tags)
    return True
