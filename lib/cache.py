"""Cache-aside over Upstash: one round trip per hit, stampede protection, tag invalidation and a fail-safe.

    value = cache.fetch(keys.property_detail(123), lambda: db_read_property(123))
    cache.invalidate(keys.change_tags("properties", before, after), changes=[change_id])

An entry is a Redis hash: the JSON value (`v`), how long it took to load (`d`, ms), its stale
window (`w`, ms) and, per tag, the tag's version when the database was read (`t1`..`tn`).
A tag's version lives in `dousell:meta:tag:<tag>`; invalidating a tag writes a new random
version, so every entry built on the old one reads as a miss (O(1), no KEYS, no SCAN), and a
fill that read the database before the invalidation is refused when it tries to land (the
versions it carries are no longer current): no stale set survives a write.

One `EVALSHA` per read does the lookup, the tag check, the stampede decision and the metrics:
- fresh entry → HIT, unless XFetch (Vattani et al.) draws an early refresh as expiry nears:
  then this caller reloads, so under steady traffic a hot key never goes cold;
- entry past its TTL but inside its stale window → one caller takes the fill lock and
  reloads, the others are served the stale value (STALE) meanwhile;
- no valid entry → one caller takes the fill lock and loads (MISS); the others poll briefly
  for its value instead of all hitting the database.
When Upstash fails or times out, the read goes to the database (BYPASS) and a circuit breaker
skips Redis for a growing interval (1 s, 2 s, ... 30 s), so an outage costs one timeout per
warm instance, not one per request.

An invalidation that cannot reach Redis is not kept here: every change is in the database's
outbox until its tags are bumped (lib/outbox, docs/invalidation.md). The read that probes
Redis after an outage first runs the recovery hooks (the outbox drain) before it trusts an entry.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lib import context, keys, metrics, upstash
from lib.upstash import RedisCommandError, RedisError

T = TypeVar("T")

# Replaceable in tests: the breaker's clock, the sleep between polls, XFetch's random draw.
clock = time.monotonic
sleep = time.sleep
draw = random.random

XFETCH_BETA = 1.0
JITTER = 0.1  # TTLs are spread ±10 % so keys filled together do not expire together
FILL_LOCK_MS = 6_000  # longer than a database call may take (lib.db bounds it at 5 s)
WAIT_DEADLINE = 2.5  # seconds a caller waits for another's fill before loading itself
TAG_TTL_MS = 2 * 24 * 3600 * 1000  # far beyond any entry; refreshed at each fill
METRICS_TTL = metrics.BUCKET_TTL


def stale_window(ttl: int) -> int:
    """Seconds an entry past its TTL may still be served while one caller refreshes it."""
    return max(5, min(ttl // 2, 300))


# KEYS[1] entry, KEYS[2] fill lock, KEYS[3] metrics (minute), KEYS[4] metrics (hour), KEYS[5..] tags.
# ARGV[1] fill-lock token, ARGV[2] fill-lock ms, ARGV[3] random draw in (0, 1], ARGV[4] XFetch beta,
# ARGV[5] tag ttl ms, ARGV[6] family, ARGV[7] metrics ttl s, ARGV[8..] a fresh version per tag (used
# only when the tag key is missing). Returns {status, value or false, version per tag...} where
# status is HIT, STALE, REFRESH (reload early), LOAD (reload, stale or missing), WAIT (someone loads).
READ_SCRIPT = """
local ntags = #KEYS - 4
local versions = {}
for i = 1, ntags do
  local v = redis.call('GET', KEYS[4 + i])
  if not v then
    v = ARGV[7 + i]
    redis.call('SET', KEYS[4 + i], v, 'PX', ARGV[5])
  end
  versions[i] = v
end
local fields = {'v', 'd', 'w'}
for i = 1, ntags do fields[3 + i] = 't' .. i end
local entry = redis.call('HMGET', KEYS[1], unpack(fields))
local value = entry[1]
local valid = value ~= false
if valid then
  for i = 1, ntags do
    if entry[3 + i] ~= versions[i] then valid = false; break end
  end
end
local status
if valid then
  local remaining = redis.call('PTTL', KEYS[1]) - tonumber(entry[3] or 0)
  if remaining > 0 then
    status = 'HIT'
    local early = tonumber(entry[2] or 0) * tonumber(ARGV[4]) * -math.log(tonumber(ARGV[3]))
    if early >= remaining and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
      status = 'REFRESH'
    end
  elseif redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    status = 'LOAD'
  else
    status = 'STALE'
  end
else
  value = false
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then status = 'LOAD' else status = 'WAIT' end
end
for m = 3, 4 do
  redis.call('HINCRBY', KEYS[m], ARGV[6] .. ':' .. status, 1)
  redis.call('EXPIRE', KEYS[m], ARGV[7])
