"""Wall-time measurements that can be shown as figures: repeated runs after a warm-up, median and spread."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds of `rounds` timed runs of one step, each after the step already ran once (the warm-up).

    A single first run includes one-off costs (allocator growth, kernel selection, lazy imports) and is not
    a measurement; callers show `median` with the `low`–`high` spread and the number of rounds.
    """

    samples: tuple[float, ...]

    def __post_init__(self):
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")

    @property
    def rounds(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def summary(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "samples": list(self.samples)}
