"""A run's gating signals: one regime's graded rows, their read-out entropy, labels and the split.

:func:`run_signals` turns a saved study run into a :class:`RunSignals` (one read-out per
regime: ``H_int`` without an answer prefix, ``H_slot`` after one), the input every fit,
comparison and Governance-page view works on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ic_core.errors import DataError
from ic_core.governance.policy import ENTROPY_NAMES, PrefixMode
from ic_core.runs.schema import graded_mask
from ic_core.stats.gating import split_items

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.runs.store import StudyRun


@dataclass(frozen=True, eq=False)
class RunSignals:
    """One regime of a study run, ready for gating: graded rows, entropy, labels and the split.

    Arrays have shape (n,), aligned with ``table`` (positional index 0..n-1).
    """

    run_path: str
    dataset: str
    regime: str
    kind: str
    table: pd.DataFrame
    """The graded rows of this regime (columns of ``StudyRun.table``), positional index 0..n-1."""
    correct: np.ndarray
    entropy_bits: np.ndarray
    """Entropy at each row's read-out, bits: H_slot when the row has an answer prefix, else H_int."""
    entropy_signal: Literal["h_int", "h_slot"]
    prefix_mode: PrefixMode
    answer_prefix: str | None
    train_idx: np.ndarray
    test_idx: np.ndarray
    holdout: float
    seed: int
    n_ungraded_excluded: int
    model: dict[str, Any]
    n_layers: int
    d_model: int
    readout: str = "auto"
    """Which read-out was asked for (:data:`READOUTS`)."""
    states_at_readout: bool = True
    """Whether the run's saved states were read where :attr:`entropy_bits` was (False for the
    last-token entropy of rows whose states were read after an answer prefix)."""
    item_prefix_bits: np.ndarray | None = None
    """(n,) H_slot after each item's own prefix, when the last-token read-out was taken from a per-item run."""

    @property
    def hidden_rows(self) -> np.ndarray:
        """(n,) indices into the run's ``hidden`` array."""
        return self.table["row"].to_numpy(np.int64)

    @property
    def entropy_name(self) -> str:
        """``H_int`` or ``H_slot``."""
        return ENTROPY_NAMES[self.entropy_signal]

    def indices(self, view: ItemView) -> np.ndarray:
        """Positional indices of the ``training``, ``held-out`` or ``all`` items."""
        if view == "training":
            return self.train_idx
        if view == "held-out":
            return self.test_idx
        if view == "all":
            return np.arange(self.correct.size)
        raise DataError(f"Unknown item view {view!r}; use training, held-out or all.")

    def items_table(self, idx: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """The rows ``idx`` for display: :data:`ITEM_COLUMNS` present in the run, then ``extra`` scores.

        Args:
            idx: Positional indices into :attr:`table`.
            extra: Column name → (n,) scores aligned with :attr:`table`, rounded to 3 decimals.

        """
        frame = self.table.iloc[idx][[c for c in ITEM_COLUMNS if c in self.table.columns]].copy()
        for name, values in (extra or {}).items():
            frame[name] = np.round(np.asarray(values)[idx], 3)
        return frame.reset_index(drop=True)

    def default_target_error(self) -> float:
        """A starting target: half the training items' error with no gate, at most 0.9 (2 decimals)."""
        base = float(np.mean(~self.correct[self.train_idx]))
        return round(min(0.9, base / 2), 2)

    def entropy_threshold_range(self) -> tuple[float, float, float]:
        """``(low, high, median)`` bits: a range of entropy thresholds covering every item, and its median.

        ``low`` is the smallest entropy rounded down to 0.1 bit (escalates everything), ``high``
        the largest rounded up plus 0.1 (approves everything).
        """
        h = self.entropy_bits
        low = math.floor(float(h.min()) * 10) / 10
        high = math.ceil(float(h.max()) * 10) / 10 + 0.1
        return low, high, float(np.median(h))


ItemView = Literal["training", "held-out", "all"]
READOUTS: tuple[str, ...] = ("auto", "last-token", "kind-prefix", "item-prefix")
"""``auto``: whatever the run read; ``last-token``: H_int at the last prompt token (agent-ready);
``kind-prefix``: H_slot after one generic prefix (agent-ready); ``item-prefix``: H_slot after each
item's own prefix (research only)."""
_READOUT_MODE = {"kind-prefix": "fixed", "item-prefix": "per_item"}
ITEM_COLUMNS = ("item_id", "question", "output_text", "expected", "correct")
"""Columns of :meth:`RunSignals.items_table` (those the run has)."""


def _prefix_mode(prefixes: Sequence[Any]) -> tuple[PrefixMode, str | None]:
    values = [p if isinstance(p, str) and p.strip() else None for p in prefixes]
    given = {p for p in values if p is not None}
    if not given:
        return "none", None
    if None in values:
        raise DataError(
            "This regime mixes rows read after an answer prefix (H_slot) with rows read without one (H_int); "
            "a gate needs one read-out. Run the study with or without prefixes for every item."
        )
    return ("fixed", given.pop()) if len(given) == 1 else ("per_item", None)


def recorded_last_token_bits(graded: pd.DataFrame) -> np.ndarray | None:
    """(n,) H_int the study recorded for every row (its extra plain read at the last prompt token), or None.

    None when a row lacks it (runs made before that read-out existed).
    """
    if "last_token_entropy_bits" not in graded.columns:
        return None
    bits = pd.to_numeric(graded["last_token_entropy_bits"], errors="coerce").to_numpy(np.float64)
    return bits if len(bits) and np.isfinite(bits).all() else None


def _last_token_bits(graded: pd.DataFrame) -> np.ndarray:
    """H_int of rows read after a prefix: the run's extra plain read at the last prompt token."""
    bits = recorded_last_token_bits(graded)
    if bits is None:
        raise DataError(
            "This run read its rows after answer prefixes and holds no last-token entropy for every row "
            "(runs made before that read-out existed); run the study again, or with --no-item-prefix."
        )
    return bits


def _apply_readout(readout: str, graded: pd.DataFrame, mode: PrefixMode, prefix: str | None,
                   entropy: np.ndarray) -> tuple[PrefixMode, str | None, np.ndarray, bool, np.ndarray | None]:
    """The prefix mode, prefix, entropy, states-match flag and per-item comparison bits for ``readout``."""
    if readout not in READOUTS:
        raise DataError(f"Unknown read-out {readout!r}; choose {', '.join(READOUTS)}.")
    if readout == "auto":
        return mode, prefix, entropy, True, None
    if readout == "last-token":
        if mode == "none":
            return mode, prefix, entropy, True, None
        return "none", None, _last_token_bits(graded), False, entropy if mode == "per_item" else None
    want = _READOUT_MODE[readout]
    if mode != want:
        have = {"none": "no prefix", "fixed": f"one prefix ({prefix!r})", "per_item": "per-item prefixes"}[mode]
        hint = ("a study with --answer-prefix 'The answer is'" if want == "fixed" else "a study with item prefixes")
        raise DataError(f"Read-out {readout!r} needs rows read after {'one generic prefix' if want == 'fixed' else 'per-item prefixes'}, "
                        f"but this run read them with {have}; run {hint}.")
    return mode, prefix, entropy, True, None


def run_signals(run: StudyRun, regime: str | None = None, holdout: float = 0.4, seed: int = 0,
                readout: str = "auto") -> RunSignals:
    """The graded rows of one regime of a run, their entropy and a stratified seeded split.

    Args:
        run: A loaded :class:`ic_core.runs.store.StudyRun`.
        regime: Which regime (default: the only one, else ``direct``).
        holdout: Share of graded items held out for evaluation.
        seed: Split seed.
        readout: :data:`READOUTS`; ``last-token`` on a run read after prefixes takes the run's
            last-token entropy (its saved states stay those after the prefix).

    Raises:
        DataError: unknown regime or read-out, mixed read-outs, one class or n too small.

    """
    table = run.table
    regimes = list(dict.fromkeys(table["regime"].tolist()))
    if regime is None:
        regime = regimes[0] if len(regimes) == 1 else "direct" if "direct" in regimes else None
        if regime is None:
            raise DataError(f"This run has regimes {', '.join(regimes)}: choose one (--regime).")
    if regime not in regimes:
        raise DataError(f"Regime {regime!r} is not in this run (it has {', '.join(regimes) or 'no rows'}).")
    sub = table[table["regime"] == regime]
    graded_rows = graded_mask(sub)
    graded = sub[graded_rows].reset_index(drop=True)
    if graded.empty:
        raise DataError(f"No graded rows in regime {regime!r}: the gate needs answers marked right or wrong.")
    entropy = graded["readout_entropy_bits"].to_numpy(np.float64)
    if not np.isfinite(entropy).all():
        raise DataError("Some rows have no finite entropy; the run folder is damaged.")
    mode, prefix = _prefix_mode(graded["answer_prefix"].tolist())
    mode, prefix, entropy, states_ok, item_bits = _apply_readout(readout, graded, mode, prefix, entropy)
    correct = np.array([bool(v) for v in graded["correct"]], dtype=bool)
    train_idx, test_idx = split_items(correct, holdout, seed)
    kinds = graded["kind"].value_counts()
    m = run.manifest
    return RunSignals(
        run_path=str(run.path), dataset=str((m.get("dataset") or {}).get("name", "")), regime=regime,
        kind=str(kinds.index[0]), table=graded, correct=correct, entropy_bits=entropy,
        entropy_signal="h_int" if mode == "none" else "h_slot", prefix_mode=mode, answer_prefix=prefix,
        train_idx=train_idx, test_idx=test_idx, holdout=float(holdout), seed=int(seed),
        n_ungraded_excluded=int((~graded_rows).sum()), model=dict(m.get("model") or {}),
        n_layers=int(m["n_layers"]), d_model=int(m["d_model"]), readout=readout, states_at_readout=states_ok,
        item_prefix_bits=item_bits,
    )


def resolve_entropy_signal(requested: str, signals: RunSignals) -> Literal["h_int", "h_slot"]:
    """``entropy`` → whichever the run read; ``h_int``/``h_slot`` must match the run.

    Raises:
        DataError: the run did not read the requested entropy.

    """
    if requested in ("entropy", signals.entropy_signal):
        return signals.entropy_signal
    other = ENTROPY_NAMES.get(requested, requested)
    raise DataError(
        f"This run read {signals.entropy_name} (prefix mode {signals.prefix_mode!r}), not {other}; "
        f"use signal 'entropy' or run a study {'without' if other == 'H_int' else 'with'} answer prefixes."
    )
