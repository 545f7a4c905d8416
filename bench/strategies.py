"""The three read strategies compared, each behind the `fetch`/`invalidate` pair lib.domain.properties calls.

- A `NoCache`: every read is the database query.
- B `NaiveCacheAside`: the seed's drawing. `GET key`; on a miss run the loader, then
  `SET key json EX ttl`; a write `DEL`s the keys. No stampede protection, no tags.
- C `ThisProject`: `lib.cache.aside.fetch` / `lib.cache.aside.invalidate`.
- `SeedCard` (rows 6 and 7 only): the card as drawn with its monitoring: B plus an `INCR` of its
  hit or miss counter on every read (the card's "Cache Hit Rate: Hits / Misses" KPI).

`installed(strategy)` puts a strategy where `lib.domain.properties` looks for its cache, so every
strategy runs the same endpoint code (`properties.get_public`, `list_public`) and the same
loaders; the shim counts loader calls (one loader call = one database query).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lib import context, db, keys
from lib.cache import aside, invalidation, outbox, refill
from lib.domain import properties
from lib.edge import upstash
from lib.edge.upstash import RedisError

T = TypeVar("T")


class Strategy:
    """How a read finds its value, and what a write does to the cache."""

    label = ""
    caches = True
    records_metrics = False
    waits = False  # a read may wait for another request's fill (polls)

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        raise NotImplementedError

    def invalidate_property(self, property_id: int, owner_id: str, city: str | None) -> None:
        raise NotImplementedError

    def write_price(self, property_id: int, owner_id: str, city: str | None, price: int) -> None:
        """A write: the new price through the service client, then the strategy's invalidation."""
        db.run(lambda: db.service().from_("properties").update({"price": price}).eq("id", property_id).execute())
        self.invalidate_property(property_id, owner_id, city)

    def invalidate(self, tags: Any, **kwargs: Any) -> bool:
        raise RuntimeError("the bench writes through Strategy.write_price")

    def reset(self) -> None:
        """Before a measurement: an empty Redis and a fresh instance."""
        upstash.breaker.reset()
        upstash.execute(["FLUSHDB"])


class NoCache(Strategy):
    label = "A: no cache"
    caches = False

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        context.set_cache_status("MISS")
        return loader()

    def invalidate_property(self, property_id: int, owner_id: str, city: str | None) -> None:
        pass


class NaiveCacheAside(Strategy):
    """The seed's card, line by line: GET; on a miss query, then SET with TTL; a write DELs."""

    label = "B: naive cache-aside"

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        try:
            raw = upstash.execute(["GET", entry.key])
        except RedisError:  # the card's fail-safe: go to Supabase
            context.set_cache_status("BYPASS")
            return loader()
        if raw is not None:
            context.set_cache_status("HIT")
            return json.loads(raw)
        context.set_cache_status("MISS")
        value = loader()
        with contextlib.suppress(RedisError):
            upstash.execute(["SET", entry.key, json.dumps(value, ensure_ascii=False, default=str),
                             "EX", str(entry.ttl)])
        return value

    def invalidate_property(self, property_id: int, owner_id: str, city: str | None) -> None:
        upstash.execute(["DEL", *_property_keys(property_id, city)])


class SeedCard(NaiveCacheAside):
    """The card with its hit-rate KPI counted the way it draws it: an INCR per read."""

    label = "seed's card"

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        value = super().fetch(entry, loader)
        counter = "hits" if context.current() and context.current().cache_status == "HIT" else "misses"
        with contextlib.suppress(RedisError):
            upstash.execute(["INCR", keys.name("stats", counter)])
        return value


