"""lib/cache/refill.invalidate: the writer fills the keys whose new value it knows, and never a stale one.

Upstash is the real stand-in's engine over a real Valkey (tests/fakes.py), as in test_cache.py.
"""

# ruff: noqa: F811  (the fixtures come from test_cache.py; the tests take them as parameters of the same name)
from __future__ import annotations

import httpx
import pytest

from lib import keys
from lib.cache import aside, entries, refill
from lib.cache.refill import Fresh, Patch
from lib.edge import upstash
from tests.lib.cache.test_aside import (  # noqa: F401  (clock and redis are fixtures: pytest finds them by name)
    FakeClock,
    Loader,
    billed,
    clock,
    entry_of,
    fetch,
    redis,
    redis_now_ms,
    rewrite,
)

DETAIL = keys.property_detail(7)
PUBLIC = keys.properties_all()
ROW_TAGS = ["properties:public", "property:7"]  # what a change of property 7 bumps, here


@pytest.fixture(autouse=True)
def fresh_instance(monkeypatch):
    """No refill measured yet: the writer's locks announce refill.FIRST_GUESS_MS."""
    monkeypatch.setattr(refill, "gap", refill.Smoothed(refill.FIRST_GUESS_MS))


def patch(entry, row):
    """A list's refill: the page as it was just before the bump, with `row` in place of its old self."""
    return Patch(entry, row, rows="properties")


def write(refills, *, tags=ROW_TAGS, seen=None, watched=("property:7",)):
    """A write of property 7: watch before, bump and refill after. `seen` overrides the watch."""
    seen = refill.watch(list(watched)) if seen is None else seen
    return refill.invalidate(tags, refills=refills, seen=seen)


def run_script_first(monkeypatch, script, before):
    """Run `before()` right before the next call of `script` reaches Upstash."""
    real_run = upstash.run

    def run(called, keys_, args, **kwargs):
        if called is script:
            monkeypatch.setattr(upstash, "run", real_run)
            before()
        return real_run(called, keys_, args, **kwargs)

    monkeypatch.setattr(upstash, "run", run)


# -- the value reaches the next reader -----------------------------------------------------------


def test_a_refilled_detail_is_a_hit_for_the_next_reader_without_a_query(redis):
    fetch(DETAIL, Loader({"id": 7, "price": 100}))
    assert write([Fresh(DETAIL, {"id": 7, "price": 120})]) is True
    reader = Loader({"id": 7, "price": 0})
    assert fetch(DETAIL, reader) == ({"id": 7, "price": 120}, "HIT")
    assert reader.calls == 0


def test_a_fresh_refill_gets_a_full_ttl_and_keeps_the_keys_load_time(redis):
    fetch(DETAIL, Loader({"id": 7}))
    rewrite(redis, DETAIL.key, load=321, expires=redis_now_ms(redis) + 5_000)  # about to expire
    write([Fresh(DETAIL, {"id": 7, "v": 2})])
    stored = entry_of(redis, DETAIL.key)
    assert stored["load"] == 321, "what a reload of this key costs, for XFetch and the waiters"
    assert 3600_000 * 0.9 - 1000 <= stored["expires"] - redis_now_ms(redis) <= 3600_000 * 1.1


def test_a_patched_list_keeps_the_rest_of_the_page_and_its_expiry(redis):
    fetch(PUBLIC, Loader([{"id": 7, "price": 100}, {"id": 8, "price": 500}]))
    expires = entry_of(redis, PUBLIC.key)["expires"]
    write([patch(PUBLIC, {"id": 7, "price": 120})])
    assert fetch(PUBLIC, Loader("unused")) == ([{"id": 7, "price": 120}, {"id": 8, "price": 500}], "HIT")
    assert entry_of(redis, PUBLIC.key)["expires"] == expires, "a patch does not make the rest of the page younger"


