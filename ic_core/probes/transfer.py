"""Transfer: fit a probe on one run (task A), score another (task B), with a CI and a shuffle control.

Protocol, the same for the three signals (last-k state probe, difference-of-means direction on the
same states, scalar read-out probe):

* C is chosen by a stratified inner CV on A's rows alone (:func:`ic_core.probes.cv.choose_C`), the
  model is fitted on all of A and scores every row of B once; nothing of B is used to fit.
* AUROC on B with an item-bootstrap 95 % CI over B's rows.
* Shuffle control: A's labels are permuted and the whole fit (C choice included) is redone, then
  B is scored against its real labels. This asks the question a transfer claim needs — "would a
  probe that learned nothing from A's labels score as well on B?" — and so also catches a pipeline
  that leaks through features alone. Permuting B's labels under a fixed score would only give the
  null distribution of the AUROC statistic, which the CI already covers.
* Runs must not share items (question hashes, :mod:`ic_core.probes.overlap`); either class of A or
  B with fewer than 10 items is "too few to judge".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.errors import DataError
from ic_core.probes.cv import (
    LAST_K,
    N_INNER,
    FitCounter,
    as_states,
    choose_C,
    last_layer_indices,
    probe_auroc,
    single_threaded,
    state_model,
)
from ic_core.probes.judged import selective_for
from ic_core.probes.overlap import ItemKeys, check_disjoint, overlap_message, table_keys
from ic_core.probes.report import graded_selection
from ic_core.probes.signals import DIFF_MEANS_NAME, SCALAR_NAME, diff_means_auroc, diff_means_model, scalar_features
from ic_core.stats.auroc import (
    N_BOOT,
    N_SHUFFLES,
    AurocEstimate,
    auroc,
    label_permutations,
    label_reason,
    missing_estimate,
    round_or_none,
    summarise_estimate,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ic_core.runs.store import StudyRun

STATE_NAME = "state probe (last k layers)"
SIGNAL_NAMES: tuple[str, ...] = (STATE_NAME, DIFF_MEANS_NAME, SCALAR_NAME)
REASON_OVERLAP = "runs share items"
REASON_SHAPES = "state shapes differ"


@dataclass(frozen=True, eq=False)
class TaskRows:
    """The graded rows of one selection of a run, ready to fit or score."""

    label: str
    """``<run name>:<selection>``."""
    table: pd.DataFrame
    states: np.ndarray
    """(n, k × d) concatenated last-k states."""
    state_shape: tuple[int, int]
    """(L + 1, d) of the run's states."""
    lens: np.ndarray
    """(n, L) lens entropies."""
    y: np.ndarray
    """(n,) 0/1 correctness."""
    keys: ItemKeys


def default_regime(run: StudyRun) -> str:
    """``direct`` when the run has it, else its first regime: what a transfer reads by default."""
    regimes = list(dict.fromkeys(run.table["regime"].tolist()))
    if not regimes:
        raise DataError(f"Run {run.path} has no rows.")
    return "direct" if "direct" in regimes else regimes[0]


def task_rows(run: StudyRun, regime: str | None = None, k: int = LAST_K) -> TaskRows:
    """The graded rows of one regime of ``run`` (default: :func:`default_regime`)."""
    graded, selection, _ = graded_selection(run, regime or default_regime(run))
    rows = graded["row"].to_numpy(int)
    hidden = as_states(np.asarray(run.hidden)[rows])
    layers = last_layer_indices(hidden.shape[1], k)
    return TaskRows(
        label=f"{getattr(run.path, 'name', run.path)}:{selection}", table=graded,
        states=hidden[:, list(layers), :].reshape(len(rows), -1).astype(np.float64),
        state_shape=(int(hidden.shape[1]), int(hidden.shape[2])),
        lens=np.asarray(run.lens_entropy_bits, dtype=np.float64)[rows],
        y=np.asarray([bool(v) for v in graded["correct"]], dtype=int), keys=table_keys(graded),
    )