end
local out = {status, value}
for i = 1, ntags do out[2 + i] = versions[i] end
return out
"""

# KEYS[1] entry, KEYS[2] fill lock, KEYS[3..] tags. ARGV[1] value, ARGV[2] load ms, ARGV[3] ttl ms,
# ARGV[4] stale window ms, ARGV[5] fill-lock token, ARGV[6] tag ttl ms, ARGV[7..] the versions the
# reader saw before reading the database. Returns 1 if stored, 0 if refused because a tag moved
# meanwhile (an invalidation happened while we read: our value may predate the write).
FILL_SCRIPT = """
local ntags = #KEYS - 2
local current = true
for i = 1, ntags do
  if redis.call('GET', KEYS[2 + i]) ~= ARGV[6 + i] then current = false; break end
end
if current then
  local fields = {'v', ARGV[1], 'd', ARGV[2], 'w', ARGV[4]}
  for i = 1, ntags do
    fields[#fields + 1] = 't' .. i
    fields[#fields + 1] = ARGV[6 + i]
    redis.call('PEXPIRE', KEYS[2 + i], ARGV[6])
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]))
end
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
if current then return 1 end
return 0
"""

# KEYS[1] fill lock; ARGV[1] token. Deletes the lock only if it is still ours. Returns 1 or 0.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SHA: dict[str, str] = {}


def _sha(script: str) -> str:
    sha = _SHA.get(script)
    if sha is None:
        sha = _SHA[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


def run_script(script: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA in one round trip; EVAL only when Redis has not seen the script (after a restart)."""
    tail = [len(keys_), *keys_, *map(str, args)]
    try:
        return upstash.execute(["EVALSHA", _sha(script), *tail])
    except RedisCommandError as exc:
        if "NOSCRIPT" not in str(exc):
            raise
        return upstash.execute(["EVAL", script, *tail])


class Breaker:
    """Skips Redis after a failure for a growing interval; one probe per interval decides to close.

    closed → (failure) → open for `base` s → half-open: one caller probes → success closes,
    failure reopens for twice as long (up to `cap`).
    """

    def __init__(self, base: float = 1.0, cap: float = 30.0):
        self.base, self.cap = base, cap
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.state = "closed"
        self.interval = 0.0
        self.until = 0.0

    def allow(self) -> bool:
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and clock() >= self.until:
                self.state = "half-open"  # this caller probes; the others keep bypassing
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.reset()

    def failure(self) -> None:
        with self._lock:
            self.interval = self.base if self.state == "closed" else min(self.cap, self.interval * 2)
            self.state = "open"
            self.until = clock() + self.interval


breaker = Breaker()
# Run by the read that probes Redis after an outage, before it reads an entry (lib/outbox
# registers its drain). Each returns False if Redis failed again. Kept as a list, not an
# import, so lib/cache imports nothing that imports it.
_recovery_hooks: list[Callable[[], bool]] = []


def _metrics_keys() -> tuple[str, str]:
    return metrics.bucket_keys()


def _bypass(loader: Callable[[], T], family: str) -> T:
    context.set_cache_status("BYPASS")
    metrics.count_cache(family, "BYPASS")
    return loader()


def _redis_failed() -> None:
    breaker.failure()


def fetch(entry: keys.CacheKey, loader: Callable[[], T]) -> T:
    """`get_or_load` with the family's TTL and tags."""
    return get_or_load(entry.key, loader, entry.ttl, entry.tags, family=entry.family)


def get_or_load(key: str, loader: Callable[[], T], ttl: int, tags: Sequence[str] = (), *, family: str = "other") -> T:
    """The cached value of `key`, or `loader()`'s, stored for about `ttl` seconds under `tags`.

    `loader` may return any JSON value, `None` included (a cached `None` or `[]` is a hit).
    Never raises for a Redis problem: the database answers instead.
    """
    loader = metrics.attributed(family, loader)  # its queries count for the queries-avoided estimate
    if not breaker.allow():
        return _bypass(loader, family)
    if breaker.state == "half-open" and not _after_outage():
        return _bypass(loader, family)
    token = secrets.token_hex(8)
    tag_keys = [keys.tag_key(tag) for tag in tags]
    fill_key = keys.fill_lock_key(key)
    buckets = _metrics_keys()
    deadline = clock() + WAIT_DEADLINE
    delay = 0.02
    while True:
        fresh = [secrets.token_hex(6) for _ in tags]
        try:
            with context.timed("cache"):
                reply = run_script(
                    READ_SCRIPT,
                    [key, fill_key, *buckets, *tag_keys],
                    [token, FILL_LOCK_MS, max(draw(), 1e-12), XFETCH_BETA, TAG_TTL_MS, family, METRICS_TTL, *fresh],
                )
        except RedisError:
            _redis_failed()
            return _bypass(loader, family)
        breaker.success()
        status, raw, versions = reply[0], reply[1], list(reply[2:])
        if status in ("HIT", "STALE"):
            context.set_cache_status(status)
            return json.loads(raw)
        if status != "WAIT":
            context.set_cache_status("MISS")
            return _load_and_fill(key, fill_key, tag_keys, versions, token, loader, ttl)
        if clock() >= deadline:
            # The filler is slow or gone: answer from the database without storing anything.
            context.set_cache_status("MISS")
            metrics.count_cache(family, "TIMEOUT")
            return loader()
        sleep(delay)
        delay = min(delay * 2, 0.2)


