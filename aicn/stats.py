"""Counters and histograms that components keep about themselves.

Components count what happens to them in plain Python objects (no metrics
library below the API layer); the HTTP API's Prometheus collector
(:mod:`aicn.api.metrics`) and the dashboard read them when asked.  Labelled
series are bounded: past ``max_series`` distinct label sets, new ones are
counted under :data:`OTHER`, so label values that come from the network or
from API clients cannot grow memory without bound.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

__all__ = ["LATENCY_BUCKETS", "OTHER", "Histogram", "LabelledCounter", "LabelledHistogram"]

#: Upper bounds (seconds) for request latencies: from a local answer (ms) to
#: a model that takes minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: The label value that stands for every label set beyond the bound.
OTHER = "other"
#: Default bound on the label sets of one counter or histogram.
MAX_SERIES = 1000


class Histogram:
    """Observations in buckets, with their sum and count (what a Prometheus
    histogram exposes).  A value lands in the first bucket whose upper bound
    is at least the value; values above the last bound count only in +Inf."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation; NaN and negative values are ignored (a clock step)."""
        if not value >= 0 or math.isinf(value):
            return
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for each bucket, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self._counts):
            running += count
            out.append((bound, running))
        return out


class LabelledCounter:
    """Counters keyed by a tuple of label values, in a bounded number of series."""

    def __init__(self, labels: tuple[str, ...], *, max_series: int = MAX_SERIES) -> None:
        self.labels = labels
        self.max_series = max_series
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"expected labels {self.labels}, got {values!r}")
        if values in self._values or len(self._values) < self.max_series:
            return values
        return (OTHER,) * len(values)

    def inc(self, *values: str, amount: float = 1) -> None:
        """Add ``amount`` to the series of ``values`` (one per label)."""
        key = self._key(tuple(str(v) for v in values))
        self._values[key] = self._values.get(key, 0) + amount

    def get(self, *values: str) -> float:
        """The current value of one series (0 if never counted)."""
        return self._values.get(tuple(values), 0)

    def total(self) -> float:
        """The sum over all series."""
        return sum(self._values.values())

    def items(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """``(label values, value)`` of every series."""
        return iter(list(self._values.items()))


class LabelledHistogram:
    """Histograms keyed by a tuple of label values, in a bounded number of series."""

    def __init__(self, labels: tuple[str, ...], buckets: Iterable[float] = LATENCY_BUCKETS, *,
                 max_series: int = MAX_SERIES) -> None:
        self.labels = labels
        self.buckets = tuple(buckets)
        self.max_series = max_series
        self._series: dict[tuple[str, ...], Histogram] = {}

    def observe(self, *values: str, value: float) -> None:
        """Record ``value`` in the series of ``values`` (one per label)."""
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labels):
            raise ValueError(f"expected labels {self.labels}, got {key!r}")
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                key = (OTHER,) * len(key)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Histogram(self.buckets)
        series.observe(value)

    def get(self, *values: str) -> Histogram | None:
        """The histogram of one series, if it has observations."""
        return self._series.get(tuple(values))

    def items(self) -> Iterator[tuple[tuple[str, ...], Histogram]]:
        """``(label values, histogram)`` of every series."""
        return iter(list(self._series.items()))
