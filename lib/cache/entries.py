"""A cache entry as Redis holds it: its format, the scripts that judge, claim and fill it, and a hit's judgement.

An entry is a Redis string, a one-line header then the JSON value:

    <expires at, ms by Redis's clock>|<load ms>|<stale window ms>|<tag version>,<tag version>...
    <the JSON value>

The key's Redis TTL is the TTL plus the stale window; "expires at" ends the TTL. Every script here
passes all its keys in KEYS and carries `allow-key-locking` (lib/edge/upstash.Script): Upstash locks
those keys only. Each script has one typed function beside it that packs its KEYS and ARGV and reads
its reply by name (`read`, `claim`, `fill`, `refill`, `bump`): lib/cache/aside and lib/cache/refill call
those, never the scripts. `fresh_value` is the Python twin of `_LOOKUP`'s hit, for a hit judged from
one MGET (no script) — which a replica may answer from before the latest bump, so the product's hit
is READ, on the leader; the drills' negative control still uses it.
"""

from __future__ import annotations

import json
import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib import keys
from lib.edge import upstash

JITTER = 0.1  # TTLs are spread ±10 % so keys filled together do not expire together
TAG_TTL_MS = 2 * 24 * 3600 * 1000  # far beyond any entry; refreshed at each fill
DEFAULT_LOAD_MS = 100  # what a load is expected to take when neither its key nor its family knows yet


