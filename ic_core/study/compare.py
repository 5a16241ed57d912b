"""Comparisons on a loaded study: per-regime summaries and paired tests, dim_eff, its PCA, placing a new state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from ic_core.errors import DataError
from ic_core.prompts import READOUT_NAMES, readout_label
from ic_core.runs.schema import CONTROL_REGIME, graded_correct
from ic_core.runs.store import StudyRun
from ic_core.stats.geometry import DimEff, Placement, constant_layers, dim_eff, pca, place
from ic_core.stats.proportions import wilson_interval

# ---------------------------------------------------------------- summaries and comparisons


def compliance_counts(frame: pd.DataFrame) -> tuple[int, int]:
    """``(n_complied, n_checked)`` over the rows of a control regime that carry a compliance verdict."""
    if "complied" not in frame:
        return 0, 0
    checked = [bool(v) for v in frame["complied"] if isinstance(v, (bool, np.bool_))]
    return sum(checked), len(checked)


def result_text(regime: str, frame: pd.DataFrame) -> str:
    """What a regime's rows show: ``accuracy 12.0 % (6 of 50)``, or for the control ``control: 65 % complied``."""
    if regime == CONTROL_REGIME:
        ok, n = compliance_counts(frame)
        return f"control: {100 * ok / n:.0f} % complied ({ok} of {n})" if n else "control: no output to check"
    graded = graded_correct(frame)
    if not len(graded):
        return "n/a (not graded)"
    return f"accuracy {100 * graded.mean():.1f} % ({int(graded.sum())} of {len(graded)})"


def summarize(run: StudyRun) -> pd.DataFrame:
    """Per regime: n, n_graded, accuracy, compliance, mean/median H_int, mean top-100 H_int, mean token entropy.

    Accuracy is NaN when no row of the regime was graded; the control regime (babble) is never
    graded: its ``result`` reads ``control: N % complied`` and ``compliance_rate`` holds N / 100.
    """
    out = []
    for regime in run.regimes:
        frame = run.table[run.table["regime"] == regime]
        graded = graded_correct(frame)
        ok, checked = compliance_counts(frame) if regime == CONTROL_REGIME else (0, 0)
        out.append({
            "regime": regime,
            "role": "control" if regime == CONTROL_REGIME else "answer",
            "result": result_text(regime, frame),
            "n": len(frame),
            "n_graded": len(graded),
            "accuracy": float(graded.mean()) if len(graded) else math.nan,
            "n_complied": ok,
            "compliance_rate": ok / checked if checked else math.nan,
            "mean_readout_entropy_bits": float(frame["readout_entropy_bits"].mean()) if len(frame) else math.nan,
            "median_readout_entropy_bits": float(frame["readout_entropy_bits"].median()) if len(frame) else math.nan,
            "mean_readout_entropy_top100_bits": float(frame["readout_entropy_top100_bits"].mean()) if len(frame) else math.nan,
            "mean_token_entropy_bits": float(frame["mean_token_entropy_bits"].mean()) if frame["mean_token_entropy_bits"].notna().any() else math.nan,
        })
    return pd.DataFrame(out, columns=["regime", "role", "result", "n", "n_graded", "accuracy", "n_complied", "compliance_rate",
                                      "mean_readout_entropy_bits", "median_readout_entropy_bits",
                                      "mean_readout_entropy_top100_bits", "mean_token_entropy_bits"])


MIN_PAIRS = 6
"""Fewer paired items than this: the Wilcoxon test is not reported (its smallest p is ≥ 0.03)."""


