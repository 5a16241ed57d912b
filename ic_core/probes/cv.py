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

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.auroc import (
    N_BOOT,
    N_OUTER,
    N_SHUFFLES,
    REASON_CONSTANT,
    AurocEstimate,
    auroc,
    label_permutations,
    label_reason,
    make_folds,
    missing_estimate,
    summarise_estimate,
)
from ic_core.stats.geometry import constant_layers

C_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Inverse L2 strengths tried by the inner CV (log-spaced, reaching down to strong regularisation)."""
N_INNER = 3
"""Inner folds that choose C on an outer training fold."""
N_SHUFFLES_PER_LAYER = 3
"""Label permutations per layer on the by-layer curve. Each one is a full nested CV per layer (the
dominant cost: ~0.3 s CPU per layer and permutation at N=112, d=576), so fewer than for the
headline probe; across 30 layers that is still ~90 null AUROCs."""
LAST_K = 5
"""The paper's choice: the concatenated states of the last 5 layers."""
MAX_ITER = 2000


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


TEXT_NGRAMS: tuple[int, int] = (1, 4)
"""Character n-gram lengths of the question-text shortcut (inside word boundaries)."""


def text_model(C: float) -> Any:
    """``TfidfVectorizer(character 1–4-grams) → LogisticRegression(L2)`` on raw question text.

    Character n-grams (``analyzer="char_wb"``) keep what a word tokenizer drops: operators
    (``+ - × /``), single digits and digit counts, so an arithmetic set whose difficulty is decided
    by its operator is visible to this shortcut check.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("tfidf", TfidfVectorizer(lowercase=True, analyzer="char_wb", ngram_range=TEXT_NGRAMS, sublinear_tf=True)),
        ("logreg", LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, warm_start=True)),
    ])


def _set_C(model: Any, C: float) -> Any:
    return model.set_params(logreg__C=C)


class FitCounter:
    """Counts lbfgs non-convergence instead of hiding or spamming the warning."""

    def __init__(self) -> None:
        self.fits = 0
        self.not_converged = 0

    def fit(self, model: Any, X: Any, y: np.ndarray) -> Any:
        """Fit ``model`` on ``(X, y)``, counting the fit and whether lbfgs failed to converge."""
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
    Cs: Sequence[float] = C_GRID, n_inner: int = N_INNER, seed: int = 0, counter: FitCounter | None = None,
) -> float:
    """Pick C by a stratified inner CV on **training rows only** (mean inner AUROC, ties → smaller C).

    Args:
        make_model: C → unfitted estimator.
        X_train: (n_train, ...) features of the outer training fold (array or array of strings).
        y_train: (n_train,) 0/1 labels of the same rows.
        groups_train: (n_train,) group ids (rows of one item stay in one inner fold), or None.

    """
    counter = counter or FitCounter()
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
    with single_threaded():
        return _nested_cv(make_model, X, y, groups=groups, Cs=Cs, n_folds=n_folds, n_inner=n_inner, seed=seed)


def training_scale(train_decision_values: Any) -> tuple[float, float]:
    """``(mean, sd)`` of a model's decision values on its own training rows: the fold's scale.

    Every fold's test decision values are pooled as ``(value − mean) / sd`` (see the module
    docstring); a probe fitted on all training rows is put on the same footing the same way.
    A constant training output gives ``sd = 1`` (nothing to divide by).

    Args:
        train_decision_values: (n_train,) decision values of the fitted model on its training rows.

    """
    dv = np.asarray(train_decision_values, dtype=np.float64)
    sd = float(dv.std())
    return float(dv.mean()), (sd if sd > 0 else 1.0)


def _nested_cv(
    make_model: ModelFactory, X: Any, y: Any, *, groups: Any, Cs: Sequence[float], n_folds: int, n_inner: int,
    seed: int,
) -> NestedCV:
    y = np.asarray(y).astype(int)
    groups_arr = None if groups is None else np.asarray(groups)
    counter = FitCounter()
    scores = np.zeros(y.size)
    fold_aurocs: list[float | None] = []
    chosen: list[float] = []
    for tr, te in make_folds(y, n_folds=n_folds, seed=seed, groups=groups_arr):
        C = choose_C(make_model, X[tr], y[tr], groups_train=None if groups_arr is None else groups_arr[tr],
                     Cs=Cs, n_inner=n_inner, seed=seed, counter=counter)
        model = counter.fit(make_model(C), X[tr], y[tr])
        mean, sd = training_scale(model.decision_function(X[tr]))
        test_dv = model.decision_function(X[te])
        scores[te] = (test_dv - mean) / sd
        fold_aurocs.append(auroc(test_dv, y[te]))
        chosen.append(C)
    return NestedCV(scores, tuple(fold_aurocs), tuple(chosen), counter.fits, counter.not_converged)


def fitted_auroc(
    make_model: ModelFactory, X: Any, y: Any, *, name: str = "probe", description: str = "", groups: Any = None,
    Cs: Sequence[float] = C_GRID, n_folds: int = N_OUTER, n_inner: int = N_INNER, n_boot: int = N_BOOT,
    n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> AurocEstimate:
    """Nested-CV AUROC of any C-parametrised model, with bootstrap CI and shuffle control."""
    from sklearn import config_context

    y = np.asarray(y).astype(int)
    reason = label_reason(y, n_folds)
    if reason:
        return missing_estimate(name, reason, y.size, int(y.sum()), description=description)
    kw = dict(groups=groups, Cs=Cs, n_folds=n_folds, n_inner=n_inner, seed=seed)
    permuted = label_permutations(y, n_shuffles, seed)
    with single_threaded(), config_context(assume_finite=True, skip_parameter_validation=True):  # finiteness is checked once by the callers
        real = _nested_cv(make_model, X, y, **kw)
        shuffled = [_nested_cv(make_model, X, yp, **kw) for yp in permuted]
    fits = real.n_fits + sum(s.n_fits for s in shuffled)
    bad = real.n_not_converged + sum(s.n_not_converged for s in shuffled)
    note = f"lbfgs reached max_iter in {bad} of {fits} fits" if bad else ""
    return summarise_estimate(
        name, real.scores, y, real.fold_aurocs, [auroc(s.scores, yp) for s, yp in zip(shuffled, permuted)],
        n_boot=n_boot, seed=seed, groups=groups, kind="probe", description=description, note=note,
        chosen_C=real.chosen_C,
    )


def single_threaded() -> Any:
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
) -> AurocEstimate:
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


def text_probe_auroc(texts: Sequence[str], y: Any, *, name: str = "question text only (char n-grams)",
                     **kw: Any) -> AurocEstimate:
    """Shortcut check: the same nested protocol on character n-gram TF-IDF of the question text alone."""
    X = np.asarray([str(t) for t in texts], dtype=object)
    lo, hi = TEXT_NGRAMS
    description = (f"TF-IDF of the question's character {lo}–{hi}-grams (operators and digits kept) "
                   "+ L2 logistic regression, no model state")
    return fitted_auroc(text_model, X, y, name=name, description=description, **kw)


def probe_by_layer(
    hidden: Any, y: Any, *, n_shuffles: int = N_SHUFFLES_PER_LAYER,
    progress: Callable[[int, int, str], None] | None = None, **kw: Any,
) -> list[AurocEstimate]:
    """The "which layer knows?" curve: one probe per ``hidden_states`` index.

    Args:
        hidden: (N, L + 1, d) states (index 0 = embeddings).
        y: (N,) 0/1 correctness.
        progress: optional callback (done, total, label).

    Returns:
        L + 1 results; constant layers carry ``reason="constant state"`` and no AUROC.

    """
    hidden = as_states(hidden)
    y = np.asarray(y).astype(int)
    constant = set(constant_layers(hidden)) if hidden.shape[0] >= 2 else set()
    out = []
    total = hidden.shape[1]
    for layer in range(total):
        name = f"layer {layer}"
        desc = f"linear probe on the read-out state after block {layer}" if layer else "linear probe on the embeddings"
        if layer in constant:
            out.append(missing_estimate(name, REASON_CONSTANT, y.size, int(y.sum()), description=desc))
        else:
            out.append(probe_auroc(hidden[:, layer, :], y, name=name, description=desc, n_shuffles=n_shuffles, **kw))
        if progress:
            progress(layer + 1, total, name)
    return out


def last_layer_indices(n_states: int, k: int = LAST_K) -> tuple[int, ...]:
    """``hidden_states`` indices of the last ``k`` blocks (never the embeddings)."""
    k = max(1, min(k, n_states - 1))
    return tuple(range(n_states - k, n_states))


def probe_last_layers(hidden: Any, y: Any, k: int = LAST_K, **kw: Any) -> AurocEstimate:
    """Probe on the concatenated states of the last ``k`` layers (the paper's choice).

    Args:
        hidden: (N, L + 1, d).
        y: (N,) 0/1.

    """
    hidden = as_states(hidden)
    layers = last_layer_indices(hidden.shape[1], k)
    X = hidden[:, list(layers), :].reshape(hidden.shape[0], len(layers) * hidden.shape[2])  # also for 0 rows
    desc = f"linear probe on the concatenated states of layers {layers[0]}–{layers[-1]} ({len(layers) * hidden.shape[2]} features)"
    return probe_auroc(X, y, name=f"last {len(layers)} layers", description=desc, **kw)


def as_states(hidden: Any) -> np.ndarray:
    """``hidden`` as an (N, L + 1, d) array of finite states.

    Raises:
        DataError: another shape, or inf/NaN values.

    """
    hidden = np.asarray(hidden)
    if hidden.ndim != 3:
        raise DataError(f"States must be (N, L + 1, d), got shape {hidden.shape}.")
    if not np.isfinite(hidden).all():
        raise DataError("The states contain inf/NaN values (float16 overflow?): the probe cannot be fitted on them.")
    return hidden
