"""Calibrated probe P(correct) for labelled rows, from arrays and a train/held-out split, with no leakage.

Training rows are scored out of fold (nested CV on the training rows alone), held-out rows by
the final probe fitted on all training rows, so no row is ever scored by a probe that saw it.
Both are mapped to P(correct) by one Platt calibration fitted on the training rows' out-of-fold
scores; the final probe is first put on the scale the out-of-fold scores are on
(:func:`ic_core.probes.cv.training_scale`). An external probe (fitted on another run) scores
every row as it is and is Platt-calibrated on the training rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ic_core.errors import DataError
from ic_core.probes.cv import as_states, last_layer_indices, nested_cv, state_model, training_scale
from ic_core.probes.overlap import probe_keys, run_folder_keys
from ic_core.probes.saved import SavedProbe, fit_saved_probe
from ic_core.stats.auroc import label_reason
from ic_core.stats.gating import PlattCalibration, fit_platt, fit_platt_on_scores

OOF_FOLDS = 5
"""Outer folds of the nested CV that scores the training rows out of fold."""
INNER_FOLDS = 3
"""Inner folds that choose C (for the out-of-fold probes and for the final probe)."""


@dataclass(frozen=True, eq=False)
class ProbeScores:
    """Calibrated P(correct) for every labelled row, each scored by a probe that never saw it.

    Training rows get out-of-fold scores (nested CV on the training rows); held-out rows get
    the final probe (fitted on all training rows), so no row is scored by a probe fitted on it.
    """

    p_correct: np.ndarray
    """(n,) calibrated P(correct), aligned with the rows given (a gate's ``RunSignals.table``)."""
    probe: SavedProbe
    """The probe to use at gate time."""
    calibration: PlattCalibration
    """Maps the probe's raw P(correct) to the calibrated scale (fitted on training rows only)."""
    source: str
    """In words: how the probe was obtained."""
    path: str | None = None
    """Where the probe is saved (None until saved)."""


def probe_overlap_reason(probe: SavedProbe, run_path: str | os.PathLike[str]) -> str | None:
    """Why ``probe`` cannot be judged on the run at ``run_path``, or None when its training items are disjoint.

    Decided on the items (:mod:`ic_core.probes.overlap`), never on folder paths, so a copy of a
    run folder is recognised as the same items. Safe rule for probes saved before training items
    were recorded: their training items are unknown, so they are refused for held-out scoring on
    every run (they still score prompts in Explore and at the gate). Refit them to use them here.
    """
    keys = probe_keys(probe)
    if not keys.known:
        return (f"Probe {probe.probe_id} does not record which items it was trained on (saved by an older "
                "version), so it cannot be shown to be disjoint from this run's held-out items: refit it "
                "on its run (Recoverability → Save probe) or fit one on the training items.")
    shared = keys.shared_with(run_folder_keys(run_path))
    if not shared[1]:
        return None
    return (f"Probe {probe.probe_id} was fitted on items of this run ({shared[1]} of its questions, {shared[0]} "
            "with the same id, are here), held-out ones included, so it cannot be evaluated here. Leave the "
            "probe out to fit one on the training items only, or use a probe fitted on a run with other items.")


def probe_fitted_on_run(probe: SavedProbe, run_path: str | os.PathLike[str]) -> bool:
    """True when ``probe`` may have seen items of the run at ``run_path`` (see :func:`probe_overlap_reason`).

    Such a probe cannot be judged on the run's split: :func:`external_probe_scores` refuses it and
    the Governance page offers only probes trained on other items.
    """
    return probe_overlap_reason(probe, run_path) is not None


def check_platt_slope(calibration: PlattCalibration, probe: SavedProbe) -> None:
    """Refuse a calibration that flips an external probe's direction.

    Raises:
        DataError: the Platt slope fitted on the target's training labels is ≤ 0.

    """
    if calibration.coef > 0:
        return
    raise DataError(
        f"Probe {probe.probe_id} ranks this run's training items the wrong way round (Platt slope "
        f"{calibration.coef:+.2f} ≤ 0): here a higher probe P(correct) goes with more errors, so the probe does "
        "not carry over to this run, and calibrating it would silently flip its sign. Fit a probe on this run's "
        "training items instead."
    )


def _indices(idx: Any, n: int, name: str) -> np.ndarray:
    out = np.asarray(idx, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise DataError(f"{name} holds row indices outside 0..{n - 1}.")
    return out


def external_probe_scores(
    hidden: Any, correct: Any, train_idx: Any, probe: SavedProbe, *, run_path: str = ""
) -> ProbeScores:
    """P(correct) of a probe fitted on another run, Platt-calibrated on the training rows.

    Args:
        hidden: (n, L + 1, d) states of the rows.
        correct: (n,) bool correctness.
        train_idx: Rows the calibration is fitted on.
        probe: The external saved probe (it scores every row as it is).
        run_path: The folder the rows come from; a probe trained on any of its items is refused.

    Raises:
        DataError: the probe shares items with this run (or does not record its training items), or
            its Platt slope on the training rows is ≤ 0 (it would be silently flipped).

    """
    reason = probe_overlap_reason(probe, run_path) if run_path else None
    if reason:
        raise DataError(reason)
    y = np.asarray(correct, dtype=bool)
    tr = _indices(train_idx, y.size, "train_idx")
    raw = probe.predict_proba_correct_batch(hidden)
    calibration = fit_platt(raw[tr], y[tr])
    check_platt_slope(calibration, probe)
    return ProbeScores(calibration.apply(raw), probe, calibration,
                       f"probe {probe.probe_id} fitted on another run ({probe.run_path}), calibrated on training items")


def _rows_of(values: Any, idx: np.ndarray, n: int) -> list[Any]:
    """``values[idx]`` as a list (empty without values)."""
    if values is None:
        return []
    arr = np.asarray(values, dtype=object).reshape(-1)
    if arr.size != n:
        raise DataError(f"{arr.size} item ids/questions for {n} rows.")
    return arr[idx].tolist()


def calibrated_probe_scores(
    hidden: Any, correct: Any, train_idx: Any, test_idx: Any, *, model_spec: dict[str, Any], seed: int = 0,
    probe: SavedProbe | None = None, run_path: str = "", selection: str = "", item_ids: Any = None,
    questions: Any = None,
) -> ProbeScores:
    """Calibrated P(correct) per row, without ever scoring a row with a probe fitted on it.

    Args:
        hidden: (n, L + 1, d) states of the labelled rows (index 0 = embeddings).
        correct: (n,) bool (or 0/1) correctness of the same rows.
        train_idx: Rows the probe and its calibration may learn from.
        test_idx: Held-out rows (disjoint from ``train_idx``), scored by the final probe only.
        model_spec: The model the states came from (recorded in the fitted probe).
        seed: Seed of the nested CV and of C's choice.
        probe: An external probe fitted on another run (see :func:`external_probe_scores`); None
            fits the last-5-layers probe on the training rows.
        run_path: The run folder the rows come from (recorded; refuses an external probe of it).
        selection: The training rows in words (recorded in the fitted probe).
        item_ids: Optional (n,) item ids of the rows; the fitted probe records those of its training rows.
        questions: Optional (n,) question texts of the rows; the fitted probe records their hashes. Without
            both, the fitted probe's training items are unknown and it is refused for held-out scoring elsewhere.

    Returns:
        Scores aligned with the rows; rows in neither index array are NaN.

    Raises:
        DataError: overlapping indices, too few right/wrong training rows, or an external probe
            fitted on this run.

    """
    hidden = as_states(hidden)
    y_bool = np.asarray(correct, dtype=bool).reshape(-1)
    if hidden.shape[0] != y_bool.size:
        raise DataError(f"{hidden.shape[0]} state rows but {y_bool.size} correctness labels.")
    tr = _indices(train_idx, y_bool.size, "train_idx")
    te = _indices(test_idx, y_bool.size, "test_idx")
    if np.intersect1d(tr, te).size:
        raise DataError("train_idx and test_idx share rows: a held-out row would be scored by a probe that saw it.")
    if probe is not None:
        return external_probe_scores(hidden, y_bool, tr, probe, run_path=run_path)
    y = y_bool.astype(int)
    reason = label_reason(y[tr], OOF_FOLDS)
    if reason:
        raise DataError(
            f"Cannot fit a probe on the training items: {reason} ({tr.size} items, {int(y[tr].sum())} right); "
            f"each class needs at least {2 * OOF_FOLDS}. Use a larger run or an entropy signal."
        )
    layers = last_layer_indices(hidden.shape[1])
    x_tr = hidden[tr][:, list(layers), :].reshape(tr.size, -1).astype(np.float64)
    oof = nested_cv(state_model, x_tr, y[tr], n_folds=OOF_FOLDS, n_inner=INNER_FOLDS, seed=seed)
    coef, intercept = fit_platt_on_scores(oof.scores, y_bool[tr])
    final = fit_saved_probe(hidden[tr], y[tr], layers=layers, model_spec=model_spec, run_path=run_path,
                            selection=selection, n_folds=INNER_FOLDS, seed=seed,
                            item_ids=_rows_of(item_ids, tr, y.size), questions=_rows_of(questions, tr, y.size))
    # Put the final probe on the out-of-fold scores' footing, then fold both steps into one Platt map of its logit.
    mean, sd = training_scale(final.decision_values(hidden[tr]))
    calibration = PlattCalibration(coef / sd, intercept - coef * mean / sd)
    p = np.full(y.size, np.nan)
    p[tr] = 1.0 / (1.0 + np.exp(-(coef * oof.scores + intercept)))
    p[te] = calibration.apply(final.predict_proba_correct_batch(hidden[te]))
    return ProbeScores(p, final, calibration, "last-5-layers probe fitted on the training items only")
