"""Timing arms in alternating rounds and summarising their ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ic_core.errors import ICError

TARGETS: dict[str, float | None] = {
    "analysis_over_forward": 1.1,
    "answer_with_check_over_answer": 1.03,
    "gate_over_generate64": 0.08,
    "batched_over_sequential": 0.5,
    "warm_over_cold_load": 0.1,
    "ours_over_naive": 1.0,
    "bytes_per_item": None,  # set per model: float16 states + float32 lens entropy, +5 %
    "study_peak_mb_1000": None,
    "items_per_s": None,
}
"""Upper bounds: a figure passes when its median is at or below the target at every length.
``None``: no target (reported for information)."""

@dataclass(frozen=True)
class RatioStats:
    """Per-round ratios numerator ÷ denominator of one comparison, summarised."""

    median: float
    min: float
    max: float
    n: int
    """Rounds."""
    numerator_median_s: float
    denominator_median_s: float
    target: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Context of the measurement (prompt tokens, generated tokens, ...)."""

    @property
    def passed(self) -> bool | None:
        """Median at or below the target; None without a target."""
        return None if self.target is None else bool(self.median <= self.target)

    def to_json(self) -> dict[str, Any]:
        """``{"median", "min", "max", "n", "numerator_median_s", "denominator_median_s", "target", "pass", ...}``."""
        return {
            "median": rounded(self.median), "min": rounded(self.min), "max": rounded(self.max), "n": self.n,
            "numerator_median_s": rounded(self.numerator_median_s, 5), "denominator_median_s": rounded(self.denominator_median_s, 5),
            "target": self.target, "pass": self.passed, **self.extra,
        }


def rounded(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded to ``nd`` digits for the JSON report (None stays None)."""
    return None if x is None else round(float(x), nd)


def ratio_stats(
    numerator_s: Sequence[float], denominator_s: Sequence[float], target: float | None = None, **extra: Any
) -> RatioStats:
    """Summarise paired timings (one pair per round) as a median ratio with min and max.

    Raises:
        ICError: no rounds, unequal lengths, or a non-positive duration.

    """
    if not numerator_s or len(numerator_s) != len(denominator_s):
        raise ICError(f"Need equally many timings on both sides (got {len(numerator_s)} and {len(denominator_s)}).")
    if min(*numerator_s, *denominator_s) <= 0:
        raise ICError("Timings must be positive.")
    ratios = [a / b for a, b in zip(numerator_s, denominator_s)]
    return RatioStats(
        statistics.median(ratios), min(ratios), max(ratios), len(ratios),
        statistics.median(numerator_s), statistics.median(denominator_s), target, dict(extra),
    )


def time_rounds(arms: Mapping[str, Callable[[], Any]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Time each arm once per round, rotating the order every round (garbage collection paused).

    Args:
        arms: Name → zero-argument callable.
        rounds: How many timings per arm.
        warmup: Call every arm once, untimed, first.

    Returns:
        Name → ``rounds`` durations in seconds.

    """
    names = list(arms)
    if warmup:
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection landing in one arm would be noise
    try:
        for k in range(rounds):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - start)
    finally:
        if was_enabled:
            gc.enable()
    return times


NOISY_SPREAD = 1.25
"""A figure whose max/min over rounds exceeds this was disturbed (another process, a page-cache miss)."""
