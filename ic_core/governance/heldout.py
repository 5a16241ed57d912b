"""Held-out AUROC of a gating signal, with bootstrap CI and shuffle control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.stats.gating import N_BOOT


@dataclass(frozen=True)
class SignalAuroc:
    """How well a signal ranks right above wrong answers on the held-out items."""

    name: str
    auroc: float | None
    """None with ``reason`` (never a stand-in 0.5)."""
    ci95: tuple[float, float] | None
    shuffle_mean: float | None
    """Mean AUROC over label permutations (≈ 0.5 when nothing leaks)."""
    shuffle_range: tuple[float, float] | None
    n: int
    reason: str | None = None


def held_out_auroc(name: str, score_correct: Any, correct: Any, test_idx: Any, *, n_boot: int = N_BOOT,
                   n_shuffles: int = 20, seed: int = 0) -> SignalAuroc:
    """AUROC of a score (larger = more likely right) on held-out items, with bootstrap CI and shuffle control."""
    from ic_core.stats.auroc import REASON_ONE_CLASS, auroc, bootstrap_ci

    idx = np.asarray(test_idx, dtype=np.int64)
    s = np.asarray(score_correct, dtype=np.float64)[idx]
    y = np.asarray(correct, dtype=bool)[idx]
    if y.all() or not y.any():
        return SignalAuroc(name, None, None, None, None, int(idx.size), REASON_ONE_CLASS)
    a = auroc(s, y)
    low, high, _ = bootstrap_ci(s, y, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 7)
    shuffled = [auroc(s, rng.permutation(y)) for _ in range(n_shuffles)]
    return SignalAuroc(
        name, a, None if low is None else (low, high), float(np.mean(shuffled)),
        (float(np.min(shuffled)), float(np.max(shuffled))), int(idx.size),
    )
