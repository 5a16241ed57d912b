"""Recoverability (Recov): a linear read-out of the pre-collapse state predicting correctness.

Recov asks whether the model's own answer will be correct, from the state before it writes.
Protocol (DESIGN §1, §7), identical for every probe here:

* features → ``StandardScaler`` → (optional ``PCA``) → L2 ``LogisticRegression`` (lbfgs), one
  sklearn ``Pipeline`` fitted on training rows only;
* stratified :data:`N_OUTER`-fold **outer** CV with a fixed seed; the inverse regularisation
  ``C`` is chosen for each outer fold by an **inner** stratified CV on that fold's training
  rows alone (grid :data:`C_GRID`, mean inner AUROC, ties → smaller C);
* each outer fold's test decision values are put on its training fold's scale (minus the mean,
  divided by the std of the training decision values) before pooling, because under strong
  regularisation the per-fold intercepts would otherwise decide the pooled ranking; the mean of
  the per-fold AUROCs is reported beside the pooled one;
* a :data:`N_BOOT`-resample percentile bootstrap 95 % CI of the pooled AUROC (items resampled;
  resamples with one class skipped), and a label-shuffle control: several permutations of the
  labels, each run through the same nested protocol, reported as mean and range.

Guards: fewer than 10 graded rows or fewer than ``2 × n_folds`` rows of either class give
``auroc=None`` with ``reason="n too small"`` (``"only one class"`` when a class is missing);
layers whose state is identical for every item give ``reason="constant state"``. No number
stands in for an error.

Single-score baselines (−H_int, top-1 probability, …) are scored on the same items, with the
same outer folds for the per-fold mean, the same bootstrap and the same label permutations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from ic_core.errors import DataError, PromptError
from ic_core.metrics import constant_layers

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.study import StudyRun

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse L2 strengths tried by the inner CV (log-spaced, reaching down to strong regularisation)."""
N_OUTER = 5
"""Outer (reported) folds."""
N_INNER = 3
"""Inner folds that choose C on an outer training fold."""
N_BOOT = 1000
"""Bootstrap resamples for the 95 % CI."""
N_SHUFFLES = 10
"""Label permutations for the shuffle control of a single probe."""
N_SHUFFLES_PER_LAYER = 3
"""Label permutations per layer on the by-layer curve. Each one is a full nested CV per layer (the
dominant cost: ~0.3 s CPU per layer and permutation at N=112, d=576), so fewer than for the
headline probe; across 30 layers that is still ~90 null AUROCs."""
LAST_K = 5
"""The paper's choice: the concatenated states of the last 5 layers."""
MIN_TOTAL = 10
"""Fewer graded rows than this → "n too small"."""
MAX_ITER = 2000

REASON_SMALL = "n too small"
REASON_ONE_CLASS = "only one class"
REASON_CONSTANT = "constant state"
REASON_MISSING = "not recorded in this run"

FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Out-of-fold AUROC of one probe or one single-score baseline on N labelled rows.

    AUROC fields are ``None`` exactly when ``reason`` says why (never a stand-in 0.5).
    """

    name: str
    """Short label, e.g. ``"layer 12"``, ``"last 5 layers"``, ``"−H_int"``."""
    auroc_pooled: float | None
    """AUROC of the pooled out-of-fold scores (each fold on its training fold's scale)."""
    auroc_fold_mean: float | None
    """Mean of the per-fold AUROCs."""
    ci_low: float | None
    """Lower end of the bootstrap 95 % CI of ``auroc_pooled``."""
    ci_high: float | None
    """Upper end of the bootstrap 95 % CI."""
    shuffle_mean: float | None
    """Mean pooled AUROC over label permutations (same protocol); ≈ 0.5 when nothing leaks."""
    shuffle_min: float | None
    shuffle_max: float | None
    n: int
    """Rows used (graded, both classes counted)."""
    n_pos: int
    """Rows whose answer was correct."""
    chosen_C: tuple[float, ...] = ()
    """C chosen by the inner CV, one per outer fold (empty for single scores)."""
    fold_aurocs: tuple[float | None, ...] = ()
    """AUROC of each outer test fold."""
    scores: np.ndarray | None = None
    """(n,) out-of-fold scores (probes) or the score itself (baselines); larger = more likely correct."""
    labels: np.ndarray | None = None
    """(n,) 0/1 correctness labels aligned with ``scores``."""
    reason: str | None = None
    """Why the AUROC is missing (``"n too small"``, ``"only one class"``, ``"constant state"``, …)."""
    kind: str = "probe"
    """``"probe"`` (fitted in nested CV) or ``"score"`` (a fixed score, no fitting)."""
    description: str = ""
    """What is computed, in words."""
    note: str = ""
    """Caveats (e.g. lbfgs non-convergence, sign choices, shuffle count)."""
    n_shuffles: int = 0
    n_boot_used: int = 0
    """Bootstrap resamples with both classes (the CI's denominator)."""

    @property
    def ok(self) -> bool:
        """Whether an AUROC was computed."""
        return self.auroc_pooled is not None

    def ci_text(self) -> str:
        """``"0.78 [0.72, 0.83]"`` or the reason."""
        if self.auroc_pooled is None:
            return self.reason or "not computed"
        if self.ci_low is None or self.ci_high is None:
            return f"{self.auroc_pooled:.2f} [CI not available]"
        return f"{self.auroc_pooled:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"

    def to_json(self, include_scores: bool = False) -> dict[str, Any]:
        """JSON-ready figures (``None`` → ``null``, always with the reason)."""
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "auroc_pooled": _round(self.auroc_pooled),
            "auroc_fold_mean": _round(self.auroc_fold_mean),
            "ci95": [_round(self.ci_low), _round(self.ci_high)] if self.ci_low is not None else None,
            "shuffle": None if self.shuffle_mean is None else {
                "mean": _round(self.shuffle_mean), "min": _round(self.shuffle_min), "max": _round(self.shuffle_max),
                "n_permutations": self.n_shuffles,
            },
            "n": self.n, "n_correct": self.n_pos, "chosen_C": list(self.chosen_C),
            "fold_aurocs": [_round(a) for a in self.fold_aurocs], "reason": self.reason,
            "description": self.description, "note": self.note,
        }
        if include_scores and self.scores is not None:
            out["scores"] = [float(s) for s in self.scores]
        return out


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _missing(name: str, reason: str, n: int, n_pos: int, kind: str = "probe", description: str = "") -> ProbeResult:
    return ProbeResult(name, None, None, None, None, None, None, None, n, n_pos, reason=reason, kind=kind,
                       description=description)