def test_a_patched_page_object_keeps_its_other_fields_and_each_shown_rows_columns(redis):
    page = {"properties": [{"id": 7, "price": 100}, {"id": 8, "price": 500}], "total": 2}
    fetch(PUBLIC, Loader(page))
    write([patch(PUBLIC, {"id": 7, "price": 120, "title": "not shown on the page"})])
    assert fetch(PUBLIC, Loader("unused")) == ({**page, "properties": [{"id": 7, "price": 120}, {"id": 8, "price": 500}]},
                                               "HIT")


@pytest.mark.parametrize("page", [
    [{"id": 7, "price": 100, "views": 3}],  # shows a column the written row does not have
    {"total": 1},  # not rows
    "a string",
])
def test_a_page_the_row_cannot_be_patched_into_is_left_to_a_reader(redis, page):
    fetch(PUBLIC, Loader(page))
    write([patch(PUBLIC, {"id": 7, "price": 120})])
    assert fetch(PUBLIC, Loader(["loaded"])) == (["loaded"], "MISS")
    assert not redis.redis.exists(keys.fill_lock_key(PUBLIC.key))


def test_a_patch_starts_from_the_list_as_the_previous_write_left_it(redis):
    fetch(PUBLIC, Loader([{"id": 7, "price": 100}, {"id": 8, "price": 500}]))
    seen = refill.watch(["property:7"])  # our write starts...
    refill_8 = patch(PUBLIC, {"id": 8, "price": 550})
    refill.invalidate(["properties:public", "property:8"], refills=[refill_8], seen=refill.watch(["property:8"]))
    write([patch(PUBLIC, {"id": 7, "price": 120})], seen=seen)  # ...and ends after another write's
    assert fetch(PUBLIC, Loader("unused")) == ([{"id": 7, "price": 120}, {"id": 8, "price": 550}], "HIT")


def test_the_writers_fill_locks_are_released_for_the_keys_it_refilled_and_those_it_skipped(redis):
    city = keys.properties_city("Dakar")
    write([Fresh(DETAIL, {"id": 7}), patch(city, {"id": 7})],
          tags=[*ROW_TAGS, "properties:city:Dakar"])
    assert redis.redis.exists(keys.fill_lock_key(DETAIL.key), keys.fill_lock_key(city.key)) == 0
    assert fetch(city, Loader(["loaded"])) == (["loaded"], "MISS"), "a skipped key is a plain miss"


def test_a_write_with_refills_costs_three_commands_and_none_under_the_global_lock(redis):
    write([Fresh(DETAIL, 1)])  # loads the scripts, as any earlier write did
    billed(redis)
    write([Fresh(DETAIL, 2), patch(PUBLIC, {"id": 7})])
    assert billed(redis) == 3, "the watch (MGET), the bump that reads the entries, the refill"
    assert redis.stats.scripts_global_lock == 0


def test_the_apis_applied_marker_and_its_refills_ride_in_the_same_bump(redis):
    """The API's own write: its change id marked applied (lib/cache/outbox) and its keys refilled, by one BUMP."""
    import json

    fetch(PUBLIC, Loader([{"id": 7, "price": 100}, {"id": 8, "price": 500}]))
    seen = refill.watch(["property:7"])
    assert refill.invalidate(ROW_TAGS, changes=["ef" * 16], seen=seen, refills=[
        Fresh(DETAIL, {"id": 7, "price": 120}), patch(PUBLIC, {"id": 7, "price": 120})])
    assert json.loads(redis.redis.get(keys.applied_change("ef" * 16))) == sorted(ROW_TAGS)
    assert fetch(DETAIL, Loader("unused")) == ({"id": 7, "price": 120}, "HIT")
    assert fetch(PUBLIC, Loader("unused")) == ([{"id": 7, "price": 120}, {"id": 8, "price": 500}], "HIT")
    assert redis.redis.exists(keys.fill_lock_key(DETAIL.key), keys.fill_lock_key(PUBLIC.key)) == 0