@dataclass(frozen=True, eq=False)
class RegimeComparison:
    """The paper-form comparison of regimes on one study."""

    per_regime: pd.DataFrame
    """One row per regime: n, n_graded, accuracy, accuracy_ci_low/high (Wilson 95 %), mean_readout_entropy_bits,
    mean_readout_entropy_top100_bits, dim_eff_weighted_pr, dim_eff_rank_cap, plus any extra columns."""
    pairs: pd.DataFrame
    """One row per pair of regimes: regime_a, regime_b, position (where both entropies were read, or
    ``not comparable: different read-out positions``), n_pairs, mean_diff_bits (b − a), median_diff_bits,
    wilcoxon_statistic, p_value (NaN with a ``note`` when not computable)."""

    def paper_table(self) -> pd.DataFrame:
        """Formatted strings, one column per regime (accuracy [CI], H_int, dim_eff, extras)."""
        rows: dict[str, dict[str, str]] = {}
        base = {"regime", "signal", "n", "n_graded", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_readout_entropy_bits",
                "mean_readout_entropy_top100_bits", "dim_eff_weighted_pr", "dim_eff_rank_cap", "role", "result",
                "n_complied", "compliance_rate", "mean_last_token_entropy_bits"}
        for _, r in self.per_regime.iterrows():
            if r["role"] == "control":
                acc = str(r["result"])
            elif math.isnan(r["accuracy"]):
                acc = "n/a (not graded)"
            else:
                acc = f"{100 * r['accuracy']:.1f} % [{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]"
            col = {
                "n": str(int(r["n"])),
                "Accuracy [95 % CI]": acc,
                "Read-out": READOUT_NAMES[r["signal"]],
                "Mean entropy at the read-out (bits)": _fmt(r["mean_readout_entropy_bits"], 2),
                "Mean entropy at the last prompt token (bits)": _fmt(r["mean_last_token_entropy_bits"], 2),
                "Same, top-100 variant (bits)": _fmt(r["mean_readout_entropy_top100_bits"], 2),
                "dim_eff (weighted PR)": _fmt(r["dim_eff_weighted_pr"], 1)
                + ("" if math.isnan(r["dim_eff_weighted_pr"]) else f" (cap {int(r['dim_eff_rank_cap'])})"),
            }
            for c in self.per_regime.columns:
                if c not in base:
                    col[c] = "n/a" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c])) else str(r[c])
            rows[str(r["regime"])] = col
        return pd.DataFrame(rows)


def _mean(values: pd.Series | None) -> float:
    if values is None:
        return math.nan
    values = pd.to_numeric(values, errors="coerce")
    return float(values.mean()) if values.notna().any() else math.nan


NOT_COMPARABLE = "not comparable: different read-out positions"
"""The ``position`` of a pair of regimes read at different positions, with no common read to fall back on."""
POSITION_TEXT = {"H_int": "both at the last prompt token", "H_slot": "both after the answer prefix"}


def paired_entropies(table: pd.DataFrame, a: str, b: str) -> tuple[str, pd.DataFrame | None]:
    """The entropies of regimes ``a`` and ``b`` read at one position, paired by item, and that position's text.

    When every row of both regimes has the same read-out (H_int or H_slot) the read-out entropies
    are paired. Otherwise (e.g. direct read after a prefix, CoT at the last prompt token) both
    regimes' ``last_token_entropy_bits`` are paired, on the items where both have it. A run that
    did not record that read (older folders) gives ``(NOT_COMPARABLE, None)``: no number from
    mixed positions.
    """
    rows = table[table["regime"].isin([a, b])]
    signals = set(rows["signal"].dropna())
    if len(signals) == 1:
        column, position = "readout_entropy_bits", POSITION_TEXT[signals.pop()]
    elif "last_token_entropy_bits" in rows and rows["last_token_entropy_bits"].notna().any():
        column, position = "last_token_entropy_bits", "both at the last prompt token (direct read again without its prefix)"
    else:
        return NOT_COMPARABLE, None
    wide = rows.pivot_table(index="item_id", columns="regime", values=column, aggfunc="first")
    if a not in wide or b not in wide:
        return position, pd.DataFrame(columns=[a, b])
    return position, wide[[a, b]].dropna()


