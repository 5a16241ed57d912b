"""Risk-controlled thresholds: Learn then Test on the error among approved items.

The guarantee (Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test", 2021): with
probability at least 1 − δ over the calibration items, the error among auto-approved
answers on new items like them is at most α. Each threshold t of an ordered grid is a
null hypothesis "error among approved at t > α"; a binomial tail bound on the errors among
the items approved at t gives its p-value, and fixed-sequence testing walks the grid from
the most conservative threshold (fewest approved) to the most permissive one, stopping at
the first p-value above δ. The family-wise error stays at δ without a multiplicity penalty
because the order is fixed before the p-values are seen.

Why our own code and not MAPIE's ``BinaryClassificationController`` (mapie 1.6.0): its
``precision`` risk is the same risk (errors among the items predicted positive), but the
controller needs a ``predict_function`` returning class probabilities of shape (n, 2) and
approves ``proba >= t`` on a grid in [0, 1]. Our signals are raw scores (entropies in bits,
probe logits) with either direction ("approve when H <= t"); fitting them in would need a
fake probability transform, and the thresholds the policy stores would then be on that
fake scale. It also offers no Clopper–Pearson bound and no "how many items would certify"
figure, both of which a governance reader needs. The bounds here are a few lines of scipy
and are tested against hand-computed binomial cases.

Validity note: error among approved is a conditional risk. Given that m of the calibration
items are approved at a fixed t, their errors are Binomial(m, risk(t)), so the p-value is
valid conditionally on m and hence unconditionally. The grid should be fixed before the
calibration labels are seen: pass ``thresholds`` from another split (e.g. the training
items). The default grid uses quantiles of the calibration *scores* (never their labels),
which :func:`simulate_splits` checks empirically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import bdtr
from scipy.stats import beta

from ic_core.errors import DataError
from ic_core.stats.proportions import wilson_interval

Direction = Literal["le", "ge"]
"""``"le"``: approve when score <= t (a risk such as H in bits); ``"ge"``: approve when score >= t."""
Method = Literal["clopper_pearson", "hoeffding_bentkus"]
"""Binomial tail bound behind each p-value."""

METHODS: tuple[str, ...] = ("clopper_pearson", "hoeffding_bentkus")
DIRECTIONS: tuple[str, ...] = ("le", "ge")
MIN_COVERAGE = 0.1
"""Coverage of the first (most conservative) threshold of the default grid."""
N_GRID = 50
"""Thresholds in the default grid (coverage levels from ``MIN_COVERAGE`` to 1)."""
MAX_NEEDED_N = 10**7
"""Search bound for the "need ≈ N items" figure."""


# --------------------------------------------------------------------------------------
# Binomial tail bounds (k errors among m approved items)
# --------------------------------------------------------------------------------------


def clopper_pearson_upper(k: int, m: int, delta: float) -> float:
    """Exact one-sided (1 − δ) upper confidence bound of an error rate seen as k errors in m items.

    The rate u with P(Binomial(m, u) <= k) = δ; 1.0 when k = m or m = 0.
    """
    if m <= 0 or k >= m:
        return 1.0
    return float(beta.ppf(1.0 - delta, k + 1, m - k))


def clopper_pearson_p_value(k: int, m: int, alpha: float) -> float:
    """Exact binomial p-value of the null "error rate > α" after k errors in m items: P(Binomial(m, α) <= k).

    It is <= δ exactly when :func:`clopper_pearson_upper` (k, m, δ) <= α. 1.0 when m = 0.
    """
    if m <= 0:
        return 1.0
    return float(bdtr(k, m, alpha))  # = binom.cdf(k, m, alpha), ~45x faster (the LTT simulation calls it per threshold)


def _kl_bernoulli(r: float, a: float) -> float:
    """KL divergence of Bernoulli(r) from Bernoulli(a) (the Hoeffding exponent h1 of LTT)."""
    first = 0.0 if r == 0.0 else r * math.log(r / a)
    second = 0.0 if r == 1.0 else (1.0 - r) * math.log((1.0 - r) / (1.0 - a))
    return first + second


def hoeffding_bentkus_p_value(k: int, m: int, alpha: float) -> float:
    """Hoeffding–Bentkus p-value of the null "risk > α" (Bates et al. 2021, LTT eq. 3.3).

    min(exp(−m · h1(min(r̂, α), α)), e · P(Binomial(m, α) <= ⌈m r̂⌉)) with r̂ = k/m and h1 the
    Bernoulli KL divergence; valid for any loss in [0, 1], so more conservative than the exact
    binomial p-value for a 0/1 loss. 1.0 when m = 0.
    """
    if m <= 0:
        return 1.0
    r = k / m
    hoeffding = math.exp(-m * _kl_bernoulli(min(r, alpha), alpha))
    bentkus = math.e * float(bdtr(math.ceil(m * r - 1e-12), m, alpha))
    return min(1.0, hoeffding, bentkus)


def p_value(k: int, m: int, alpha: float, method: str) -> float:
    """The p-value of ``method`` (see :data:`METHODS`)."""
    if method == "clopper_pearson":
        return clopper_pearson_p_value(k, m, alpha)
    if method == "hoeffding_bentkus":
        return hoeffding_bentkus_p_value(k, m, alpha)
    raise DataError(f"Unknown risk-control method {method!r}: use one of {', '.join(METHODS)}.")


# --------------------------------------------------------------------------------------
# Learn then Test
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LTTResult:
    """A Learn-then-Test threshold (or the plain reason there is none), with every tested p-value.

    The grid arrays all have shape (G,), ordered as tested: most conservative threshold first.
    """

    threshold: float | None
    """Certified threshold (the most permissive one the fixed sequence reached), ``None`` if none."""
    direction: str
    """``"le"`` (approve score <= t) or ``"ge"`` (approve score >= t)."""
    alpha: float
    """Target error among approved."""
    delta: float
    """Allowed probability that the guarantee fails."""
    method: str
    """``"clopper_pearson"`` or ``"hoeffding_bentkus"``."""
    n: int
    """Calibration items."""
    coverage: float | None
    """Share of calibration items approved at the certified threshold."""
    n_approved: int
    """Calibration items approved at the certified threshold (0 without one)."""
    errors_approved: int
    """Wrong answers among them."""
    thresholds: np.ndarray
    """(G,) the grid, in test order."""
    p_values: np.ndarray
    """(G,) p-value of "error among approved > α" at each threshold."""
    approved_counts: np.ndarray
    """(G,) calibration items approved at each threshold."""
    error_counts: np.ndarray
    """(G,) wrong answers among them."""
    n_tested: int
    """Hypotheses tested before the sequence stopped (rejected ones plus the first failure)."""
    reason: str | None = None
    """Why nothing is certified, e.g. "cannot certify α = 0.1 with 90 items; need ≈ 240 …"."""
    needed_n: int | None = None
    """Calibration items that would certify (see ``needed_basis``), ``None`` when more items cannot help."""
    needed_index: int | None = None
    """Grid index whose observed error rate and coverage ``needed_n`` is computed at."""
    needed_basis: str = ""
    """How ``needed_n`` was computed, in words."""

    @property
    def certified(self) -> bool:
        """Whether a threshold was certified."""
        return self.threshold is not None

    @property
    def empirical_error(self) -> float | None:
        """Error among approved calibration items at the certified threshold."""
        return self.errors_approved / self.n_approved if self.n_approved else None

    def text(self) -> str:
        """One line: the guarantee, or the reason."""
        if self.threshold is None:
            return self.reason or "not certified"
        op = "<=" if self.direction == "le" else ">="
        assert self.coverage is not None
        return (f"approve when score {op} {self.threshold:.4g}: error among approved <= {self.alpha:g} "
                f"with probability >= {1 - self.delta:g} ({self.method}, {self.n} items, coverage {self.coverage:.1%})")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures (the grid and p-values included, rounded)."""
        return {
            "threshold": self.threshold, "direction": self.direction, "alpha": self.alpha, "delta": self.delta,
            "method": self.method, "n": self.n, "coverage": self.coverage, "n_approved": self.n_approved,
            "errors_approved": self.errors_approved, "n_tested": self.n_tested,
            "thresholds": [float(t) for t in self.thresholds], "p_values": [round(float(p), 6) for p in self.p_values],
            "approved_counts": [int(m) for m in self.approved_counts], "error_counts": [int(k) for k in self.error_counts],
            "reason": self.reason, "needed_n": self.needed_n, "needed_index": self.needed_index, "needed_basis": self.needed_basis,
        }


