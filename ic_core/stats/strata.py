"""AUROC within the strata of a categorical shortcut (item tag, task kind, source).

A signal can look good pooled only because it tracks a shortcut: if well-known countries are
both easier and lower-entropy, entropy "predicts" correctness by knowing the tag. The
**within-strata AUROC** compares a right answer with a wrong one only when both belong to the
same stratum:

``AUROC_within = Σ_s AUROC_s · P_s · N_s / Σ_s P_s · N_s``

with ``P_s``, ``N_s`` the right and wrong answers of stratum ``s``. It is the per-stratum AUROC
averaged with weights ``P_s · N_s`` (the number of right/wrong pairs in the stratum), which is
exactly the share of within-stratum pairs the score orders correctly (ties ½). Strata with one
class hold no pair and drop out. 0.5 means: inside a stratum the signal knows nothing beyond
the shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.stats.auroc import (
    MIN_PER_CLASS,
    N_BOOT,
    REASON_FEW,
    auroc,
    bootstrap_indices,
    percentile_ci,
    round_or_none,
)

REASON_ONE_STRATUM = "one stratum with both classes"
"""Nothing to stratify: the within-strata AUROC would equal the pooled one."""


@dataclass(frozen=True)
class StrataAuroc:
    """A score's AUROC within the strata of one shortcut, beside its pooled AUROC on the same rows."""

    signal: str
    """The score judged (e.g. ``"last 5 layers"``, ``"−H_slot"``)."""
    shortcut: str
    """What defines the strata (e.g. ``"tags"``, ``"kind"``)."""
    auroc_pooled: float | None
    """AUROC over all rows, every right/wrong pair compared."""
    auroc_within: float | None
    """Pair-weighted mean of the per-stratum AUROCs (only within-stratum pairs compared)."""
    ci_low: float | None
    """Lower end of the item-bootstrap 95 % CI of ``auroc_within``."""
    ci_high: float | None
    """Upper end of that CI."""
    n: int
    """Rows in strata that hold both classes."""
    n_pos: int
    """Right answers among those rows."""
    n_strata: int
    """Strata holding both classes (the ones that count)."""
    n_strata_total: int
    """All strata seen."""
    reason: str | None = None
    """Why ``auroc_within`` is missing."""

    @property
    def n_neg(self) -> int:
        """Wrong answers in the counted strata."""
        return self.n - self.n_pos

    def ci_text(self) -> str:
        """``"0.71 [0.62, 0.80]"`` or the reason."""
        if self.auroc_within is None:
            return self.reason or "not computed"
        if self.ci_low is None or self.ci_high is None:
            return f"{self.auroc_within:.2f} [CI not available]"
        return f"{self.auroc_within:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "signal": self.signal, "shortcut": self.shortcut, "auroc_pooled": round_or_none(self.auroc_pooled),
            "auroc_within_strata": round_or_none(self.auroc_within),
            "ci95": None if self.ci_low is None else [round_or_none(self.ci_low), round_or_none(self.ci_high)],
            "n": self.n, "n_correct": self.n_pos, "n_wrong": self.n_neg, "strata_with_both_classes": self.n_strata,
            "strata": self.n_strata_total, "reason": self.reason,
            "method": "per-stratum AUROC averaged with weights right × wrong (= share of within-stratum pairs ordered)",
        }


def within_strata_auroc(scores: Any, labels: Any, strata: Any) -> tuple[float | None, int]:
    """Pair-weighted within-strata AUROC and the number of within-stratum right/wrong pairs.

    Args:
        scores: (n,) larger = more likely correct.
        labels: (n,) 0/1 or bool.
        strata: (n,) hashable stratum of each row.

    Returns:
        ``(auroc, pairs)``; ``(None, 0)`` when no stratum holds both classes.

    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    g = np.asarray([str(v) for v in strata])
    total = 0.0
    pairs = 0
    for value in np.unique(g):
        m = g == value
        p = int(y[m].sum())
        w = p * (int(m.sum()) - p)
        if w == 0:
            continue
        a = auroc(s[m], y[m])
        assert a is not None
        total += a * w
        pairs += w
    return (total / pairs if pairs else None), pairs


def strata_auroc(
    scores: Any, labels: Any, strata: Any, *, signal: str, shortcut: str, n_boot: int = N_BOOT, seed: int = 0,
    groups: Any = None,
) -> StrataAuroc:
    """Within-strata AUROC of ``scores`` with an item-bootstrap 95 % CI, beside the pooled AUROC.

    Refused (``reason`` set, no number) when fewer than two strata hold both classes, or when the
    counted strata hold fewer than :data:`~ic_core.stats.auroc.MIN_PER_CLASS` right or wrong answers.

    Args:
        scores: (n,) larger = more likely correct (a probe's out-of-fold scores, or a fixed score).
        labels: (n,) 0/1 correctness.
        strata: (n,) the shortcut's value per row.
        signal: Name of the score. shortcut: Name of the stratifying field.
        n_boot: Bootstrap resamples. seed: Their seed. groups: Optional (n,) ids resampled whole.

    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    g = np.asarray([str(v) for v in strata])
    both = [v for v in np.unique(g) if 0 < y[g == v].sum() < (g == v).sum()]
    counted = np.isin(g, both)
    n, n_pos = int(counted.sum()), int(y[counted].sum())
    base = dict(signal=signal, shortcut=shortcut, auroc_pooled=auroc(s, y), n=n, n_pos=n_pos,
                n_strata=len(both), n_strata_total=int(np.unique(g).size))
    if len(both) < 2:
        return StrataAuroc(auroc_within=None, ci_low=None, ci_high=None, reason=REASON_ONE_STRATUM, **base)
    if min(n_pos, n - n_pos) < MIN_PER_CLASS:
        return StrataAuroc(auroc_within=None, ci_low=None, ci_high=None, reason=REASON_FEW, **base)
    value, _ = within_strata_auroc(s, y, g)
    boots = []
    for idx in bootstrap_indices(s.size, n_boot, seed, groups):
        a, _ = within_strata_auroc(s[idx], y[idx], g[idx])
        if a is not None:
            boots.append(a)
    low, high = percentile_ci(boots, n_boot, 0.95)
    return StrataAuroc(auroc_within=value, ci_low=low, ci_high=high, **base)
