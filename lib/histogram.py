"""Latency histograms: the bucket bounds, the bucket a sample falls in, and a percentile from the counts."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# Bucket upper bounds, in ms: a sample goes to the first bound >= it. Fine around the 10 ms
# objective, coarse where only "slow" matters, up to the functions' 30 s limit (vercel.json's
# maxDuration): a percentile is measured, not floored, for anything a function can take.
BOUNDS_MS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000,
                                30_000, math.inf)
LIMIT_MS = BOUNDS_MS[-2]  # the last finite bound: beyond it, only "slower than that" is known


def bound_label(bound: float) -> str:
    """How a bound is written in a counter's name: `0.5`, `10`, `inf`."""
    return "inf" if bound == math.inf else f"{bound:g}"


LABELS = tuple(bound_label(b) for b in BOUNDS_MS)
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}


def bucket_index(ms: float, bounds: Sequence[float] = BOUNDS_MS) -> int:
    """Index of the bucket a sample falls in: the first bound >= `ms`."""
    if not ms > 0:  # negative, zero, NaN: the first bucket
        return 0
    return min(bisect.bisect_left(bounds, ms), len(bounds) - 1)


def percentile(counts: Sequence[int], q: float, bounds: Sequence[float] = BOUNDS_MS) -> float | None:
    """The `q`-quantile (0..1) of a histogram, None if it is empty.

    `counts[i]` samples lie in (bounds[i-1], bounds[i]] (the first bucket starts at 0). The
    quantile's rank is located in its bucket and interpolated linearly between the bucket's
    bounds, as Prometheus' histogram_quantile does; in the open last bucket the answer is its
    lower bound (we only know "slower than that").
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be between 0 and 1")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n > 0 and below + n >= rank:
            lower = bounds[i - 1] if i else 0.0
            upper = bounds[i]
            if upper == math.inf:
                return float(lower)
            return lower + (upper - lower) * (rank - below) / n
        below += n
    return float(bounds[-2])  # unreachable with consistent counts


def beyond(counts: Sequence[int], q: float, bounds: Sequence[float] = BOUNDS_MS) -> bool:
    """True if the `q`-quantile lies in the open last bucket: `percentile` then gives only a floor."""
    total = sum(counts)
    return total > 0 and sum(counts[:-1]) < q * total and counts[-1] > 0 and len(counts) == len(bounds)