def transfer_estimate(
    make_model: Callable[[float], Any], X_a: Any, y_a: Any, X_b: Any, y_b: Any, *, name: str, description: str,
    Cs: Sequence[float] | None = None, n_inner: int = N_INNER, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES,
    seed: int = 0,
) -> AurocEstimate:
    """AUROC on B of a model fitted on A (C from A's inner folds), with CI and the shuffled-A control.

    Args:
        make_model: C → unfitted estimator with ``decision_function``.
        X_a: (n_a, f) training features. y_a: (n_a,) 0/1. X_b: (n_b, f) test features. y_b: (n_b,) 0/1.
        Cs: C grid (default the probes' grid). n_inner: Inner folds on A.

    """
    from sklearn import config_context

    from ic_core.probes.cv import C_GRID

    y_a, y_b = np.asarray(y_a).astype(int), np.asarray(y_b).astype(int)
    for rows, y, n_folds in (("training", y_a, n_inner), ("test", y_b, 1)):
        reason = label_reason(y, n_folds)
        if reason:
            return missing_estimate(name, f"{reason} ({rows} run)", int(y_b.size), int(y_b.sum()), kind="transfer",
                                    description=description, note=f"training run: {int(y_a.sum())} right / "
                                                                  f"{int(y_a.size - y_a.sum())} wrong")
    grid = tuple(Cs or C_GRID)

    def fit_score(labels: np.ndarray) -> tuple[np.ndarray, float]:
        counter = FitCounter()
        C = choose_C(make_model, X_a, labels, Cs=grid, n_inner=n_inner, seed=seed, counter=counter)
        model = counter.fit(make_model(C), X_a, labels)
        return np.asarray(model.decision_function(X_b), dtype=np.float64), C

    with single_threaded(), config_context(assume_finite=True, skip_parameter_validation=True):
        scores, C = fit_score(y_a)
        shuffled = [auroc(fit_score(yp)[0], y_b) for yp in label_permutations(y_a, n_shuffles, seed)]
    note = (f"fitted on {y_a.size} training items ({int(y_a.sum())} right); shuffle control: the training labels "
            "permuted and the fit redone, scored on the test run's real labels")
    return summarise_estimate(name, scores, y_b, (), [a for a in shuffled if a is not None], n_boot=n_boot, seed=seed,
                              groups=None, kind="transfer", description=description, note=note,
                              chosen_C=(C,) if len(grid) > 1 else ())


def _scalar_pair(a: TaskRows, b: TaskRows) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Scalar read-outs of A and B on the columns both record (same order)."""
    xa, na = scalar_features(a.table, a.lens)
    xb, nb = scalar_features(b.table, b.lens)
    common = tuple(n for n in na if n in nb)
    if not common:
        raise DataError(f"{a.label} and {b.label} record no scalar read-out in common.")
    return xa[:, [na.index(n) for n in common]], xb[:, [nb.index(n) for n in common]], common


def transfer_pair(a: TaskRows, b: TaskRows, *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0
                  ) -> tuple[AurocEstimate, ...]:
    """The three signals fitted on ``a`` and scored on ``b`` (:data:`SIGNAL_NAMES` order).

    Raises:
        DataError: the two selections share items.

    """
    check_disjoint(a.keys, b.keys, f"{a.label} and {b.label}")
    kw = dict(n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)
    out = []
    if a.state_shape != b.state_shape:
        for name in (STATE_NAME, DIFF_MEANS_NAME):
            out.append(missing_estimate(name, REASON_SHAPES, int(b.y.size), int(b.y.sum()), kind="transfer",
                                        note=f"{a.state_shape} vs {b.state_shape}: another model"))
    else:
        out.append(transfer_estimate(state_model, a.states, a.y, b.states, b.y, name=STATE_NAME,
                                     description="scaled L2 logistic regression on the last-k states", **kw))
        out.append(transfer_estimate(diff_means_model, a.states, a.y, b.states, b.y, name=DIFF_MEANS_NAME,
                                     description="projection on mean(correct) − mean(wrong) of the last-k states",
                                     Cs=(1.0,), **kw))
    xa, xb, names = _scalar_pair(a, b)
    out.append(transfer_estimate(state_model, xa, a.y, xb, b.y, name=SCALAR_NAME,
                                 description=f"scaled L2 logistic regression on {len(names)} scalar read-outs", **kw))
    return tuple(out)


def within_task(a: TaskRows, *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0
                ) -> tuple[AurocEstimate, ...]:
    """The three signals by nested CV inside one task (the diagonal of the transfer matrix)."""
    kw = dict(n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)
    xs, names = scalar_features(a.table, a.lens)
    return (
        probe_auroc(a.states, a.y, name=STATE_NAME, description="nested CV on the last-k states", **kw),
        diff_means_auroc(a.states, a.y, **kw),
        probe_auroc(xs, a.y, name=SCALAR_NAME, description=f"nested CV on {len(names)} scalar read-outs", **kw),
    )


@dataclass(frozen=True, eq=False)
class TransferMatrix:
    """N×N: row = training selection, column = test selection; the diagonal is nested CV within the task."""

    labels: tuple[str, ...]
    counts: tuple[tuple[int, int], ...]
    """(right, wrong) of each selection."""
    cells: dict[tuple[int, int], tuple[AurocEstimate, ...]]
    """(train index, test index) → one estimate per :data:`SIGNAL_NAMES` entry."""

    def records(self) -> list[dict[str, Any]]:
        """One flat record per (train, test, signal): what the CSV download holds."""
        out = []
        for (i, j), ests in sorted(self.cells.items()):
            for e in ests:
                out.append({
                    "train": self.labels[i], "test": self.labels[j], "protocol": "within task (nested CV)" if i == j
                    else "transfer (fit on train, score test)", "signal": e.name,
                    "auroc": round_or_none(e.auroc_pooled), "ci_low": round_or_none(e.ci_low),
                    "ci_high": round_or_none(e.ci_high), "n_correct": e.n_pos, "n_wrong": e.n_neg,
                    "shuffle_mean": round_or_none(e.shuffle_mean), "reason": e.reason or "",
                })
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready matrix."""
        return {
            "runs": [{"label": lab, "n_correct": c[0], "n_wrong": c[1]} for lab, c in zip(self.labels, self.counts)],
            "signals": list(SIGNAL_NAMES),
            "cells": [{"train": self.labels[i], "test": self.labels[j], "within_task": i == j,
                       "estimates": [e.to_json() for e in ests]} for (i, j), ests in sorted(self.cells.items())],
        }