def test_without_a_watch_the_write_only_invalidates(redis):
    fetch(DETAIL, Loader({"id": 7}))
    aside.invalidate(["warm"])  # loads the script, as any earlier write did
    billed(redis)
    assert refill.invalidate(ROW_TAGS, refills=[Fresh(DETAIL, "never")], seen=None)
    assert billed(redis) == 1
    assert fetch(DETAIL, Loader({"id": 7, "v": 2})) == ({"id": 7, "v": 2}, "MISS")


# -- never a stale value ---------------------------------------------------------------------------


def test_nothing_is_refilled_when_another_write_bumped_the_rows_tag_since_the_watch(redis):
    """Ours read the row at its UPDATE; one that bumped after our watch may have committed after it."""
    fetch(DETAIL, Loader({"id": 7, "price": 100}))
    seen = refill.watch(["property:7"])
    aside.invalidate(["property:7"])  # another write of property 7, bumped before ours
    write([Fresh(DETAIL, {"id": 7, "price": 120})], seen=seen)
    assert fetch(DETAIL, Loader({"id": 7, "price": 130})) == ({"id": 7, "price": 130}, "MISS")


@pytest.mark.parametrize("set_before_the_bump, refilled", [
    (False, True),  # missing at the watch and at the bump: nobody bumped it
    (True, False),  # missing at the watch, set before the bump: a write slipped in
])
def test_a_tag_missing_at_the_watch_is_unmoved_only_if_still_missing(redis, set_before_the_bump, refilled):
    seen = refill.watch(["property:7"])
    assert seen == {"property:7": None}
    if set_before_the_bump:
        aside.invalidate(["property:7"])
    write([Fresh(DETAIL, {"id": 7, "v": "writer"})], seen=seen)
    assert (fetch(DETAIL, Loader({"id": 7, "v": "reader"}))[1] == "HIT") is refilled


def test_a_refill_overtaken_by_a_later_bump_is_refused(redis, monkeypatch):
    fetch(DETAIL, Loader({"id": 7, "price": 100}))
    run_script_first(monkeypatch, entries.REFILL, lambda: aside.invalidate(["property:7"]))  # a later write
    write([Fresh(DETAIL, {"id": 7, "price": 120})])
    assert fetch(DETAIL, Loader({"id": 7, "price": 130})) == ({"id": 7, "price": 130}, "MISS")


def test_a_patch_of_an_entry_invalidated_before_the_write_is_skipped(redis):
    fetch(PUBLIC, Loader([{"id": 7, "price": 100}]))
    aside.invalidate(["properties:public"])  # an earlier write: the page is not valid any more
    write([patch(PUBLIC, {"id": 7, "price": 120})])
    assert not redis.redis.exists(keys.fill_lock_key(PUBLIC.key)), "its lock released all the same"
    assert fetch(PUBLIC, Loader([{"id": 7, "price": 120}])) == ([{"id": 7, "price": 120}], "MISS")


