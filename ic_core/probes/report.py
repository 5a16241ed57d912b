"""One selection of a study run → probe AUROC by layer, the last-layers probe and its baselines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.errors import DataError
from ic_core.runs.schema import graded_mask
from ic_core.stats.geometry import constant_layers

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.runs.store import StudyRun
from ic_core.probes.baselines import baselines_for, shortcut_strata
from ic_core.probes.cv import (
    C_GRID,
    LAST_K,
    N_INNER,
    N_SHUFFLES_PER_LAYER,
    as_states,
    last_layer_indices,
    probe_by_layer,
    probe_last_layers,
)
from ic_core.probes.judged import ProbeCalibration, out_of_fold_calibration, selective_for
from ic_core.probes.signals import diff_means_auroc, scalar_probe_auroc
from ic_core.prompts import readout_label
from ic_core.stats.auroc import (
    N_BOOT,
    N_OUTER,
    N_SHUFFLES,
    AurocDifference,
    AurocEstimate,
    auroc_difference,
    round_or_none,
)
from ic_core.stats.selective import SelectiveSummary
from ic_core.stats.strata import StrataAuroc, strata_auroc

SHORTCUT_PREFIXES: tuple[str, ...] = ("question text only", "item ", "prompt length")
"""Baselines that are shortcuts (no model state): a signal must beat them to mean anything."""

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
    """``"H_int"``, ``"H_slot"`` or ``"mixed"``: what the table's ``readout_entropy_bits`` column holds here
    (:func:`ic_core.prompts.readout_label`)."""
    constant_layers: tuple[int, ...]
    by_layer: tuple[AurocEstimate, ...]
    """L + 1 results, index = ``hidden_states`` index (0 = embeddings)."""
    last_layers: AurocEstimate
    last_layer_indices: tuple[int, ...]
    baselines: tuple[AurocEstimate, ...]
    differences: tuple[AurocDifference, ...] = ()
    """The last-layers probe minus each baseline scored on the same rows (paired bootstrap CI)."""
    settings: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    signals: tuple[AurocEstimate, ...] = ()
    """Other candidate signals on the same rows: the difference-of-means direction on the last-k states and the
    scalar read-out probe (:mod:`ic_core.probes.signals`)."""
    strata: tuple[StrataAuroc, ...] = ()
    """Each signal's AUROC within the strata of each varying metadata shortcut (tags, kind, source)."""
    signal_differences: tuple[AurocDifference, ...] = ()
    """Each of :attr:`signals` minus each shortcut baseline (paired bootstrap CI)."""
    selective: dict[str, SelectiveSummary] = field(default_factory=dict)
    """AURC, E-AURC and AUGRC (bootstrap CIs) of every estimate above, keyed by its name: the same scores,
    items and bootstrap seed as its AUROC (:func:`ic_core.probes.judged.selective_for`)."""
    calibration: ProbeCalibration | None = None
    """The last-layers probe's out-of-fold P(correct): ECE (binning stated), Brier, reliability bins."""

    def estimates(self) -> tuple[AurocEstimate, ...]:
        """Every AUROC of the report: per layer, the last-layers probe, the baselines and the other signals."""
        return (*self.by_layer, self.last_layers, *self.baselines, *self.signals)

    def selective_of(self, name: str) -> SelectiveSummary | None:
        """The selective-prediction statistics of the estimate called ``name``."""
        return self.selective.get(name)

    def _with_selective(self, estimate: AurocEstimate, **extra: Any) -> dict[str, Any]:
        out = dict(**extra, **estimate.to_json())
        summary = self.selective.get(estimate.name)
        if summary is not None:
            out["selective"] = summary.to_json()
        return out

    def shortcuts(self) -> tuple[AurocEstimate, ...]:
        """The baselines that use no model state (question text, item metadata, prompt length)."""
        return tuple(b for b in self.baselines if b.name.startswith(SHORTCUT_PREFIXES))

    def comparison(self, signal_name: str, baseline_name: str) -> AurocDifference | None:
        """``signal − baseline`` for the last-layers probe or one of :attr:`signals`."""
        return next((d for d in (*self.differences, *self.signal_differences)
                     if d.a == signal_name and d.b == baseline_name), None)

    @property
    def accuracy(self) -> float | None:
        """Share of graded rows answered correctly."""
        return self.n_pos / self.n if self.n else None

    def baseline(self, key: str) -> AurocEstimate | None:
        """The baseline whose name starts with ``key`` (e.g. ``"−H"``, ``"prompt length"``)."""
        return next((b for b in self.baselines if b.name.startswith(key)), None)

    def difference(self, baseline_name: str) -> AurocDifference | None:
        """The probe-minus-baseline comparison for one baseline, if both have an AUROC."""
        return next((d for d in self.differences if d.b == baseline_name), None)

    def best_layer(self) -> AurocEstimate | None:
        """Layer with the highest pooled AUROC (descriptive: picking it on these folds is optimistic)."""
        ok = [r for r in self.by_layer if r.ok]
        return max(ok, key=lambda r: r.auroc_pooled) if ok else None

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object (no per-item scores)."""
        best = self.best_layer()
        return {
            "run": self.run_path, "selection": self.selection, "n_rows": self.n_rows,
            "n_ungraded_excluded": self.n_ungraded, "n": self.n, "n_correct": self.n_pos,
            "accuracy": round_or_none(self.accuracy), "signal": self.signal_name,
            "constant_layers": list(self.constant_layers),
            "by_layer": [self._with_selective(r, layer=i) for i, r in enumerate(self.by_layer)],
            "best_layer": None if best is None else {
                "layer": self.by_layer.index(best), "auroc_pooled": round_or_none(best.auroc_pooled),
                "note": "chosen after looking at all layers on the same folds: optimistic; the last-layers probe is the fixed choice",
            },
            "last_layers": self._with_selective(self.last_layers, layers=list(self.last_layer_indices)),
            "baselines": [self._with_selective(b) for b in self.baselines],
            "probe_minus_baseline": [d.to_json() for d in self.differences],
            "other_signals": [self._with_selective(r) for r in self.signals],
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "selective_note": ("AURC, E-AURC, AUGRC: lower is better; same scores, items and bootstrap seed as "
                               "the AUROC beside them (E-AURC 0 = a perfect ranking)"),
            "signal_minus_shortcut": [d.to_json() for d in self.signal_differences],
            "within_strata": [r.to_json() for r in self.strata],
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
    graded = sub[graded_mask(sub)]
    return graded, label, len(sub)


def recoverability(
    run: StudyRun, regime: str | None = None, pooled: bool = False, *, k: int = LAST_K, n_boot: int = N_BOOT,
    n_shuffles: int = N_SHUFFLES, n_shuffles_per_layer: int = N_SHUFFLES_PER_LAYER, seed: int = 0,
    pca_components: int | None = None, progress: Callable[[int, int, str], None] | None = None,
) -> RecoverabilityReport:
    """Probe AUROC by layer, the last-``k``-layers probe and all baselines on one selection of a run.

    Args:
        run: a loaded study run (``ic_core.runs.store.load_run``).
        regime: one regime; ``None`` means the only regime of a single-regime run.
        pooled: all regimes together (each item's rows kept in one fold).
        progress: optional callback (done, total, label).

    """
    t0 = time.perf_counter()
    graded, label, n_rows = graded_selection(run, regime, pooled)
    rows = graded["row"].to_numpy(int)
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    groups = graded["item_id"].astype(str).to_numpy() if pooled else None
    hidden = as_states(np.asarray(run.hidden)[rows])
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
    signals = other_signals(graded, hidden[:, list(last_idx), :].reshape(len(rows), -1), lens, y,
                            n_shuffles=n_shuffles, **common) if len(rows) else ()
    shortcuts = [b for b in baselines if b.name.startswith(SHORTCUT_PREFIXES)]
    signal_diffs = tuple(d for d in (auroc_difference(s, b, n_boot=n_boot, seed=seed, groups=groups)
                                     for s in signals for b in shortcuts) if d is not None)
    ent = next((b for b in baselines if b.name.startswith("−")), None)
    strata = within_strata(graded, [last, *signals, *([ent] if ent else [])], n_boot=n_boot, seed=seed, groups=groups)
    selective = {e.name: selective_for(e, n_boot=n_boot, seed=seed, groups=groups)
                 for e in (*by_layer, last, *baselines, *signals)}
    calibration = out_of_fold_calibration(hidden[:, list(last_idx), :].reshape(len(rows), -1), last, seed=seed,
                                          groups=groups, pca_components=pca_components)
    tick(total, total, "baselines")
    settings = {
        "C_grid": list(C_GRID), "outer_folds": N_OUTER, "inner_folds": N_INNER, "n_bootstrap": n_boot,
        "shuffles_per_layer": n_shuffles_per_layer, "shuffles": n_shuffles, "seed": seed,
        "pca_components": pca_components, "grouped_by_item": bool(pooled),
        "score_scale": "each outer fold's test scores standardised by its training fold's decision values",
    }
    return RecoverabilityReport(
        run_path=str(run.path), selection=label, n_rows=n_rows, n_ungraded=n_rows - len(rows), n=int(y.size),
        n_pos=int(y.sum()), signal_name=readout_label(graded["signal"].tolist()),
        constant_layers=const, by_layer=tuple(by_layer), last_layers=last, last_layer_indices=last_idx,
        baselines=tuple(baselines), differences=differences, settings=settings, elapsed_s=time.perf_counter() - t0,
        signals=signals, strata=strata, signal_differences=signal_diffs, selective=selective, calibration=calibration,
    )


def other_signals(graded: Any, last_states: np.ndarray, lens: np.ndarray, y: np.ndarray, **kw: Any
                  ) -> tuple[AurocEstimate, ...]:
    """The difference-of-means direction on the last-k states and the scalar read-out probe, nested CV each.

    Args:
        graded: The graded rows. last_states: (n, k × d) concatenated last-k states of those rows.
        lens: (n, L) lens entropies. y: (n,) 0/1 correctness.

    """
    return (diff_means_auroc(last_states, y, **kw), scalar_probe_auroc(graded, lens, y, **kw))


def within_strata(graded: Any, estimates: list[AurocEstimate], *, n_boot: int, seed: int, groups: Any
                  ) -> tuple[StrataAuroc, ...]:
    """Within-strata AUROC of every estimate with scores, for every varying metadata shortcut."""
    out = []
    for field_name, strata in shortcut_strata(graded).items():
        for est in estimates:
            if est.ok and est.scores is not None and est.labels is not None and est.scores.size == strata.size:
                out.append(strata_auroc(est.scores, est.labels, strata, signal=est.name, shortcut=field_name,
                                        n_boot=n_boot, seed=seed, groups=groups))
    return tuple(out)


def probe_column(run: StudyRun, *, k: int = LAST_K, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES,
                 seed: int = 0) -> dict[str, AurocEstimate]:
    """Last-``k``-layers probe per regime, for the paper-form regime comparison table."""
    out = {}
    for regime in dict.fromkeys(run.table["regime"].tolist()):
        graded, _, _ = graded_selection(run, regime)
        rows = graded["row"].to_numpy(int)
        y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
        out[regime] = probe_last_layers(np.asarray(run.hidden)[rows], y, k=k, n_boot=n_boot,
                                        n_shuffles=n_shuffles, seed=seed)
    return out


def probe_column_text(results: dict[str, AurocEstimate], k: int = LAST_K) -> dict[str, dict[str, str]]:
    """``{column: {regime: "0.78 [0.72, 0.83]"}}`` for ``ic_core.study.compare.regime_comparison(extra_columns=...)``.

    A regime without an AUROC shows its reason (e.g. ``"n too small"``), never a number.
    """
    return {f"Probe AUROC, last {k} layers [95 % CI]": {regime: r.ci_text() for regime, r in results.items()}}