# --------------------------------------------------------------------------------------
# AUROC, bootstrap, guards, folds (arrays only)
# --------------------------------------------------------------------------------------


def auroc(scores: Any, labels: Any) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties count ½); ``None`` with one class.

    Args:
        scores: (n,) larger = more likely positive.
        labels: (n,) 0/1 or bool.

    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _bootstrap_indices(n: int, n_boot: int, seed: int, groups: Any = None) -> Any:
    """Yield ``n_boot`` resamples of row indices: rows with replacement, or whole groups when given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        yield from rng.integers(0, n, size=(n_boot, n))
        return
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def _percentile_ci(values: list[float], n_boot: int, level: float) -> tuple[float | None, float | None]:
    if len(values) < n_boot / 2:
        return None, None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    scores: Any, labels: Any, *, n_boot: int = N_BOOT, seed: int = 0, groups: Any = None, level: float = 0.95
) -> tuple[float | None, float | None, int]:
    """Percentile bootstrap CI of the AUROC, resampling items (or whole groups when given).

    Returns:
        (low, high, resamples used); ``(None, None, used)`` if fewer than half the resamples
        had both classes.

    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    values = []
    for idx in _bootstrap_indices(s.size, n_boot, seed, groups):
        a = auroc(s[idx], y[idx])
        if a is not None:
            values.append(a)
    low, high = _percentile_ci(values, n_boot, level)
    return low, high, len(values)


@dataclass(frozen=True)
class AurocDifference:
    """AUROC(a) − AUROC(b) on the same items, with a paired bootstrap 95 % CI."""

    a: str
    b: str
    diff: float
    ci_low: float | None
    ci_high: float | None
    n: int

    @property
    def clear(self) -> bool:
        """Whether the CI excludes 0 (a difference the data can tell)."""
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)

    def text(self) -> str:
        """``"+0.05 [0.01, 0.09]"``."""
        ci = "" if self.ci_low is None else f" [{self.ci_low:+.2f}, {self.ci_high:+.2f}]"
        return f"{self.diff:+.2f}{ci}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"a": self.a, "b": self.b, "auroc_difference": _round(self.diff),
                "ci95": None if self.ci_low is None else [_round(self.ci_low), _round(self.ci_high)], "n": self.n}


def auroc_difference(
    a: ProbeResult, b: ProbeResult, *, n_boot: int = N_BOOT, seed: int = 0, groups: Any = None
) -> AurocDifference | None:
    """Paired bootstrap of the AUROC difference of two results scored on the same rows (None otherwise)."""
    if not (a.ok and b.ok) or a.scores is None or b.scores is None or a.labels is None or b.labels is None:
        return None
    if a.scores.shape != b.scores.shape or not np.array_equal(a.labels, b.labels):
        return None
    y = a.labels.astype(bool)
    diffs = []
    for idx in _bootstrap_indices(y.size, n_boot, seed, groups):
        da, db = auroc(a.scores[idx], y[idx]), auroc(b.scores[idx], y[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    low, high = _percentile_ci(diffs, n_boot, 0.95)
    assert a.auroc_pooled is not None and b.auroc_pooled is not None
    return AurocDifference(a.name, b.name, a.auroc_pooled - b.auroc_pooled, low, high, int(y.size))


def label_reason(labels: Any, n_folds: int = N_OUTER) -> str | None:
    """Why no AUROC can be estimated on these labels, or ``None`` when it can."""
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return REASON_ONE_CLASS
    if y.size < MIN_TOTAL or min(n_pos, n_neg) < 2 * n_folds:
        return REASON_SMALL
    return None


def make_folds(
    labels: Any, *, n_folds: int = N_OUTER, seed: int = 0, groups: Any = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (and, with ``groups``, grouped) shuffled folds as (train, test) index arrays."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels).astype(int)
    dummy = np.zeros((y.size, 1))
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(dummy, y)]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(dummy, y, np.asarray(groups))]


# --------------------------------------------------------------------------------------
# Models and nested CV
# --------------------------------------------------------------------------------------

ModelFactory = Callable[[float], Any]
"""C → an unfitted sklearn estimator with ``decision_function``."""


def state_model(C: float, pca_components: int | None = None) -> Any:
    """``StandardScaler → [PCA] → LogisticRegression(L2, lbfgs)`` as one Pipeline."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if pca_components:
        steps.append(("pca", PCA(n_components=pca_components, svd_solver="full", random_state=0)))
    steps.append(("logreg", LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, warm_start=True)))
    return Pipeline(steps)


def text_model(C: float) -> Any:
    """``TfidfVectorizer(words, 1–2-grams) → LogisticRegression(L2)`` on raw question text."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("tfidf", TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True)),
        ("logreg", LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, warm_start=True)),
    ])


def _set_C(model: Any, C: float) -> Any:
    return model.set_params(logreg__C=C)


class _FitCounter:
    """Counts lbfgs non-convergence instead of hiding or spamming the warning."""

    def __init__(self) -> None:
        self.fits = 0
        self.not_converged = 0

    def fit(self, model: Any, X: Any, y: np.ndarray) -> Any:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X, y)
        self.fits += 1
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            self.not_converged += 1
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return model


def choose_C(
    make_model: ModelFactory, X_train: Any, y_train: np.ndarray, *, groups_train: Any = None,
    Cs: Sequence[float] = C_GRID, n_inner: int = N_INNER, seed: int = 0, counter: _FitCounter | None = None,
) -> float:
    """Pick C by a stratified inner CV on **training rows only** (mean inner AUROC, ties → smaller C).

    Args:
        make_model: C → unfitted estimator.
        X_train: (n_train, ...) features of the outer training fold (array or array of strings).
        y_train: (n_train,) 0/1 labels of the same rows.
        groups_train: (n_train,) group ids (rows of one item stay in one inner fold), or None.

    """
    counter = counter or _FitCounter()
    Cs = sorted(Cs)
    n_inner = max(2, min(n_inner, int(np.bincount(y_train, minlength=2).min())))
    folds = make_folds(y_train, n_folds=n_inner, seed=seed + 1, groups=groups_train)
    totals = np.zeros(len(Cs))
    counts = np.zeros(len(Cs))
    for tr, va in folds:
        if np.unique(y_train[tr]).size < 2 or np.unique(y_train[va]).size < 2:
            continue
        model = make_model(Cs[0])
        for j, C in enumerate(Cs):  # ascending C with warm starts
            counter.fit(_set_C(model, C), X_train[tr], y_train[tr])
            a = auroc(model.decision_function(X_train[va]), y_train[va])
            if a is not None:
                totals[j] += a
                counts[j] += 1
    if not counts.any():
        return float(Cs[0])
    means = np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)
    return float(Cs[int(np.argmax(means))])  # argmax takes the first (smallest C) on ties


