"""The writer's refill: after a write, the keys whose new value it knows are filled at once, so readers hit instead of waiting.

    seen = refill.watch(keys.property_detail(123).tags)      # before the write
    ... the write, which returns the row as it is now ...
    aside.invalidate(tags, refills=[refill.Refill(keys.property_detail(123), lambda old: row, fresh=True)],
                     seen=seen)

The bump (lib/cache/entries' BUMP, run by lib/cache/aside.invalidate) reads each refill's entry as it was just before the bump and takes its
fill lock, in the same command; `fill` then stores the new values through the same check as a
reader's fill (lib/cache/entries' `_STORE`: every tag still at the version the bump gave it) and
releases the locks. Why a refill is never wrong data:
- the new value is either the database's row as the write returned it, or the entry as it was
  just before the bump (valid, so built after every write whose bump came before) with that row
  patched in;
- `seen` guards the row: if another write bumped one of its tags between the watch (before this
  write) and this bump, that write may be newer than ours and nothing is refilled;
- a write whose bump comes after ours voids the refill like any entry, and a fill that would land
  after it is refused.
A refill that cannot be told or does not land leaves the key a miss: the next reader loads it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lib import context, keys, metrics
from lib.cache import entries
from lib.cache.entries import DEFAULT_LOAD_MS
from lib.edge import upstash
from lib.edge.upstash import RedisError, RedisFull

# The writer holds the fill locks of the keys it refills between its bump and its fill (two Upstash
# round trips and the patching in between): readers arriving meanwhile wait that long instead of
# querying the database. The lock says how long: what this instance's last refills took (`gap`),
# FIRST_GUESS_MS before it has done any. If the fill never comes, the locks lapse after LOCK_MS,
# past the bound of the Upstash call that would have brought it (lib/edge/upstash: 0.5 s).
FIRST_GUESS_MS = 20
LOCK_MS = 600
MIN_TTL_MS = 1_000  # a patched entry keeps its old expiry; this close to it, a reader reloads it instead

MISSING = object()  # what `value(old)` gets when the entry had no valid value before the write
SKIP = object()  # what it returns when it cannot tell the new value: the key stays invalidated (a miss)


@dataclass(frozen=True)
class Refill:
    """A key the writer can fill as it invalidates it. `value(old)` gets the entry's value just
    before the bump (MISSING if it had no valid one) and returns the new value, or SKIP. `fresh`:
    the value is the database's row as the write returned it (a full TTL); otherwise it is the old
    value patched, and keeps the old one's expiry (a patch does not make the rest of it younger)."""

    entry: keys.CacheKey
    value: Callable[[Any], Any]
    fresh: bool = False


class Smoothed:
    """A duration this instance measures again and again, smoothed as TCP smooths a round trip
    (RFC 6298: srtt ← 7/8 srtt + 1/8 m, dev ← 3/4 dev + 1/4 |srtt − m|); `expected()` is srtt + dev."""

    def __init__(self, first_guess_ms: float) -> None:
        self._lock = threading.Lock()
        self._srtt: float | None = None
        self._dev = 0.0
        self._first_guess = first_guess_ms

    def add(self, ms: float) -> None:
        with self._lock:
            if self._srtt is None:
                self._srtt, self._dev = ms, ms / 2
            else:
                self._dev = 0.75 * self._dev + 0.25 * abs(self._srtt - ms)
                self._srtt = 0.875 * self._srtt + 0.125 * ms

    def expected(self) -> int:
        with self._lock:
            return round(self._first_guess if self._srtt is None else self._srtt + self._dev)


gap = Smoothed(FIRST_GUESS_MS)  # from a write's bump to its refill landing, in this instance


def watch(tags: Sequence[str]) -> dict[str, str | None] | None:
    """Before a write: the current version of each of `tags` (one MGET), to pass to
    `aside.invalidate` as `seen`. None if Redis failed (then nothing is refilled)."""
    try:
        with context.timed("cache"):
            versions = upstash.execute(["MGET", *(keys.tag_key(tag) for tag in tags)])
    except RedisError:
        return None
    return dict(zip(tags, versions, strict=True))


def _decoded(payload: str) -> Any:
    """An entry's JSON; MISSING if it is not JSON (not ours: nothing to patch)."""
    try:
        return json.loads(payload)
    except ValueError:
        return MISSING


def fill(refills: Sequence[Refill], bumped: entries.Bumped) -> bool:
    """Store each refill whose new value can be told, in one REFILL, and release the writer's fill
    locks. `bumped`: the bump that took them, with each entry as it read it. False if Redis did not
    answer (nothing may be stored)."""
    now = bumped.now
    stores = []
    for one, raw in zip(refills, bumped.olds, strict=True):
        tags = list(one.entry.tags)
        old = entries.parse(raw)
        valid = old if old is not None and old.built == [bumped.before[t] for t in tags] and old.expires > now else None
        value = one.value(_decoded(valid.payload) if valid else MISSING)
        if value is SKIP:
            continue
        if one.fresh:
            expires = now + entries.jittered_ttl_ms(one.entry.ttl)
        elif valid and valid.expires - now >= MIN_TTL_MS:
            expires = valid.expires
        else:
            continue  # a patch of nothing, or of an entry about to expire: a reader reloads it
        stores.append(entries.Store(one.entry.key, entries.serialize(value),
                                    old.load_ms if old is not None else DEFAULT_LOAD_MS, expires,
                                    entries.stale_window(one.entry.ttl) * 1000, {t: bumped.after[t] for t in tags}))
    try:
        with context.timed("cache"):
            entries.refill(bumped.lock, [r.entry.key for r in refills], stores)
    except RedisFull:
        metrics.count_refused_write()  # not stored: the keys stay misses; the locks lapse by themselves
        return False
    except RedisError:
        return False  # not stored: the keys stay misses; the locks lapse after LOCK_MS
    return True
