"""Timing helpers: interleaved repeats, medians, ratios against a reference measured in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    benchmark: str
    case: str
    reference: str
    reference_s: float
    ours: str
    ours_s: float

    @property
    def ratio(self) -> float:
        """How many times the reference's time ours takes (< 1: ours is faster)."""
        return self.ours_s / self.reference_s


def compare(reference: Callable[[], object], ours: Callable[[], object], repeats: int = 15, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of each, alternating them so that machine noise hits both alike."""
    for _ in range(warmup):
        reference()
        ours()
    ref_times, our_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        reference()
        ref_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours()
        our_times.append(time.perf_counter() - t)
    return statistics.median(ref_times), statistics.median(our_times)