class ThisProject(Strategy):
    label = "C: this project"
    records_metrics = True  # its requests count in lib/metrics, whose writes are part of its bill
    waits = True

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        return aside.fetch(entry, loader)

    def invalidate_property(self, property_id: int, owner_id: str, city: str | None) -> None:
        # What lib.domain.properties.update does after its UPDATE, for a write that returned no row.
        aside.invalidate(invalidation.property_changed(property_id, owner_id, {city} if city else set()),
                         delete=_property_keys(property_id, city))

    def write_price(self, property_id: int, owner_id: str, city: str | None, price: int) -> None:
        """What lib.domain.properties.update does around its UPDATE: watch, update, then its tail (invalidate,
        and refill what the returned row tells). Only the price changes: the row before differs from
        the returned one in its price alone, which the refill rules do not look at."""
        seen = refill.watch(keys.property_detail(property_id).tags)
        writes = outbox.Writes()  # its change id: the database webhook does not bump again what this write did
        rows = db.run(lambda: writes.stamp(db.service().from_("properties").update({"price": price})
                                           .eq("id", property_id)).execute()).data
        if not rows:
            raise RuntimeError(f"property {property_id} was not updated")
        row = rows[0]
        writes.applied(invalidation.change_tags("properties", row, row), refills=properties.refills_after(row, row), seen=seen)

    def invalidate(self, tags: Any, **kwargs: Any) -> bool:
        return aside.invalidate(tags, **kwargs)

    def reset(self) -> None:
        super().reset()
        upstash.breaker.reset()


def _property_keys(property_id: int, city: str | None) -> list[str]:
    names = [keys.property_detail(property_id).key, keys.properties_all().key]
    if city:
        names.append(keys.properties_city(properties.canonical_city(city)).key)
    return names


STRATEGIES: tuple[Strategy, ...] = (NoCache(), NaiveCacheAside(), ThisProject())


class Counter:
    """A thread-safe count (loader calls)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1

    def take(self) -> int:
        """The count so far, and start again from zero."""
        with self._lock:
            value, self.value = self.value, 0
        return value


class Shim:
    """What `lib.domain.properties` sees as its `cache` module while a strategy is installed.

    `loads` counts loader calls. `after_load`, when set, runs once right after the next loader
    returns and before the strategy stores the value: the bench forces the stale-set race with it.
    """

    def __init__(self, strategy: Strategy):
        self.strategy, self.loads = strategy, Counter()
        self.after_load: Callable[[], None] | None = None

    def fetch(self, entry: keys.CacheKey, loader: Callable[[], T]) -> T:
        def counted() -> T:
            self.loads.add()
            value = loader()
            hook, self.after_load = self.after_load, None
            if hook is not None:
                hook()
            return value

        return self.strategy.fetch(entry, counted)

    def invalidate(self, tags: Any, **kwargs: Any) -> bool:
        """Whatever lib.domain.properties invalidates through its `cache` goes to the strategy."""
        return self.strategy.invalidate(tags, **kwargs)


@contextlib.contextmanager
def installed(strategy: Strategy) -> Iterator[Shim]:
    """Route lib.domain.properties' cache calls to `strategy` through a `Shim`."""
    original = properties.aside
    shim = Shim(strategy)
    properties.aside = shim  # type: ignore[assignment]
    try:
        yield shim
    finally:
        properties.aside = original


def timed_request(call: Callable[[], T]) -> tuple[T, str | None, float]:
    """Run one request's work as a handler would (fresh request context): value, X-Cache, ms."""
    ctx = context.begin()
    start = time.perf_counter()
    value = call()
    return value, ctx.cache_status, (time.perf_counter() - start) * 1000


def write_price(strategy: Strategy, property_id: int, owner_id: str, city: str | None, price: int) -> None:
    """A write of a property's price, as `strategy` writes."""
    strategy.write_price(property_id, owner_id, city, price)


def published() -> list[dict[str, Any]]:
    """The published properties as the database has them now (service client, no cache)."""
    rows = db.run(lambda: db.service().from_("properties").select("id,owner_id,city,price")
                  .eq("status", "published").order("id").execute()).data
    return list(rows)