def _pair(table: pd.DataFrame, a: str, b: str) -> dict[str, Any]:
    """One row of :attr:`RegimeComparison.pairs`: a paired Wilcoxon test of the entropies at one position."""
    from scipy.stats import wilcoxon

    position, both = paired_entropies(table, a, b)
    entry: dict[str, Any] = {
        "regime_a": a, "regime_b": b, "position": position, "n_pairs": 0, "mean_diff_bits": math.nan,
        "median_diff_bits": math.nan, "wilcoxon_statistic": math.nan, "p_value": math.nan, "note": "",
    }
    if both is None:
        entry["note"] = "the run has no read of both regimes at one position (made before last-token reads were recorded)"
        return entry
    diff = (both[b] - both[a]).to_numpy(dtype=float)
    entry.update(n_pairs=len(diff), mean_diff_bits=float(diff.mean()) if len(diff) else math.nan,
                 median_diff_bits=float(np.median(diff)) if len(diff) else math.nan)
    if len(diff) < MIN_PAIRS:
        entry["note"] = f"n too small ({len(diff)} paired items; need ≥ {MIN_PAIRS})"
    elif np.all(diff == 0):
        entry["note"] = "all differences are zero"
    else:
        res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        entry.update(wilcoxon_statistic=float(res.statistic), p_value=float(res.pvalue))
    return entry


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def regime_comparison(
    run: StudyRun, extra_columns: Mapping[str, Mapping[str, Any]] | None = None,
    dim_effs: Mapping[str, DimEff] | None = None,
) -> RegimeComparison:
    """Accuracy (compliance for the control), entropies and dim_eff per regime, and paired Wilcoxon tests between regimes.

    Each pair's entropies are compared at one read-out position only (:func:`paired_entropies`);
    the ``position`` column says which, or that the pair is not comparable.

    Args:
        run: A loaded study.
        extra_columns: ``{column: {regime: value}}`` merged into ``per_regime`` (e.g. the
            probes page's ``{"Probe AUROC [95 % CI]": {"direct": "0.78 [0.72, 0.83]"}}``).
        dim_effs: :func:`dim_eff_by_regime` of this run, if already computed.

    """
    dims = dim_effs if dim_effs is not None else dim_eff_by_regime(run)
    per = []
    for regime in run.regimes:
        frame = run.table[run.table["regime"] == regime]
        graded = graded_correct(frame)
        ci = wilson_interval(int(graded.sum()), len(graded))
        d = dims.get(regime)
        pr = d.weighted_participation_ratio if d is not None else None
        cap = d.rank_cap if d is not None else max(0, len(frame) - 1)
        ok, checked = compliance_counts(frame) if regime == CONTROL_REGIME else (0, 0)
        row: dict[str, Any] = {
            "regime": regime, "signal": readout_label(frame["signal"].dropna()),
            "role": "control" if regime == CONTROL_REGIME else "answer", "result": result_text(regime, frame),
            "n": len(frame), "n_graded": len(graded),
            "accuracy": float(graded.mean()) if len(graded) else math.nan,
            "n_complied": ok, "compliance_rate": ok / checked if checked else math.nan,
            "mean_last_token_entropy_bits": _mean(frame.get("last_token_entropy_bits")),
            "accuracy_ci_low": ci[0] if ci else math.nan, "accuracy_ci_high": ci[1] if ci else math.nan,
            "mean_readout_entropy_bits": float(frame["readout_entropy_bits"].mean()) if len(frame) else math.nan,
            "mean_readout_entropy_top100_bits": float(frame["readout_entropy_top100_bits"].mean()) if len(frame) else math.nan,
            "dim_eff_weighted_pr": math.nan if pr is None else pr, "dim_eff_rank_cap": cap,
        }
        for column, values in (extra_columns or {}).items():
            row[column] = values.get(regime)
        per.append(row)
    pairs = [_pair(run.table, a, b) for i, a in enumerate(run.regimes) for b in run.regimes[i + 1:]]
    pair_cols = ["regime_a", "regime_b", "position", "n_pairs", "mean_diff_bits", "median_diff_bits", "wilcoxon_statistic",
                 "p_value", "note"]
    return RegimeComparison(pd.DataFrame(per), pd.DataFrame(pairs, columns=pair_cols))


# ---------------------------------------------------------------- placing a new prompt on the study


@dataclass(frozen=True, eq=False)
class StudyPlacement(Placement):
    """A :class:`ic_core.stats.geometry.Placement` on a study: its layer and the nearest row in the table."""

    layer: int
    nearest_row: int
    """Table row of the nearest study item (``rows[nearest_index]``)."""


def _layer_states(run: StudyRun, layer: int, idx: np.ndarray) -> np.ndarray:
    """(n, d) float32 states of ``layer`` for table rows ``idx``: the one input of every PCA of the study."""
    return run.hidden[idx, layer, :].astype(np.float32)


