"""Two models on one prompt set: accuracy, each signal's AUROC with a paired CI of the difference, and transfer.

The two runs (one run folder per model, same prompt set) are matched by item id on one regime's
graded rows. Per model, on the matched items only:

* accuracy with a Wilson 95 % interval;
* each pre-generation signal's AUROC for "this model's answer is correct" with its item-bootstrap
  CI: ``−entropy`` at the read-out (H_slot after an answer prefix, else H_int), the top-1
  probability, the last-5-layer state probe and the scalar read-out probe (nested CV, as everywhere);
* the difference A − B with a **paired** bootstrap CI: the same resampled items score both models,
  each against its own correctness labels (the models get different items right, so the labels
  differ; the pairing is over items).

Transfer asks whether a readout fitted on one model's items predicts the other model's
correctness. The matched items are split by id into two disjoint halves; the fit uses one
model's first half (C from its inner folds), the score the other model's second half, so no
question is both fitted and scored. The reference is the same fit scored on the *same* model's
second half. Different models have different state shapes, so only scalar read-outs can cross
(the model-agnostic entropies and top-1 probability, and the lens-entropy profile resampled at
the same relative depths); the state probe is reported with its reason.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.probes.cv import probe_auroc, state_model
from ic_core.probes.overlap import table_keys
from ic_core.probes.signals import SCALAR_COLUMNS
from ic_core.probes.transfer import STATE_NAME, TaskRows, task_rows, transfer_estimate
from ic_core.runs.store import StudyRun
from ic_core.stats.auroc import (
    N_BOOT,
    N_SHUFFLES,
    AurocEstimate,
    auroc,
    bootstrap_indices,
    held_out_auroc,
    missing_estimate,
    percentile_ci,
    round_or_none,
)
from ic_core.stats.proportions import wilson_interval

LENS_DEPTHS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""Relative depths at which the lens-entropy profile is read for a cross-model scalar probe."""
SCALAR_CROSS_NAME = "scalar read-out probe (entropies, top-1, lens at 4 relative depths)"
PROBE_NAME = "linear probe, last 5 layers"
REASON_SHAPES = "state shapes differ (another model): only scalar read-outs can cross"


@dataclass(frozen=True)
class SignalPair:
    """One signal on both models' matched items, and the paired difference A − B."""

    name: str
    a: AurocEstimate
    b: AurocEstimate
    diff: float | None
    """AUROC(A) − AUROC(B); None when either AUROC is missing."""
    ci_low: float | None
    ci_high: float | None
    n_boot_used: int

    def diff_text(self) -> str:
        """``+0.05 [−0.03, +0.12]`` or why there is no difference."""
        if self.diff is None:
            return "n/a (" + (self.a.reason or self.b.reason or "no AUROC") + ")"
        ci = "" if self.ci_low is None else f" [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"
        return f"{self.diff:+.3f}{ci}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures (scores left out)."""
        return {"signal": self.name, "a": self.a.to_json(), "b": self.b.to_json(), "diff": round_or_none(self.diff),
                "diff_ci95": None if self.ci_low is None else [round_or_none(self.ci_low), round_or_none(self.ci_high)],
                "n_boot_used": self.n_boot_used}


