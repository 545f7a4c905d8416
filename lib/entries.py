"""A cache entry as Redis holds it: its format, the scripts that judge, claim and fill it, and a hit's judgement.

An entry is a Redis string, a one-line header then the JSON value:

    <expires at, ms by Redis's clock>|<load ms>|<stale window ms>|<tag version>,<tag version>...
    <the JSON value>

The key's Redis TTL is the TTL plus the stale window; "expires at" ends the TTL. Every script here
passes all its keys in KEYS and carries `allow-key-locking` (lib/upstash.Script): Upstash locks
those keys only. lib/cache drives them; `fresh_value` is the Python twin of `_LOOKUP` for the
plain hit (one MGET, no script).
"""

from __future__ import annotations

import math

from lib import upstash

# What READ and CLAIM both know of an entry. KEYS[1] entry, KEYS[2] fill lock, KEYS[3..] tags;
# ARGV[1] a random draw in (0, 1], ARGV[2] XFetch's beta. Leaves: `value` (false unless the entry
# is there and built on every tag's current version), `remaining` (ms of its TTL left, <= 0 in the
# stale window, by Redis's clock), `early` (XFetch draws a refresh now) and `versions` (each
# tag's, false if missing).
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



def fresh_value(raw: str | None, versions: list[str | None], draw: float, beta: float, now_ms: float) -> str | None:
    """The JSON of `raw` (an entry as MGET returned it, with its tags' current `versions`) if it is a
    plain hit: built on every tag's current version, inside its TTL by `now_ms`, and not drawn for
    an early refresh (XFetch: `load ms × beta × -ln(draw) ≥ ms left`). None otherwise: CLAIM decides,
    and an entry of another format is replaced by its next fill."""
    if raw is None:
        return None
    head, newline, payload = raw.partition("\n")
    fields = head.split("|")
    if not newline or len(fields) != 4 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    built = fields[3].split(",") if fields[3] else []
    if built != versions:  # a tag moved, or vanished: invalidated
        return None
    remaining = int(fields[0]) - now_ms
    if remaining <= 0 or int(fields[1]) * beta * -math.log(draw) >= remaining:
        return None
    return payload
