"""Single-score baselines and shortcut checks scored on the same items, folds and permutations as the probes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.probes.cv import probe_auroc, text_probe_auroc
from ic_core.prompts import readout_label
from ic_core.stats.auroc import (
    N_BOOT,
    N_OUTER,
    N_SHUFFLES,
    REASON_MISSING,
    AurocEstimate,
    auroc,
    label_permutations,
    label_reason,
    make_folds,
    missing_estimate,
    summarise_estimate,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def score_auroc(
    score: Any, y: Any, *, name: str, description: str, groups: Any = None, n_folds: int = N_OUTER,
    n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> AurocEstimate:
    """A fixed score (larger = more likely correct) on the same items, folds and permutations as the probes.

    Rows where the score is NaN are left out and counted in the note.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(y).astype(int)
    keep = np.isfinite(s)
    note = "" if keep.all() else f"{int((~keep).sum())} rows without this score left out"
    if not keep.any():
        return missing_estimate(name, REASON_MISSING, y.size, int(y.sum()), kind="score", description=description)
    s, y = s[keep], y[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    reason = label_reason(y, n_folds)
    if reason:
        return missing_estimate(name, reason, y.size, int(y.sum()), kind="score", description=description)
    folds = make_folds(y, n_folds=n_folds, seed=seed, groups=g)
    fold_aurocs = [auroc(s[te], y[te]) for _, te in folds]
    shuffled = [auroc(s, yp) for yp in label_permutations(y, n_shuffles, seed)]
    return summarise_estimate(name, s, y, fold_aurocs, shuffled, n_boot=n_boot, seed=seed, groups=g, kind="score",
                      description=description, note=note)


def signed_score_auroc(
    value: Any, y: Any, *, name: str, description: str, groups: Any = None, n_folds: int = N_OUTER,
    n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES, seed: int = 0,
) -> AurocEstimate:
    """A raw quantity (e.g. prompt length) whose direction is chosen on each **training** fold.

    Each outer fold: sign = +1 if the value's training-fold AUROC ≥ 0.5 else −1; the test
    fold's signed values are standardised by the training fold's mean/std and pooled.
    """
    v = np.asarray(value, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if not np.isfinite(v).all():
        return missing_estimate(name, REASON_MISSING, y.size, int(y.sum()), kind="score", description=description)
    reason = label_reason(y, n_folds)
    if reason:
        return missing_estimate(name, reason, y.size, int(y.sum()), kind="score", description=description)

    def run(labels: np.ndarray) -> tuple[np.ndarray, list[float | None], list[int]]:
        scores = np.zeros(labels.size)
        fold_aurocs, signs = [], []
        for tr, te in make_folds(labels, n_folds=n_folds, seed=seed, groups=groups):
            a_tr = auroc(v[tr], labels[tr])
            sign = 1 if a_tr is None or a_tr >= 0.5 else -1
            sd = float(v[tr].std())
            scores[te] = sign * (v[te] - v[tr].mean()) / (sd if sd > 0 else 1.0)
            fold_aurocs.append(auroc(sign * v[te], labels[te]))
            signs.append(sign)
        return scores, fold_aurocs, signs

    scores, fold_aurocs, signs = run(y)
    shuffled = []
    for yp in label_permutations(y, n_shuffles, seed):
        shuffled.append(auroc(run(yp)[0], yp))
    n_up = sum(1 for s in signs if s > 0)
    note = (f"direction chosen on training folds: larger value → predicted correct in {n_up} of {len(signs)} folds, "
            f"smaller in {len(signs) - n_up}")
    return summarise_estimate(name, scores, y, fold_aurocs, shuffled, n_boot=n_boot, seed=seed, groups=groups, kind="score",
                      description=description, note=note)


METADATA_FIELDS: tuple[str, ...] = ("tags", "kind", "source")
"""Item-metadata fields of a run table used as shortcuts when they vary across the rows."""
NO_TAG = "(no tag)"


def _field_values(graded: pd.DataFrame, field: str) -> list[tuple[str, ...]] | None:
    """Each row's values of one metadata field (a tuple: tags are several), or None if absent/constant."""
    if field not in graded:
        return None
    out = []
    for v in graded[field].tolist():
        if isinstance(v, list | tuple | set | np.ndarray):
            out.append(tuple(sorted(str(t) for t in v)))
        else:
            out.append(() if v is None or (isinstance(v, float) and np.isnan(v)) else (str(v),))
    return out if len(set(out)) > 1 else None


def shortcut_strata(graded: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{field: (n,) stratum label}`` for each metadata field that varies (tags: the sorted tag set)."""
    out = {}
    for field in METADATA_FIELDS:
        values = _field_values(graded, field)
        if values is not None:
            out[field] = np.asarray(["+".join(v) if v else NO_TAG for v in values], dtype=object)
    return out


def one_hot(values: list[tuple[str, ...]]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, k) 0/1 indicator matrix of the values each row carries (several per row for tags) and its columns."""
    levels = tuple(sorted({t for v in values for t in v}))
    index = {t: j for j, t in enumerate(levels)}
    X = np.zeros((len(values), len(levels)))
    for i, v in enumerate(values):
        for t in v:
            X[i, index[t]] = 1.0
    return X, levels


def metadata_baselines(graded: pd.DataFrame, y: np.ndarray, **kw: Any) -> list[AurocEstimate]:
    """One nested-CV probe (C in inner folds) per varying metadata field, on its one-hot encoding.

    The encoding's columns are the field's values over all rows (no labels involved); the
    logistic regression is fitted inside the folds like every other baseline.
    """
    out = []
    for field in METADATA_FIELDS:
        values = _field_values(graded, field)
        if values is None:
            continue
        X, levels = one_hot(values)
        shown = ", ".join(levels[:6]) + (" …" if len(levels) > 6 else "")
        out.append(probe_auroc(X, y, name=f"item {field} (one-hot)",
                               description=f"shortcut: L2 logistic regression on the item's {field} "
                                           f"({len(levels)} values: {shown}), no model state", **kw))
    return out


def _entropy_name(signal: str) -> tuple[str, str]:
    if signal == "H_slot":
        return "−H_slot", "minus the next-token entropy (bits) read after the forced answer prefix"
    if signal == "H_int":
        return "−H_int", "minus the next-token entropy (bits) at the last prompt token"
    return ("−entropy at read-out (mixed H_int/H_slot)",
            "minus the next-token entropy (bits) at each row's read-out; some rows after an answer prefix")


def baselines_for(graded: pd.DataFrame, lens_entropy_bits: np.ndarray, *, groups: Any = None, n_boot: int = N_BOOT,
                  n_shuffles: int = N_SHUFFLES, seed: int = 0, n_folds: int = N_OUTER) -> list[AurocEstimate]:
    """Baselines on the same rows as the probes.

    Entropy at the read-out, top-1 probability, lens-entropy probe, post-generation mean token
    entropy, question-only character n-gram probe, item-metadata probes (tags, kind, source when
    they vary) and prompt length.

    Args:
        graded: table rows (pandas DataFrame) with a boolean ``correct``.
        lens_entropy_bits: (n, L) lens entropy per layer of the same rows.

    """
    y = np.asarray([bool(v) for v in graded["correct"]], dtype=int)
    kw = dict(groups=groups, n_boot=n_boot, n_shuffles=n_shuffles, seed=seed, n_folds=n_folds)
    signal = readout_label(graded["signal"].tolist()) if "signal" in graded else "H_int"
    ename, edesc = _entropy_name(signal)
    out = [score_auroc(-graded["readout_entropy_bits"].to_numpy(float), y, name=ename, description=edesc, **kw)]
    if "readout_entropy_top100_bits" in graded:
        out.append(score_auroc(-graded["readout_entropy_top100_bits"].to_numpy(float), y, name=f"{ename} (top-100)",
                               description=edesc.replace("entropy", "entropy over the top-100 logits", 1), **kw))
    out.append(score_auroc(graded["top1_prob"].to_numpy(float), y, name="top-1 probability",
                           description="probability of the most likely next token at the read-out", **kw))
    out.append(probe_auroc(lens_entropy_bits, y, name="lens-entropy profile probe",
                           description=f"linear probe on the {lens_entropy_bits.shape[1]} logit-lens entropies (bits)",
                           **kw))
    if "mean_token_entropy_bits" in graded:
        out.append(score_auroc(-graded["mean_token_entropy_bits"].to_numpy(float), y,
                               name="−mean token entropy (post-generation)",
                               description="minus the mean entropy (bits) of the generated tokens: needs the answer, "
                                           "so it is not a pre-generation signal", **kw))
    out.append(text_probe_auroc(graded["question"].tolist(), y, **kw))
    out.extend(metadata_baselines(graded, y, **kw))
    out.append(signed_score_auroc(graded["n_prompt_tokens"].to_numpy(float), y, name="prompt length",
                                  description="number of prompt tokens; direction chosen on training folds", **kw))
    return out
