"""lib/cache/aside: hit, miss, TTL per family, tags, the stale-set race, stampede, XFetch, the fail-safe, a full database.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py): the scripts run with
Upstash's flags and key rule, and `redis.stats` counts what Upstash would bill.
"""

from __future__ import annotations

from unittest.mock import ANY

import httpx
import pytest

from lib import context, keys, metrics
from lib.cache import aside, entries, invalidation
from lib.edge import breaker as breaker_module
from lib.edge import upstash
from lib.ops import recorder
from tests.fakes import fake_upstash
from tests.support import FakeClock


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(aside, "clock", fake)
    monkeypatch.setattr(aside, "sleep", fake.sleep)
    monkeypatch.setattr(aside, "draw", lambda: 0.5)
    monkeypatch.setattr(breaker_module, "clock", fake)
    return fake


def reset():
    upstash.breaker.reset()
    metrics.pending.clear()


@pytest.fixture
def redis(monkeypatch, clock):
    monkeypatch.setattr(aside, "_recovery_hooks", [])  # lib/cache/outbox's drain is tested in tests/lib/cache/test_outbox.py
    reset()
    with fake_upstash(monkeypatch) as fake:
        yield fake
    reset()


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
    value = aside.fetch(entry, loader)
    return value, ctx.cache_status


def billed(redis) -> int:
    count = redis.stats.billed
    redis.engine.reset_stats()
    return count


def entry_of(redis, key) -> dict:
    """An entry as stored: `<expires ms>|<load ms>|<window ms>|<tag versions>\n<json>`."""
    head, _, value = redis.redis.get(key).decode().partition("\n")
    expires, load, window, built = head.split("|")
    return {"expires": int(expires), "load": int(load), "window": int(window), "built": built, "value": value}


def rewrite(redis, key, **changes) -> None:
    """Change an entry's header in place, keeping its key's expiry."""
    e = {**entry_of(redis, key), **changes}
    redis.redis.set(key, f"{e['expires']}|{e['load']}|{e['window']}|{e['built']}\n{e['value']}", keepttl=True)


def redis_now_ms(redis) -> int:
    seconds, micros = redis.redis.time()
    return seconds * 1000 + micros // 1000


# -- a hit and a miss ---------------------------------------------------------------------------


def test_a_miss_loads_once_and_the_next_read_is_a_hit_in_one_command_on_the_leader(redis):
    loader = Loader({"id": 123, "city": "Dakar"})
    entry = keys.property_detail(123)
    assert fetch(entry, loader) == ({"id": 123, "city": "Dakar"}, "MISS")
    redis.calls.clear()
    redis.engine.reset_stats()
    assert fetch(entry, loader) == ({"id": 123, "city": "Dakar"}, "HIT")
    assert loader.calls == 1
    assert redis.calls == [["EVALSHA", entries.READ.sha, 4, entry.key, keys.fill_lock_key(entry.key),
                            keys.load_estimate(entry.family), keys.tag_key("property:123"), ANY, "1.0"]], \
        "one REST call of one command, a script without no-writes: Upstash runs it on the leader"
    stats = redis.stats
    assert (stats.billed, stats.scripts_key_locked, stats.scripts_global_lock) == (1, 1, 0)


def test_a_miss_is_three_commands_a_look_a_claim_and_a_fill(redis):
    fetch(keys.property_detail(1), Loader(1))  # loads the scripts, as any earlier request did
    redis.calls.clear()
    billed(redis)
    assert fetch(keys.property_detail(2), Loader(2))[1] == "MISS"
    assert [call[0] for call in redis.calls] == ["EVALSHA", "EVALSHA", "EVALSHA"]
    assert [call[1] for call in redis.calls] == [entries.READ.sha, entries.CLAIM.sha, entries.FILL.sha]
    assert (redis.stats.billed, redis.stats.scripts_key_locked, redis.stats.scripts_global_lock) == (3, 3, 0)


