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
