"""AUROC with a bootstrap CI, a paired difference and a label-shuffle control: one estimate type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

N_OUTER = 5
"""Outer (reported) folds."""
N_BOOT = 1000
"""Bootstrap resamples for the 95 % CI."""
N_SHUFFLES = 10
"""Label permutations for the shuffle control of a single probe."""
N_SHUFFLES_HELD_OUT = 20
"""Label permutations for the shuffle control of a fixed score on held-out items (no refitting: cheap)."""
MIN_TOTAL = 10
"""Fewer graded rows than this → "n too small"."""
MIN_PER_CLASS = 10
"""Fewer right or fewer wrong answers than this → "too few to judge" (an AUROC on 6 positives says nothing)."""

REASON_SMALL = "n too small"
REASON_FEW = "too few to judge"
"""Either class has fewer than :data:`MIN_PER_CLASS` items."""
REASON_ONE_CLASS = "only one class"
REASON_CONSTANT = "constant state"
REASON_MISSING = "not recorded in this run"


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AurocEstimate:
    """AUROC of one score for correctness on N labelled rows, with bootstrap CI and shuffle control.

    The one result type for every AUROC the engine reports: a probe's out-of-fold scores
    (nested CV), a single-score baseline on the same folds, or a fixed score judged on
    held-out items (the governance comparison). AUROC fields are ``None`` exactly when
    ``reason`` says why (never a stand-in 0.5).
    """

    name: str
    """Short label, e.g. ``"layer 12"``, ``"last 5 layers"``, ``"−H_int"``."""
    auroc_pooled: float | None
    """AUROC of the pooled scores: out-of-fold (each fold on its training fold's scale) for probes,
    the score itself for fixed scores and held-out items."""
    auroc_fold_mean: float | None
    """Mean of the per-fold AUROCs (``None`` for held-out items: no folds)."""
    ci_low: float | None
    """Lower end of the bootstrap 95 % CI of ``auroc_pooled``."""
    ci_high: float | None
    """Upper end of the bootstrap 95 % CI."""
    shuffle_mean: float | None
    """Mean pooled AUROC over label permutations (same protocol); ≈ 0.5 when nothing leaks."""
    shuffle_min: float | None
    """Lowest AUROC over the label permutations."""
    shuffle_max: float | None
    """Highest AUROC over the label permutations."""
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
    """``"probe"`` (fitted in nested CV), ``"score"`` (a fixed score, no fitting) or ``"held_out"``
    (a fixed score judged on held-out items only, see :func:`held_out_auroc`)."""
    description: str = ""
    """What is computed, in words."""
    note: str = ""
    """Caveats (e.g. lbfgs non-convergence, sign choices, shuffle count)."""
    n_shuffles: int = 0
    """Label permutations behind the ``shuffle_*`` fields."""
    n_boot_used: int = 0
    """Bootstrap resamples with both classes (the CI's denominator)."""

    @property
    def n_neg(self) -> int:
        """Rows whose answer was wrong."""
        return self.n - self.n_pos

    def counts_text(self) -> str:
        """``"62 right / 88 wrong"``: both class counts, shown beside every AUROC."""
        return f"{self.n_pos} right / {self.n_neg} wrong"

    @property
    def ok(self) -> bool:
        """Whether an AUROC was computed."""
        return self.auroc_pooled is not None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """``(ci_low, ci_high)``, or ``None`` when the CI is not available."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_low, self.ci_high)

    @property
    def shuffle_range(self) -> tuple[float, float] | None:
        """``(shuffle_min, shuffle_max)``, or ``None`` without a shuffle control."""
        if self.shuffle_min is None or self.shuffle_max is None:
            return None
        return (self.shuffle_min, self.shuffle_max)

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
            "name": self.name, "kind": self.kind, "auroc_pooled": round_or_none(self.auroc_pooled),
            "auroc_fold_mean": round_or_none(self.auroc_fold_mean),
            "ci95": [round_or_none(self.ci_low), round_or_none(self.ci_high)] if self.ci_low is not None else None,
            "shuffle": None if self.shuffle_mean is None else {
                "mean": round_or_none(self.shuffle_mean), "min": round_or_none(self.shuffle_min), "max": round_or_none(self.shuffle_max),
                "n_permutations": self.n_shuffles,
            },
            "n": self.n, "n_correct": self.n_pos, "n_wrong": self.n_neg, "chosen_C": list(self.chosen_C),
            "fold_aurocs": [round_or_none(a) for a in self.fold_aurocs], "reason": self.reason,
            "description": self.description, "note": self.note,
        }
        if include_scores and self.scores is not None:
            out["scores"] = [float(s) for s in self.scores]
        return out


def round_or_none(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded to ``nd`` decimals for JSON, ``None`` kept as ``None``."""
    return None if x is None else round(float(x), nd)


def missing_estimate(
    name: str, reason: str, n: int, n_pos: int, kind: str = "probe", description: str = "", note: str = ""
) -> AurocEstimate:
    """An estimate without an AUROC: every figure ``None`` and ``reason`` saying why."""
    return AurocEstimate(name, None, None, None, None, None, None, None, n, n_pos, reason=reason, kind=kind,
                         description=description, note=note)


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


def bootstrap_indices(n: int, n_boot: int, seed: int, groups: Any = None) -> Any:
    """Yield ``n_boot`` resamples of row indices: rows with replacement, or whole groups when given.

    Args:
        n: Rows to resample.
        n_boot: Resamples to yield.
        seed: Seed of the resampling generator (the same seed gives the same resamples).
        groups: Optional (n,) group ids; each resample then draws whole groups with replacement.

    """
    rng = np.random.default_rng(seed)
    if groups is None:
        yield from rng.integers(0, n, size=(n_boot, n))
        return
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def percentile_ci(values: list[float], n_boot: int, level: float) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap ``values``; ``(None, None)`` if fewer than half the resamples counted.

    Args:
        values: The statistic on each usable resample.
        n_boot: Resamples drawn (usable or not).
        level: Coverage, e.g. 0.95.

    """
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
    for idx in bootstrap_indices(s.size, n_boot, seed, groups):
        a = auroc(s[idx], y[idx])
        if a is not None:
            values.append(a)
    low, high = percentile_ci(values, n_boot, level)
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
        return {"a": self.a, "b": self.b, "auroc_difference": round_or_none(self.diff),
                "ci95": None if self.ci_low is None else [round_or_none(self.ci_low), round_or_none(self.ci_high)], "n": self.n}


def auroc_difference(
    a: AurocEstimate, b: AurocEstimate, *, n_boot: int = N_BOOT, seed: int = 0, groups: Any = None
) -> AurocDifference | None:
    """Paired bootstrap of the AUROC difference of two results scored on the same rows (None otherwise)."""
    if not (a.ok and b.ok) or a.scores is None or b.scores is None or a.labels is None or b.labels is None:
        return None
    if a.scores.shape != b.scores.shape or not np.array_equal(a.labels, b.labels):
        return None
    y = a.labels.astype(bool)
    diffs = []
    for idx in bootstrap_indices(y.size, n_boot, seed, groups):
        da, db = auroc(a.scores[idx], y[idx]), auroc(b.scores[idx], y[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    low, high = percentile_ci(diffs, n_boot, 0.95)
    assert a.auroc_pooled is not None and b.auroc_pooled is not None
    return AurocDifference(a.name, b.name, a.auroc_pooled - b.auroc_pooled, low, high, int(y.size))


def label_reason(labels: Any, n_folds: int = N_OUTER) -> str | None:
    """Why no AUROC can be estimated on these labels, or ``None`` when it can.

    One class missing → ``"only one class"``; fewer than :data:`MIN_PER_CLASS` right or wrong
    answers → ``"too few to judge"``; fewer than :data:`MIN_TOTAL` rows, or fewer than
    ``2 × n_folds`` of a class (more folds than the default) → ``"n too small"``.
    """
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return REASON_ONE_CLASS
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        return REASON_FEW
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


def summarise_estimate(
    name: str, scores: np.ndarray, y: np.ndarray, fold_aurocs: Sequence[float | None], shuffled: list[float],
    *, n_boot: int, seed: int, groups: Any, kind: str, description: str, note: str = "",
    chosen_C: tuple[float, ...] = (),
) -> AurocEstimate:
    """The estimate of ``scores`` for labels ``y``: pooled AUROC, bootstrap CI, fold mean and shuffle summary.

    Args:
        name: Short label of the score.
        scores: (n,) scores, larger = more likely correct.
        y: (n,) 0/1 labels aligned with ``scores``.
        fold_aurocs: AUROC of each outer test fold (empty without folds).
        shuffled: The same protocol's AUROC on each label permutation (:func:`label_permutations`).
        n_boot: Bootstrap resamples. seed: Bootstrap seed. groups: Optional (n,) group ids to resample whole.
        kind: ``"probe"``, ``"score"`` or ``"held_out"``. description: What is computed, in words.
        note: Caveats. chosen_C: C of each outer fold (probes).

    """
    low, high, used = bootstrap_ci(scores, y, n_boot=n_boot, seed=seed, groups=groups)
    valid = [a for a in fold_aurocs if a is not None]
    return AurocEstimate(
        name=name, auroc_pooled=auroc(scores, y), auroc_fold_mean=float(np.mean(valid)) if valid else None,
        ci_low=low, ci_high=high,
        shuffle_mean=float(np.mean(shuffled)) if shuffled else None,
        shuffle_min=float(np.min(shuffled)) if shuffled else None,
        shuffle_max=float(np.max(shuffled)) if shuffled else None,
        n=int(y.size), n_pos=int(y.sum()), chosen_C=chosen_C, fold_aurocs=tuple(fold_aurocs),
        scores=np.asarray(scores, dtype=np.float64), labels=y.astype(np.int8), kind=kind,
        description=description, note=note, n_shuffles=len(shuffled), n_boot_used=used,
    )


def label_permutations(y: np.ndarray, n_shuffles: int, seed: int) -> list[np.ndarray]:
    """``n_shuffles`` permutations of the labels for the shuffle control: the one seed convention.

    Probes, baselines and held-out scores all draw their permutations here, from ``seed + 10_007``
    (apart from the fold and bootstrap streams, which use ``seed`` itself).
    """
    rng = np.random.default_rng(seed + 10_007)
    return [rng.permutation(y) for _ in range(n_shuffles)]


def held_out_auroc(
    name: str, score_correct: Any, correct: Any, test_idx: Any, *, n_boot: int = N_BOOT,
    n_shuffles: int = N_SHUFFLES_HELD_OUT, seed: int = 0, description: str = "",
) -> AurocEstimate:
    """AUROC of a fixed score on the given (held-out) items, with bootstrap CI and shuffle control.

    The same bootstrap (:func:`bootstrap_ci`, ``seed``) and the same label permutations
    (:func:`label_permutations`) as the probes and baselines; nothing is fitted, so there are no folds.
    Rows whose score is not finite are left out and counted in the note.

    Args:
        name: Short label of the score.
        score_correct: (n,) score for every item, larger = more likely correct.
        correct: (n,) 0/1 or bool correctness of every item.
        test_idx: Indices of the held-out items to judge the score on.
        n_boot: Bootstrap resamples. n_shuffles: Label permutations. seed: Seed of both.
        description: What the score is, in words.

    Returns:
        A ``kind="held_out"`` estimate; no AUROC (``reason`` set) when one class is missing or
        either class has fewer than :data:`MIN_PER_CLASS` items.

    """
    idx = np.asarray(test_idx, dtype=np.int64)
    s = np.asarray(score_correct, dtype=np.float64)[idx]
    y = np.asarray(correct).astype(int)[idx]
    keep = np.isfinite(s)
    note = "" if keep.all() else f"{int((~keep).sum())} held-out rows without this score left out"
    if not keep.any():
        return missing_estimate(name, REASON_MISSING, int(y.size), int(y.sum()), "held_out", description, note)
    s, y = s[keep], y[keep]
    reason = label_reason(y, n_folds=1)
    if reason:
        return missing_estimate(name, reason, int(y.size), int(y.sum()), "held_out", description, note)
    shuffled = [auroc(s, yp) for yp in label_permutations(y, n_shuffles, seed)]
    return summarise_estimate(name, s, y, (), [a for a in shuffled if a is not None], n_boot=n_boot, seed=seed,
                              groups=None, kind="held_out", description=description, note=note)
