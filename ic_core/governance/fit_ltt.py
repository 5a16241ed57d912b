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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.governance.signals import RunSignals
    from ic_core.runs.store import StudyRun

Progress = Callable[[int, int], None]
"""``progress(done, total)`` called as the repeated-split simulation advances."""
SIM_CHUNK = 10
"""Splits per chunk of the simulation (each chunk has its own seed, so the progress bar can move)."""

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
        if self.comparison:
            out.append("what a per-item prefix buys, on the same held-out items:")
            out.extend(f"  {line}" for line in comparison_lines(self.comparison))
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
    progress: Progress | None = None,
) -> RiskControlFit:
    """Certify a threshold on the training items, check it on the held-out ones, simulate repeated splits.

    Args:
        scores: (n,) the signal of every graded item. correct: (n,) their correctness.
        direction: ``le`` (approve score <= t) or ``ge`` (approve score >= t).
        train_idx, test_idx: The calibration and held-out items.
        alpha, delta, bound: The guarantee asked for and the binomial bound.
        n_splits: Repeated calibration/test splits of all items (calibration share as the split's).
        seed: Simulation seed.
        progress: Called with ``(splits done, n_splits)`` as the simulation advances.

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
        sim = simulate_in_chunks(s, c, alpha=alpha, delta=delta, direction=direction, bound=bound, n_splits=n_splits,
                                 n_calibration=int(train_idx.size), seed=seed, min_coverage=start, progress=progress)
    except DataError as exc:
        note = str(exc)
    return RiskControlFit(ltt, held, sim, note)


def simulate_in_chunks(
    scores: np.ndarray, correct: np.ndarray, *, alpha: float, delta: float, direction: str, bound: str,
    n_splits: int, n_calibration: int, seed: int, min_coverage: float, progress: Progress | None = None,
) -> SplitSimulation:
    """:func:`~ic_core.stats.risk_simulation.simulate_splits` run in chunks of :data:`SIM_CHUNK` splits.

    Chunk j draws its splits from the j-th child of ``SeedSequence(seed)``, so the result depends
    only on ``seed`` (the page and ``policy fit`` give the same figures) and ``progress`` can be
    called between chunks.

    Raises:
        DataError: as :func:`simulate_splits` (n too small, bad levels or inputs).

    """
    if n_splits < 1:
        raise DataError(f"n_splits must be at least 1 (got {n_splits}).")
    sizes = [min(SIM_CHUNK, n_splits - i) for i in range(0, n_splits, SIM_CHUNK)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    parts: list[SplitSimulation] = []
    for size, child in zip(sizes, seeds, strict=True):
        parts.append(simulate_splits(scores, correct, alpha=alpha, delta=delta, direction=direction, method=bound,
                                     n_splits=size, n_calibration=n_calibration,
                                     seed=int(child.generate_state(1)[0]), min_coverage=min_coverage))
        if progress is not None:
            progress(sum(p.n_splits for p in parts), n_splits)
    first = parts[0]
    return SplitSimulation(
        alpha=first.alpha, delta=first.delta, method=first.method, direction=first.direction, n_splits=n_splits,
        n_calibration=first.n_calibration, n_test=first.n_test, seed=seed,
        thresholds=np.concatenate([p.thresholds for p in parts]),
        realised_errors=np.concatenate([p.realised_errors for p in parts]),
        coverages=np.concatenate([p.coverages for p in parts]),
    )


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


# --------------------------------------------------------------------------------------
# Read-outs of a run (agent-ready first), and what a per-item prefix buys
# --------------------------------------------------------------------------------------

READOUT_ORDER: tuple[str, ...] = ("last-token", "kind-prefix", "item-prefix")
"""Agent-ready read-outs first: nothing, then one generic prefix, then each item's own (research only)."""
AGENT_READY_READOUTS = frozenset({"last-token", "kind-prefix"})
NATIVE_READOUT: dict[str, str] = {"none": "last-token", "fixed": "kind-prefix", "per_item": "item-prefix"}


@dataclass(frozen=True)
class ReadoutOption:
    """One read-out a run can be gated on."""

    readout: str
    """``last-token``, ``kind-prefix`` or ``item-prefix``."""
    label: str
    """What it reads and what a prompt needs, in words."""
    agent_ready: bool
    """Whether an agent's prompt can be gated as it is (no per-item prefix)."""
    native: bool
    """Whether this is what the run itself read (its ``auto`` read-out)."""

    @property
    def as_argument(self) -> str:
        """The ``readout`` to pass to :func:`~ic_core.governance.signals.run_signals` (``auto`` when native)."""
        return "auto" if self.native else self.readout


def _readout_label(readout: str, prefix: str | None) -> str:
    if readout == "last-token":
        return "H_int at the last prompt token — agent-ready (the prompt needs nothing)"
    if readout == "kind-prefix":
        return f"H_slot after one generic prefix ({prefix!r}) — agent-ready"
    return "H_slot after each item's own prefix — research only (every prompt needs its own prefix)"


def readout_options(run: StudyRun, regime: str | None = None) -> list[ReadoutOption]:
    """The read-outs this run can be gated on, agent-ready ones first (empty when the run cannot be gated).

    Raises:
        DataError: unknown regime, or rows mixing read-outs (as :func:`run_signals`).

    """
    from ic_core.governance.signals import run_signals

    try:
        native = run_signals(run, regime)
    except DataError as exc:
        if "one class" in str(exc) or "too small" in str(exc) or "No graded rows" in str(exc):
            return []
        raise
    own = NATIVE_READOUT[native.prefix_mode]
    out = []
    for readout in READOUT_ORDER:
        if readout != own:
            try:
                run_signals(run, regime, readout=readout)
            except DataError:
                continue
        out.append(ReadoutOption(readout, _readout_label(readout, native.answer_prefix),
                                 readout in AGENT_READY_READOUTS, readout == own))
    return out


