"""A signal judged as a gate beside its AUROC: AURC, E-AURC, AUGRC (bootstrap CIs), and the probe's calibration.

Every AUROC the engine reports comes with the selective-prediction statistics of the same
scores on the same items (:func:`selective_for`); a result without an AUROC gets its reason
("n too small", "only one class", ...) in their place, never a number. For the last-layers
probe, whose scores are out-of-fold decision values, :func:`out_of_fold_calibration` refits
each outer fold with the C its inner CV chose and judges the probe's own P(correct) on the
held-out fold: ECE with its binning stated, the Brier score, and reliability bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.stats.auroc import N_BOOT, N_OUTER, AurocEstimate, make_folds, round_or_none
from ic_core.stats.selective import (
    N_BINS,
    ReliabilityBins,
    SelectiveEstimate,
    SelectiveSummary,
    brier_score,
    reliability_bins,
    selective_summary,
)

METRICS: tuple[str, str, str] = ("AURC", "E-AURC", "AUGRC")
"""The selective-prediction statistics shown beside an AUROC (lower is better)."""


def missing_selective(name: str, reason: str, n: int, n_errors: int) -> SelectiveSummary:
    """The three statistics without values, each carrying ``reason``."""
    return SelectiveSummary(*(SelectiveEstimate(name, m, None, None, None, n, n_errors, reason=reason) for m in METRICS))


def selective_for(estimate: AurocEstimate, *, n_boot: int = N_BOOT, seed: int = 0, groups: Any = None
                  ) -> SelectiveSummary:
    """AURC, E-AURC and AUGRC of an estimate's own scores and labels (same items, same bootstrap seed).

    An estimate without an AUROC (``reason`` set) or without stored scores gives the same reason
    for all three, so "n too small" or "only one class" stands where a number would.
    """
    if not estimate.ok or estimate.scores is None or estimate.labels is None:
        return missing_selective(estimate.name, estimate.reason or "not computed", estimate.n, estimate.n_neg)
    return selective_summary(estimate.scores, np.asarray(estimate.labels).astype(bool), name=estimate.name,
                             n_boot=n_boot, seed=seed, groups=groups)


def selective_cells(summary: SelectiveSummary) -> dict[str, str]:
    """``{"AURC [95 % CI]": "0.412 [0.35, 0.47]", ...}`` for a display table (the reason where no value)."""
    return {f"{e.metric} [95 % CI]": e.ci_text() for e in (summary.aurc, summary.eaurc, summary.augrc)}


# --------------------------------------------------------------------------------------
# The probe's own P(correct), out of fold
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ProbeCalibration:
    """Calibration of a probe's P(correct) on held-out folds; arrays have shape (n,)."""

    name: str
    n: int
    n_correct: int
    p_correct: np.ndarray | None
    """Out-of-fold P(correct) of every item (None when ``reason`` is set)."""
    labels: np.ndarray | None
    bins: ReliabilityBins | None
    """Equal-width reliability bins of ``p_correct`` (the ECE's binning)."""
    brier: float | None
    brier_base_rate: float | None
    """Brier score of always predicting the items' accuracy: what a probe must beat."""
    reason: str | None = None

    @property
    def ece(self) -> float | None:
        """Expected calibration error with :attr:`bins`' binning."""
        return None if self.bins is None else self.bins.ece

    def ece_text(self) -> str:
        """``"ECE (10 equal-width bins) = 0.081"`` or the reason."""
        if self.bins is None:
            return self.reason or "not computed"
        return f"{self.bins.label} = {self.bins.ece:.3f}"

    def brier_text(self) -> str:
        """``"Brier 0.201 (always the base rate: 0.229)"`` or the reason."""
        if self.brier is None or self.brier_base_rate is None:
            return self.reason or "not computed"
        return f"Brier {self.brier:.3f} (always the base rate: {self.brier_base_rate:.3f})"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures (no per-item probabilities)."""
        b = self.bins
        return {
            "name": self.name, "n": self.n, "n_correct": self.n_correct, "reason": self.reason,
            "ece": round_or_none(self.ece), "ece_binning": None if b is None else b.label,
            "brier": round_or_none(self.brier), "brier_base_rate": round_or_none(self.brier_base_rate),
            "reliability": None if b is None else {
                "edges": [round(float(e), 4) for e in b.edges], "counts": [int(c) for c in b.counts],
                "mean_confidence": [None if np.isnan(v) else round(float(v), 4) for v in b.mean_confidence],
                "accuracy": [None if np.isnan(v) else round(float(v), 4) for v in b.accuracy],
            },
            "source": "out-of-fold P(correct): each outer fold refitted with the C its inner CV chose",
        }


def out_of_fold_calibration(
    X: np.ndarray, estimate: AurocEstimate, *, seed: int = 0, groups: Any = None, pca_components: int | None = None,
    n_bins: int = N_BINS,
) -> ProbeCalibration:
    """The probe's P(correct) on each outer test fold (same folds and C as ``estimate``), judged for calibration.

    Args:
        X: (n, features) the probe's features (e.g. the concatenated last-k states).
        estimate: The probe's nested-CV result on ``X`` (its ``chosen_C`` per outer fold and labels).
        seed: The fold seed the estimate used. groups: Its fold groups (pooled regimes), or None.
        pca_components: As the estimate's probe. n_bins: Equal-width reliability bins.

    """
    from ic_core.probes.cv import FitCounter, single_threaded, state_model

    n, n_pos = estimate.n, estimate.n_pos
    if not estimate.ok or estimate.labels is None or len(estimate.chosen_C) != N_OUTER:
        return ProbeCalibration(estimate.name, n, n_pos, None, None, None, None, None,
                                reason=estimate.reason or "no fitted folds")
    y = np.asarray(estimate.labels).astype(int)
    X = np.asarray(X, dtype=np.float64).reshape(y.size, -1)
    k = None if pca_components is None else max(1, min(pca_components, X.shape[1], y.size // 2))  # as probe_auroc
    p = np.zeros(y.size)
    counter = FitCounter()
    folds = make_folds(y, n_folds=N_OUTER, seed=seed, groups=None if groups is None else np.asarray(groups))
    with single_threaded():
        for (tr, te), C in zip(folds, estimate.chosen_C):
            model = counter.fit(state_model(C, k), X[tr], y[tr])
            p[te] = model.predict_proba(X[te])[:, 1]
    labels = y.astype(bool)
    base = float(labels.mean())
    return ProbeCalibration(estimate.name, n, n_pos, p, labels, reliability_bins(p, labels, n_bins=n_bins),
                            brier_score(p, labels), float(np.mean((base - labels) ** 2)))
