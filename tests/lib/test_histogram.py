"""lib/histogram: which bucket a sample falls in, and percentiles interpolated inside their bucket."""

from __future__ import annotations

import math
import random

import pytest

from lib import histogram as histogram_module


def histogram(samples, bounds=histogram_module.BOUNDS_MS):
    counts = [0] * len(bounds)
    for sample in samples:
        counts[histogram_module.bucket_index(sample, bounds)] += 1
    return counts


def nearest_rank(samples, q):
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("ms, bound", [
    (0.2, 0.5),
    (0.5, 0.5),  # a sample on a bound belongs to that bound's bucket ("less or equal")
    (0.51, 1),
    (10, 10),
    (10.01, 15),
    (4999, 5000),
    (5001, 10_000),  # measured up to the functions' 30 s limit (vercel.json's maxDuration)
    (29_999, 30_000),
    (30_001, math.inf),  # slower than the last bound: the open bucket
    (0, 0.5),  # nothing below the first bucket
    (-3, 0.5),
])
def test_a_sample_goes_to_the_first_bound_at_or_above_it(ms, bound):
    assert histogram_module.BOUNDS_MS[histogram_module.bucket_index(ms)] == bound


def test_an_empty_histogram_has_no_percentile():
    assert histogram_module.percentile([0] * len(histogram_module.BOUNDS_MS), 0.5) is None


def test_samples_in_one_bucket_are_spread_evenly_across_it():
    counts = histogram([6.0] * 200)  # all in (5, 7.5]
    assert histogram_module.percentile(counts, 0.5) == pytest.approx(6.25)
    assert histogram_module.percentile(counts, 0.95) == pytest.approx(7.375)


def test_half_and_half_puts_the_median_on_the_bound_between():
    counts = histogram([0.3] * 50 + [0.8] * 50)  # (0, 0.5] and (0.5, 1]
    assert histogram_module.percentile(counts, 0.5) == pytest.approx(0.5)
    assert histogram_module.percentile(counts, 0.95) == pytest.approx(0.95)


def test_a_uniform_distribution_gives_its_exact_percentiles():
    counts = histogram(range(1, 1001))  # 1..1000 ms, one each
    assert histogram_module.percentile(counts, 0.5) == pytest.approx(500)
    assert histogram_module.percentile(counts, 0.95) == pytest.approx(950)
    assert histogram_module.percentile(counts, 0.99) == pytest.approx(990)


def test_beyond_the_last_bound_only_a_lower_bound_is_known():
    assert histogram_module.percentile(histogram([40_000, 45_000]), 0.5) == 30_000
    assert histogram_module.beyond(histogram([40_000, 45_000]), 0.5)


def test_requests_of_seconds_are_measured_not_read_as_the_last_bucket():
    """The page read "5 000,0 ms" for POST /api/payments: requests of 6 to 9 s all fell past the
    last bound (5 s) and the median was that bound. Now they are measured to within their bucket."""
    counts = histogram([6000, 7000, 8000, 9000])
    assert 5000 < histogram_module.percentile(counts, 0.5) < 10_000
    assert not histogram_module.beyond(counts, 0.5)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_the_estimate_lies_in_the_bucket_of_the_true_percentile(seed, q):
    rng = random.Random(seed)
    samples = [rng.lognormvariate(1.5, 1.0) for _ in range(rng.randint(20, 2000))]  # ms, long-tailed
    true = nearest_rank(samples, q)
    i = histogram_module.bucket_index(true)
    lower, upper = (histogram_module.BOUNDS_MS[i - 1] if i else 0.0), histogram_module.BOUNDS_MS[i]
    assert lower <= histogram_module.percentile(histogram(samples), q) <= upper


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_a_quantile_outside_zero_one_is_refused(q):
    with pytest.raises(ValueError):
        histogram_module.percentile([1], q, bounds=(10,))
