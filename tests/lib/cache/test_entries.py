"""lib/cache/entries: what a plain hit is, judged in the function from one MGET (the scripts: tests/lib/cache/test_aside.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lib.cache import entries

NOW = 1_800_000_000_000  # ms


def stored(expires=NOW + 60_000, load=12, window=30_000, built="v1,v2", value='{"price":"1|2"}'):
    return f"{expires}|{load}|{window}|{built}\n{value}"


@pytest.mark.parametrize("raw, versions, expected", [
    (stored(), ["v1", "v2"], '{"price":"1|2"}'),  # fresh, built on the current versions: a hit
    (stored(built="", value="null"), [], "null"),  # no tags; a cached null is a value
    (None, ["v1", "v2"], None),  # no entry
    (stored(), ["v1", "v3"], None),  # a tag moved: invalidated
    (stored(), ["v1", None], None),  # a tag vanished (invalidated at capacity, evicted)
    (stored(built="v1"), ["v1", "v2"], None),  # built on fewer tags than the key has now
    (stored(expires=NOW - 1), ["v1", "v2"], None),  # past its TTL: CLAIM decides STALE or LOAD
    (stored(expires=NOW), ["v1", "v2"], None),
    (stored(expires=NOW + 1), ["v1", "v2"], '{"price":"1|2"}'),  # 1 ms left, no early refresh drawn: a hit
    ("OK", ["v1", "v2"], None),  # not an entry of ours
    ("x|y|z|v1,v2\n{}", ["v1", "v2"], None),
    ("123|4|5\n{}", ["v1", "v2"], None),
])
def test_a_plain_hit_is_a_current_fresh_entry_and_anything_else_goes_to_claim(raw, versions, expected):
    assert entries.fresh_value(raw, versions, draw=0.999, beta=1.0, now_ms=NOW) == expected


@pytest.mark.parametrize("draw, refresh", [
    (0.9, False),  # -ln(0.9) × 5 s = 0.5 s < 4 s left: served
    (0.1, True),  # -ln(0.1) × 5 s = 11.5 s ≥ 4 s left: this caller refreshes early (XFetch)
])
def test_xfetch_sends_a_hot_entry_to_claim_as_its_expiry_nears(draw, refresh):
    raw = stored(expires=NOW + 4_000, load=5_000)
    assert (entries.fresh_value(raw, ["v1", "v2"], draw=draw, beta=1.0, now_ms=NOW) is None) is refresh


# -- each script's reply, read by name beside its Lua ------------------------------------------------


def answering(monkeypatch, reply):
    """upstash.run answers `reply`; returns the calls it got as (script, keys, args)."""
    calls = []

    def run(script, keys_, args, **kwargs):
        calls.append((script, list(keys_), list(args)))
        return reply

    monkeypatch.setattr(entries.upstash, "run", run)
    return calls


ENTRY = ["dousell:k", "dousell:meta:fill:k", "dousell:meta:load:f", "dousell:meta:tag:a", "dousell:meta:tag:b"]


@pytest.mark.parametrize("reply, expected", [
    (["HIT", "{}"], entries.Look("HIT", "{}")),
    (["STALE", "[1]"], entries.Look("STALE", "[1]")),
    (["WAIT", None, 120], entries.Look("WAIT", expected_in=120)),  # the filler is expected in 120 ms
    (["WAIT", None, -5], entries.Look("WAIT", expected_in=-5)),  # overdue
    (["WAIT", None], entries.Look("WAIT")),  # its lock says nothing
    (["LOAD", None], entries.Look("LOAD")),  # READ: nobody loads
    (["REFRESH", "{}"], entries.Look("REFRESH", "{}")),  # READ: XFetch drew a refresh
])
def test_read_names_each_part_of_its_answer_by_status(monkeypatch, reply, expected):
    calls = answering(monkeypatch, reply)
    assert entries.read(ENTRY, [0.5, 1.0]) == expected
    assert calls == [(entries.READ, ENTRY, [0.5, 1.0])]


def test_claim_names_the_lock_it_took_and_the_versions_to_fill_with(monkeypatch):
    calls = answering(monkeypatch, ["LOAD", None, "tok|1|100", "va", "vb"])
    assert entries.claim(ENTRY, [0.5, 1.0], lock_ms=6_000) == entries.Look("LOAD", lock="tok|1|100",
                                                                           versions=("va", "vb"))
    (script, keys_, args), = calls
    assert script is entries.CLAIM and keys_ == ENTRY
    assert args[:2] == [0.5, 1.0] and args[3:6] == [6_000, entries.TAG_TTL_MS, entries.DEFAULT_LOAD_MS]
    assert len(args) == 8, "a fresh version per tag"


def test_bump_names_what_it_read_and_what_it_set(monkeypatch):
    calls = answering(monkeypatch, [1, 1_000, "old-a", None, "entry", None])
    bumped = entries.bump(["a", "b"], changes=["c1"], refills=["dousell:x", "dousell:y"], seen={"a": "old-a"},
                          lock_ms=600, expected_ms=20)
    (script, keys_, args), = calls
    assert script is entries.BUMP
    assert keys_[:3] == ["dousell:meta:tag:a", "dousell:meta:tag:b", "dousell:meta:applied:c1"]
    assert keys_[3:] == ["dousell:x", "dousell:meta:fill:x", "dousell:y", "dousell:meta:fill:y"]
    assert args[:3] == [2, 1, 2] and args[5] == '["a","b"]' and args[7:9] == [600, 20]
    assert args[10] == "old-a" and args[12] == "", "seen: a checked, b not"
    assert bumped.taken and bumped.now == 1_000
    assert bumped.before == {"a": "old-a", "b": None}
    assert bumped.after == {"a": args[9], "b": args[11]}
    assert bumped.olds == ("entry", None)
    assert bumped.lock == f"{args[6]}|1000|20"


@pytest.mark.parametrize("beta, expires, refresh", [
    (1.0, NOW + 101, False),  # 100 ms × 1 × 1 < 101 ms left: served
    (1.0, NOW + 100, True),  # 100 ms × 1 × 1 ≥ 100 ms left: refreshed (the bound itself refreshes)
    (2.0, NOW + 150, True),  # beta multiplies the load: 200 ms ≥ 150 ms left
    (2.0, NOW + 201, False),  # ...and only multiplies it: 200 ms < 201 ms left
])
def test_the_early_refresh_is_load_times_beta_times_minus_ln_draw_against_the_ms_left(beta, expires, refresh):
    raw = stored(expires=expires, load=100)
    draw = math.exp(-1)  # -ln(draw) = 1
    assert (entries.fresh_value(raw, ["v1", "v2"], draw=draw, beta=beta, now_ms=NOW) is None) is refresh


@pytest.mark.parametrize("raw, expected", [
    ("1|2|3|v1,v2\n{}", entries.Entry(1, 2, 3, ["v1", "v2"], "{}")),
    ("1|2|3|\nnull", entries.Entry(1, 2, 3, [], "null")),
    ("1|2|x|v1\n{}", None),  # the stale window is not a number
    ("1|2|3|v1|v2\n{}", None),  # five fields: another format
])
def test_an_entry_is_read_field_by_field(raw, expected):
    assert entries.parse(raw) == expected


def test_an_entry_read_is_a_frozen_value():
    entry = entries.parse("1|2|3|v1\n{}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.load_ms = 5  # type: ignore[misc,union-attr]


@pytest.mark.parametrize("ttl, window", [
    (4, 5), (11, 5),  # at least 5 s
    (13, 6), (60, 30),  # half the TTL
    (600, 300), (3600, 300),  # at most 5 min
])
def test_the_stale_window_is_half_the_ttl_between_5_s_and_5_min(ttl, window):
    assert entries.stale_window(ttl) == window


@pytest.mark.parametrize("spread, ms", [(-0.1, 54_000), (0.0, 60_000), (0.1, 66_000)])
def test_a_fills_ttl_is_spread_by_ten_percent_either_way(monkeypatch, spread, ms):
    bounds = []
    monkeypatch.setattr(entries.random, "uniform", lambda low, high: bounds.append((low, high)) or spread)
    assert entries.jittered_ttl_ms(60) == pytest.approx(ms, abs=1)
    assert bounds == [(-0.1, 0.1)]


def test_a_value_is_stored_as_compact_json_that_keeps_its_accents():
    assert entries.serialize({"ville": "Thiès", "prix": 1}) == '{"ville":"Thiès","prix":1}'


def test_a_bumps_defaults_take_no_fill_lock_and_respect_the_breaker(monkeypatch):
    calls = []

    def run(script, keys_, args, **kwargs):
        calls.append((list(args), kwargs))
        return [1, 5, None]

    monkeypatch.setattr(entries.upstash, "run", run)
    entries.bump(["a"])
    (args, kwargs), = calls
    assert args[7:9] == [0, 0], "no refill: no lock and nothing announced"
    assert kwargs == {"force": False}, "only the probe's recovery hook sends one while the breaker is half-open"


def test_versions_carry_48_random_bits_and_lock_tokens_64(monkeypatch):
    calls = answering(monkeypatch, [1, 5, None, None])
    entries.bump(["a", "b"])
    args = calls[0][2]
    assert len(args[6]) == 16 and [len(args[9]), len(args[11])] == [12, 12]
    calls = answering(monkeypatch, ["LOAD", None, "t|1|2", "va", "vb"])
    entries.claim(ENTRY, [0.5, 1.0], lock_ms=6_000)
    args = calls[0][2]
    assert len(args[2]) == 16 and [len(v) for v in args[6:]] == [12, 12]


def test_a_bumps_reply_of_the_wrong_length_is_an_error_not_a_silent_half_answer(monkeypatch):
    answering(monkeypatch, [1, 5, "old-a"])  # two tags asked, one version read
    with pytest.raises(ValueError):
        entries.bump(["a", "b"])


@pytest.mark.parametrize("answer", [entries.Look("HIT", "{}"),
                                    entries.Bumped(taken=True, now=1, before={}, after={}, olds=(), lock="t|1|0"),
                                    entries.Store("k", "{}", 1, 2, 3, {"a": "v"})])
def test_the_scripts_answers_are_frozen_values(answer):
    field = dataclasses.fields(answer)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(answer, field, None)