def _rows(run: StudyRun, rows: Sequence[int] | np.ndarray | None) -> np.ndarray:
    return run.table["row"].to_numpy() if rows is None else np.asarray(rows, dtype=np.int64)


def place_state(run: StudyRun, hidden: np.ndarray, layer: int, rows: Sequence[int] | None = None) -> StudyPlacement:
    """Project one (L + 1, d) state onto the study's PCA at ``layer`` and say how far it lies.

    The state is rounded to float16 as the study's states are, and placed with
    :func:`ic_core.stats.geometry.place` on the same rows :func:`pca_of_layer` uses, so
    ``point`` is on the axes (signs included) of ``pca_of_layer(run, layer, rows).scores``.

    Raises:
        DataError: the state's shape does not match the study's model, fewer than 3 rows, or the layer is constant.

    """
    hidden = np.asarray(hidden)
    if hidden.shape != run.hidden.shape[1:]:
        raise DataError(
            f"This state has shape {hidden.shape} but the study's model gives {run.hidden.shape[1:]}: "
            "analyse the prompt with the model the study used."
        )
    idx = _rows(run, rows)
    if len(idx) < 3:
        raise DataError(f"n too small: placing a prompt needs at least 3 study rows (have {len(idx)}).")
    try:
        geo = place(_layer_states(run, layer, idx), hidden[layer].astype(np.float16).astype(np.float32))
    except DataError:
        raise DataError(
            f"Layer {layer} is constant across the study's items: there is no spread to place a prompt in."
        ) from None
    values = {f.name: getattr(geo, f.name) for f in fields(geo)}
    return StudyPlacement(**values, layer=layer, nearest_row=int(idx[geo.nearest_index]))


# ---------------------------------------------------------------- per-layer views of the states


def dim_eff_by_regime(run: StudyRun) -> dict[str, DimEff]:
    """``{regime: DimEff}`` over each regime's rows (regimes with fewer than 2 rows are left out)."""
    out = {}
    for regime in run.regimes:
        rows = run.table.loc[run.table["regime"] == regime, "row"].to_numpy()
        if len(rows) >= 2:
            out[regime] = dim_eff(run.hidden[rows].astype(np.float32))
    return out


def dim_eff_table(dims: Mapping[str, DimEff]) -> pd.DataFrame:
    """One row per regime of :func:`dim_eff_by_regime`: ``regime``, ``weighted PR``, ``rank cap``."""
    rows = [{"regime": r, "weighted PR": d.weighted_participation_ratio, "rank cap": d.rank_cap} for r, d in dims.items()]
    return pd.DataFrame(rows, columns=["regime", "weighted PR", "rank cap"])


def default_pca_layer(n_layers: int) -> int:
    """A late-middle layer (about two thirds of the depth), where states separate items best."""
    return max(1, round(2 * n_layers / 3))


@dataclass(frozen=True)
class StudyPCA:
    """First two principal components of one layer's states over some study rows."""

    layer: int
    rows: np.ndarray
    """(n,) table rows, in the order of ``scores``."""
    scores: np.ndarray
    """(n, 2) PC1/PC2 scores."""
    explained_ratio: np.ndarray
    """(2,) variance fraction of PC1 and PC2."""


def pca_of_layer(run: StudyRun, layer: int, rows: Sequence[int] | np.ndarray | None = None) -> StudyPCA:
    """PCA of the states at ``layer`` (all rows by default).

    Raises:
        DataError: fewer than 3 rows, a layer out of range, or a constant layer (PCA undefined).

    """
    if not 0 <= layer <= run.n_layers:
        raise DataError(f"Layer {layer} is out of range: the model has layers 0..{run.n_layers}.")
    idx = _rows(run, rows)
    if len(idx) < 3:
        raise DataError(f"n too small: a PCA needs at least 3 rows (have {len(idx)}).")
    x = _layer_states(run, layer, idx)
    if constant_layers(x[:, None, :]):
        raise DataError(
            f"Layer {layer} is identical for every item (e.g. the embedding of the same last token): "
            "its PCA is undefined. Pick a later layer."
        )
    scores, _, _, ratio = pca(x, 2)
    two = np.zeros((len(idx), 2))
    two[:, : scores.shape[1]] = scores
    return StudyPCA(layer, idx, two, np.pad(ratio, (0, 2 - len(ratio))))