def test_a_hit_changes_nothing_in_redis(redis):
    entry = keys.search({"city": "Dakar"})
    fetch(entry, Loader(["x"]))
    before = {key: (redis.redis.dump(key), redis.redis.pttl(key)) for key in redis.redis.keys()}
    for _ in range(5):
        assert fetch(entry, Loader("unused"))[1] == "HIT"
    after = {key: (redis.redis.dump(key), redis.redis.pttl(key)) for key in redis.redis.keys()}
    assert {key: value for key, (value, _) in after.items()} == {key: value for key, (value, _) in before.items()}
    assert all(after[key][1] <= before[key][1] for key in before), "no expiry was pushed back"


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
    window_ms = entries.stale_window(ttl) * 1000
    assert ttl * 1000 * 0.9 + window_ms - 1000 <= pttl_ms <= ttl * 1000 * 1.1 + window_ms
    stored = entry_of(redis, entry.key)
    assert stored["window"] == window_ms and stored["value"] == '["x"]'
    assert ttl * 1000 * 0.9 - 1000 <= stored["expires"] - redis_now_ms(redis) <= ttl * 1000 * 1.1


def test_jitter_spreads_keys_filled_together(redis):
    ttls = set()
    for n in range(20):
        entry = keys.property_detail(n + 1)
        fetch(entry, Loader(n))
        ttls.add(redis.redis.pttl(entry.key) // 1000)
    assert len(ttls) > 5


# -- tags ---------------------------------------------------------------------------------------


def test_invalidating_a_tag_makes_every_entry_built_on_it_a_miss(redis):
    first, second = keys.search({"city": "Dakar"}), keys.search({"city": "Thiès"})
    dakar, thies = Loader(["dakar"]), Loader(["thies"])
    fetch(first, dakar)
    fetch(second, thies)
    assert aside.invalidate(["search"]) is True
    assert fetch(first, dakar)[1] == "MISS" and fetch(second, thies)[1] == "MISS"
    assert dakar.calls == thies.calls == 2


def test_an_invalidation_is_one_command_however_many_tags_and_keys(redis):
    tags = invalidation.property_changed(123, "owner-1", {"Dakar", "Thiès"})
    aside.invalidate(["warm"])  # loads the script, as any earlier write did
    billed(redis)
    assert aside.invalidate(tags, delete=[keys.property_detail(123).key, keys.properties_all().key]) is True
    assert len(tags) == 7 and billed(redis) == 1
    assert redis.stats.scripts_global_lock == 0


def test_the_apis_applied_marker_rides_in_the_same_command_after_the_tags(redis):
    import json

    aside.invalidate(["warm"])
    billed(redis)
    assert aside.invalidate(["property:1", "search"], changes=["ab" * 16]) is True
    assert billed(redis) == 1
    marker = redis.redis.get(keys.applied_change("ab" * 16))
    assert json.loads(marker) == ["property:1", "search"]
    ttl_ms = keys.APPLIED_CHANGE_TTL * 1000
    assert ttl_ms - 1_000 < redis.redis.pttl(keys.applied_change("ab" * 16)) <= ttl_ms


TWO_DAYS_MS = 2 * 24 * 3600 * 1000  # docs/cache-strategy.md: a tag's version outlives any entry built on it


def test_a_tags_version_is_kept_two_days_from_its_last_bump_or_fill(redis):
    aside.invalidate(["search"])
    assert TWO_DAYS_MS - 5_000 < redis.redis.pttl(keys.tag_key("search")) <= TWO_DAYS_MS
    redis.redis.pexpire(keys.tag_key("search"), 60_000)
    fetch(keys.search({"city": "Dakar"}), Loader(["dakar"]))  # a fill refreshes its tags' lives
    assert TWO_DAYS_MS - 5_000 < redis.redis.pttl(keys.tag_key("search")) <= TWO_DAYS_MS


def test_invalidating_one_tag_leaves_other_families_alone(redis):
    detail, other = keys.property_detail(1), keys.property_detail(2)
    fetch(detail, Loader(1))
    fetch(other, Loader(2))
    aside.invalidate(invalidation.property_changed(1, "owner-1", {"Dakar"}))
    assert fetch(detail, Loader(1))[1] == "MISS"
    assert fetch(other, Loader(2))[1] == "HIT"


def test_a_fill_that_read_the_database_before_an_invalidation_never_lands(redis):
    entry = keys.property_detail(123)

    def slow_read_overtaken_by_a_write():
        value = {"price": 100_000}  # read from the database...
        aside.invalidate(["property:123"])  # ...then a PATCH commits and invalidates
        return value

    assert fetch(entry, slow_read_overtaken_by_a_write) == ({"price": 100_000}, "MISS")
    assert redis.redis.exists(entry.key) == 0, "the stale value was stored"
    assert fetch(entry, Loader({"price": 120_000})) == ({"price": 120_000}, "MISS")
    assert fetch(entry, Loader("unused")) == ({"price": 120_000}, "HIT")


def test_an_evicted_tag_turns_its_entries_into_misses(redis):
    entry = keys.property_detail(5)
    fetch(entry, Loader("old"))
    redis.redis.delete(keys.tag_key("property:5"))  # evicted, or expired
    assert fetch(entry, Loader("new")) == ("new", "MISS")
    assert redis.redis.get(keys.tag_key("property:5")) is not None, "the claim gave the tag a new version"


# -- stampedes and refreshes -------------------------------------------------------------------


def test_concurrent_misses_wait_for_the_one_loading_instead_of_querying(redis, clock):
    entry = keys.properties_all()
    redis.redis.set(keys.fill_lock_key(entry.key), "someone-else", px=6000)  # another request loads
    other = Loader(["from-the-other-request"])

    def the_other_request_finishes(seconds):
        FakeClock.sleep(clock, seconds)
        if len(clock.sleeps) == 3:
            redis.redis.delete(keys.fill_lock_key(entry.key))
            aside.get_or_load(entry.key, other, entry.ttl, entry.tags, family=entry.family)

    aside.sleep = the_other_request_finishes
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
    assert sum(clock.sleeps) == pytest.approx(aside.WAIT_DEADLINE), "waited its whole deadline, not beyond"
    assert redis.redis.exists(entry.key) == 0


def test_a_caller_that_loses_the_claim_waits_for_the_winner_instead_of_loading(redis, clock, monkeypatch):
    """READ says nobody loads; before this caller's CLAIM, another takes the fill lock. The claim
    decides again, atomically: this caller waits and is served the other's value."""
    entry = keys.property_detail(77)
    real_run = upstash.run
    lock_key = keys.fill_lock_key(entry.key)

    def racing(script, keys_, args, **kwargs):
        if script is entries.CLAIM and not redis.redis.exists(entry.key):
            redis.redis.set(lock_key, "the-winner", px=6000)  # the winner claimed first
        return real_run(script, keys_, args, **kwargs)

    def the_winner_fills(seconds):
        FakeClock.sleep(clock, seconds)
        redis.redis.delete(lock_key)
        monkeypatch.setattr(upstash, "run", real_run)
        aside.get_or_load(entry.key, Loader({"by": "winner"}), entry.ttl, entry.tags, family=entry.family)

    monkeypatch.setattr(upstash, "run", racing)
    aside.sleep = the_winner_fills
    mine = Loader({"by": "me"})
    assert fetch(entry, mine) == ({"by": "winner"}, "HIT")
    assert mine.calls == 0


# -- waiters: they wake when the fill is expected, not on a fixed schedule -------------------------


def lock_of(redis, entry) -> tuple[str, int, int]:
    """The fill lock as CLAIM set it: (token, taken at ms by Redis's clock, ms its holder expects to take)."""
    token, taken, expected = redis.redis.get(keys.fill_lock_key(entry.key)).decode().split("|")
    return token, int(taken), int(expected)


def hold_fill_lock(redis, entry, *, expected_ms: int, taken_ms_ago: int = 0) -> None:
    """Another request claimed `entry` `taken_ms_ago` ago and expects its load to take `expected_ms`."""
    taken = redis_now_ms(redis) - taken_ms_ago
    redis.redis.set(keys.fill_lock_key(entry.key), f"other|{taken}|{expected_ms}", px=6000)


def the_other_request_fills(redis, clock, entry, value, after_sleeps: int = 1):
    """A sleep that, at the `after_sleeps`-th pause, lets the lock's holder finish and fill `value`.
    Until then each pause ages the lock by as much: Redis's clock is real, the test's is not."""
    def sleep(seconds):
        FakeClock.sleep(clock, seconds)
        if len(clock.sleeps) < after_sleeps:
            token, taken, expected = lock_of(redis, entry)
            redis.redis.set(keys.fill_lock_key(entry.key), f"{token}|{taken - round(seconds * 1000)}|{expected}",
                            keepttl=True)
        if len(clock.sleeps) == after_sleeps:
            redis.redis.delete(keys.fill_lock_key(entry.key))
            aside.get_or_load(entry.key, Loader(value), entry.ttl, entry.tags, family=entry.family)
    return sleep


@pytest.mark.parametrize("expected_in_ms, overdue_polls, seconds", [
    (300, 0, 0.302),  # the fill is expected in 300 ms: wake then, plus the margin of its FILL's trip
    (1, 3, 0.003),  # still ahead: the schedule of overdue polls does not apply
    (0, 0, 0.02),  # due now and not there: overdue, poll soon
    (-50, 1, 0.04),  # overdue, the second time: twice as long
    (-50, 9, 0.2),  # capped
    (None, 0, 0.02),  # a lock that says nothing (another format): the overdue schedule
])
def test_a_waiter_sleeps_until_the_fill_is_expected_then_polls_at_short_growing_intervals(
        expected_in_ms, overdue_polls, seconds):
    assert aside.wake_after(expected_in_ms, overdue_polls) == pytest.approx(seconds)


def test_a_waiter_wakes_when_the_fill_is_expected_and_polls_once(redis, clock):
    entry = keys.properties_all()
    fetch(keys.property_detail(1), Loader(1))  # loads the scripts, as any earlier request did
    hold_fill_lock(redis, entry, expected_ms=1020, taken_ms_ago=20)
    aside.sleep = the_other_request_fills(redis, clock, entry, ["from-the-other-request"])
    ctx = context.begin()
    assert aside.fetch(entry, Loader(["mine"])) == ["from-the-other-request"]
    assert ctx.cache_status == "HIT" and ctx.cache_polls == 1, "one READ, right after the fill landed"
    assert len(clock.sleeps) == 1 and 0.8 <= clock.sleeps[0] <= 1.002, "slept ~1 s, what was left"


def test_a_waiter_finding_the_filler_late_polls_soon_and_not_at_the_expected_time_again(redis, clock):
    entry = keys.property_detail(40)
    fetch(keys.property_detail(1), Loader(1))  # loads the scripts
    hold_fill_lock(redis, entry, expected_ms=1000, taken_ms_ago=0)
    aside.sleep = the_other_request_fills(redis, clock, entry, {"id": 40}, after_sleeps=3)
    ctx = context.begin()
    assert aside.fetch(entry, Loader({"id": "mine"})) == {"id": 40}
    first, *overdue = clock.sleeps
    assert 0.8 <= first <= 1.002
    assert overdue == [0.02, 0.04], "the filler is late: short polls, doubling"
    assert ctx.cache_polls == 3


def test_the_claimer_expects_its_key_to_load_as_long_as_last_time_plus_its_familys_deviation(redis):
    entry = keys.search({"city": "Dakar"})
    fetch(entry, Loader(["x"]))
    rewrite(redis, entry.key, load=250)
    redis.redis.set(keys.load_estimate(entry.family), "40|12")  # the family: 40 ms, ±12
    aside.invalidate(["search"])
    before = redis_now_ms(redis)

    def look_at_the_lock():
        token, taken, expected = lock_of(redis, entry)
        assert before <= taken <= redis_now_ms(redis)
        assert expected == 250 + 12, "this key's own last load, plus the family's deviation"
        return ["y"]

    assert fetch(entry, look_at_the_lock) == (["y"], "MISS")


@pytest.mark.parametrize("estimate, expected", [
    ("300|20", 320),  # the family's smoothed load plus its deviation
    (None, entries.DEFAULT_LOAD_MS + entries.DEFAULT_LOAD_MS // 4),  # nobody knows yet: the default, +25 %
    ("garbage", entries.DEFAULT_LOAD_MS + entries.DEFAULT_LOAD_MS // 4),
])
def test_a_key_never_loaded_expects_its_familys_load_time(redis, estimate, expected):
    entry = keys.property_detail(41)
    if estimate is not None:
        redis.redis.set(keys.load_estimate(entry.family), estimate)

    def look_at_the_lock():
        assert lock_of(redis, entry)[2] == expected
        return {"id": 41}

    fetch(entry, look_at_the_lock)


def test_each_fill_teaches_its_family_how_long_a_load_takes(redis):
    estimate = keys.load_estimate("property_detail")
    fetch(keys.property_detail(1), Loader(1))
    first = entry_of(redis, keys.property_detail(1).key)["load"]
    assert redis.redis.get(estimate).decode() == f"{first}|{first // 2}", "the first load, ± half of it"
    redis.redis.set(estimate, "300|20")
    fetch(keys.property_detail(2), Loader(2))
    took = entry_of(redis, keys.property_detail(2).key)["load"]
    srtt, dev = (int(part) for part in redis.redis.get(estimate).decode().split("|"))
    assert srtt == round((7 * 300 + took) / 8) and dev == round((3 * 20 + abs(300 - took)) / 4), "RFC 6298's smoothing"
    assert redis.redis.pttl(estimate) > 0, "the estimate expires like a tag"


def test_a_fill_that_cannot_store_still_releases_its_lock_and_counts_its_load(redis):
    entry = keys.property_detail(42)

    def overtaken():
        aside.invalidate(["property:42"])
        return {"id": 42}

    fetch(entry, overtaken)
    assert redis.redis.exists(keys.fill_lock_key(entry.key)) == 0
    assert redis.redis.exists(keys.load_estimate(entry.family)) == 1


def test_a_failing_loader_releases_the_fill_lock_it_took_whatever_its_value_says(redis):
    entry = keys.property_detail(43)
    seen = []

    def broken():
        seen.append(lock_of(redis, entry))
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        fetch(entry, broken)
    assert seen and redis.redis.exists(keys.fill_lock_key(entry.key)) == 0


def test_a_read_that_waits_costs_one_command_per_poll_and_nothing_under_the_global_lock(redis, clock):
    entry = keys.properties_all()
    fetch(keys.property_detail(1), Loader(1))  # loads the scripts
    hold_fill_lock(redis, entry, expected_ms=200)
    aside.sleep = the_other_request_fills(redis, clock, entry, ["theirs"])
    redis.calls.clear()
    fetch(entry, Loader(["mine"]))
    looks = [call for call in redis.calls if call[0] == "EVALSHA" and call[1] == entries.READ.sha]
    assert len(looks) == 3, "my first look, the filler's own, then my one poll"
    assert redis.stats.scripts_global_lock == 0


def expire_softly(redis, entry):
    """Move an entry past its TTL but inside its stale window."""
    rewrite(redis, entry.key, expires=redis_now_ms(redis) - 1000)


def test_past_its_ttl_one_caller_reloads_while_the_others_get_the_stale_value(redis):
    entry = keys.visit_slots(789)
    fetch(entry, Loader(["10h"]))
    expire_softly(redis, entry)
    redis.redis.set(keys.fill_lock_key(entry.key), "the-reloader", px=6000)
    assert fetch(entry, Loader(["11h"])) == (["10h"], "STALE")
    redis.redis.delete(keys.fill_lock_key(entry.key))
    reloader = Loader(["11h"])
    billed(redis)
    assert fetch(entry, reloader) == (["11h"], "MISS")
    assert billed(redis) == 3, "a stale refresh costs what a miss costs"
    assert fetch(entry, reloader) == (["11h"], "HIT")


def test_xfetch_refreshes_a_hot_key_before_it_expires(redis, monkeypatch):
    entry = keys.notifications("u1")
    fetch(entry, Loader(["a"]))
    rewrite(redis, entry.key, load=5_000, expires=redis_now_ms(redis) + 4_000)  # took 5 s; 4 s of TTL left
    monkeypatch.setattr(aside, "draw", lambda: 0.9)  # -ln(0.9)*5 s = 0.5 s < 4 s: not yet
    assert fetch(entry, Loader(["b"])) == (["a"], "HIT")
    monkeypatch.setattr(aside, "draw", lambda: 0.1)  # -ln(0.1)*5 s = 11.5 s ≥ 4 s: refresh now
    refresher = Loader(["b"])
    assert fetch(entry, refresher) == (["b"], "MISS")
    assert refresher.calls == 1
    assert redis.redis.pttl(entry.key) > 60_000


def test_an_early_refresh_someone_else_already_does_is_served_as_a_hit(redis, monkeypatch):
    entry = keys.notifications("u2")
    fetch(entry, Loader(["a"]))
    rewrite(redis, entry.key, load=5_000, expires=redis_now_ms(redis) + 4_000)
    redis.redis.set(keys.fill_lock_key(entry.key), "the-refresher", px=6000)
    monkeypatch.setattr(aside, "draw", lambda: 0.1)
    assert fetch(entry, Loader(["b"])) == (["a"], "HIT")


def test_a_failing_loader_releases_the_fill_lock(redis):
    entry = keys.property_detail(9)

    def broken():
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        fetch(entry, broken)
    assert redis.redis.exists(keys.fill_lock_key(entry.key)) == 0


def test_the_scripts_are_sent_again_after_redis_lost_them(redis):
    fetch(keys.property_detail(3), Loader(3))
    redis.redis.script_flush()
    redis.calls.clear()
    assert fetch(keys.property_detail(4), Loader(4))[1] == "MISS"
    assert [call[0] for call in redis.calls] == ["EVALSHA", "EVAL", "EVALSHA", "EVAL", "EVALSHA", "EVAL"]


def test_an_entry_of_an_older_format_reads_as_a_miss_and_is_replaced(redis):
    entry = keys.property_detail(8)
    redis.redis.hset(entry.key, mapping={"v": '"old"', "d": 1, "w": 1000})  # the hash entries before this one
    assert fetch(entry, Loader("new")) == ("new", "MISS")
    assert fetch(entry, Loader("unused")) == ("new", "HIT")


def test_a_waiter_polls_with_the_read_script_on_the_leader(redis, clock):
    entry = keys.properties_all()
    fetch(keys.property_detail(1), Loader(1))  # loads the scripts
    redis.redis.set(keys.fill_lock_key(entry.key), "someone-else", px=6000)
    redis.calls.clear()
    billed(redis)
    fetch(entry, Loader(["mine"]))
    polls = [call for call in redis.calls if call[0] == "EVALSHA" and call[1] == entries.READ.sha]
    assert len(polls) >= 2 and not [call for call in redis.calls if call[0] == "EVALSHA_RO"]
    assert redis.stats.scripts_global_lock == 0


def test_each_outcome_is_counted_per_family_in_the_instance_not_in_redis(redis):
    entry = keys.property_detail(7)
    state = recorder.begin_request("/api/properties/7")
    try:
        fetch(entry, Loader(7))
        fetch(entry, Loader(7))
        counted = {name: n for (_, name), n in metrics.pending.snapshot().items()}
    finally:
        state.stop()
    assert counted == {"property_detail:LOAD": 1, "property_detail:HIT": 1}
    assert not [key for key in redis.redis.keys() if b":metrics:" in key]


# -- when Redis fails ---------------------------------------------------------------------------


def test_an_outage_costs_one_call_then_reads_bypass_redis_until_it_answers_again(redis, clock):
    redis.down = httpx.ConnectError("refused")
    entry = keys.properties_all()
    loader = Loader(["db"])
    assert fetch(entry, loader) == (["db"], "BYPASS")
    assert upstash.breaker.state == "open"
    calls_before = redis.calls[:]
    for _ in range(5):
        assert fetch(entry, loader) == (["db"], "BYPASS")
    assert redis.calls == calls_before, "no Redis call while the breaker is open"
    redis.down = None
    clock.now += 1.0
    assert fetch(entry, loader)[1] == "MISS"
    assert upstash.breaker.state == "closed"
    assert fetch(entry, loader)[1] == "HIT"


def test_an_invalidation_that_cannot_reach_redis_leaves_nothing_in_this_instance(redis, clock):
    # The change waits in the database's outbox (lib/cache/outbox), never in one instance's memory.
    redis.down = httpx.ConnectError("refused")
    assert aside.invalidate(["property:11"]) is False
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
    # What lib/cache/outbox's drain does: the breaker is half-open, so it sends with force=True.
    aside.on_recovery(lambda: ran.append("drain") or aside.invalidate(["property:11"], force=True))
    assert fetch(entry, Loader("new")) == ("new", "MISS"), "the entry from before the outage was served"
    assert ran == ["drain"] and upstash.breaker.state == "closed"
    assert fetch(entry, Loader("unused")) == ("new", "HIT") and ran == ["drain"], "once per recovery"


def test_a_probe_with_nothing_to_drain_still_closes_the_breaker(redis, clock):
    entry = keys.property_detail(13)
    fetch(entry, Loader("cached"))
    upstash.breaker.failure()
    clock.now += 1.0
    aside.on_recovery(lambda: True)  # an empty outbox: no Redis call made
    assert fetch(entry, Loader("unused")) == ("cached", "HIT")
    assert upstash.breaker.state == "closed"


def test_a_recovery_hook_that_finds_redis_down_again_leaves_the_read_to_the_database(redis, clock):
    entry = keys.property_detail(11)
    fetch(entry, Loader("old"))
    upstash.breaker.failure()
    clock.now += 1.0
    aside.on_recovery(lambda: False)
    assert fetch(entry, Loader("db")) == ("db", "BYPASS")


def test_a_hook_is_registered_once(redis):
    def hook():
        return True

    aside.on_recovery(hook)
    aside.on_recovery(hook)
    assert aside._recovery_hooks == [hook]


# -- a full database (Upstash's default: no eviction) -------------------------------------------


def fill_up(redis) -> None:
    """Lower maxmemory under what Valkey uses: every write is refused now, reads still work."""
    used = redis.redis.info("memory")["used_memory"]
    redis.redis.config_set("maxmemory", used // 2)


def test_a_full_database_still_serves_hits_and_answers_misses_from_the_database_unstored(redis):
    cached, new = keys.property_detail(1), keys.property_detail(2)
    fetch(cached, Loader("kept"))
    fill_up(redis)
    state = recorder.begin_request("/api/properties/2")
    try:
        assert fetch(cached, Loader("unused")) == ("kept", "HIT")
        loader = Loader("fresh")
        assert fetch(new, loader) == ("fresh", "MISS")
        assert fetch(new, loader) == ("fresh", "MISS")
        counted = {name: n for (_, name), n in metrics.pending.snapshot().items()}
    finally:
        state.stop()
    assert loader.calls == 2 and redis.redis.exists(new.key) == 0
    assert counted["redis:refused_writes"] == 2
    assert redis.stats.capacity_refusals == 2
    assert upstash.breaker.state == "closed", "a full database is not an outage"


def test_a_fill_refused_at_capacity_answers_the_loaded_value_and_keeps_the_breaker_closed(redis, monkeypatch):
    entry = keys.property_detail(4)

    def loads_then_the_database_fills():
        fill_up(redis)  # the claim went through; the fill comes too late
        return {"id": 4}

    assert fetch(entry, loads_then_the_database_fills) == ({"id": 4}, "MISS")
    assert redis.redis.exists(entry.key) == 0
    assert upstash.breaker.state == "closed"


def test_an_invalidation_still_works_at_capacity(redis):
    entry = keys.property_detail(6)
    fetch(entry, Loader("old"))
    fill_up(redis)
    assert aside.invalidate(["property:6"], delete=[entry.key], changes=["cd" * 16]) is True
    assert fetch(entry, Loader("new")) == ("new", "MISS"), "no stale value served after the write"
    assert upstash.breaker.state == "closed"
    assert redis.redis.exists(keys.applied_change("cd" * 16)) == 0, "a marker for a bump that did not happen"