def transfer_matrix(tasks: Sequence[TaskRows], *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0,
                    progress: Callable[[int, int, str], None] | None = None) -> TransferMatrix:
    """Every ordered pair of selections (an overlapping pair's cell says so instead of a number)."""
    if len(tasks) < 2:
        raise DataError("A transfer matrix needs at least two runs.")
    kw = dict(n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)
    cells: dict[tuple[int, int], tuple[AurocEstimate, ...]] = {}
    total = len(tasks) ** 2
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            if i == j:
                cells[i, j] = within_task(a, **kw)
            elif (msg := overlap_message(a.keys.shared_with(b.keys), f"{a.label} and {b.label}")) is not None:
                cells[i, j] = tuple(missing_estimate(n, REASON_OVERLAP, int(b.y.size), int(b.y.sum()), kind="transfer",
                                                     note=msg) for n in SIGNAL_NAMES)
            else:
                cells[i, j] = transfer_pair(a, b, **kw)
            if progress:
                progress(len(cells), total, f"{a.label} → {b.label}")
    names = [t.label for t in tasks]
    labels = tuple(n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names))  # unique axes
    return TransferMatrix(labels, tuple((int(t.y.sum()), int(t.y.size - t.y.sum())) for t in tasks), cells)


def transfer_report(train: TaskRows, test: TaskRows, *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES,
                    seed: int = 0) -> dict[str, Any]:
    """``probe transfer`` output: the three signals fitted on ``train``, scored on ``test``, with counts."""
    ests = transfer_pair(train, test, n_boot=n_boot, n_shuffles=n_shuffles, seed=seed)
    return {
        "train": {"run": train.label, "n": int(train.y.size), "n_correct": int(train.y.sum()),
                  "n_wrong": int(train.y.size - train.y.sum())},
        "test": {"run": test.label, "n": int(test.y.size), "n_correct": int(test.y.sum()),
                 "n_wrong": int(test.y.size - test.y.sum())},
        "overlap": {"shared_questions": 0, "checked_by": "item question hashes (SHA-256 of normalised text), "
                                                         "item ids recorded"},
        # AURC, E-AURC and AUGRC of each estimate's own scores, same bootstrap seed, beside its AUROC
        "estimates": [dict(e.to_json(), selective=selective_for(e, n_boot=n_boot, seed=seed).to_json()) for e in ests],
        "shuffle_control": "training labels permuted and the fit (C choice included) redone; scored on the test run's "
                           "real labels",
        "settings": {"n_bootstrap": n_boot, "shuffles": n_shuffles, "seed": seed, "inner_folds": N_INNER},
    }