@dataclass(frozen=True, eq=False)
class NestedCV:
    """Outcome of one nested cross-validation run."""

    scores: np.ndarray
    """(n,) out-of-fold decision values, each fold standardised by its training fold's values."""
    fold_aurocs: tuple[float | None, ...]
    chosen_C: tuple[float, ...]
    n_fits: int
    n_not_converged: int


def nested_cv(
    make_model: ModelFactory, X: Any, y: Any, *, groups: Any = None, Cs: Sequence[float] = C_GRID,
    n_folds: int = N_OUTER, n_inner: int = N_INNER, seed: int = 0,
) -> NestedCV:
    """Out-of-fold scores with C chosen inside each outer training fold.

    Args:
        make_model: C → unfitted estimator.
        X: (n, ...) features (numpy array; an object array of strings for text models).
        y: (n,) 0/1 labels.
        groups: optional (n,) group ids kept within one fold (the same item in several regimes).

    """
    with _single_threaded():
        return _nested_cv(make_model, X, y, groups=groups, Cs=Cs, n_folds=n_folds, n_inner=n_inner, seed=seed)


def _nested_cv(
    make_model: ModelFactory, X: Any, y: Any, *, groups: Any, Cs: Sequence[float], n_folds: int, n_inner: int,
    seed: int,
) -> NestedCV:
    y = np.asarray(y).astype(int)
    groups_arr = None if groups is None else np.asarray(groups)
    counter = _FitCounter()
    scores = np.zeros(y.size)
    fold_aurocs: list[float | None] = []
    chosen: list[float] = []
    for tr, te in make_folds(y, n_folds=n_folds, seed=seed, groups=groups_arr):
        C = choose_C(make_model, X[tr], y[tr], groups_train=None if groups_arr is None else groups_arr[tr],
                     Cs=Cs, n_inner=n_inner, seed=seed, counter=counter)
        model = counter.fit(make_model(C), X[tr], y[tr])
        train_dv = model.decision_function(X[tr])
        test_dv = model.decision_function(X[te])
        sd = float(train_dv.std())
        scores[te] = (test_dv - train_dv.mean()) / (sd if sd > 0 else 1.0)
        fold_aurocs.append(auroc(test_dv, y[te]))
        chosen.append(C)
    return NestedCV(scores, tuple(fold_aurocs), tuple(chosen), counter.fits, counter.not_converged)


def _summarise(
    name: str, scores: np.ndarray, y: np.ndarray, fold_aurocs: Sequence[float | None], shuffled: list[float],
    *, n_boot: int, seed: int, groups: Any, kind: str, description: str, note: str = "",
    chosen_C: tuple[float, ...] = (),
) -> ProbeResult:
    low, high, used = bootstrap_ci(scores, y, n_boot=n_boot, seed=seed, groups=groups)
    valid = [a for a in fold_aurocs if a is not None]
    return ProbeResult(
        name=name, auroc_pooled=auroc(scores, y), auroc_fold_mean=float(np.mean(valid)) if valid else None,
        ci_low=low, ci_high=high,
        shuffle_mean=float(np.mean(shuffled)) if shuffled else None,
        shuffle_min=float(np.min(shuffled)) if shuffled else None,
        shuffle_max=float(np.max(shuffled)) if shuffled else None,
        n=int(y.size), n_pos=int(y.sum()), chosen_C=chosen_C, fold_aurocs=tuple(fold_aurocs),
        scores=np.asarray(scores, dtype=np.float64), labels=y.astype(np.int8), kind=kind,
        description=description, note=note, n_shuffles=len(shuffled), n_boot_used=used,
    )


def _permutations(y: np.ndarray, n_shuffles: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 10_007)
    return [rng.permutation(y) for _ in range(n_shuffles)]


