"""A mergeable log-bucketed histogram: percentiles within 0.2% relative error in bounded memory.

Locust rounds response times above 100 ms to two significant digits before it computes
percentiles, which is too coarse to see a 5% change in time to first token. Bucket ``i`` holds
values in ``(γ^(i-1), γ^i]`` with ``γ = (1 + α) / (1 - α)``, and answers with the value whose
relative distance to both edges is at most ``α`` (the DDSketch construction). Counts add, so
worker histograms merge exactly into the master's; memory grows with the log of the value range,
not with the number of values.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["RELATIVE_ERROR", "LogHistogram"]

RELATIVE_ERROR = 0.002
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_SMALLEST = 1e-6  # values at or below this (including 0) are counted as 0


class LogHistogram:
    """Counts of positive values in geometric buckets, plus exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "max", "min", "sum", "zeros")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= _SMALLEST:
            self.zeros += 1
            return
        index = math.ceil(math.log(value) / _LOG_GAMMA)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s values to this histogram, exactly as if they had been added here."""
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.zeros += other.zeros
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LogHistogram:
        histogram = LogHistogram()
        histogram.merge(self)
        return histogram

    def since(self, earlier: LogHistogram) -> LogHistogram:
        """The values added after ``earlier`` was copied from this histogram (min/max stay overall)."""
        histogram = LogHistogram()
        for index, count in self.buckets.items():
            difference = count - earlier.buckets.get(index, 0)
            if difference:
                histogram.buckets[index] = difference
        histogram.zeros = self.zeros - earlier.zeros
        histogram.count = self.count - earlier.count
        histogram.sum = self.sum - earlier.sum
        if histogram.count:
            histogram.min, histogram.max = self.min, self.max
        return histogram

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1) within the relative error; None when empty."""
        if not self.count:
            return None
        if q >= 1:
            return self.max
        rank = q * (self.count - 1)  # the same interpolation-free rank as numpy's "lower" method
        seen = self.zeros
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if rank < seen:
                value = 2 * _GAMMA**index / (_GAMMA + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON-safe form for worker reports (keys are strings there)."""
        return {
            "b": [[index, count] for index, count in self.buckets.items()],
            "z": self.zeros,
            "n": self.count,
            "s": self.sum,
            "lo": self.min if self.count else None,
            "hi": self.max if self.count else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        histogram = cls()
        histogram.buckets = {int(index): int(count) for index, count in data["b"]}
        histogram.zeros = data["z"]
        histogram.count = data["n"]
        histogram.sum = data["s"]
        if histogram.count:
            histogram.min = data["lo"]
            histogram.max = data["hi"]
        return histogram
