"""Risk-controlled thresholds for a gate policy: Learn then Test on the training items, checked held out.

:func:`fit_ltt` certifies a threshold on a run's *training* (calibration) items with
:func:`ic_core.stats.risk_control.learn_then_test` (grid from those items' scores only), then
checks it on the held-out items (:func:`~ic_core.stats.risk_control.held_out_risk`) and runs
the repeated-split simulation (:func:`~ic_core.stats.risk_simulation.simulate_splits`) on every
graded item. Nothing here invents a threshold: when none is certified the policy escalates
every prompt and says why.

Scores: an entropy is a risk (approve ``H <= t``, direction ``le``); a probe's calibrated
P(correct) is a confidence (approve ``P >= t``, direction ``ge``). The training rows' probe
scores are out-of-fold (:func:`ic_core.probes.scores.calibrated_probe_scores`), so no
calibration item is scored by a probe that saw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.stats.auroc import auroc
from ic_core.stats.risk_control import (
    MIN_COVERAGE,
    HeldOutRisk,
    LTTResult,
    check_levels,
    default_grid,
    held_out_risk,
    learn_then_test,
    zero_error_items,
)
from ic_core.stats.risk_simulation import N_SPLITS, SplitSimulation, simulate_splits

METHODS: tuple[str, ...] = ("empirical", "ltt")
EMPIRICAL_LABEL = "empirical (no guarantee)"


@dataclass(frozen=True, eq=False)
class RiskControlFit:
    """A Learn-then-Test threshold with its held-out check, repeated-split simulation and read-out comparison."""

    ltt: LTTResult
    held_out: HeldOutRisk | None
    """Realised error among approved and coverage on the held-out items (None when nothing was certified)."""
    simulation: SplitSimulation | None
    simulation_note: str | None
    """Why there is no simulation (e.g. too few items to ever certify), else None."""
    comparison: dict[str, Any] | None = None
    """Last-token against per-item-prefix read-out on the same held-out items, when the run has both."""

    def risk_control_entry(self) -> dict[str, Any]:
        """The policy's ``risk_control`` field."""
        r = self.ltt
        return {"method": "ltt", "bound": r.method, "alpha": float(r.alpha), "delta": float(r.delta),
                "n_calibration": int(r.n), "coverage": r.coverage, "certified": r.certified,
                "reason": r.reason, "needed_n": r.needed_n, "direction": r.direction}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures for the CLI (the LTT grid left out; its text kept)."""
        ho = self.held_out
        return {
            "method": "ltt", "certified": self.ltt.certified, "threshold": self.ltt.threshold,
            "direction": self.ltt.direction, "text": self.ltt.text(), "alpha": self.ltt.alpha, "delta": self.ltt.delta,
            "bound": self.ltt.method, "n_calibration": self.ltt.n, "calibration_coverage": self.ltt.coverage,
            "calibration_error": self.ltt.empirical_error, "needed_n": self.ltt.needed_n,
            "held_out": None if ho is None else {
                "n": ho.n, "n_approved": ho.n_approved, "errors_approved": ho.errors_approved,
                "error_rate": ho.error_rate, "error_ci": ho.error_ci, "coverage": ho.coverage,
                "coverage_ci": ho.coverage_ci,
            },
            "simulation": None if self.simulation is None else {**self.simulation.to_json(),
                                                                 "text": self.simulation.text()},
            "simulation_note": self.simulation_note, "readout_comparison": self.comparison,
        }

    def lines(self) -> list[str]:
        """Plain lines for the CLI: the LTT result, the held-out check and the simulation."""
        out = [f"LTT: {self.ltt.text()}"]
        ho = self.held_out
        if ho is not None:
            err = "n/a (nothing approved)" if ho.error_rate is None else f"{ho.error_rate:.1%} {_ci(ho.error_ci)}"
            out.append(f"held-out ({ho.n} items): error among approved {err} ({ho.errors_approved}/{ho.n_approved}), "
                       f"coverage {ho.coverage:.1%} {_ci(ho.coverage_ci)}")
        if self.simulation is not None:
            verdict = "within δ" if self.simulation.within_delta else "ABOVE δ + 3 SE"
            out.append(f"simulation: {self.simulation.text()} [{verdict}]")
        elif self.simulation_note:
            out.append(f"simulation: not run ({self.simulation_note})")
        return out


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def check_method(method: str, alpha: float | None, delta: float | None, bound: str) -> None:
    """Refuse an unknown method, or LTT without valid α and δ, in one line.

    Raises:
        DataError: as above.

    """
    if method not in METHODS:
        raise DataError(f"Unknown fit method {method!r}; choose {' or '.join(METHODS)}.")
    if method == "ltt":
        if alpha is None or delta is None:
            raise DataError("Method 'ltt' needs --alpha (target error among approved) and --delta.")
        check_levels(float(alpha), float(delta), "le", bound)


def start_coverage(n: int, alpha: float, delta: float, bound: str) -> float:
    """Coverage of the first threshold tested: the fewest approved items that could certify α at all.

    Fixed-sequence testing stops at its first failure, so a first threshold approving fewer
    items than zero errors would need (e.g. 4 of 36 at α = 0.2) could never pass and would stop
    everything. The figure depends on n, α and δ only (never on labels), so the guarantee holds.
    """
    m0 = zero_error_items(alpha, delta, bound)
    if m0 is None or n < 1 or m0 > n:
        return MIN_COVERAGE
    return max(MIN_COVERAGE, m0 / n)


def fit_ltt(
    scores: np.ndarray, correct: np.ndarray, direction: str, train_idx: np.ndarray, test_idx: np.ndarray, *,
    alpha: float, delta: float, bound: str = "clopper_pearson", n_splits: int = N_SPLITS, seed: int = 0,
) -> RiskControlFit:
    """Certify a threshold on the training items, check it on the held-out ones, simulate repeated splits.

    Args:
        scores: (n,) the signal of every graded item. correct: (n,) their correctness.
        direction: ``le`` (approve score <= t) or ``ge`` (approve score >= t).
        train_idx, test_idx: The calibration and held-out items.
        alpha, delta, bound: The guarantee asked for and the binomial bound.
        n_splits: Repeated calibration/test splits of all items (calibration share as the split's).
        seed: Simulation seed.

    Raises:
        DataError: bad α, δ, bound, direction or inputs.

    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    start = start_coverage(int(train_idx.size), alpha, delta, bound)
    grid = default_grid(s[train_idx], direction, min_coverage=start)
    ltt = learn_then_test(s[train_idx], c[train_idx], alpha=alpha, delta=delta, direction=direction, method=bound,
                          thresholds=grid)
    held = None
    if ltt.threshold is not None and test_idx.size:
        held = held_out_risk(s[test_idx], c[test_idx], ltt.threshold, direction)
    sim, note = None, None
    try:
        sim = simulate_splits(s, c, alpha=alpha, delta=delta, direction=direction, method=bound, n_splits=n_splits,
                              n_calibration=int(train_idx.size), seed=seed, min_coverage=start)
    except DataError as exc:
        note = str(exc)
    return RiskControlFit(ltt, held, sim, note)


def compare_readouts(
    last_token_bits: np.ndarray, item_prefix_bits: np.ndarray, correct: np.ndarray, train_idx: np.ndarray,
    test_idx: np.ndarray, *, alpha: float, delta: float, bound: str = "clopper_pearson",
) -> dict[str, Any]:
    """What a per-item prefix would have bought over the last-token read-out, on the same held-out items.

    For each read-out: held-out AUROC of the entropy for a wrong answer, and the LTT threshold
    certified on the training items with its held-out error among approved and coverage.
    """
    out: dict[str, Any] = {}
    c = np.asarray(correct, dtype=bool)
    start = start_coverage(int(train_idx.size), alpha, delta, bound)
    for name, bits in (("last_token_H_int", last_token_bits), ("item_prefix_H_slot", item_prefix_bits)):
        b = np.asarray(bits, dtype=np.float64)
        ltt = learn_then_test(b[train_idx], c[train_idx], alpha=alpha, delta=delta, direction="le", method=bound,
                              thresholds=default_grid(b[train_idx], "le", min_coverage=start))
        ho = None if ltt.threshold is None else held_out_risk(b[test_idx], c[test_idx], ltt.threshold, "le")
        out[name] = {
            "held_out_auroc_wrong": auroc(b[test_idx], ~c[test_idx]), "certified": ltt.certified,
            "threshold_bits": ltt.threshold, "reason": ltt.reason,
            "held_out_error_among_approved": None if ho is None else ho.error_rate,
            "held_out_coverage": None if ho is None else ho.coverage,
        }
    return out