def as_scores_labels(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite float scores and bool labels of the same length, or a one-line DataError."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = np.asarray(correct).astype(bool).ravel()
    if s.shape != c.shape:
        raise DataError(f"Scores ({s.size}) and correctness labels ({c.size}) are not aligned.")
    if not np.isfinite(s).all():
        raise DataError("Some scores are not finite (NaN or inf): drop those items before fitting a threshold.")
    return s, c


def check_levels(alpha: float, delta: float, direction: str, method: str) -> None:
    """One-line DataErrors for α, δ, direction and method out of range."""
    if not (0.0 < alpha < 1.0) or not (0.0 < delta < 1.0):
        raise DataError(f"α and δ must lie strictly between 0 and 1 (got α = {alpha}, δ = {delta}).")
    if direction not in DIRECTIONS:
        raise DataError(f"Unknown direction {direction!r}: use 'le' (approve score <= t) or 'ge' (score >= t).")
    if method not in METHODS:
        raise DataError(f"Unknown risk-control method {method!r}: use one of {', '.join(METHODS)}.")


def approve(scores: Any, threshold: float, direction: str) -> np.ndarray:
    """(n,) bool: which items a threshold approves (``"le"``: score <= t, ``"ge"``: score >= t)."""
    s = np.asarray(scores, dtype=np.float64)
    return s <= threshold if direction == "le" else s >= threshold


def default_grid(scores: Any, direction: str, min_coverage: float = MIN_COVERAGE, n_grid: int = N_GRID) -> np.ndarray:
    """Thresholds at coverage levels ``min_coverage … 1`` of ``scores``, most conservative first (distinct).

    Only the scores are used (never labels), so the grid can be built from unlabelled items.
    """
    s = np.asarray(scores, dtype=np.float64)
    levels = np.linspace(min_coverage, 1.0, n_grid)
    if direction == "le":
        grid = np.quantile(s, levels, method="inverted_cdf")
    else:
        grid = np.quantile(s, 1.0 - levels, method="lower")
    _, first = np.unique(grid, return_index=True)
    return grid[np.sort(first)]


def order_grid(thresholds: Any, direction: str) -> np.ndarray:
    """A given grid sorted most conservative first (ascending for ``"le"``, descending for ``"ge"``)."""
    t = np.unique(np.asarray(thresholds, dtype=np.float64))
    if not np.isfinite(t).all() or t.size == 0:
        raise DataError("The threshold grid must hold at least one finite value.")
    return t if direction == "le" else t[::-1]


def _smallest(pred: Any, low: int, high: int) -> int | None:
    """Smallest integer in [low, high] where ``pred`` holds, assuming it holds from some point on."""
    if not pred(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if pred(mid):
            high = mid
        else:
            low = mid + 1
    return low


def zero_error_items(alpha: float, delta: float, method: str) -> int | None:
    """Fewest approved items that certify α when none of them is wrong."""
    return _smallest(lambda m: p_value(0, m, alpha, method) <= delta, 1, MAX_NEEDED_N)


def _needed_items(rate: float, coverage: float, n: int, alpha: float, delta: float, method: str) -> int | None:
    """Calibration items at which an error rate ``rate`` among a ``coverage`` share of approved would certify."""
    def certifies(n_new: int) -> bool:  # conservative rounding: fewer approved, more errors
        m = max(1, math.floor(coverage * n_new + 1e-9))
        return p_value(math.ceil(rate * m - 1e-9), m, alpha, method) <= delta
    return _smallest(certifies, n + 1, MAX_NEEDED_N)


def _refusal(n: int, alpha: float, delta: float, method: str, p: np.ndarray, m: np.ndarray,
             k: np.ndarray) -> tuple[str, int | None, int | None, str]:
    """The plain reason nothing is certified, the items that would certify, the grid index used, and how."""
    head = f"cannot certify α = {alpha:g} with {n} items"
    m0 = zero_error_items(alpha, delta, method)
    zero = f"with no errors, ≥ {m0} approved items would certify" if m0 else "no item count certifies"
    has = m > 0
    rates = np.where(has, k / np.maximum(m, 1), 1.0)
    if not has.any() or rates.min() >= alpha:
        low = float(rates.min()) if has.any() else 1.0
        return (f"{head}: the error among approved is ≥ {low:.1%} at every threshold, so more items at this "
                f"error rate will not help (a stronger signal or a larger α is needed; {zero})", None, None,
                "none: the observed error rate is at least α at every threshold")
    if rates[0] < alpha:
        at, where = 0, "the first threshold of the sequence, where testing stopped"
    else:
        at = int(np.argmin(np.where(rates < alpha, p, np.inf)))
        where = "the grid threshold with the smallest p-value; the sequence must start there (raise min_coverage)"
    rate, cov = float(rates[at]), float(m[at] / n)
    need = _needed_items(rate, cov, n, alpha, delta, method)
    basis = f"the smallest n at which {rate:.1%} errors among approved at {cov:.0%} coverage ({where}) would certify"
    if need is None:
        return f"{head}: more than {MAX_NEEDED_N} items would be needed ({zero})", None, at, basis
    return (f"{head}; need ≈ {need} items (if the error among approved stays at {rate:.1%} at {cov:.0%} "
            f"coverage; {zero})", need, at, basis)


def learn_then_test(
    scores: Any, correct: Any, *, alpha: float, delta: float, direction: str = "le",
    method: str = "clopper_pearson", thresholds: Any = None, min_coverage: float = MIN_COVERAGE,
    n_grid: int = N_GRID,
) -> LTTResult:
    """Certify a threshold on calibration items by fixed-sequence Learn then Test.

    Args:
        scores: (n,) calibration scores of the signal.
        correct: (n,) 0/1 or bool correctness of each calibration item.
        alpha: Target error among approved. delta: Allowed failure probability of the guarantee.
        direction: ``"le"`` approves score <= t, ``"ge"`` approves score >= t.
        method: ``"clopper_pearson"`` (exact binomial) or ``"hoeffding_bentkus"``.
        thresholds: Optional grid fixed beforehand (e.g. from training items); by default
            :func:`default_grid` of the calibration scores.
        min_coverage: Coverage of the first default threshold. n_grid: Default grid size.

    Returns:
        The certified threshold with its coverage, or ``threshold=None`` and a plain reason.

    Raises:
        DataError: no items, misaligned or non-finite inputs, α/δ/direction/method out of range.

    """
    check_levels(alpha, delta, direction, method)
    s, c = as_scores_labels(scores, correct)
    if s.size == 0:
        raise DataError("No calibration items: Learn then Test needs graded items.")
    grid = default_grid(s, direction, min_coverage, n_grid) if thresholds is None else order_grid(thresholds, direction)
    mask = (s[None, :] <= grid[:, None]) if direction == "le" else (s[None, :] >= grid[:, None])
    m = mask.sum(axis=1)
    k = (mask & ~c[None, :]).sum(axis=1)
    p = np.array([p_value(int(ki), int(mi), alpha, method) for ki, mi in zip(k, m, strict=True)])
    failed = np.flatnonzero(p > delta)
    n_pass = int(failed[0]) if failed.size else grid.size
    n_tested = min(grid.size, n_pass + 1)
    common = dict(direction=direction, alpha=alpha, delta=delta, method=method, n=int(s.size), thresholds=grid,
                  p_values=p, approved_counts=m, error_counts=k, n_tested=n_tested)
    if n_pass == 0:
        reason, need, at, basis = _refusal(int(s.size), alpha, delta, method, p, m, k)
        return LTTResult(threshold=None, coverage=None, n_approved=0, errors_approved=0, reason=reason,
                         needed_n=need, needed_index=at, needed_basis=basis, **common)
    i = n_pass - 1
    return LTTResult(threshold=float(grid[i]), coverage=float(m[i] / s.size), n_approved=int(m[i]),
                     errors_approved=int(k[i]), **common)


# --------------------------------------------------------------------------------------
# Held-out check
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutRisk:
    """Error among approved and coverage of a fixed threshold on held-out items, with Wilson 95 % CIs."""

    n: int
    """Held-out items."""
    n_approved: int
    """Items the threshold approves."""
    errors_approved: int
    """Wrong answers among them."""
    error_rate: float | None
    """Error among approved (``None`` when nothing is approved)."""
    error_ci: tuple[float, float] | None
    """Wilson 95 % interval of ``error_rate``."""
    coverage: float
    """Share approved."""
    coverage_ci: tuple[float, float] | None
    """Wilson 95 % interval of ``coverage``."""


def held_out_risk(scores: Any, correct: Any, threshold: float, direction: str) -> HeldOutRisk:
    """Realised error among approved and coverage of ``threshold`` on held-out items.

    Raises:
        DataError: no items, misaligned or non-finite inputs.

    """
    s, c = as_scores_labels(scores, correct)
    if s.size == 0:
        raise DataError("No held-out items to check the threshold on.")
    ok = approve(s, threshold, direction)
    m, k = int(ok.sum()), int((ok & ~c).sum())
    return HeldOutRisk(n=int(s.size), n_approved=m, errors_approved=k, error_rate=k / m if m else None,
                       error_ci=wilson_interval(k, m), coverage=m / s.size, coverage_ci=wilson_interval(m, int(s.size)))