def _load_and_fill(key: str, fill_key: str, tag_keys: list[str], versions: list[str], token: str,
                   loader: Callable[[], T], ttl: int) -> T:
    start = time.perf_counter()
    try:
        value = loader()
    except BaseException:
        _release(fill_key, token)
        raise
    load_ms = int((time.perf_counter() - start) * 1000) + 1
    ttl_ms = int(ttl * 1000 * (1 + random.uniform(-JITTER, JITTER)))
    window_ms = stale_window(ttl) * 1000
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        with context.timed("cache"):
            run_script(FILL_SCRIPT, [key, fill_key, *tag_keys],
                       [payload, load_ms, ttl_ms, window_ms, token, TAG_TTL_MS, *versions])
    except RedisError:
        _redis_failed()
    # JSON round trip, so a miss answers exactly what a hit will (dates as strings, etc.).
    return json.loads(payload)


def _release(fill_key: str, token: str) -> None:
    try:
        run_script(RELEASE_SCRIPT, [fill_key], [token])
    except RedisError:
        _redis_failed()  # the lock expires by itself after FILL_LOCK_MS


# KEYS: the tags, then one applied-change marker per change id, then keys to delete.
# ARGV[1] tag ttl ms, ARGV[2] number of tags, ARGV[3] number of markers, ARGV[4] marker ttl ms,
# ARGV[5] marker value (the tags, JSON), ARGV[6..] a new version per tag. A tag that cannot be
# written (Redis full: noeviction refuses writes, not DEL) is deleted instead: a missing tag voids
# the entries built on it as surely as a new version. The markers come last and are written only
# if every tag moved, so a marker never claims an invalidation that did not happen.
# Returns {bumped, deleted, marked}.
INVALIDATE_SCRIPT = """
local ntags, nmarks = tonumber(ARGV[2]), tonumber(ARGV[3])
local bumped, deleted, marked = 0, 0, 0
for i = 1, ntags do
  local reply = redis.pcall('SET', KEYS[i], ARGV[5 + i], 'PX', ARGV[1])
  if type(reply) == 'table' and reply.err then
    redis.call('DEL', KEYS[i])
    deleted = deleted + 1
  else
    bumped = bumped + 1
  end
end
if deleted == 0 then
  for i = ntags + 1, ntags + nmarks do
    local reply = redis.pcall('SET', KEYS[i], ARGV[5], 'PX', ARGV[4])
    if not (type(reply) == 'table' and reply.err) then marked = marked + 1 end
  end
end
for i = ntags + nmarks + 1, #KEYS do redis.call('DEL', KEYS[i]) end
return {bumped, deleted, marked}
"""


def invalidate(tags: Sequence[str], *, changes: Sequence[str] = (), delete: Sequence[str] = ()) -> bool:
    """Give each tag a new version (every entry built on the old one becomes a miss), record
    `changes` (ids of the API's own writes, lib/outbox) as applied with these tags, and delete
    `delete` keys, in one Upstash call.

    Returns False if Redis could not be told. Nothing is kept in memory for later: the change
    waits in the database's outbox, and the webhook, the cron or the first read after the
    outage applies it (lib/outbox).
    """
    tags = sorted(set(tags))
    if not (tags or changes or delete):
        return True
    # Open: skip (no timeout per write during an outage). Half-open: this call may be the probe
    # (or run by the probe's recovery hook), so it goes through and reports back.
    if breaker.state != "half-open" and not breaker.allow():
        return False
    markers = [keys.applied_change(change) for change in changes]
    args = [TAG_TTL_MS, len(tags), len(markers), keys.APPLIED_CHANGE_TTL * 1000,
            json.dumps(tags, separators=(",", ":")), *(secrets.token_hex(6) for _ in tags)]
    try:
        with context.timed("cache"):
            run_script(INVALIDATE_SCRIPT, [*map(keys.tag_key, tags), *markers, *delete], args)
    except RedisError:
        _redis_failed()
        return False
    breaker.success()
    return True


def on_recovery(hook: Callable[[], bool]) -> None:
    """Run `hook` when a read probes Redis after an outage (see `_recovery_hooks`); once per hook."""
    if hook not in _recovery_hooks:
        _recovery_hooks.append(hook)


def _after_outage() -> bool:
    """The probe after an outage applies what the outage held back before it reads an entry;
    False if Redis failed again (the caller bypasses it)."""
    return all(hook() for hook in list(_recovery_hooks))
