"""The writer's refill, top to bottom: after a write, the keys whose new value it knows are filled at once, so readers hit instead of waiting.

    seen = refill.watch(keys.property_detail(123).tags)      # before the write
    row = ...                                                # the write, which returns the row as it is now
    refill.invalidate(tags, changes=ids, seen=seen, refills=[
        refill.Fresh(keys.property_detail(123), row),                      # the new value outright
        refill.Patch(keys.properties_all(), row, rows="properties"),       # the page as it was, the row patched in
    ])

`invalidate` is the whole of it, in order: which of `refills` may be refilled; the bump
(lib/cache/aside.bump, one BUMP) that invalidates the tags and, in the same command, reads each
refill's entry as it was just before and takes its fill lock; each new value, told from the row
and that entry (`_new_entry`); one REFILL (lib/cache/entries) that stores them through the same
check as a reader's fill (lib/cache/entries' `_STORE`: every tag still at the version the bump gave
it) and releases the locks. What to refill is data (`Fresh`, `Patch`): nothing here calls back
into the caller. Why a refill is never wrong data:
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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib import context, keys, metrics
from lib.cache import aside, entries
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

_SKIP = object()  # a patch's new value when it cannot be told: the key stays invalidated (a miss)


@dataclass(frozen=True)
class Fresh:
    """A key whose new value the writer has outright: `value`, the database's row as the write
    returned it (or None, a cached 404, for a row readers no longer see). Stored with a full TTL."""

    entry: keys.CacheKey
    value: Any


@dataclass(frozen=True)
class Patch:
    """A page of rows showing the written row: its value just before the bump with `row` in place of
    its old self (same `id`), each shown row keeping the columns it had. The page is a list of rows,
    or an object holding them under `rows`. It keeps the old value's expiry (a patch does not make
    the rest of it younger); with no valid old value, or one about to expire, it is left to a reader."""

    entry: keys.CacheKey
    row: Mapping[str, Any]
    rows: str


Refill = Fresh | Patch


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


def invalidate(tags: Sequence[str], *, changes: Sequence[str] = (), refills: Sequence[Refill] = (),
               seen: Mapping[str, str | None] | None = None) -> bool:
    """lib/cache/aside.invalidate of `tags`, `changes` marked applied, and the refill of `refills`
    right after it, whose `seen` (`watch`, before the write) guards them. Returns False if Redis
    could not be told of the bump (the outbox keeps the change); a refill never fails the write: at
    worst its keys are misses."""
    tags = sorted(set(tags))
    if not (tags or changes):
        return True
    # 1. What to refill: with a watch, keys built on tags this bump moves only (any other tag would
    #    not say whether another write slipped in).
    refills = [r for r in refills if seen and set(r.entry.tags) <= set(tags)]
    start = time.perf_counter()
    # 2. The bump. If no tag of `seen` moved since the watch, it also reads each entry as it was just
    #    before and takes its fill lock: readers arriving meanwhile wait `gap` for the refill.
    bumped = aside.bump(tags, changes=changes, refills=[r.entry.key for r in refills], seen=seen, lock_ms=LOCK_MS,
                        expected_ms=gap.expected())
    if bumped is None:
        return False
    if not bumped.taken:
        return True  # nothing to refill, another write slipped in since the watch, or the database is full
    # 3. The new values, told from the row the write returned and the entries as the bump read them.
    stores = [store for one, raw in zip(refills, bumped.olds, strict=True)
              if (store := _new_entry(one, raw, bumped)) is not None]
    # 4. One REFILL: each stored if its tags are still at the bump's versions, every lock released.
    try:
        with context.timed("cache"):
            entries.refill(bumped.lock, [r.entry.key for r in refills], stores)
    except RedisFull:
        metrics.count_refused_write()  # not stored: the keys stay misses; the locks lapse by themselves
        return True
    except RedisError:
        return True  # not stored: the keys stay misses; the locks lapse after LOCK_MS
    gap.add((time.perf_counter() - start) * 1000)  # what the next writer's locks will announce
    return True


def _new_entry(one: Refill, raw: str | None, bumped: entries.Bumped) -> entries.Store | None:
    """`one`'s entry as REFILL is to store it, from `raw` (the entry as the bump read it) and the
    versions around the bump; None when its new value cannot be told (a reader loads it)."""
    tags = list(one.entry.tags)
    old = entries.parse(raw)
    valid = old if old is not None and old.built == [bumped.before[t] for t in tags] and old.expires > bumped.now else None
    if isinstance(one, Fresh):
        value, expires = one.value, bumped.now + entries.jittered_ttl_ms(one.entry.ttl)
    elif valid is not None and valid.expires - bumped.now >= MIN_TTL_MS:
        value, expires = _patched(_decoded(valid.payload), one.row, one.rows), valid.expires
        if value is _SKIP:
            return None
    else:
        return None  # a patch of nothing, or of an entry about to expire: a reader reloads it
    return entries.Store(one.entry.key, entries.serialize(value), old.load_ms if old is not None else DEFAULT_LOAD_MS,
                         expires, entries.stale_window(one.entry.ttl) * 1000, {t: bumped.after[t] for t in tags})


def _decoded(payload: str) -> Any:
    """An entry's JSON; _SKIP if it is not JSON (not ours: nothing to patch)."""
    try:
        return json.loads(payload)
    except ValueError:
        return _SKIP


def _patched(page: Any, row: Mapping[str, Any], rows: str) -> Any:
    """`page` (a list of rows, or an object holding them under `rows`) with `row` in place of its old
    self, each shown row keeping the columns it had; _SKIP if its shape is not rows, or it shows a
    column `row` lacks. A page the row is not on is unchanged: same membership, order and total, so
    it stays off it."""
    if isinstance(page, dict) and isinstance(page.get(rows), list):
        patched = _patched(page[rows], row, rows)
        return _SKIP if patched is _SKIP else {**page, rows: patched}
    if not isinstance(page, list):
        return _SKIP
    out = []
    for shown in page:
        if not isinstance(shown, dict):
            return _SKIP
        if shown.get("id") == row["id"]:
            if not shown.keys() <= row.keys():
                return _SKIP
            shown = {column: row[column] for column in shown}
        out.append(shown)
    return out
