"""Selective-prediction statistics beside each AUROC of a Recoverability report.

For every :class:`ic_core.stats.auroc.AurocEstimate` that carries its scores: AURC, E-AURC and
AUGRC with bootstrap CIs (:func:`ic_core.stats.selective.selective_summary`, the same items the
AUROC used). Signals that are probabilities of being right get calibration as well: ECE with
its binning stated, the Brier score and the reliability bins; the probes' out-of-fold scores are
decision values on each training fold's scale, not probabilities, and say so instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ic_core.stats.auroc import N_BOOT, AurocEstimate
from ic_core.stats.selective import (
    N_BINS,
    ReliabilityBins,
    SelectiveSummary,
    brier_score,
    reliability_bins,
    selective_summary,
)

PROBABILITY_SIGNALS: frozenset[str] = frozenset({"top-1 probability"})
"""Signals whose scores are probabilities, read as the model's confidence that it is right."""
NOT_A_PROBABILITY = "not a probability (decision values or bits): no ECE or Brier score"


@dataclass(frozen=True, eq=False)
class SignalSelective:
    """One signal's selective-prediction statistics and, for probabilities, its calibration.

    Attributes:
        name: The signal (as in the AUROC table).
        selective: AURC, E-AURC, AUGRC with bootstrap CIs; their ``reason`` says when n is too small.
        reliability: Equal-width reliability bins (the ECE's binning), or None.
        brier: Brier score, or None.
        note: Why there is no calibration (empty when there is).

    """

    name: str
    selective: SelectiveSummary
    reliability: ReliabilityBins | None = None
    brier: float | None = None
    note: str = ""

    def ece_text(self) -> str:
        """``0.081 (ECE, 10 equal-width bins)`` or the note."""
        if self.reliability is None:
            return self.note
        return f"{self.reliability.ece:.3f} ({self.reliability.label})"


def selective_for(estimates: Sequence[AurocEstimate], *, n_boot: int = N_BOOT, seed: int = 0,
                  groups: np.ndarray | None = None, n_bins: int = N_BINS) -> tuple[SignalSelective, ...]:
    """The statistics of every estimate that has scores (estimates without scores are skipped).

    Args:
        estimates: AUROC estimates with ``scores`` and ``labels`` (larger score = more likely right).
        n_boot: Bootstrap resamples of the CIs.
        seed: Bootstrap seed.
        groups: (n,) item ids when rows of one item must be resampled together (pooled regimes).
        n_bins: Bins of the ECE (equal width).

    """
    out = []
    for est in estimates:
        if est.scores is None or est.labels is None or len(est.scores) == 0:
            continue
        scores = np.asarray(est.scores, dtype=np.float64)
        correct = np.asarray(est.labels).astype(bool)
        keep = np.isfinite(scores)
        g = None if groups is None or len(groups) != len(scores) else np.asarray(groups)[keep]
        summary = selective_summary(scores[keep], correct[keep], name=est.name, n_boot=n_boot, seed=seed, groups=g)
        if est.name in PROBABILITY_SIGNALS and keep.any() and scores[keep].min() >= 0 and scores[keep].max() <= 1:
            bins = reliability_bins(scores[keep], correct[keep], n_bins=n_bins)
            out.append(SignalSelective(est.name, summary, bins, brier_score(scores[keep], correct[keep])))
        else:
            out.append(SignalSelective(est.name, summary, note=NOT_A_PROBABILITY))
    return tuple(out)
