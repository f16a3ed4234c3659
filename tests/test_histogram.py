import math
import random

import pytest

from bagstress_locust.histogram import RELATIVE_ERROR, LogHistogram


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_the_relative_error(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(5, 1.5) for _ in range(20_000)]
    histogram = LogHistogram()
    for value in values:
        histogram.add(value)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999):
        truth = exact_quantile(values, q)
        assert abs(histogram.quantile(q) - truth) <= RELATIVE_ERROR * truth * 1.0001
    assert histogram.count == len(values)
    assert histogram.mean == pytest.approx(sum(values) / len(values))
    assert (histogram.min, histogram.max) == (min(values), max(values))
    # Memory follows the value range, not the count of values.
    gamma = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
    assert len(histogram.buckets) <= math.log(max(values) / min(values)) / math.log(gamma) + 2


def test_merge_equals_one_histogram_of_everything() -> None:
    rng = random.Random(4)
    parts = [[rng.uniform(0, 500) for _ in range(1000)] for _ in range(3)]
    merged = LogHistogram()
    for part in parts:
        histogram = LogHistogram()
        for value in part:
            histogram.add(value)
        merged.merge(LogHistogram.from_dict(histogram.to_dict()))  # as it travels from a worker
    whole = LogHistogram()
    for value in (v for part in parts for v in part):
        whole.add(value)
    assert merged.buckets == whole.buckets
    assert (merged.count, merged.zeros, merged.min, merged.max) == (whole.count, whole.zeros, whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum)
    assert [merged.quantile(q) for q in (0.5, 0.99)] == [whole.quantile(q) for q in (0.5, 0.99)]


def test_zero_and_empty() -> None:
    histogram = LogHistogram()
    assert histogram.quantile(0.5) is None and histogram.mean is None
    for value in (0.0, 0.0, 10.0):
        histogram.add(value)
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(1.0) == 10.0
    assert LogHistogram.from_dict(LogHistogram().to_dict()).count == 0


def test_since_holds_only_the_later_values() -> None:
    histogram = LogHistogram()
    for value in (100.0, 100.0, 100.0):
        histogram.add(value)
    earlier = histogram.copy()
    for value in (400.0, 400.0):
        histogram.add(value)
    later = histogram.since(earlier)
    assert later.count == 2
    assert later.quantile(0.5) == pytest.approx(400, rel=RELATIVE_ERROR)
