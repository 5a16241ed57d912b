"""Two cross-task candidates beside the linear probe: a difference-of-means direction and a scalar read-out probe.

* **Difference-of-means direction** (Cencerrado et al., ICLR 2026, "No Answer Needed"): on the
  training rows, ``w = mean(state | correct) − mean(state | wrong)``; a row's score is its
  projection ``(x − (μ₊ + μ₋)/2) · w``. Nothing is tuned, so it has fewer ways to fit a task's
  quirks than a regularised logistic regression on thousands of features.
* **Scalar read-out probe**: the same nested-CV logistic regression as the state probe, on a
  handful of numbers the run already records per row — read-out entropy (H_int or H_slot), its
  top-100 variant, top-1 probability and the logit-lens entropy profile.

Both go through the same nested protocol (:func:`ic_core.probes.cv.fitted_auroc`) within a task
and the same fit-on-A/score-on-B protocol across tasks (:mod:`ic_core.probes.transfer`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.errors import DataError
from ic_core.probes.cv import _as_features, fitted_auroc, state_model
from ic_core.stats.auroc import AurocEstimate

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DIFF_MEANS_NAME = "difference-of-means direction"
SCALAR_NAME = "scalar read-out probe"
SCALAR_COLUMNS: tuple[str, ...] = ("readout_entropy_bits", "readout_entropy_top100_bits", "top1_prob")
"""Per-row read-outs of a run table used by the scalar probe (when present and finite on every row)."""


class DiffMeansDirection:
    """Estimator: score = projection on (mean correct state − mean wrong state); no hyperparameter.

    It follows the small part of the sklearn interface the nested CV uses (``fit``,
    ``decision_function``, ``set_params``); ``set_params`` accepts and ignores ``logreg__C``
    because there is nothing to regularise.
    """

    def __init__(self) -> None:
        """An unfitted direction."""
        self.direction_: np.ndarray | None = None
        self.midpoint_: np.ndarray | None = None

    def set_params(self, **params: Any) -> DiffMeansDirection:
        """Accept the nested CV's ``logreg__C`` (unused) and refuse anything else."""
        unknown = set(params) - {"logreg__C"}
        if unknown:
            raise ValueError(f"DiffMeansDirection has no parameters {sorted(unknown)}")
        return self

    def fit(self, X: Any, y: Any) -> DiffMeansDirection:
        """Means of the two classes on (n, f) features ``X`` with 0/1 labels ``y``."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(bool)
        if y.all() or not y.any():
            raise DataError("The difference-of-means direction needs right and wrong answers to fit.")
        mu_pos, mu_neg = X[y].mean(axis=0), X[~y].mean(axis=0)
        self.direction_ = mu_pos - mu_neg
        self.midpoint_ = (mu_pos + mu_neg) / 2.0
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """(n,) projections; larger = closer to the correct answers' mean."""
        if self.direction_ is None or self.midpoint_ is None:
            raise DataError("The difference-of-means direction is not fitted.")
        return (np.asarray(X, dtype=np.float64) - self.midpoint_) @ self.direction_


def diff_means_model(C: float) -> DiffMeansDirection:
    """Model factory for the nested CV (``C`` is ignored: the direction has no hyperparameter)."""
    del C
    return DiffMeansDirection()


def diff_means_auroc(X: Any, y: Any, *, name: str = DIFF_MEANS_NAME, description: str = "", **kw: Any) -> AurocEstimate:
    """Nested-CV AUROC of the difference-of-means direction on features ``X`` (n, f).

    Each outer fold fits the two class means on its training rows only; the single-value C grid
    makes the inner CV a no-op. Same bootstrap and label permutations as the linear probe.
    """
    X = _as_features(X)
    kw.pop("Cs", None)
    desc = description or f"projection on mean(correct) − mean(wrong) of the {X.shape[1]} state features (no tuning)"
    est = fitted_auroc(diff_means_model, X, y, name=name, description=desc, Cs=(1.0,), **kw)
    return replace(est, chosen_C=())


def scalar_features(table: pd.DataFrame, lens_entropy_bits: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, f) scalar read-outs of table rows and their names: :data:`SCALAR_COLUMNS` + lens entropies.

    A column is used only when present and finite on every row (so the probe never imputes).

    Args:
        table: Run-table rows (pandas DataFrame).
        lens_entropy_bits: (n, L) logit-lens entropy per layer of the same rows.

    Raises:
        DataError: no usable read-out at all.

    """
    cols: list[np.ndarray] = []
    names: list[str] = []
    for c in SCALAR_COLUMNS:
        if c in table:
            v = np.asarray(table[c].to_numpy(), dtype=np.float64)
            if v.size and np.isfinite(v).all():
                cols.append(v)
                names.append(c)
    lens = np.asarray(lens_entropy_bits, dtype=np.float64)
    if lens.ndim == 2 and lens.shape[0] == len(table) and np.isfinite(lens).all():
        cols.extend(lens.T)
        names.extend(f"lens_entropy_bits[{i}]" for i in range(lens.shape[1]))
    if not cols:
        raise DataError("These rows record no finite scalar read-out (entropy, top-1 probability, lens profile).")
    return np.column_stack(cols), tuple(names)


def scalar_probe_auroc(table: pd.DataFrame, lens_entropy_bits: Any, y: Any, **kw: Any) -> AurocEstimate:
    """Nested-CV linear probe on the scalar read-outs of the same rows (see :func:`scalar_features`)."""
    X, names = scalar_features(table, lens_entropy_bits)
    n_lens = sum(1 for n in names if n.startswith("lens"))
    plain = [n for n in names if not n.startswith("lens")]
    desc = (f"linear probe (scaled, L2, C in inner folds) on {', '.join(plain) or 'no single read-out'}"
            f"{f' + {n_lens} lens entropies' if n_lens else ''}")
    return fitted_auroc(state_model, X, y, name=SCALAR_NAME, description=desc, **kw)
