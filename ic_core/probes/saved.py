"""Saved probes: fitted on all graded rows, stored as JSON + npz (never pickle), loaded inside the runs root."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.errors import DataError, PromptError
from ic_core.io import atomic_write_json, atomic_write_npz

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.runs.store import StudyRun
from ic_core.probes.cv import (
    C_GRID,
    LAST_K,
    FitCounter,
    as_states,
    choose_C,
    last_layer_indices,
    single_threaded,
    state_model,
)
from ic_core.probes.overlap import question_hash
from ic_core.probes.report import graded_selection
from ic_core.stats.auroc import N_OUTER, AurocEstimate, label_reason

FORMAT_VERSION = 1


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
    train_item_ids: tuple[str, ...] = ()
    """``item_id`` of every training item (empty in probes saved before this was recorded)."""
    train_question_sha256: tuple[str, ...] = ()
    """SHA-256 of each training item's normalised question (:func:`ic_core.probes.overlap.question_hash`).
    A probe without it has unknown training items and is refused for held-out scoring
    (:func:`ic_core.probes.scores.probe_fitted_on_run`)."""

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
            "choice": self.choice, "train_item_ids": list(self.train_item_ids),
            "train_question_sha256": list(self.train_question_sha256), "arrays": "scaler_mean, scaler_scale, coef in the .npz beside this file",
        }

    def save(self, path: str | Path) -> Path:
        """Write ``<stem>.json`` and ``<stem>.npz`` atomically; returns the JSON path."""
        json_path, npz_path = _probe_paths(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npz(npz_path, scaler_mean=self.scaler_mean, scaler_scale=self.scaler_scale, coef=self.coef)
        atomic_write_json(json_path, self.metadata())
        return json_path

    @classmethod
    def load(cls, path: str | Path, root: str | Path) -> SavedProbe:
        """Read a probe saved by :meth:`save` (either file or the common stem) from inside ``root``.

        Both files must resolve inside ``root`` (``..`` and symlinks followed first), so a policy
        document cannot make the reader open files anywhere on disk.

        Args:
            path: The ``.json``, the ``.npz`` or their common stem.
            root: The folder probes may be read from: :func:`ic_core.runs.store.runs_root` for
                the app and the gate, or a folder the operator named on the command line.

        Raises:
            DataError: a file outside ``root``, a missing file, wrong format or inconsistent shapes.

        """
        json_path, npz_path = confined_probe_paths(path, root)
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
                choice=str(meta.get("choice", "")), train_item_ids=_strings(meta, "train_item_ids"),
                train_question_sha256=_strings(meta, "train_question_sha256"), **arrays,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"Saved probe {json_path} is missing or has a malformed field: {exc}") from exc
        if meta.get("probe_id") not in (None, probe.probe_id):
            raise DataError(f"Saved probe {json_path}: the arrays do not match the recorded probe_id.")
        return probe


def _strings(meta: dict[str, Any], key: str) -> tuple[str, ...]:
    """A list-of-strings field of a saved probe (absent in older files → empty)."""
    value = meta.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key} must be a list of strings")
    return tuple(value)


def _sigmoid(z: Any) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def _probe_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".npz") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def confined_probe_paths(path: str | Path, root: str | Path) -> tuple[Path, Path]:
    """The probe's ``.json`` and ``.npz`` as fully resolved paths, both inside ``root``.

    Args:
        path: The ``.json``, the ``.npz`` or their common stem (relative paths: from the working folder).
        root: The folder both files must lie in once ``..``, ``~`` and symlinks are resolved.

    Raises:
        DataError: either file resolves outside ``root``.

    """
    try:
        base = Path(root).expanduser().resolve()
        resolved = tuple(p.expanduser().resolve() for p in _probe_paths(path))
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unknown ~user
        raise DataError(f"Cannot resolve the saved probe path {str(path)!r}: {exc}") from exc
    for p in resolved:
        if not p.is_relative_to(base):
            raise DataError(
                f"The saved probe {str(path)!r} resolves to {p}, outside the runs folder {base} that probes are "
                "read from; copy its .json and .npz into a run's probes/ folder there and load it from that folder."
            )
    return resolved[0], resolved[1]


def fit_saved_probe(
    hidden: Any, y: Any, *, layers: Sequence[int] | None = None, k: int = LAST_K, model_spec: dict[str, Any],
    run_path: str = "", selection: str = "", cv_result: AurocEstimate | None = None, groups: Any = None,
    Cs: Sequence[float] = C_GRID, n_folds: int = N_OUTER, seed: int = 0, item_ids: Sequence[Any] = (),
    questions: Sequence[Any] = (),
) -> SavedProbe:
    """Fit the final probe on all rows; C chosen by a stratified CV over all rows.

    Args:
        hidden: (N, L + 1, d) training states.
        y: (N,) 0/1 correctness.
        layers: ``hidden_states`` indices to concatenate (default: the last ``k``).
        cv_result: the nested-CV result of the same recipe, recorded as the probe's honest AUROC.
        item_ids: ids of the training items (recorded: overlap checks use them).
        questions: question texts of the training items (recorded as hashes only).

    Raises:
        DataError: one class or too few rows.

    """
    from sklearn import config_context

    hidden = as_states(hidden)
    y = np.asarray(y).astype(int)
    reason = label_reason(y, n_folds)
    if reason:
        raise DataError(f"Cannot fit a probe: {reason} ({y.size} graded rows, {int(y.sum())} correct).")
    chosen = tuple(layers) if layers is not None else last_layer_indices(hidden.shape[1], k)
    X = hidden[:, list(chosen), :].reshape(hidden.shape[0], -1).astype(np.float64)
    with single_threaded(), config_context(assume_finite=True, skip_parameter_validation=True):
        C = choose_C(state_model, X, y, groups_train=groups, Cs=Cs, n_inner=n_folds, seed=seed)
        model = FitCounter().fit(state_model(C), X, y)
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
        choice=choice, train_item_ids=tuple(dict.fromkeys(str(i) for i in item_ids)),
        train_question_sha256=tuple(dict.fromkeys(question_hash(q) for q in questions)),
    )


def fit_saved_probe_for_run(run: StudyRun, regime: str | None = None, pooled: bool = False, *, k: int = LAST_K,
                            cv_result: AurocEstimate | None = None, seed: int = 0) -> SavedProbe:
    """The last-``k``-layers probe of one selection of a run, fitted on all its graded rows."""
    graded, label, _ = graded_selection(run, regime, pooled)
    rows = graded["row"].to_numpy(int)
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    groups = graded["item_id"].astype(str).to_numpy() if pooled else None
    spec = dict(run.manifest.get("model") or run.manifest.get("model_spec") or {})
    return fit_saved_probe(np.asarray(run.hidden)[rows], y, k=k, model_spec=spec, run_path=str(run.path),
                           selection=label, cv_result=cv_result, groups=groups, seed=seed,
                           item_ids=graded["item_id"].tolist(), questions=graded["question"].tolist())


def default_probe_path(run: StudyRun, selection: str, k: int = LAST_K) -> Path:
    """``<run>/probes/<selection>_last<k>`` (the stem of the .json/.npz pair)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in selection)
    return Path(run.path) / "probes" / f"{safe}_last{k}"
