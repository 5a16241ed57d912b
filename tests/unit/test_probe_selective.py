"""Selective-prediction statistics beside every AUROC of a recoverability report, and the probe's calibration."""

import json

import numpy as np
import pytest
from test_probes import make_run

from ic_core.probes.judged import missing_selective, out_of_fold_calibration, selective_cells, selective_for
from ic_core.probes.report import recoverability
from ic_core.stats.auroc import REASON_CONSTANT, REASON_ONE_CLASS, auroc, make_folds, missing_estimate
from ic_core.stats.selective import brier_score, expected_calibration_error, reliability_bins, selective_summary

FAST = dict(n_boot=60, n_shuffles=1, n_shuffles_per_layer=0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return recoverability(make_run(tmp_path_factory.mktemp("sel"), n_items=60), **FAST)


class TestSelectiveBesideAuroc:
    def test_every_estimate_has_its_three_statistics(self, report):
        """One SelectiveSummary per AUROC (layers, last-k probe, baselines, other signals)."""
        names = [e.name for e in report.estimates()]
        assert set(report.selective) == set(names) and len(names) == len(set(names))

    def test_values_equal_stats_selective_on_the_same_scores(self, report):
        """Same scores, labels, resamples and seed as computing it directly."""
        for est in (report.last_layers, report.baselines[0], report.by_layer[3]):
            direct = selective_summary(est.scores, est.labels.astype(bool), n_boot=60, seed=0)
            got = report.selective_of(est.name)
            for metric in ("aurc", "eaurc", "augrc"):
                a, b = getattr(got, metric), getattr(direct, metric)
                assert a.value == pytest.approx(b.value) and a.ci_low == pytest.approx(b.ci_low)
                assert a.ci_high == pytest.approx(b.ci_high) and a.n == est.n and a.n_errors == est.n_neg

    def test_a_result_without_auroc_gives_its_reason_not_a_number(self, report):
        """The constant embedding layer: 'constant state' in all three places."""
        layer0 = report.selective_of(report.by_layer[0].name)
        assert report.by_layer[0].reason == REASON_CONSTANT
        assert [e.value for e in (layer0.aurc, layer0.eaurc, layer0.augrc)] == [None, None, None]
        assert selective_cells(layer0) == {"AURC [95 % CI]": REASON_CONSTANT, "E-AURC [95 % CI]": REASON_CONSTANT,
                                           "AUGRC [95 % CI]": REASON_CONSTANT}

    def test_one_class_regime(self, tmp_path):
        run = make_run(tmp_path, n_items=30, regimes=("direct", "cot"), one_class_regime="cot")
        rep = recoverability(run, regime="cot", **FAST)
        assert rep.selective_of(rep.last_layers.name).aurc.ci_text() == REASON_ONE_CLASS
        assert rep.calibration.reason == REASON_ONE_CLASS and rep.calibration.ece_text() == REASON_ONE_CLASS

    def test_json_carries_them(self, report):
        out = json.loads(json.dumps(report.to_json(), allow_nan=False))
        sel = out["last_layers"]["selective"]
        want = report.selective_of(report.last_layers.name).aurc.value
        assert sel["aurc"]["metric"] == "AURC" and sel["aurc"]["value"] == pytest.approx(want, abs=1e-4)
        assert all("selective" in b for b in out["baselines"]) and "selective" in out["by_layer"][2]
        assert out["by_layer"][0]["selective"]["eaurc"]["reason"] == REASON_CONSTANT
        assert "lower is better" in out["selective_note"]

    def test_missing_and_estimate_without_scores(self):
        est = missing_estimate("x", "n too small", 7, 3)
        s = selective_for(est)
        assert s.augrc.reason == "n too small" and s.augrc.n == 7 and s.augrc.n_errors == 4
        assert missing_selective("y", "only one class", 5, 0).eaurc.ci_text() == "only one class"


class TestProbeCalibration:
    def test_same_folds_and_C_as_the_probe(self, report, tmp_path):
        """Per-fold AUROC of the out-of-fold P(correct) equals the probe's own per-fold AUROC."""
        run = make_run(tmp_path, n_items=60)  # the report's run (same seed): its graded rows' states
        hidden = np.asarray(run.hidden)[np.flatnonzero(run.table["correct"].notna().to_numpy())]
        X = hidden[:, list(report.last_layer_indices), :].reshape(len(hidden), -1)
        cal = out_of_fold_calibration(X, report.last_layers, seed=0)
        y = report.last_layers.labels
        folds = make_folds(y, seed=0)
        for (_, te), want in zip(folds, report.last_layers.fold_aurocs):
            assert auroc(cal.p_correct[te], y[te]) == pytest.approx(want)
        assert np.all((cal.p_correct > 0) & (cal.p_correct < 1))

    def test_figures_equal_stats_selective(self, report):
        cal = report.calibration
        p, y = cal.p_correct, cal.labels
        assert cal.ece == pytest.approx(expected_calibration_error(p, y, n_bins=10, binning="equal_width"))
        assert cal.brier == pytest.approx(brier_score(p, y))
        assert cal.brier_base_rate == pytest.approx(np.mean((y.mean() - y) ** 2))
        assert np.array_equal(cal.bins.counts, reliability_bins(p, y).counts) and cal.bins.counts.sum() == cal.n
        assert cal.ece_text() == f"ECE (10 equal-width bins) = {cal.ece:.3f}"
        assert cal.brier_text().startswith(f"Brier {cal.brier:.3f} (always the base rate: ")
        j = report.to_json()["calibration"]
        assert j["ece_binning"] == "ECE (10 equal-width bins)" and sum(j["reliability"]["counts"]) == cal.n
