"""Selective statistics beside each AUROC (issue 17 item 3 of the Recoverability page): values and when calibration applies."""

from __future__ import annotations

import numpy as np
import pytest

from ic_core.probes.selective_report import NOT_A_PROBABILITY, selective_for
from ic_core.stats.auroc import AurocEstimate
from ic_core.stats.selective import aurc, brier_score, expected_calibration_error


def estimate(name: str, scores, labels, kind: str = "score") -> AurocEstimate:
    return AurocEstimate(name=name, auroc_pooled=None, auroc_fold_mean=None, ci_low=None, ci_high=None,
                         shuffle_mean=None, shuffle_min=None, shuffle_max=None, n=len(scores),
                         n_pos=int(np.sum(labels)), scores=np.asarray(scores, float), labels=np.asarray(labels), kind=kind)


def test_probability_signal_gets_ece_and_brier_others_say_why():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=60)
    y = (rng.uniform(size=60) < p).astype(int)
    probe = estimate("last 5 layers", rng.normal(size=60), y, kind="probe")
    top1 = estimate("top-1 probability", p, y)
    no_scores = AurocEstimate("missing", None, None, None, None, None, None, None, 60, 30, reason="not recorded")
    out = selective_for([probe, top1, no_scores], n_boot=200, seed=1)
    assert [s.name for s in out] == ["last 5 layers", "top-1 probability"]
    assert out[0].reliability is None and out[0].ece_text() == NOT_A_PROBABILITY
    assert out[1].brier == pytest.approx(brier_score(p, y.astype(bool)))
    assert out[1].reliability.ece == pytest.approx(expected_calibration_error(p, y.astype(bool)))
    assert out[1].ece_text().endswith("(ECE (10 equal-width bins))")
    a = out[1].selective.aurc
    assert a.value == pytest.approx(aurc(p, y.astype(bool))) and a.ci_low <= a.value <= a.ci_high
    assert a.n == 60 and a.n_errors == int((y == 0).sum())


def test_too_few_items_give_reasons():
    out = selective_for([estimate("top-1 probability", [0.2, 0.9, 0.6], [0, 1, 1])], n_boot=50)
    assert out[0].selective.aurc.value is None and out[0].selective.aurc.ci_text() == out[0].selective.aurc.reason
