"""Bounded windows of recent observations with their p50/p95/p99, and Prometheus histograms over all of
them: what the worker's and the serve process's metrics are made of.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Quantiles:
    """A sliding window of recent observations with p50/p95/p99 (no unbounded memory).

    >>> q = Quantiles(size=3); q.add(5.0); q.extend([1.0, 2.0, 3.0]); list(q.values)
    [1.0, 2.0, 3.0]
    """

    size: int = 4096
    values: deque = field(default=None)

    def __post_init__(self):
        self.values = deque(self.values or (), maxlen=self.size)

    def add(self, value: float) -> None:
        self.values.append(value)

    def extend(self, values) -> None:
        """Many observations at once (a batch's events): one call instead of one per event."""
        self.values.extend(values)

    def summary(self) -> dict:
        if not self.values:
            return {"p50": None, "p95": None, "p99": None, "n": 0}
        arr = np.fromiter(self.values, float)
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": len(arr)}


@dataclass
class Histogram(Quantiles):
    """Quantiles of recent observations plus cumulative Prometheus buckets over all of them.

    >>> h = Histogram(bounds=(0.01, 0.05)); h.extend([0.002, 0.02, 0.3]); h.add(0.04)
    >>> h.counts, h.count, round(h.total, 3)
    ([1, 3], 4, 0.362)
    """

    bounds: tuple = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    counts: list = field(default=None)
    count: int = 0
    total: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self.counts = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        super().add(value)
        self._count([value])

    def extend(self, values) -> None:
        values = list(values)
        super().extend(values)
        self._count(values)

    def _count(self, values: list) -> None:
        if not values:
            return
        below = np.searchsorted(np.sort(np.asarray(values, float)), self.bounds, side="right")
        for i, n in enumerate(below):
            self.counts[i] += int(n)
        self.count += len(values)
        self.total += float(sum(values))

    def prometheus(self, name: str, help_: str) -> list[str]:
        lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{le="{b:g}"}} {n}' for b, n in zip(self.bounds, self.counts)]
        return lines + [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total}",
            f"{name}_count {self.count}",
        ]