def readout_comparison(
    run: StudyRun, regime: str | None, holdout: float, seed: int, *, alpha: float, delta: float,
    bound: str = "clopper_pearson",
) -> dict[str, Any] | None:
    """:func:`compare_readouts` on the run's last-token and per-item-prefix read-outs (same split), if it has both.

    None when the run read no per-item prefixes or holds no last-token entropy.
    """
    from ic_core.governance.signals import run_signals

    try:
        last = run_signals(run, regime, holdout, seed, readout="last-token")
    except DataError:
        return None
    if last.item_prefix_bits is None:
        return None
    return {**compare_readouts(last.entropy_bits, last.item_prefix_bits, last.correct, last.train_idx,
                               last.test_idx, alpha=alpha, delta=delta, bound=bound),
            "n_held_out": int(last.test_idx.size)}


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    """What the per-item prefix bought over the last-token read-out on the same held-out items, one line each."""
    names = {"last_token_H_int": "last-token H_int (agent-ready)",
             "item_prefix_H_slot": "per-item-prefix H_slot (research only)"}
    n = comparison.get("n_held_out")
    out = []
    for key, name in names.items():
        c = comparison.get(key)
        if c is None:
            continue
        # AUROC of the entropy for a wrong answer = AUROC of −entropy for a right one (the page's convention).
        auc = "n/a" if c["held_out_auroc_wrong"] is None else f"{c['held_out_auroc_wrong']:.3f}"
        if c["certified"]:
            err, cov = c["held_out_error_among_approved"], c["held_out_coverage"]
            cert = (f"certified at ≤ {c['threshold_bits']:.3f} bits, held-out error among approved "
                    f"{'n/a' if err is None else f'{err:.1%}'}, coverage {cov:.1%}")
        else:
            cert = f"not certified ({c['reason']})"
        out.append(f"{name}: held-out AUROC {auc}" + (f" on {n} items" if n else "") + f"; {cert}")
    return out


# --------------------------------------------------------------------------------------
# Out-of-distribution share
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OodShare:
    """How many states lie outside a policy's distance model."""

    n: int
    n_outside: int
    threshold: float
    median_distance: float

    @property
    def share(self) -> float:
        """Share of the states outside."""
        return self.n_outside / self.n

    def text(self, what: str) -> str:
        """One line, e.g. ``"3 of 76 held-out items (3.9 %) are out of distribution (median distance …)"``."""
        return (f"{self.n_outside} of {self.n} {what} ({self.share:.1%}) lie outside the calibration states "
                f"(median distance {self.median_distance:.2f}, threshold {self.threshold:.2f}).")


def ood_share(ood: dict[str, Any], states: Any) -> OodShare:
    """Distances of (M, d) states from a policy's stored distance model (``Policy.ood``).

    Raises:
        DataError: a malformed model, no states, or states of another width.

    """
    from ic_core.stats.ood import OODModel

    model = OODModel.from_json(ood)
    x = np.asarray(states, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError("No states to place against the calibration states.")
    dist = model.distances(x)
    return OodShare(int(dist.size), int((dist > model.threshold).sum()), float(model.threshold),
                    float(np.median(dist)))


def held_out_ood_share(run: StudyRun, sig: RunSignals, ood: dict[str, Any], layer: int) -> OodShare:
    """The share of the split's held-out items outside the distance model fitted on its training items."""
    return ood_share(ood, np.asarray(run.hidden)[sig.hidden_rows[sig.test_idx], layer])


def _check_read_like(other: StudyRun, prefix_mode: str, answer_prefix: str | None) -> None:
    """Refuse a run whose states were read at another position than the policy's (after other prefixes)."""
    given = {p for p in other.table["answer_prefix"] if isinstance(p, str) and p.strip()}
    has_none = any(not (isinstance(p, str) and p.strip()) for p in other.table["answer_prefix"])
    same = {"none": not given, "fixed": given == {answer_prefix} and not has_none,
            "per_item": bool(given) and not has_none}[prefix_mode]
    if not same:
        raise DataError(f"The run {other.path.name} was read at another position (answer prefixes "
                        f"{sorted(given)[:2] or 'none'}) than this policy (prefix mode {prefix_mode}): "
                        "its distances would compare different tokens.")


def other_run_ood_share(other: StudyRun, ood: dict[str, Any], layer: int, model: dict[str, Any],
                        prefix_mode: str = "none", answer_prefix: str | None = None) -> OodShare:
    """The share of another run's items (every row) outside the distance model.

    Raises:
        ModelMismatchError: the other run was read with another model.
        DataError: no rows, or states read at another position (other answer prefixes).

    """
    from ic_core.governance.policy import check_spec_matches
    from ic_core.models import ModelSpec

    other_model = other.manifest.get("model")
    if other_model:
        check_spec_matches(model, ModelSpec.from_dict(other_model), "The policy's distance model")
    _check_read_like(other, prefix_mode, answer_prefix)
    hidden = np.asarray(other.hidden)
    if hidden.ndim != 3 or hidden.shape[0] == 0 or not 0 <= layer < hidden.shape[1]:
        raise DataError(f"The run {other.path.name} holds no states at layer {layer}.")
    return ood_share(ood, hidden[:, layer])