def test_a_patch_of_an_entry_about_to_expire_is_left_to_a_reader(redis):
    fetch(PUBLIC, Loader([{"id": 7, "price": 100}]))
    rewrite(redis, PUBLIC.key, expires=redis_now_ms(redis) + refill.MIN_TTL_MS // 2)
    write([patch(PUBLIC, {"id": 7, "price": 120})])
    assert fetch(PUBLIC, Loader([{"id": 7, "price": 120}]))[1] == "MISS"


def test_a_key_whose_tags_the_write_does_not_bump_is_not_refilled(redis):
    other = keys.property_detail(9)  # tag property:9, not bumped by this write
    fetch(other, Loader({"id": 9, "v": 1}))
    write([Fresh(other, {"id": 9, "v": "wrong"})])
    assert fetch(other, Loader("unused")) == ({"id": 9, "v": 1}, "HIT")


def test_a_refill_that_fails_leaves_a_miss_and_never_fails_the_write(redis, monkeypatch):
    fetch(DETAIL, Loader({"id": 7, "price": 100}))

    def upstash_goes_down():
        redis.down = httpx.ConnectError("refused")

    run_script_first(monkeypatch, entries.REFILL, upstash_goes_down)
    assert write([Fresh(DETAIL, {"id": 7, "price": 120})]) is True
    redis.down = None
    upstash.breaker.reset()
    lock = redis.redis.get(keys.fill_lock_key(DETAIL.key)).decode()
    assert 0 < redis.redis.pttl(keys.fill_lock_key(DETAIL.key)) <= refill.LOCK_MS, f"{lock} lapses by itself"
    redis.redis.delete(keys.fill_lock_key(DETAIL.key))
    assert fetch(DETAIL, Loader({"id": 7, "price": 120})) == ({"id": 7, "price": 120}, "MISS")


# -- readers meanwhile -------------------------------------------------------------------------------


def test_a_reader_between_the_bump_and_the_refill_waits_for_it_instead_of_querying(redis, clock, monkeypatch):
    fetch(PUBLIC, Loader([{"id": 7, "price": 100}]))
    fetch(keys.property_detail(1), Loader(1))  # loads the read scripts
    reader = Loader([{"id": 7, "price": 999}])
    answered = []
    real_run = upstash.run

    def run(script, keys_, args, **kwargs):
        if script is not entries.REFILL:
            return real_run(script, keys_, args, **kwargs)
        monkeypatch.setattr(upstash, "run", real_run)

        def the_refill_lands(seconds):  # the reader sleeps; meanwhile the writer's REFILL arrives
            FakeClock.sleep(clock, seconds)
            real_run(script, keys_, args, **kwargs)

        aside.sleep = the_refill_lands
        answered.append(fetch(PUBLIC, reader))  # another request reads now, between bump and refill
        return None

    monkeypatch.setattr(upstash, "run", run)
    write([patch(PUBLIC, {"id": 7, "price": 120})])
    assert answered == [([{"id": 7, "price": 120}], "HIT")] and reader.calls == 0
    assert len(clock.sleeps) == 1 and clock.sleeps[0] <= (refill.FIRST_GUESS_MS + 2) / 1000, "some ms, not a query"


def test_the_writers_locks_announce_what_its_refills_took_so_far(redis, monkeypatch):
    refill.gap.add(40)  # this instance's last refill took 40 ms
    announced = []

    def look_at_the_lock():
        announced.append(redis.redis.get(keys.fill_lock_key(DETAIL.key)).decode().rsplit("|", 1)[1])

    measured: list[float] = []
    add = refill.gap.add
    monkeypatch.setattr(refill.gap, "add", lambda ms: (measured.append(ms), add(ms))[-1])
    run_script_first(monkeypatch, entries.REFILL, look_at_the_lock)
    write([Fresh(DETAIL, {"id": 7})])
    assert announced == ["60"], "40 ms, plus its deviation (half of the first measure)"
    # This refill was measured too. Whether the estimate moves depends on how long it took (one of
    # about 0 or 53 ms leaves it at 60), so what is checked is the measure and its smoothing.
    assert len(measured) == 1 and measured[0] > 0
    expected = refill.Smoothed(refill.FIRST_GUESS_MS)
    expected.add(40)
    expected.add(measured[0])
    assert refill.gap.expected() == expected.expected()


@pytest.mark.parametrize("measures, expected", [
    ([], refill.FIRST_GUESS_MS),  # nothing measured: the first guess
    ([100], 150),  # one measure m: srtt = m, dev = m / 2
    ([100, 100], 138),  # dev ← 3/4 dev + 1/4 |srtt − m| = 37.5; srtt stays 100: 137.5
    ([100, 180], 168),  # dev ← 37.5 + 20 = 57.5; srtt ← 7/8 srtt + 1/8 m = 110: 167.5
])
def test_a_duration_is_smoothed_as_tcp_smooths_a_round_trip(measures, expected):
    smoothed = refill.Smoothed(refill.FIRST_GUESS_MS)
    for ms in measures:
        smoothed.add(ms)
    assert smoothed.expected() == expected