@dataclass(frozen=True)
class TransferPair:
    """A read-out fitted on one model's first half of the items, scored on another's second half."""

    train: str
    test: str
    estimate: AurocEstimate
    reference: AurocEstimate
    """The same fit scored on the training model's own second half (what "transfers" is measured against)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"train": self.train, "test": self.test, "auroc": self.estimate.to_json(),
                "same_model_reference": self.reference.to_json()}


@dataclass(frozen=True)
class TwoModelComparison:
    """The paired comparison of two models' runs of one prompt set (:func:`compare_two_models`)."""

    labels: tuple[str, str]
    """Model labels of A and B."""
    regime: str
    n_matched: int
    """Graded items present in both runs (matched by id)."""
    n_correct: tuple[int, int]
    signals: tuple[SignalPair, ...]
    transfers: tuple[TransferPair, ...]
    state_transfer_reason: str | None
    """Why the state probe does not cross models (None when both runs have the same state shape)."""

    def accuracy(self, side: int) -> float:
        """Accuracy of model A (0) or B (1) on the matched items."""
        return self.n_correct[side] / self.n_matched

    def accuracy_text(self, side: int) -> str:
        """``62.0 % [52.2, 70.9] (62 of 100)``."""
        low, high = wilson_interval(self.n_correct[side], self.n_matched) or (math.nan, math.nan)
        return (f"{100 * self.accuracy(side):.1f} % [{100 * low:.1f}, {100 * high:.1f}] "
                f"({self.n_correct[side]} of {self.n_matched})")

    def text(self) -> str:
        """The comparison as plain lines, for the CLI."""
        a, b = self.labels
        lines = [f"two models, {self.regime} regime, {self.n_matched} items matched by id",
                 f"accuracy  A {a}: {self.accuracy_text(0)}", f"accuracy  B {b}: {self.accuracy_text(1)}",
                 "AUROC for 'this model's answer is correct' (95 % CI), difference A − B with a paired bootstrap CI:"]
        for s in self.signals:
            lines.append(f"  {s.name}: A {_est_text(s.a)} · B {_est_text(s.b)} · A − B {s.diff_text()}")
        lines.append("transfer (fit on one model's first half of the items, score the other's second half; "
                     "reference: the same fit on its own model's second half):")
        for t in self.transfers:
            lines.append(f"  {t.estimate.name}, {t.train} → {t.test}: {_est_text(t.estimate)} "
                         f"(same-model reference {_est_text(t.reference)})")
        if self.state_transfer_reason:
            lines.append(f"  {STATE_NAME}: not transferable ({self.state_transfer_reason})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready comparison."""
        return {
            "models": list(self.labels), "regime": self.regime, "n_matched": self.n_matched,
            "accuracy": [round_or_none(self.accuracy(0)), round_or_none(self.accuracy(1))],
            "n_correct": list(self.n_correct), "signals": [s.to_json() for s in self.signals],
            "transfers": [t.to_json() for t in self.transfers], "state_transfer_reason": self.state_transfer_reason,
        }


def _est_text(e: AurocEstimate) -> str:
    if e.auroc_pooled is None:
        return f"n/a ({e.reason})"
    ci = "" if e.ci_low is None else f" [{e.ci_low:.3f}, {e.ci_high:.3f}]"
    shuffle = "" if e.shuffle_mean is None else f", shuffle {e.shuffle_mean:.3f}"
    return f"{e.auroc_pooled:.3f}{ci}{shuffle}"


def _subset(rows: TaskRows, order: np.ndarray) -> TaskRows:
    table = rows.table.iloc[order].reset_index(drop=True)
    return replace(rows, table=table, states=rows.states[order], lens=rows.lens[order], y=rows.y[order],
                   keys=table_keys(table))


def matched_rows(run_a: StudyRun, run_b: StudyRun, regime: str = "direct") -> tuple[TaskRows, TaskRows]:
    """Both runs' graded rows of ``regime`` on the items they share, in the same (id) order.

    Raises:
        DataError: a run without that regime, or no item graded in both.

    """
    a, b = task_rows(run_a, regime), task_rows(run_b, regime)
    ids_a, ids_b = [str(i) for i in a.table["item_id"]], [str(i) for i in b.table["item_id"]]
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise DataError("A run repeats an item id in one regime; items cannot be matched by id.")
    shared = sorted(set(ids_a) & set(ids_b))
    if not shared:
        raise DataError(f"The two runs share no graded item of the {regime} regime (matched by item id).")
    pos_a, pos_b = {i: k for k, i in enumerate(ids_a)}, {i: k for k, i in enumerate(ids_b)}
    return (_subset(a, np.array([pos_a[i] for i in shared], dtype=int)),
            _subset(b, np.array([pos_b[i] for i in shared], dtype=int)))


def cross_model_scalars(rows: TaskRows) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, f) read-outs every model has: :data:`SCALAR_COLUMNS` and the lens entropy at :data:`LENS_DEPTHS`.

    The lens profile has one entry per layer, and models differ in depth, so it is read at the same
    *relative* depths (nearest layer) rather than by layer number.
    """
    cols, names = [], []
    for c in SCALAR_COLUMNS:
        if c in rows.table:
            v = np.asarray(rows.table[c].to_numpy(), dtype=np.float64)
            if np.isfinite(v).all():
                cols.append(v)
                names.append(c)
    n_layers = rows.lens.shape[1] if rows.lens.ndim == 2 else 0
    for depth in LENS_DEPTHS if n_layers else ():
        j = min(n_layers - 1, max(0, round(depth * n_layers) - 1))
        if np.isfinite(rows.lens[:, j]).all():
            cols.append(rows.lens[:, j])
            names.append(f"lens_entropy_bits@{depth:g}")
    if not cols:
        raise DataError(f"{rows.label} records no finite scalar read-out.")
    return np.column_stack(cols), tuple(names)


def paired_difference(a: AurocEstimate, b: AurocEstimate, *, n_boot: int = N_BOOT, seed: int = 0
                      ) -> tuple[float | None, float | None, float | None, int]:
    """AUROC(a) − AUROC(b) on the same items, each with its own labels, and a paired item-bootstrap 95 % CI.

    Returns:
        ``(diff, ci_low, ci_high, n_boot_used)``; all None (and 0) when either AUROC is missing.

    """
    if a.auroc_pooled is None or b.auroc_pooled is None or a.scores is None or b.scores is None:
        return None, None, None, 0
    if a.scores.shape != b.scores.shape:
        raise DataError("A paired difference needs both models scored on the same items.")
    ya, yb = a.labels.astype(bool), b.labels.astype(bool)
    diffs = []
    for idx in bootstrap_indices(ya.size, n_boot, seed):
        da, db = auroc(a.scores[idx], ya[idx]), auroc(b.scores[idx], yb[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    low, high = percentile_ci(diffs, n_boot, 0.95)
    return a.auroc_pooled - b.auroc_pooled, low, high, len(diffs)


def _signals(rows: TaskRows, signal: str, n_boot: int, n_shuffles: int, seed: int) -> list[AurocEstimate]:
    """The per-model estimates, in a fixed order: −entropy, top-1, state probe, scalar probe."""
    everything = np.arange(len(rows.y))
    out = []
    for col, name, sign in (("readout_entropy_bits", f"−{signal}", -1.0), ("top1_prob", f"top-1 probability ({signal})", 1.0)):
        values = np.asarray(rows.table[col].to_numpy(), dtype=np.float64) if col in rows.table else None
        if values is None:
            out.append(missing_estimate(name, "not recorded", int(rows.y.size), int(rows.y.sum()), "held_out"))
        else:
            out.append(held_out_auroc(name, sign * values, rows.y, everything, n_boot=n_boot, seed=seed))
    kw = dict(n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)
    out.append(probe_auroc(rows.states, rows.y, name=PROBE_NAME, description="nested CV on the last-5 states", **kw))
    xs, names = cross_model_scalars(rows)
    out.append(probe_auroc(xs, rows.y, name=SCALAR_CROSS_NAME, description=f"nested CV on {len(names)} read-outs", **kw))
    return out


def split_halves(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves of the items by a hash of their id (stable across runs and machines)."""
    order = sorted(range(len(ids)), key=lambda k: hashlib.sha256(ids[k].encode()).hexdigest())
    first = np.array(sorted(order[: len(order) // 2]), dtype=int)
    second = np.array(sorted(order[len(order) // 2:]), dtype=int)
    return first, second


def _transfers(a: TaskRows, b: TaskRows, names: tuple[str, str], n_boot: int, n_shuffles: int, seed: int
               ) -> list[TransferPair]:
    first, second = split_halves([str(i) for i in a.table["item_id"]])
    xa, na = cross_model_scalars(a)
    xb, nb = cross_model_scalars(b)
    common = [n for n in na if n in nb]
    xa, xb = xa[:, [na.index(n) for n in common]], xb[:, [nb.index(n) for n in common]]
    kw = dict(n_boot=n_boot, n_shuffles=n_shuffles, seed=seed,
              description=f"scaled L2 logistic regression on {len(common)} scalar read-outs")
    out = []
    for (x_fit, y_fit, fit_name), (x_other, y_other, other_name) in (((xa, a.y, names[0]), (xb, b.y, names[1])),
                                                                     ((xb, b.y, names[1]), (xa, a.y, names[0]))):
        cross = transfer_estimate(state_model, x_fit[first], y_fit[first], x_other[second], y_other[second],
                                  name=SCALAR_CROSS_NAME, **kw)
        own = transfer_estimate(state_model, x_fit[first], y_fit[first], x_fit[second], y_fit[second],
                                name=SCALAR_CROSS_NAME, **kw)
        out.append(TransferPair(fit_name, other_name, cross, own))
    return out


def compare_two_models(
    run_a: StudyRun, run_b: StudyRun, regime: str = "direct", *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES,
    seed: int = 0,
) -> TwoModelComparison:
    """Compare two models' runs of one prompt set (see the module docstring for the protocol).

    Raises:
        DataError: no shared graded item, a repeated id, or runs of the same model.

    """
    label_a, label_b = _model_label(run_a), _model_label(run_b)
    if run_a.manifest.get("model") == run_b.manifest.get("model"):
        raise DataError(f"Both runs were made by {label_a}; a two-model comparison needs two models.")
    a, b = matched_rows(run_a, run_b, regime)
    signal = _signal_name(a)
    sig_a, sig_b = _signals(a, signal, n_boot, n_shuffles, seed), _signals(b, signal, n_boot, n_shuffles, seed)
    pairs = []
    for ea, eb in zip(sig_a, sig_b):
        diff, low, high, used = paired_difference(ea, eb, n_boot=n_boot, seed=seed)
        pairs.append(SignalPair(ea.name, ea, eb, diff, low, high, used))
    transfers = _transfers(a, b, (label_a, label_b), n_boot, n_shuffles, seed)
    reason = None if a.state_shape == b.state_shape else f"{REASON_SHAPES}: {a.state_shape} vs {b.state_shape}"
    return TwoModelComparison((label_a, label_b), regime, len(a.y), (int(a.y.sum()), int(b.y.sum())), tuple(pairs),
                              tuple(transfers), reason)


def _model_label(run: StudyRun) -> str:
    model = run.manifest.get("model") or {}
    return str(model.get("name") or model.get("source") or run.path)


def _signal_name(rows: TaskRows) -> str:
    """``H_slot`` when every matched row was read after an answer prefix, ``H_int`` when none was, else ``mixed``."""
    from ic_core.prompts import readout_label

    if "signal" in rows.table:
        return readout_label(str(s) for s in rows.table["signal"])
    return "H_int"