def stale_window(ttl: int) -> int:
    """Seconds an entry past its TTL may still be served while one caller refreshes it."""
    return max(5, min(ttl // 2, 300))


def jittered_ttl_ms(ttl: int) -> int:
    """A fill's TTL in ms: `ttl` seconds spread by ±JITTER."""
    return int(ttl * 1000 * (1 + random.uniform(-JITTER, JITTER)))


def serialize(value: Any) -> str:
    """A value as an entry stores it (and as a hit answers it: dates become strings)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)

# What READ, CLAIM and FILL share. KEYS[1] entry, KEYS[2] fill lock, KEYS[3] the family's load
# estimate, KEYS[4..] tags; ARGV[1] a random draw in (0, 1], ARGV[2] XFetch's beta. Leaves: `now`
# (ms, Redis's clock), `value` (false unless the entry is there and built on every tag's current
# version), `remaining` (ms of its TTL left, <= 0 in the stale window), `early` (XFetch draws a
# refresh now), `took` (the entry's load ms, valid or not: what a reload of this key costs) and
# `versions` (each tag's, false if missing).
_LOOKUP = """
local ntags = #KEYS - 3
local versions = {}
for i = 1, ntags do versions[i] = redis.call('GET', KEYS[3 + i]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.pcall('GET', KEYS[1])  -- a key of another type (not ours) reads as missing
local value, remaining, early, took = false, 0, false, nil
if type(raw) == 'string' then
  local expires, load, _, built, payload = string.match(raw, '^(%d+)|(%d+)|(%d+)|([^\\n]*)\\n(.*)$')
  if payload ~= nil then
    took = tonumber(load)
    local valid, n = true, 0
    for version in string.gmatch(built, '[^,]+') do
      n = n + 1
      if version ~= versions[n] then valid = false end
    end
    if valid and n == ntags then
      remaining = tonumber(expires) - now
      value = payload
      early = remaining > 0 and took * tonumber(ARGV[2]) * -math.log(tonumber(ARGV[1])) >= remaining
    end
  end
end
"""

# A waiter's answer, from the fill lock's value `<token>|<taken at ms>|<expected ms>`: {'WAIT',
# false, ms until the filler's value is expected (<= 0: overdue)}; {'WAIT', false} for a lock that
# says nothing (another format).
_WAITING = """
local function waiting(lock)
  local at, expected = string.match(lock, '|(%d+)|(%d+)$')
  if at then return {'WAIT', false, tonumber(at) + tonumber(expected) - now} end
  return {'WAIT', false}
end
"""

# The family's load estimate `<smoothed ms>|<mean deviation ms>` (RFC 6298's SRTT and RTTVAR, for
# a database read instead of a round trip): what a load is expected to take, deviation included.
_ESTIMATE = """
local function estimate()
  local srtt, dev = string.match(redis.call('GET', KEYS[3]) or '', '^(%d+)|(%d+)$')
  return tonumber(srtt), tonumber(dev)
end
"""

# Read-only, run on the leader: a read's first look, and what a waiter polls with. Returns {status,
# value or false[, ms until expected]}: HIT, STALE (past its TTL, someone reloads), WAIT (no valid
# entry, someone loads), REFRESH (XFetch: reload early) or LOAD (nobody loads, or the loader gave
# up: go). Without `no-writes` (upstash.Script's `leader`): Upstash runs it on the leader, never on a
# replica that has not yet seen a tag bump another instance made and acknowledged (docs/cache-strategy.md).
READ = upstash.Script(_LOOKUP + _WAITING + """
if value and remaining > 0 and not early then return {'HIT', value} end
local lock = redis.call('GET', KEYS[2])
if value and remaining > 0 then
  if lock then return {'HIT', value} end
  return {'REFRESH', value}
end
if value and lock then return {'STALE', value} end
if lock then return waiting(lock) end
return {'LOAD', value}
""", writes=False, leader=True)


def entry_keys(key: str, tags: Sequence[str], family: str) -> list[str]:
    """What READ, CLAIM and FILL take as KEYS: the entry, its fill lock, its family's load estimate, its tags."""
    return [key, keys.fill_lock_key(key), keys.load_estimate(family), *(keys.tag_key(tag) for tag in tags)]


@dataclass(frozen=True)
class Look:
    """READ's or CLAIM's answer, by name.

    `status` is HIT, STALE, WAIT, REFRESH or LOAD. `value` is the entry's JSON where there is one
    (HIT, STALE, READ's REFRESH), else None. A WAIT says in `expected_in` the ms until the filler's
    value is expected (<= 0: overdue; None when its lock says nothing). CLAIM's LOAD or REFRESH
    carries this caller's fill `lock` (its value, to fill and release with) and the tag `versions`
    to fill with.
    """

    status: str
    value: str | None = None
    expected_in: int | None = None
    lock: str | None = None
    versions: tuple[str, ...] = ()


def _look(reply: list[Any]) -> Look:
    """A READ or CLAIM reply, `{status, value or false, ...}`, read by name: what follows the value depends on the status."""
    status, value, *rest = reply
    value = value if isinstance(value, str) else None
    if status == "WAIT":
        return Look(status, expected_in=rest[0] if rest else None)
    if rest:  # CLAIM's LOAD or REFRESH: the lock it took, then each tag's version
        return Look(status, value, lock=rest[0], versions=tuple(rest[1:]))
    return Look(status, value)


def read(entry: Sequence[str], odds: Sequence[float]) -> Look:
    """READ of `entry` (`entry_keys`) on the leader; `odds`: XFetch's random draw in (0, 1] and its beta."""
    return _look(upstash.run(READ, entry, odds))

# What a read that is not a plain hit decides, atomically, taking the fill lock when this caller is
# to load. Also ARGV[3] the fill-lock token, ARGV[4] its ms, ARGV[5] the tag ttl ms, ARGV[6] the
# load ms to expect when neither the entry nor the family knows, ARGV[7..] a fresh version per tag
# (set only where the tag key is missing). The lock says when this caller expects to be done: its
# key's last load (else the family's smoothed load) plus the family's deviation. Returns {status,
# value or false, ...}: HIT or STALE (served), WAIT (with the ms until the filler is expected), or
# LOAD / REFRESH with the lock's value (this caller's, to release it) and the tag versions to fill
# with.
CLAIM = upstash.Script(_LOOKUP + _WAITING + _ESTIMATE + """
if value and remaining > 0 and not early then return {'HIT', value} end
local lock = redis.call('GET', KEYS[2])
if lock then
  if value and remaining > 0 then return {'HIT', value} end
  if value then return {'STALE', value} end
  return waiting(lock)
end
local srtt, dev = estimate()
local base = took or srtt or tonumber(ARGV[6])
local mine = ARGV[3] .. '|' .. now .. '|' .. (base + (dev or math.floor(base / 4)))
redis.call('SET', KEYS[2], mine, 'PX', ARGV[4])
local out = {'LOAD', false, mine}
if value and remaining > 0 then out[1] = 'REFRESH' end
for i = 1, ntags do
  if not versions[i] then
    versions[i] = ARGV[6 + i]
    redis.call('SET', KEYS[3 + i], versions[i], 'PX', ARGV[5])
  end
  out[3 + i] = versions[i]
end
return out
""", writes=True)


def claim(entry: Sequence[str], odds: Sequence[float], *, lock_ms: int) -> Look:
    """CLAIM on `entry` (`entry_keys`): the fill lock taken for `lock_ms` when this caller is to load
    (LOAD or REFRESH, with the lock and the versions to fill with), and a fresh random version set
    on each tag that has none."""
    token = secrets.token_hex(8)
    fresh = [secrets.token_hex(6) for _ in entry[3:]]
    return _look(upstash.run(CLAIM, entry, [*odds, token, lock_ms, TAG_TTL_MS, DEFAULT_LOAD_MS, *fresh]))

# Stores one entry if every tag is still at the version it was built on (a write since would have
# moved one: the value may predate it). `first_tag`: the index in KEYS of its first tag,
# `first_version` the index in ARGV of the first version. The entry expires at `expires` (ms,
# Redis's clock), its key a stale window later. Returns true if stored.
_STORE = """
local function store(key, first_tag, ntags, first_version, payload, load, expires, window, tag_ttl)
  for i = 0, ntags - 1 do
    if redis.call('GET', KEYS[first_tag + i]) ~= ARGV[first_version + i] then return false end
  end
  local versions = {}
  for i = 0, ntags - 1 do
    versions[i + 1] = ARGV[first_version + i]
    redis.call('PEXPIRE', KEYS[first_tag + i], tag_ttl)
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local head = string.format('%d|%d|%d|', tonumber(expires), tonumber(load), tonumber(window))
  redis.call('SET', key, head .. table.concat(versions, ',') .. '\\n' .. payload,
             'PX', math.max(1, tonumber(expires) - now + tonumber(window)))
  return true
end
"""

# A reader's fill, after CLAIM said LOAD or REFRESH. KEYS as READ's. ARGV[1] value, ARGV[2] load
# ms, ARGV[3] ttl ms, ARGV[4] stale window ms, ARGV[5] the fill lock's value as CLAIM set it,
# ARGV[6] tag ttl ms,
# ARGV[7..] the versions the reader saw before reading the database. Returns 1 if stored, 0 if
# refused because a tag moved meanwhile (an invalidation happened while we read: our value may
# predate the write). Releases the fill lock if still ours, and folds the load into the family's
# estimate (best effort: never at the cost of the fill).
FILL = upstash.Script(_ESTIMATE + _STORE + """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
local stored = store(KEYS[1], 4, #KEYS - 3, 7, ARGV[1], ARGV[2], expires, ARGV[4], ARGV[6])
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
local took, srtt, dev = tonumber(ARGV[2]), estimate()
if srtt then
  dev = math.floor((3 * dev + math.abs(srtt - took)) / 4 + 0.5)
  srtt = math.floor((7 * srtt + took) / 8 + 0.5)
else
  srtt, dev = took, math.floor(took / 2)
end
redis.pcall('SET', KEYS[3], srtt .. '|' .. dev, 'PX', ARGV[6])
if stored then return 1 end
return 0
""", writes=True)


def fill(entry: Sequence[str], payload: str, *, load_ms: int, ttl: int, lock: str, versions: Sequence[str]) -> bool:
    """FILL of `entry` (`entry_keys`) with `payload`, loaded in `load_ms`, for about `ttl` seconds
    (jittered) plus its stale window, after CLAIM gave `lock` and `versions`. True if stored."""
    stored = upstash.run(FILL, entry, [payload, load_ms, jittered_ttl_ms(ttl), stale_window(ttl) * 1000, lock,
                                       TAG_TTL_MS, *versions])
    return bool(stored)

# The writer's refill (lib/cache/refill): several entries stored as FILL stores one, then the writer's
# fill locks released. KEYS: the fill locks (ARGV[3] of them), then per entry its key and its tags.
# ARGV[1] the writer's lock value, ARGV[2] the tag ttl ms, ARGV[3] the number of locks, then per
# entry: its number of tags, value, load ms, when it expires (ms, Redis's clock), stale window ms,
# and the versions the writer's bump gave its tags. Returns how many were stored (a tag moved since
# the bump: that one is not).
REFILL = upstash.Script(_STORE + """
local nlocks = tonumber(ARGV[3])
local k, a, stored = nlocks + 1, 4, 0
while a <= #ARGV do
  local ntags = tonumber(ARGV[a])
  if store(KEYS[k], k + 1, ntags, a + 5, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[2]) then
    stored = stored + 1
  end
  k, a = k + 1 + ntags, a + 5 + ntags
end
for i = 1, nlocks do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return stored
""", writes=True)


@dataclass(frozen=True)
class Store:
    """One entry a REFILL stores: its `key`, its value's JSON, the `load_ms` a reload of it costs,
    when it `expires` (ms, Redis's clock), its stale window, and each of its tags with the version
    the writer's bump gave it."""

    key: str
    payload: str
    load_ms: int
    expires: int
    window_ms: int
    versions: Mapping[str, str]  # tag → version, in the key's tag order


def refill(lock: str, locked: Sequence[str], stores: Sequence[Store]) -> int:
    """REFILL: `stores`, each if its tags are still at the versions it names, then the fill locks
    of `locked` (entry keys) released where they still hold `lock`. Returns how many were stored."""
    command_keys = [keys.fill_lock_key(key) for key in locked]
    args: list[Any] = [lock, TAG_TTL_MS, len(locked)]
    for one in stores:
        command_keys += [one.key, *map(keys.tag_key, one.versions)]
        args += [len(one.versions), one.payload, one.load_ms, one.expires, one.window_ms, *one.versions.values()]
    stored = upstash.run(REFILL, command_keys, args)
    return int(stored or 0)


@dataclass(frozen=True)
class Entry:
    """An entry's header and its JSON, as `parse` reads them."""

    expires: int  # ms, Redis's clock: the end of its TTL
    load_ms: int
    window_ms: int
    built: list[str]  # the tag versions it was built on
    payload: str


def parse(raw: str | None) -> Entry | None:
    """`raw` (a GET or MGET answer) as an entry; None if it is not one (missing, another format)."""
    if raw is None:
        return None
    head, newline, payload = raw.partition("\n")
    fields = head.split("|")
    if not newline or len(fields) != 4 or not all(field.isdigit() for field in fields[:3]):
        return None
    return Entry(int(fields[0]), int(fields[1]), int(fields[2]), fields[3].split(",") if fields[3] else [], payload)


def fresh_value(raw: str | None, versions: list[str | None], draw: float, beta: float, now_ms: float) -> str | None:
    """The JSON of `raw` (an entry as MGET returned it, with its tags' current `versions`) if it is a
    plain hit: built on every tag's current version, inside its TTL by `now_ms`, and not drawn for
    an early refresh (XFetch: `load ms × beta × -ln(draw) ≥ ms left`). None otherwise: CLAIM decides,
    and an entry of another format is replaced by its next fill."""
    entry = parse(raw)
    if entry is None or entry.built != versions:  # not an entry; or a tag moved, or vanished: invalidated
        return None
    remaining = entry.expires - now_ms
    if remaining <= 0 or entry.load_ms * beta * -math.log(draw) >= remaining:
        return None
    return entry.payload


# Invalidation (lib/cache/aside.invalidate; with refills, lib/cache/refill.invalidate).
# KEYS: the tag version keys, then one applied-change marker per change id (lib/cache/outbox), then a
# (entry, fill lock) pair per refill candidate (lib/cache/refill), then the keys to delete. ARGV[1] the
# number of tags, ARGV[2] of markers, ARGV[3] of candidates, ARGV[4] the tag ttl ms, ARGV[5] the
# marker ttl ms, ARGV[6] the marker value (the tags, JSON), ARGV[7] the writer's fill-lock token,
# ARGV[8] its ms, ARGV[9] the ms the writer expects to take, then a pair per tag: its new random
# version, and the version the writer saw before its write ('' when it saw none, '!' when the tag
# was missing). When there are candidates and no tag moved since the writer looked (no other
# write slipped in), each candidate is read before the bump and its fill lock taken (NX). The
# markers are written after the tags: a marker never claims a bump that did not happen. Returns
# {1 if the candidates were taken (else 0), Redis's time in ms, each tag's version before the
# bump..., each candidate's entry before the bump (false if none)...}.
BUMP = upstash.Script("""
local ntags, nmarks, ncand = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, unmoved = {0, now}, ncand > 0
for i = 1, ntags do
  local version = redis.call('GET', KEYS[i])
  local seen = ARGV[9 + 2 * i]
  if seen ~= '' and (version or '!') ~= seen then unmoved = false end
  table.insert(out, version)
end
local first = ntags + nmarks
if unmoved then
  out[1] = 1
  local lock = ARGV[7] .. '|' .. now .. '|' .. ARGV[9]
  for c = 1, ncand do
    local raw = redis.pcall('GET', KEYS[first + 2 * c - 1])
    table.insert(out, type(raw) == 'string' and raw or false)
    redis.call('SET', KEYS[first + 2 * c], lock, 'NX', 'PX', ARGV[8])
  end
end
for i = 1, ntags do redis.call('SET', KEYS[i], ARGV[8 + 2 * i], 'PX', ARGV[4]) end
for i = ntags + 1, first do redis.call('SET', KEYS[i], ARGV[6], 'PX', ARGV[5]) end
if #KEYS > first + 2 * ncand then redis.call('DEL', unpack(KEYS, first + 2 * ncand + 1)) end
return out
""", writes=True)


@dataclass(frozen=True)
class Bumped:
    """BUMP's answer, by name, with what the call set.

    `now`: Redis's time at the bump (ms). `before` / `after`: each tag's version just before the
    bump (None if missing) and the one it set. `taken`: the refill candidates were read and their
    fill locks taken (there were some, and no tag moved since `seen`); then `olds` holds each
    candidate's entry as it was just before the bump (None if none), and `lock` is the value of
    the writer's fill locks, `<token>|<now>|<expected ms>`.
    """

    taken: bool
    now: int
    before: dict[str, str | None]
    after: dict[str, str]
    olds: tuple[str | None, ...]
    lock: str


def bump(tags: Sequence[str], *, changes: Sequence[str] = (), delete: Sequence[str] = (), refills: Sequence[str] = (),
         seen: Mapping[str, str | None] | None = None, lock_ms: int = 0, expected_ms: int = 0,
         force: bool = False) -> Bumped:
    """BUMP: a new random version for each of `tags`, the applied-change markers of `changes` (ids,
    lib/cache/outbox; the marker holds `tags`, JSON), `delete` deleted, in one command. `refills`
    (entry keys) with `seen` (each tag's version before the write, as lib/cache/refill.watch read it;
    a tag not in it is not checked): if no tag moved since, each entry is read and its fill lock
    taken (NX) for `lock_ms`, announcing `expected_ms`. `force`: send it while the breaker is
    half-open. Raises RedisError (RedisFull when the database is full)."""
    versions = [secrets.token_hex(6) for _ in tags]
    token = secrets.token_hex(8)
    seen = seen or {}
    markers = [keys.applied_change(change) for change in changes]
    args: list[Any] = [len(tags), len(markers), len(refills), TAG_TTL_MS, keys.APPLIED_CHANGE_TTL * 1000,
                       json.dumps(list(tags), separators=(",", ":")), token, lock_ms, expected_ms]
    for tag, version in zip(tags, versions, strict=True):
        args += [version, "" if tag not in seen else ("!" if seen[tag] is None else seen[tag])]
    pairs = [k for key in refills for k in (key, keys.fill_lock_key(key))]
    taken, now, *found = upstash.run(BUMP, [*map(keys.tag_key, tags), *markers, *pairs, *delete], args, force=force)
    return Bumped(taken=bool(taken), now=now, before=dict(zip(tags, found[:len(tags)], strict=True)),
                  after=dict(zip(tags, versions, strict=True)), olds=tuple(found[len(tags):]),
                  lock=f"{token}|{now}|{expected_ms}")
