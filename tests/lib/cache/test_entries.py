"""lib/cache/entries: what a plain hit is, judged in the function from one MGET (the scripts: tests/lib/cache/test_aside.py)."""

from __future__ import annotations

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
