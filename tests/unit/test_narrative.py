"""Plain-language sentences built from engine results (``ic_core.narrative``)."""

from __future__ import annotations

import numpy as np
import pytest

from ic_core.narrative import auroc_text, signal_verdict
from ic_core.stats.auroc import REASON_ONE_CLASS, AurocEstimate, held_out_auroc, missing_estimate


def estimate(a, low=None, high=None, reason=None):
    return AurocEstimate("sig", a, None, low, high, None, None, None, 40, 20, reason=reason, kind="held_out")


class TestAurocText:
    def test_value_with_ci(self):
        assert auroc_text(estimate(0.714, 0.583, 0.832)) == "0.71 [0.58, 0.83]"

    def test_value_without_ci(self):
        assert auroc_text(estimate(0.6)) == "0.60 [CI n/a]"

    def test_reason_when_no_auroc(self):
        assert auroc_text(missing_estimate("sig", REASON_ONE_CLASS, 20, 20, "held_out")) == "only one class"
        assert auroc_text(estimate(None)) == "n/a"

    def test_on_a_computed_held_out_estimate(self):
        rng = np.random.default_rng(0)
        y = (rng.random(100) < 0.5).astype(int)
        est = held_out_auroc("sig", 3 * y + rng.normal(size=100), y, np.arange(100), n_boot=200)
        assert auroc_text(est) == f"{est.auroc_pooled:.2f} [{est.ci_low:.2f}, {est.ci_high:.2f}]"


class TestSignalVerdict:
    @pytest.mark.parametrize(("low", "high", "expected"), [
        (0.55, 0.8, "ranks right answers above wrong ones better than chance"),
        (0.2, 0.45, "ranks them the wrong way round"),
        (0.45, 0.62, "no evidence of any signal (the CI includes 0.5)"),
        (0.5, 0.7, "no evidence of any signal (the CI includes 0.5)"),  # touching chance is not above it
    ])
    def test_reads_the_ci_against_chance(self, low, high, expected):
        assert signal_verdict(estimate((low + high) / 2, low, high)) == expected

    def test_cannot_tell_without_a_ci_or_an_auroc(self):
        assert signal_verdict(estimate(0.7)) == "cannot tell (CI not available)"
        assert signal_verdict(missing_estimate("sig", REASON_ONE_CLASS, 20, 0)) == "cannot tell (only one class)"
