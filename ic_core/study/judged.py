"""The fixed scores of a study run judged per answer regime: AUROC beside AURC, E-AURC and AUGRC.

Nothing is fitted: each score (minus the read-out entropy, the top-1 probability, minus the
last-token H_int when the read-out is H_slot, minus the mean token entropy after generation) is
judged as it is on every graded row of the regime, with a bootstrap 95 % CI, a label-shuffle
control, and the selective-prediction statistics of the same scores and resamples. The control
regime (babble) is never graded, so it has no row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ic_core.probes.judged import selective_cells, selective_for
from ic_core.prompts import readout_label
from ic_core.runs.schema import graded_mask
from ic_core.stats.auroc import (
    N_BOOT,
    N_SHUFFLES_HELD_OUT,
    REASON_MISSING,
    AurocEstimate,
    held_out_auroc,
    missing_estimate,
)
from ic_core.stats.selective import SelectiveSummary

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.runs.store import StudyRun


@dataclass(frozen=True, eq=False)
class JudgedSignal:
    """One fixed score of one regime: its AUROC estimate and its selective-prediction statistics."""

    regime: str
    auroc: AurocEstimate
    selective: SelectiveSummary

    def row(self) -> dict[str, str]:
        """One display row: AUROC [CI], the shuffle control, AURC / E-AURC / AUGRC [CI], class counts."""
        a = self.auroc
        return {"regime": self.regime, "signal": a.name, "AUROC [95 % CI]": a.ci_text(),
                "shuffled labels (mean)": "n/a" if a.shuffle_mean is None else f"{a.shuffle_mean:.2f}",
                **selective_cells(self.selective), "right / wrong": a.counts_text()}


def _scores(frame: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """``(name, description, larger = more likely correct)`` of each fixed score the rows carry."""
    signal = readout_label(frame["signal"].tolist())
    name = {"H_slot": "−H_slot", "H_int": "−H_int"}.get(signal, "−read-out entropy (mixed H_int/H_slot)")
    out = [(name, "minus the next-token entropy at the read-out (bits)", -frame["readout_entropy_bits"].to_numpy(float)),
           ("top-1 probability", "probability of the most likely next token at the read-out",
            frame["top1_prob"].to_numpy(float))]
    if signal != "H_int" and "last_token_entropy_bits" in frame:
        last = pd.to_numeric(frame["last_token_entropy_bits"], errors="coerce").to_numpy(float)
        out.append(("−H_int (last prompt token)", "minus the entropy at the last prompt token, no answer prefix", -last))
    post = pd.to_numeric(frame["mean_token_entropy_bits"], errors="coerce").to_numpy(float)
    out.append(("−mean token entropy (post-generation)", "minus the mean entropy of the generated tokens", -post))
    return out


def judged_signals(run: StudyRun, *, n_boot: int = N_BOOT, n_shuffles: int = N_SHUFFLES_HELD_OUT,
                   seed: int = 0) -> list[JudgedSignal]:
    """Every fixed score of every answer regime of ``run``, judged on that regime's graded rows.

    A score the run did not record (e.g. no generation) says so; too few or one-class labels give
    the reason (:func:`ic_core.stats.auroc.label_reason`) in place of every number.
    """
    table = run.table
    out = []
    for regime in dict.fromkeys(table["regime"].tolist()):
        frame = table[(table["regime"] == regime).to_numpy() & graded_mask(table)]
        if frame.empty:
            continue
        y = frame["correct"].astype(bool).to_numpy().astype(int)
        for name, description, score in _scores(frame):
            if not np.isfinite(score).any():
                est = missing_estimate(name, REASON_MISSING, int(y.size), int(y.sum()), "held_out", description)
            else:
                est = held_out_auroc(name, score, y, np.arange(y.size), n_boot=n_boot, n_shuffles=n_shuffles,
                                     seed=seed, description=description)
            out.append(JudgedSignal(regime, est, selective_for(est, n_boot=n_boot, seed=seed)))
    return out
