"""lib/cache: hit, miss, TTL per family, tags, the stale-set race, stampede, XFetch and the breaker.

Upstash is faked at the network boundary (respx) by a fakeredis that runs the real Lua.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from lib import cache, context, keys, upstash
from tests.fakes import FakeUpstash

URL = "https://upstash.test"


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(cache, "clock", fake)
    monkeypatch.setattr(cache, "sleep", fake.sleep)
    monkeypatch.setattr(cache, "draw", lambda: 0.5)
    return fake


@pytest.fixture
def redis(monkeypatch, clock):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", URL)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    upstash.set_client(None)
    cache.breaker.reset()
    monkeypatch.setattr(cache, "_recovery_hooks", [])  # lib/outbox's drain is tested in tests/lib/test_outbox.py
    with respx.mock(assert_all_called=False) as router:
        fake = FakeUpstash(router, URL)
        yield fake
    upstash.set_client(None)
    cache.breaker.reset()


class Loader:
    """A database stand-in that counts its queries."""

    def __init__(self, value):
        self.value = value
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.value


def fetch(entry, loader):
    ctx = context.begin()
    value = cache.fetch(entry, loader)
    return value, ctx.cache_status


def test_a_miss_loads_once_and_the_next_read_is_a_hit_in_one_round_trip(redis):
    loader = Loader({"id": 123, "city": "Dakar"})
    entry = keys.property_detail(123)
    assert fetch(entry, loader) == ({"id": 123, "city": "Dakar"}, "MISS")
    redis.calls.clear()
    assert fetch(entry, loader) == ({"id": 123, "city": "Dakar"}, "HIT")
    assert loader.calls == 1
    assert len(redis.calls) == 1, "a hit is exactly one REST call to Upstash"
    assert redis.calls[0][0] == "EVALSHA"


@pytest.mark.parametrize("value", [
    None,  # a property that does not exist: cached, not reloaded
    [],  # an empty list is a value, not a miss
    0,
    "",
])
def test_empty_values_are_hits_not_misses(redis, value):
    loader = Loader(value)
    entry = keys.notifications("u1")
    fetch(entry, loader)
    assert fetch(entry, loader) == (value, "HIT")
    assert loader.calls == 1


@pytest.mark.parametrize("entry, ttl", [
    (keys.properties_all(), 300),  # Liste propriétés: 5 min
    (keys.properties_city("Dakar"), 300),
    (keys.property_detail(1), 3600),  # Détail propriété: 1 h
    (keys.dashboard("owner-1"), 1800),  # Stats dashboard: 30 min
    (keys.search({"city": "Dakar"}), 600),  # Résultats recherche: 10 min
    (keys.profile("u1"), 3600),  # Profil utilisateur: 1 h
    (keys.visit_slots(789), 120),  # Créneaux visite: 2 min
    (keys.notifications("u1"), 60),  # Notifications: 1 min
    (keys.payments(123), 300),  # Historique paiements bail: 5 min
])
def test_each_family_gets_its_ttl_with_jitter_plus_its_stale_window(redis, entry, ttl):
    fetch(entry, Loader(["x"]))
    pttl_ms = redis.redis.pttl(entry.key)
    window_ms = cache.stale_window(ttl) * 1000
    assert ttl * 1000 * 0.9 + window_ms - 1000 <= pttl_ms <= ttl * 1000 * 1.1 + window_ms
    assert redis.redis.hget(entry.key, "w") == str(window_ms).encode()


def test_jitter_spreads_keys_filled_together(redis):
    ttls = set()
    for n in range(20):
        entry = keys.property_detail(n + 1)
        fetch(entry, Loader(n))
        ttls.add(redis.redis.pttl(entry.key) // 1000)
    assert len(ttls) > 5


def test_invalidating_a_tag_makes_every_entry_built_on_it_a_miss(redis):
    first, second = keys.search({"city": "Dakar"}), keys.search({"city": "Thiès"})
    dakar, thies = Loader(["dakar"]), Loader(["thies"])
    fetch(first, dakar)
    fetch(second, thies)
    assert cache.invalidate(["search"]) is True
    assert fetch(first, dakar)[1] == "MISS" and fetch(second, thies)[1] == "MISS"
    assert dakar.calls == thies.calls == 2


def test_invalidating_one_tag_leaves_other_families_alone(redis):
    detail, other = keys.property_detail(1), keys.property_detail(2)
    fetch(detail, Loader(1))
    fetch(other, Loader(2))
    cache.invalidate(keys.property_changed(1, "owner-1", {"Dakar"}))
    assert fetch(detail, Loader(1))[1] == "MISS"
    assert fetch(other, Loader(2))[1] == "HIT"


def test_a_fill_that_read_the_database_before_an_invalidation_never_lands(redis):
    entry = keys.property_detail(123)

    def slow_read_overtaken_by_a_write():
        value = {"price": 100_000}  # read from the database...
        cache.invalidate(["property:123"])  # ...then a PATCH commits and invalidates
        return value

    assert fetch(entry, slow_read_overtaken_by_a_write) == ({"price": 100_000}, "MISS")
    assert redis.redis.exists(entry.key) == 0, "the stale value was stored"
    assert fetch(entry, Loader({"price": 120_000})) == ({"price": 120_000}, "MISS")
    assert fetch(entry, Loader("unused")) == ({"price": 120_000}, "HIT")


def test_an_evicted_tag_turns_its_entries_into_misses(redis):
    entry = keys.property_detail(5)
    fetch(entry, Loader("old"))
    redis.redis.delete(keys.tag_key("property:5"))  # maxmemory eviction, or expiry
    assert fetch(entry, Loader("new")) == ("new", "MISS")


def test_concurrent_misses_wait_for_the_one_loading_instead_of_querying(redis, clock):
    entry = keys.properties_all()
    redis.redis.set(keys.fill_lock_key(entry.key), "someone-else", px=6000)  # another request loads
    other = Loader(["from-the-other-request"])

    def the_other_request_finishes(seconds):
        FakeClock.sleep(clock, seconds)
        if len(clock.sleeps) == 3:
            redis.redis.delete(keys.fill_lock_key(entry.key))
            cache.get_or_load(entry.key, other, entry.ttl, entry.tags, family=entry.family)

    cache.sleep = the_other_request_finishes
    mine = Loader(["mine"])
    assert fetch(entry, mine) == (["from-the-other-request"], "HIT")
    assert mine.calls == 0 and other.calls == 1
    assert clock.sleeps == [0.02, 0.04, 0.08], "polls back off exponentially"


def test_a_waiter_past_its_deadline_answers_from_the_database_without_storing(redis, clock):
    entry = keys.properties_all()
    redis.redis.set(keys.fill_lock_key(entry.key), "stuck", px=6000)
    mine = Loader(["mine"])
    assert fetch(entry, mine) == (["mine"], "MISS")
    assert mine.calls == 1
    assert sum(clock.sleeps) >= cache.WAIT_DEADLINE
    assert redis.redis.exists(entry.key) == 0


def expire_softly(redis, entry):
    """Move an entry past its TTL but inside its stale window."""
    window_ms = int(redis.redis.hget(entry.key, "w"))
    redis.redis.pexpire(entry.key, window_ms - 1000)


def test_past_its_ttl_one_caller_reloads_while_the_others_get_the_stale_value(redis):
    entry = keys.visit_slots(789)
    fetch(entry, Loader(["10h"]))
    expire_softly(redis, entry)
    redis.redis.set(keys.fill_lock_key(entry.key), "the-reloader", px=6000)
    assert fetch(entry, Loader(["11h"])) == (["10h"], "STALE")
    redis.redis.delete(keys.fill_lock_key(entry.key))
    reloader = Loader(["11h"])
    assert fetch(entry, reloader) == (["11h"], "MISS")
    assert fetch(entry, reloader) == (["11h"], "HIT")


def test_xfetch_refreshes_a_hot_key_before_it_expires(redis, monkeypatch):
    entry = keys.notifications("u1")
    fetch(entry, Loader(["a"]))
    redis.redis.hset(entry.key, "d", 5_000)  # it took 5 s to compute
    redis.redis.pexpire(entry.key, int(redis.redis.hget(entry.key, "w")) + 4_000)  # 4 s of TTL left
    monkeypatch.setattr(cache, "draw", lambda: 0.9)  # -ln(0.9)*5 s = 0.5 s < 4 s: not yet
    assert fetch(entry, Loader(["b"])) == (["a"], "HIT")
    monkeypatch.setattr(cache, "draw", lambda: 0.1)  # -ln(0.1)*5 s = 11.5 s ≥ 4 s: refresh now
    refresher = Loader(["b"])
    assert fetch(entry, refresher) == (["b"], "MISS")
    assert refresher.calls == 1
    assert redis.redis.pttl(entry.key) > 60_000


def test_a_failing_loader_releases_the_fill_lock(redis):
    entry = keys.property_detail(9)

    def broken():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        fetch(entry, broken)
    assert redis.redis.exists(keys.fill_lock_key(entry.key)) == 0


def test_the_script_is_sent_again_after_redis_lost_it(redis):
    entry = keys.property_detail(3)
    fetch(entry, Loader(3))
    redis.redis.script_flush()
    redis.calls.clear()
    assert fetch(entry, Loader(3))[1] == "HIT"
    assert [call[0] for call in redis.calls] == ["EVALSHA", "EVAL"]


def test_hits_and_misses_are_counted_per_family_in_the_same_call(redis):
    entry = keys.property_detail(7)
    fetch(entry, Loader(7))
    fetch(entry, Loader(7))
    minute, hour = cache._metrics_keys()
    for bucket in (minute, hour):
        counts = {k.decode(): int(v) for k, v in redis.redis.hgetall(bucket).items()}
        assert counts == {"property_detail:LOAD": 1, "property_detail:HIT": 1}


class TestBreaker:
    def test_an_outage_costs_one_call_then_redis_is_skipped_for_a_growing_interval(self, redis, clock):
        redis.down = httpx.ConnectError("refused")
        entry = keys.properties_all()
        loader = Loader(["db"])
        assert fetch(entry, loader) == (["db"], "BYPASS")
        assert cache.breaker.state == "open" and cache.breaker.interval == 1.0
        calls_before = redis.calls[:]
        for _ in range(5):
            assert fetch(entry, loader) == (["db"], "BYPASS")
        assert redis.calls == calls_before, "no Redis call while the breaker is open"

        clock.now += 1.0  # half-open: one probe, which fails: twice as long
        assert fetch(entry, loader)[1] == "BYPASS"
        assert cache.breaker.state == "open" and cache.breaker.interval == 2.0
        clock.now += 1.0
        assert fetch(entry, loader)[1] == "BYPASS" and cache.breaker.interval == 2.0  # still open

    def test_the_interval_is_capped(self, redis, clock):
        redis.down = httpx.ReadTimeout("slow")
        for _ in range(10):
            fetch(keys.properties_all(), Loader(1))
            clock.now += cache.breaker.interval
        assert cache.breaker.interval == cache.breaker.cap == 30.0

    def test_it_closes_by_itself_when_redis_answers_again(self, redis, clock):
        redis.down = httpx.ConnectError("refused")
        entry = keys.properties_all()
        fetch(entry, Loader(["db"]))
        redis.down = None
        clock.now += 1.0
        assert fetch(entry, Loader(["db"]))[1] == "MISS"
        assert cache.breaker.state == "closed"
        assert fetch(entry, Loader(["db"]))[1] == "HIT"

    def test_only_one_caller_probes_while_half_open(self, redis, clock):
        cache.breaker.failure()
        clock.now += 1.0
        assert cache.breaker.allow() is True
        assert cache.breaker.allow() is False
        assert cache.breaker.state == "half-open"


def test_an_invalidation_that_cannot_reach_redis_leaves_nothing_in_this_instance(redis, clock):
    # The change waits in the database's outbox (lib/outbox), never in one instance's memory.
    redis.down = httpx.ConnectError("refused")
    assert cache.invalidate(["property:11"]) is False
    redis.down = None
    clock.now += 1.0
    redis.calls.clear()
    fetch(keys.property_detail(12), Loader("other"))
    assert "property:11" not in str(redis.calls), "a failed invalidation was replayed from memory"


def test_the_read_that_probes_redis_after_an_outage_runs_the_recovery_hooks_before_reading(redis, clock):
    entry = keys.property_detail(11)
    fetch(entry, Loader("old"))
    redis.down = httpx.ConnectError("refused")
    assert fetch(entry, Loader("db")) == ("db", "BYPASS")
    redis.down = None
    clock.now += 1.0
    ran = []
    cache.on_recovery(lambda: ran.append("drain") or cache.invalidate(["property:11"]))  # what lib/outbox does
    assert fetch(entry, Loader("new")) == ("new", "MISS"), "the entry from before the outage was served"
    assert ran == ["drain"] and cache.breaker.state == "closed"
    assert fetch(entry, Loader("unused")) == ("new", "HIT") and ran == ["drain"], "once per recovery"


def test_a_recovery_hook_that_finds_redis_down_again_leaves_the_read_to_the_database(redis, clock):
    entry = keys.property_detail(11)
    fetch(entry, Loader("old"))
    cache.breaker.failure()
    clock.now += 1.0
    cache.on_recovery(lambda: False)
    assert fetch(entry, Loader("db")) == ("db", "BYPASS")


def test_a_hook_is_registered_once(redis):
    def hook():
        return True

    cache.on_recovery(hook)
    cache.on_recovery(hook)
    assert cache._recovery_hooks == [hook]