def fitted_auroc(
    make_model: ModelFactory, X: Any, y: Any, *, name: str = "probe", description: str = "", groups: Any = None,
    Cs: Sequence[float] = C_GRID, n_folds: int = N_OUTER, n_inner: int = N_INNER, n_boot: int = N_BOOT,
    n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> ProbeResult:
    """Nested-CV AUROC of any C-parametrised model, with bootstrap CI and shuffle control."""
    from sklearn import config_context

    y = np.asarray(y).astype(int)
    reason = label_reason(y, n_folds)
    if reason:
        return _missing(name, reason, y.size, int(y.sum()), description=description)
    kw = dict(groups=groups, Cs=Cs, n_folds=n_folds, n_inner=n_inner, seed=seed)
    permuted = _permutations(y, n_shuffles, seed)
    with _single_threaded(), config_context(assume_finite=True, skip_parameter_validation=True):  # finiteness is checked once by the callers
        real = _nested_cv(make_model, X, y, **kw)
        shuffled = [_nested_cv(make_model, X, yp, **kw) for yp in permuted]
    fits = real.n_fits + sum(s.n_fits for s in shuffled)
    bad = real.n_not_converged + sum(s.n_not_converged for s in shuffled)
    note = f"lbfgs reached max_iter in {bad} of {fits} fits" if bad else ""
    return _summarise(
        name, real.scores, y, real.fold_aurocs, [auroc(s.scores, yp) for s, yp in zip(shuffled, permuted)],
        n_boot=n_boot, seed=seed, groups=groups, kind="probe", description=description, note=note,
        chosen_C=real.chosen_C,
    )


def _single_threaded() -> Any:
    """One BLAS/OpenMP thread for the fits.

    These matrices are tiny, and threads contending on a busy CPU made lbfgs ~40× slower in our
    measurements (load average 6 on 2 cores).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _as_features(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataError(f"Probe features must be a 2-D (rows, features) array, got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise DataError(
            "The states contain inf/NaN values (float16 overflow?): the probe cannot be fitted on them."
        )
    return X


def probe_auroc(
    X: Any, y: Any, *, name: str = "probe", description: str = "linear probe on the given features",
    groups: Any = None, Cs: Sequence[float] = C_GRID, n_folds: int = N_OUTER, n_inner: int = N_INNER,
    n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0, pca_components: int | None = None,
) -> ProbeResult:
    """Recov of features ``X`` (n, f) for labels ``y`` (n,) 0/1: nested-CV linear probe AUROC.

    Args:
        pca_components: if set, PCA to this many components fitted inside each training fold.

    """
    X = _as_features(X)
    y = np.asarray(y).astype(int)
    if X.shape[0] != y.size:
        raise DataError(f"{X.shape[0]} feature rows but {y.size} labels.")

    def make(C: float) -> Any:
        k = None if pca_components is None else max(1, min(pca_components, X.shape[1], y.size // 2))
        return state_model(C, k)

    return fitted_auroc(make, X, y, name=name, description=description, groups=groups, Cs=Cs, n_folds=n_folds,
                        n_inner=n_inner, n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)


def text_probe_auroc(texts: Sequence[str], y: Any, *, name: str = "question text only (TF-IDF)", **kw: Any) -> ProbeResult:
    """Shortcut check: the same nested protocol on TF-IDF features of the question text alone."""
    X = np.asarray([str(t) for t in texts], dtype=object)
    description = "TF-IDF of the question's words (1–2-grams) + L2 logistic regression, no model state"
    return fitted_auroc(text_model, X, y, name=name, description=description, **kw)


def probe_by_layer(
    hidden: Any, y: Any, *, n_shuffles: int = N_SHUFFLES_PER_LAYER,
    progress: Callable[[int, int, str], None] | None = None, **kw: Any,
) -> list[ProbeResult]:
    """The "which layer knows?" curve: one probe per ``hidden_states`` index.

    Args:
        hidden: (N, L + 1, d) states (index 0 = embeddings).
        y: (N,) 0/1 correctness.
        progress: optional callback (done, total, label).

    Returns:
        L + 1 results; constant layers carry ``reason="constant state"`` and no AUROC.

    """
    hidden = _as_states(hidden)
    y = np.asarray(y).astype(int)
    constant = set(constant_layers(hidden)) if hidden.shape[0] >= 2 else set()
    out = []
    total = hidden.shape[1]
    for layer in range(total):
        name = f"layer {layer}"
        desc = f"linear probe on the read-out state after block {layer}" if layer else "linear probe on the embeddings"
        if layer in constant:
            out.append(_missing(name, REASON_CONSTANT, y.size, int(y.sum()), description=desc))
        else:
            out.append(probe_auroc(hidden[:, layer, :], y, name=name, description=desc, n_shuffles=n_shuffles, **kw))
        if progress:
            progress(layer + 1, total, name)
    return out


def last_layer_indices(n_states: int, k: int = LAST_K) -> tuple[int, ...]:
    """``hidden_states`` indices of the last ``k`` blocks (never the embeddings)."""
    k = max(1, min(k, n_states - 1))
    return tuple(range(n_states - k, n_states))


def probe_last_layers(hidden: Any, y: Any, k: int = LAST_K, **kw: Any) -> ProbeResult:
    """Probe on the concatenated states of the last ``k`` layers (the paper's choice).

    Args:
        hidden: (N, L + 1, d).
        y: (N,) 0/1.

    """
    hidden = _as_states(hidden)
    layers = last_layer_indices(hidden.shape[1], k)
    X = hidden[:, list(layers), :].reshape(hidden.shape[0], -1)
    desc = f"linear probe on the concatenated states of layers {layers[0]}–{layers[-1]} ({len(layers) * hidden.shape[2]} features)"
    return probe_auroc(X, y, name=f"last {len(layers)} layers", description=desc, **kw)


def _as_states(hidden: Any) -> np.ndarray:
    hidden = np.asarray(hidden)
    if hidden.ndim != 3:
        raise DataError(f"States must be (N, L + 1, d), got shape {hidden.shape}.")
    if not np.isfinite(hidden).all():
        raise DataError("The states contain inf/NaN values (float16 overflow?): the probe cannot be fitted on them.")
    return hidden


def score_auroc(
    score: Any, y: Any, *, name: str, description: str, groups: Any = None, n_folds: int = N_OUTER,
    n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> ProbeResult:
    """A fixed score (larger = more likely correct) on the same items, folds and permutations as the probes.

    Rows where the score is NaN are left out and counted in the note.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y).astype(int)
    keep = np.isfinite(s)
    note = "" if keep.all() else f"{int((~keep).sum())} rows without this score left out"
    if not keep.any():
        return _missing(name, REASON_MISSING, y.size, int(y.sum()), kind="score", description=description)
    s, y = s[keep], y[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    reason = label_reason(y, n_folds)
    if reason:
        return _missing(name, reason, y.size, int(y.sum()), kind="score", description=description)
    folds = make_folds(y, n_folds=n_folds, seed=seed, groups=g)
    fold_aurocs = [auroc(s[te], y[te]) for _, te in folds]
    shuffled = [auroc(s, yp) for yp in _permutations(y, n_shuffles, seed)]
    return _summarise(name, s, y, fold_aurocs, shuffled, n_boot=n_boot, seed=seed, groups=g, kind="score",
                      description=description, note=note)


def signed_score_auroc(
    value: Any, y: Any, *, name: str, description: str, groups: Any = None, n_folds: int = N_OUTER,
    n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> ProbeResult:
    """A raw quantity (e.g. prompt length) whose direction is chosen on each **training** fold.

    Each outer fold: sign = +1 if the value's training-fold AUROC ≥ 0.5 else −1; the test
    fold's signed values are standardised by the training fold's mean/std and pooled.
    """
    v = np.asarray(value, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if not np.isfinite(v).all():
        return _missing(name, REASON_MISSING, y.size, int(y.sum()), kind="score", description=description)
    reason = label_reason(y, n_folds)
    if reason:
        return _missing(name, reason, y.size, int(y.sum()), kind="score", description=description)

    def run(labels: np.ndarray) -> tuple[np.ndarray, list[float | None], list[int]]:
        scores = np.zeros(labels.size)
        fold_aurocs, signs = [], []
        for tr, te in make_folds(labels, n_folds=n_folds, seed=seed, groups=groups):
            a_tr = auroc(v[tr], labels[tr])
            sign = 1 if a_tr is None or a_tr >= 0.5 else -1
            sd = float(v[tr].std())
            scores[te] = sign * (v[te] - v[tr].mean()) / (sd if sd > 0 else 1.0)
            fold_aurocs.append(auroc(sign * v[te], labels[te]))
            signs.append(sign)
        return scores, fold_aurocs, signs

    scores, fold_aurocs, signs = run(y)
    shuffled = []
    for yp in _permutations(y, n_shuffles, seed):
        shuffled.append(auroc(run(yp)[0], yp))
    n_up = sum(1 for s in signs if s > 0)
    note = (f"direction chosen on training folds: larger value → predicted correct in {n_up} of {len(signs)} folds, "
            f"smaller in {len(signs) - n_up}")
    return _summarise(name, scores, y, fold_aurocs, shuffled, n_boot=n_boot, seed=seed, groups=groups, kind="score",
                      description=description, note=note)


# --------------------------------------------------------------------------------------
# A study run → the full report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RecoverabilityReport:
    """Everything the Recoverability page and ``python -m ic_core probe`` show for one selection."""

    run_path: str
    selection: str
    """A regime name, or ``"pooled"`` (all regimes; folds keep each item's rows together)."""
    n_rows: int
    """Rows in the selection, graded or not."""
    n_ungraded: int
    """Rows left out because their answer could not be graded (correct = None)."""
    n: int
    n_pos: int
    signal_name: str
    """``"H_int"``, ``"H_slot"`` or ``"mixed"``: what the table's ``h_int_bits`` column holds here."""
    constant_layers: tuple[int, ...]
    by_layer: tuple[ProbeResult, ...]
    """L + 1 results, index = ``hidden_states`` index (0 = embeddings)."""
    last_layers: ProbeResult
    last_layer_indices: tuple[int, ...]
    baselines: tuple[ProbeResult, ...]
    differences: tuple[AurocDifference, ...] = ()
    """The last-layers probe minus each baseline scored on the same rows (paired bootstrap CI)."""
    settings: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """Share of graded rows answered correctly."""
        return self.n_pos / self.n if self.n else None

    def baseline(self, key: str) -> ProbeResult | None:
        """The baseline whose name starts with ``key`` (e.g. ``"−H"``, ``"prompt length"``)."""
        return next((b for b in self.baselines if b.name.startswith(key)), None)

    def difference(self, baseline_name: str) -> AurocDifference | None:
        """The probe-minus-baseline comparison for one baseline, if both have an AUROC."""
        return next((d for d in self.differences if d.b == baseline_name), None)

    def best_layer(self) -> ProbeResult | None:
        """Layer with the highest pooled AUROC (descriptive: picking it on these folds is optimistic)."""
        ok = [r for r in self.by_layer if r.ok]
        return max(ok, key=lambda r: r.auroc_pooled) if ok else None

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object (no per-item scores)."""
        best = self.best_layer()
        return {
            "run": self.run_path, "selection": self.selection, "n_rows": self.n_rows,
            "n_ungraded_excluded": self.n_ungraded, "n": self.n, "n_correct": self.n_pos,
            "accuracy": _round(self.accuracy), "signal": self.signal_name,
            "constant_layers": list(self.constant_layers),
            "by_layer": [dict(layer=i, **r.to_json()) for i, r in enumerate(self.by_layer)],
            "best_layer": None if best is None else {
                "layer": self.by_layer.index(best), "auroc_pooled": _round(best.auroc_pooled),
                "note": "chosen after looking at all layers on the same folds: optimistic; the last-layers probe is the fixed choice",
            },
            "last_layers": dict(layers=list(self.last_layer_indices), **self.last_layers.to_json()),
            "baselines": [b.to_json() for b in self.baselines],
            "probe_minus_baseline": [d.to_json() for d in self.differences],
            "settings": self.settings, "elapsed_s": round(self.elapsed_s, 2),
        }


def graded_selection(run: StudyRun, regime: str | None = None, pooled: bool = False) -> tuple[Any, str, int]:
    """Rows of ``run.table`` to probe: (graded rows, selection label, rows before excluding ungraded).

    Raises:
        DataError: unknown regime, or several regimes and neither a regime nor ``pooled`` given.

    """
    table = run.table
    regimes = list(dict.fromkeys(table["regime"].tolist()))
    if pooled:
        sub, label = table, "pooled"
    else:
        if regime is None:
            if len(regimes) != 1:
                raise DataError(
                    f"This run has regimes {', '.join(regimes)}: choose one (--regime) or pool them (--pooled)."
                )
            regime = regimes[0]
        if regime not in regimes:
            raise DataError(f"Regime {regime!r} is not in this run (it has {', '.join(regimes) or 'no rows'}).")
        sub, label = table[table["regime"] == regime], regime
    graded = sub[[_is_graded(v) for v in sub["correct"]]]
    return graded, label, len(sub)


def _is_graded(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not bool(np.isnan(value))
    except TypeError:
        return True


def _signal_label(signals: Sequence[str]) -> str:
    kinds = set(signals)
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _entropy_name(signal: str) -> tuple[str, str]:
    if signal == "H_slot":
        return "−H_slot", "minus the next-token entropy (bits) read after the forced answer prefix"
    if signal == "H_int":
        return "−H_int", "minus the next-token entropy (bits) at the last prompt token"
    return ("−entropy at read-out (mixed H_int/H_slot)",
            "minus the next-token entropy (bits) at each row's read-out; some rows after an answer prefix")


def baselines_for(graded: Any, lens_entropy_bits: np.ndarray, *, groups: Any = None, n_boot: int = N_BOOT,
                  n_shuffles: int = N_SHUFFLES, seed: int = 0, n_folds: int = N_OUTER) -> list[ProbeResult]:
    """Baselines on the same rows as the probes.

    Entropy at the read-out, top-1 probability, lens-entropy probe, post-generation mean token
    entropy, question-only TF-IDF probe and prompt length.

    Args:
        graded: table rows (pandas DataFrame) with a boolean ``correct``.
        lens_entropy_bits: (n, L) lens entropy per layer of the same rows.

    """
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    kw = dict(groups=groups, n_boot=n_boot, n_shuffles=n_shuffles, seed=seed, n_folds=n_folds)
    signal = _signal_label(graded["signal"].tolist()) if "signal" in graded else "H_int"
    ename, edesc = _entropy_name(signal)
    out = [score_auroc(-graded["h_int_bits"].to_numpy(float), y, name=ename, description=edesc, **kw)]
    if "h_int_top100_bits" in graded:
        out.append(score_auroc(-graded["h_int_top100_bits"].to_numpy(float), y, name=f"{ename} (top-100)",
                               description=edesc.replace("entropy", "entropy over the top-100 logits", 1), **kw))
    out.append(score_auroc(graded["top1_prob"].to_numpy(float), y, name="top-1 probability",
                           description="probability of the most likely next token at the read-out", **kw))
    out.append(probe_auroc(lens_entropy_bits, y, name="lens-entropy profile probe",
                           description=f"linear probe on the {lens_entropy_bits.shape[1]} logit-lens entropies (bits)",
                           **kw))
    if "mean_token_entropy_bits" in graded:
        out.append(score_auroc(-graded["mean_token_entropy_bits"].to_numpy(float), y,
                               name="−mean token entropy (post-generation)",
                               description="minus the mean entropy (bits) of the generated tokens: needs the answer, "
                                           "so it is not a pre-generation signal", **kw))
    out.append(text_probe_auroc(graded["question"].tolist(), y, **kw))
    out.append(signed_score_auroc(graded["n_prompt_tokens"].to_numpy(float), y, name="prompt length",
                                  description="number of prompt tokens; direction chosen on training folds", **kw))
    return out


def recoverability(
    run: StudyRun, regime: str | None = None, pooled: bool = False, *, k: int = LAST_K, n_boot: int = N_BOOT,
    n_shuffles: int = N_SHUFFLES, n_shuffles_per_layer: int = N_SHUFFLES_PER_LAYER, seed: int = 0,
    pca_components: int | None = None, progress: Callable[[int, int, str], None] | None = None,
) -> RecoverabilityReport:
    """Probe AUROC by layer, the last-``k``-layers probe and all baselines on one selection of a run.

    Args:
        run: a loaded study run (``ic_core.study.load_run``).
        regime: one regime; ``None`` means the only regime of a single-regime run.
        pooled: all regimes together (each item's rows kept in one fold).
        progress: optional callback (done, total, label).

    """
    t0 = time.perf_counter()
    graded, label, n_rows = graded_selection(run, regime, pooled)
    rows = graded["row"].to_numpy(int)
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    groups = graded["item_id"].astype(str).to_numpy() if pooled else None
    hidden = _as_states(np.asarray(run.hidden)[rows])
    lens = np.asarray(run.lens_entropy_bits, dtype=np.float64)[rows]
    common = dict(groups=groups, n_boot=n_boot, seed=seed)
    n_layer_steps = hidden.shape[1]
    total = n_layer_steps + 2

    def tick(done: int, _total: int, name: str) -> None:
        if progress:
            progress(done, total, name)

    const = tuple(constant_layers(hidden)) if len(rows) >= 2 else ()
    by_layer = probe_by_layer(hidden, y, n_shuffles=n_shuffles_per_layer, progress=tick,
                              pca_components=pca_components, **common)
    last_idx = last_layer_indices(hidden.shape[1], k)
    last = probe_last_layers(hidden, y, k=k, n_shuffles=n_shuffles, pca_components=pca_components, **common)
    tick(n_layer_steps + 1, total, last.name)
    baselines = baselines_for(graded, lens, n_shuffles=n_shuffles, **common) if len(rows) else []
    differences = tuple(d for d in (auroc_difference(last, b, n_boot=n_boot, seed=seed, groups=groups)
                                    for b in baselines) if d is not None)
    tick(total, total, "baselines")
    settings = {
        "C_grid": list(C_GRID), "outer_folds": N_OUTER, "inner_folds": N_INNER, "n_bootstrap": n_boot,
        "shuffles_per_layer": n_shuffles_per_layer, "shuffles": n_shuffles, "seed": seed,
        "pca_components": pca_components, "grouped_by_item": bool(pooled),
        "score_scale": "each outer fold's test scores standardised by its training fold's decision values",
    }
    return RecoverabilityReport(
        run_path=str(run.path), selection=label, n_rows=n_rows, n_ungraded=n_rows - len(rows), n=int(y.size),
        n_pos=int(y.sum()), signal_name=_signal_label(graded["signal"].tolist()) if len(rows) else "H_int",
        constant_layers=const, by_layer=tuple(by_layer), last_layers=last, last_layer_indices=last_idx,
        baselines=tuple(baselines), differences=differences, settings=settings, elapsed_s=time.perf_counter() - t0,
    )


def probe_column(run: StudyRun, *, k: int = LAST_K, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES,
                 seed: int = 0) -> dict[str, ProbeResult]:
    """Last-``k``-layers probe per regime, for the paper-form regime comparison table."""
    out = {}
    for regime in dict.fromkeys(run.table["regime"].tolist()):
        graded, _, _ = graded_selection(run, regime)
        rows = graded["row"].to_numpy(int)
        y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
        out[regime] = probe_last_layers(np.asarray(run.hidden)[rows], y, k=k, n_boot=n_boot,
                                        n_shuffles=n_shuffles, seed=seed)
    return out


def reading(report: RecoverabilityReport) -> list[str]:
    """A plain-language reading of the report, one sentence per line."""
    lines = []
    last = report.last_layers
    if report.n_ungraded:
        lines.append(f"{report.n_ungraded} of {report.n_rows} rows could not be graded and are left out.")
    if not last.ok:
        lines.append(f"No probe AUROC for this selection: {last.reason} "
                     f"({report.n} graded rows, {report.n_pos} correct).")
        return lines
    assert last.auroc_pooled is not None
    above = last.ci_low is not None and last.ci_low > 0.5
    lines.append(
        f"The last-{len(report.last_layer_indices)}-layers probe reaches AUROC {last.ci_text()} on {last.n} answers "
        f"({last.n_pos} correct); " + ("its 95 % CI lies above chance." if above else "its 95 % CI includes chance (0.5).")
    )
    if last.shuffle_mean is not None:
        lines.append(f"With shuffled labels the same protocol gives {last.shuffle_mean:.2f} "
                     f"(range {last.shuffle_min:.2f}–{last.shuffle_max:.2f}, {last.n_shuffles} permutations).")
    ent = report.baseline("−")
    cmp = None if ent is None else report.difference(ent.name)
    if ent is not None and cmp is not None:
        if cmp.clear and cmp.diff > 0:
            verdict = f"The probe beats {ent.name} ({ent.ci_text()}) by {cmp.text()} AUROC (paired bootstrap)."
        elif cmp.clear:
            verdict = f"{ent.name} ({ent.ci_text()}) beats the probe: difference {cmp.text()} (paired bootstrap)."
        else:
            verdict = (f"The probe and {ent.name} ({ent.ci_text()}) cannot be told apart here: difference "
                       f"{cmp.text()} (paired bootstrap CI includes 0); the state adds little beyond that entropy.")
        lines.append(verdict)
    text = report.baseline("question text only")
    if text is not None and text.ok:
        d = report.difference(text.name)
        if d is not None and d.clear and d.diff > 0:
            tail = f": the state carries more than the question's words (probe − question-only {d.text()})."
        else:
            tail = (": part of the signal may be the question's surface (which items the model knows), "
                    "not the state.")
        lines.append(f"The question-only probe reaches {text.ci_text()}{tail}")
    length = report.baseline("prompt length")
    if length is not None and length.ok and length.auroc_pooled >= 0.6:
        lines.append(f"Prompt length alone reaches {length.ci_text()}: a shortcut to keep in mind.")
    best = report.best_layer()
    if best is not None:
        lines.append(f"The best single layer is {best.name} ({best.ci_text()}); picking it after looking at "
                     f"every layer is optimistic, so the {last.name} probe (a fixed choice) is the headline.")
    if report.constant_layers:
        layers = report.constant_layers
        which = f"Layer {layers[0]} is" if len(layers) == 1 else f"Layers {', '.join(map(str, layers))} are"
        lines.append(f"{which} identical for every item (the chat template ends every prompt with the same "
                     "token), so not probed.")
    return lines


# --------------------------------------------------------------------------------------
# Saved probes (JSON + npz, never pickle)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SavedProbe:
    """A final probe fitted on all graded rows (C chosen by CV), ready to score new states.

    ``P(correct) = sigmoid(((x − scaler_mean) / scaler_scale) · coef + intercept)`` where ``x``
    is the concatenation of ``hidden[layers]``.
    """

    layers: tuple[int, ...]
    """``hidden_states`` indices concatenated into the feature vector."""
    scaler_mean: np.ndarray
    """(F,) with F = len(layers) × d_model."""
    scaler_scale: np.ndarray
    """(F,) > 0."""
    coef: np.ndarray
    """(F,) logistic-regression weights on standardised features."""
    intercept: float
    C: float
    n_layers: int
    """L of the model the states came from (states are (L + 1, d))."""
    d_model: int
    model_spec: dict[str, Any]
    run_path: str
    selection: str
    """Regime (or ``"pooled"``) of the training rows: states must be read the same way."""
    cv_auroc: float | None
    """Nested-CV AUROC of this probe recipe on the training run (the honest estimate)."""
    cv_ci_low: float | None
    cv_ci_high: float | None
    n_train: int
    n_train_correct: int
    created: str
    choice: str = "fixed: last 5 layers"
    """How ``layers`` was chosen (never by looking at the reported folds)."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        """Validate shapes and values."""
        f = len(self.layers) * self.d_model
        for name in ("scaler_mean", "scaler_scale", "coef"):
            arr = getattr(self, name)
            if arr.shape != (f,):
                raise DataError(f"Saved probe field {name} has shape {arr.shape}, expected ({f},) "
                                f"= {len(self.layers)} layers × d={self.d_model}.")
            if not np.isfinite(arr).all():
                raise DataError(f"Saved probe field {name} contains inf/NaN.")
        if (self.scaler_scale <= 0).any():
            raise DataError("Saved probe scaler_scale must be > 0.")
        if not self.layers or min(self.layers) < 0 or max(self.layers) > self.n_layers:
            raise DataError(f"Saved probe layers {self.layers} are outside 0..{self.n_layers}.")
        if not math.isfinite(self.intercept):
            raise DataError("Saved probe intercept is not finite.")

    @property
    def probe_id(self) -> str:
        """Short content hash (weights + layers + model): names this exact probe in a policy."""
        h = hashlib.sha256()
        for arr in (self.scaler_mean, self.scaler_scale, self.coef):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        h.update(json.dumps([list(self.layers), self.intercept, self.model_spec], sort_keys=True).encode())
        return h.hexdigest()[:12]

    def _features(self, hidden: np.ndarray) -> np.ndarray:
        expected = (self.n_layers + 1, self.d_model)
        if hidden.shape[-2:] != expected:
            raise PromptError(
                f"This probe was trained on states of shape {expected} (L={self.n_layers}, d={self.d_model}) "
                f"but got {hidden.shape[-2:]}: use the model the probe was trained on."
            )
        return hidden[..., list(self.layers), :].reshape(*hidden.shape[:-2], -1).astype(np.float64)

    def decision_values(self, hidden: Any) -> np.ndarray:
        """Logits of P(correct) for states (..., L + 1, d)."""
        x = self._features(np.asarray(hidden))
        return ((x - self.scaler_mean) / self.scaler_scale) @ self.coef + self.intercept

    def predict_proba_correct(self, state: Any) -> float:
        """P(correct) for one state: an ``IntentionState`` or an (L + 1, d) array."""
        hidden = np.asarray(getattr(state, "hidden", state))
        if hidden.ndim != 2:
            raise PromptError(f"Expected one state of shape (L + 1, d), got {hidden.shape}.")
        return float(_sigmoid(self.decision_values(hidden)))

    def predict_proba_correct_batch(self, hidden: Any) -> np.ndarray:
        """(N,) P(correct) for states (N, L + 1, d)."""
        hidden = np.asarray(hidden)
        if hidden.ndim != 3:
            raise PromptError(f"Expected states of shape (N, L + 1, d), got {hidden.shape}.")
        return _sigmoid(self.decision_values(hidden))

    def metadata(self) -> dict[str, Any]:
        """The JSON half of the saved file."""
        return {
            "format_version": self.format_version, "kind": "ic_core.SavedProbe", "probe_id": self.probe_id,
            "layers": list(self.layers), "intercept": self.intercept, "C": self.C, "n_layers": self.n_layers,
            "d_model": self.d_model, "model_spec": self.model_spec, "run_path": self.run_path,
            "selection": self.selection, "cv_auroc": self.cv_auroc, "cv_ci95": [self.cv_ci_low, self.cv_ci_high],
            "n_train": self.n_train, "n_train_correct": self.n_train_correct, "created": self.created,
            "choice": self.choice, "arrays": "scaler_mean, scaler_scale, coef in the .npz beside this file",
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<stem>.json`` and ``<stem>.npz`` atomically; returns the JSON path."""
        json_path, npz_path = _probe_paths(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(npz_path, lambda f: np.savez(f, scaler_mean=self.scaler_mean,
                                                   scaler_scale=self.scaler_scale, coef=self.coef))
        _atomic_write(json_path, lambda f: f.write(json.dumps(self.metadata(), indent=2).encode()))
        return json_path

    @classmethod
    def load(cls, path: str | Path) -> SavedProbe:
        """Read a probe saved by :meth:`save` (either file or the common stem), validating shapes.

        Raises:
            DataError: missing file, wrong format or inconsistent shapes.

        """
        json_path, npz_path = _probe_paths(path)
        for p in (json_path, npz_path):
            if not p.is_file():
                raise DataError(f"Saved probe file {p} not found (a probe is a .json + .npz pair).")
        try:
            meta = json.loads(json_path.read_text())
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], dtype=np.float64) for k in ("scaler_mean", "scaler_scale", "coef")}
        except (ValueError, KeyError, OSError) as exc:
            raise DataError(f"Cannot read saved probe {json_path}: {exc}") from exc
        if meta.get("kind") != "ic_core.SavedProbe" or meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{json_path} is not a saved probe of format {FORMAT_VERSION}.")
        ci = meta.get("cv_ci95") or [None, None]
        try:
            probe = cls(
                layers=tuple(int(i) for i in meta["layers"]), intercept=float(meta["intercept"]), C=float(meta["C"]),
                n_layers=int(meta["n_layers"]), d_model=int(meta["d_model"]), model_spec=dict(meta["model_spec"]),
                run_path=str(meta["run_path"]), selection=str(meta["selection"]), cv_auroc=meta.get("cv_auroc"),
                cv_ci_low=ci[0], cv_ci_high=ci[1], n_train=int(meta["n_train"]),
                n_train_correct=int(meta["n_train_correct"]), created=str(meta["created"]),
                choice=str(meta.get("choice", "")), **arrays,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"Saved probe {json_path} is missing or has a malformed field: {exc}") from exc
        if meta.get("probe_id") not in (None, probe.probe_id):
            raise DataError(f"Saved probe {json_path}: the arrays do not match the recorded probe_id.")
        return probe


def _sigmoid(z: Any) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def _probe_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".npz") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def _atomic_write(target: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit_saved_probe(
    hidden: Any, y: Any, *, layers: Sequence[int] | None = None, k: int = LAST_K, model_spec: dict[str, Any],
    run_path: str = "", selection: str = "", cv_result: ProbeResult | None = None, groups: Any = None,
    Cs: Sequence[float] = C_GRID, n_folds: int = N_OUTER, seed: int = 0,
) -> SavedProbe:
    """Fit the final probe on all rows; C chosen by a stratified CV over all rows.

    Args:
        hidden: (N, L + 1, d) training states.
        y: (N,) 0/1 correctness.
        layers: ``hidden_states`` indices to concatenate (default: the last ``k``).
        cv_result: the nested-CV result of the same recipe, recorded as the probe's honest AUROC.

    Raises:
        DataError: one class or too few rows.

    """
    from sklearn import config_context

    hidden = _as_states(hidden)
    y = np.asarray(y).astype(int)
    reason = label_reason(y, n_folds)
    if reason:
        raise DataError(f"Cannot fit a probe: {reason} ({y.size} graded rows, {int(y.sum())} correct).")
    chosen = tuple(layers) if layers is not None else last_layer_indices(hidden.shape[1], k)
    X = hidden[:, list(chosen), :].reshape(hidden.shape[0], -1).astype(np.float64)
    with _single_threaded(), config_context(assume_finite=True, skip_parameter_validation=True):
        C = choose_C(state_model, X, y, groups_train=groups, Cs=Cs, n_inner=n_folds, seed=seed)
        model = _FitCounter().fit(state_model(C), X, y)
    scaler, logreg = model.named_steps["scale"], model.named_steps["logreg"]
    choice = f"fixed: last {len(chosen)} layers" if layers is None else f"given: layers {list(chosen)}"
    return SavedProbe(
        layers=chosen, scaler_mean=np.asarray(scaler.mean_, float), scaler_scale=np.asarray(scaler.scale_, float),
        coef=np.asarray(logreg.coef_[0], float), intercept=float(logreg.intercept_[0]), C=C,
        n_layers=hidden.shape[1] - 1, d_model=hidden.shape[2], model_spec=dict(model_spec), run_path=str(run_path),
        selection=selection, cv_auroc=None if cv_result is None else cv_result.auroc_pooled,
        cv_ci_low=None if cv_result is None else cv_result.ci_low,
        cv_ci_high=None if cv_result is None else cv_result.ci_high,
        n_train=int(y.size), n_train_correct=int(y.sum()), created=datetime.now(UTC).isoformat(timespec="seconds"),
        choice=choice,
    )


def fit_saved_probe_for_run(run: StudyRun, regime: str | None = None, pooled: bool = False, *, k: int = LAST_K,
                            cv_result: ProbeResult | None = None, seed: int = 0) -> SavedProbe:
    """The last-``k``-layers probe of one selection of a run, fitted on all its graded rows."""
    graded, label, _ = graded_selection(run, regime, pooled)
    rows = graded["row"].to_numpy(int)
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    groups = graded["item_id"].astype(str).to_numpy() if pooled else None
    spec = dict(run.manifest.get("model") or run.manifest.get("model_spec") or {})
    return fit_saved_probe(np.asarray(run.hidden)[rows], y, k=k, model_spec=spec, run_path=str(run.path),
                           selection=label, cv_result=cv_result, groups=groups, seed=seed)


def default_probe_path(run: StudyRun, selection: str, k: int = LAST_K) -> Path:
    """``<run>/probes/<selection>_last<k>`` (the stem of the .json/.npz pair)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in selection)
    return Path(run.path) / "probes" / f"{safe}_last{k}"


def probe_column_text(results: dict[str, ProbeResult], k: int = LAST_K) -> dict[str, dict[str, str]]:
    """``{column: {regime: "0.78 [0.72, 0.83]"}}`` for ``ic_core.study.regime_comparison(extra_columns=...)``.

    A regime without an AUROC shows its reason (e.g. ``"n too small"``), never a number.
    """
    return {f"Probe AUROC, last {k} layers [95 % CI]": {regime: r.ci_text() for regime, r in results.items()}}
