"""lib/metrics: what a request records into its instance, and the bound of that buffer."""

from __future__ import annotations

import pytest

from lib import metrics


def test_a_full_buffer_drops_and_counts_instead_of_growing():
    small = metrics.Pending(limit=2)
    assert small.add("a", minute=1) and small.add("b", minute=1) and small.add("a", 5, minute=1)
    assert small.add("c", minute=1) is False
    assert small.snapshot() == {(1, "a"): 6, (1, "b"): 1}
    assert small.dropped == 1


def test_nothing_is_counted_outside_a_recording():
    metrics.pending.clear()
    metrics.count_cache("search", "HIT")
    token = metrics.start_recording()
    try:
        metrics.count_cache("search", "HIT")
    finally:
        metrics.stop_recording(token)
    metrics.count_cache("search", "HIT")
    assert {name: n for (_, name), n in metrics.pending.snapshot().items()} == {"search:HIT": 1}
    metrics.pending.clear()


@pytest.mark.parametrize("namespace, name, field", [
    (None, "dousell:lock:payment:lease123", "lock:payment:blocked"),
    (None, "dousell:lock:visit:prop789:20261127T140000Z", "lock:visit:blocked"),
    (None, "dousell:lock:test:x", "lock:other:blocked"),
    ("staging:dousell", "staging:dousell:lock:payment:lease1", "lock:payment:blocked"),  # a namespace with a colon
])
def test_a_lock_event_is_counted_under_its_kind(monkeypatch, namespace, name, field):
    if namespace:
        monkeypatch.setenv("CACHE_NAMESPACE", namespace)
    else:
        monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    metrics.pending.clear()
    token = metrics.start_recording()
    try:
        metrics.lock_event(name, "blocked")
        assert {name: n for (_, name), n in metrics.pending.snapshot().items()} == {field: 1}
    finally:
        metrics.stop_recording(token)
        metrics.pending.clear()
