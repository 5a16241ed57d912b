"""Integration tier: the probe CLI on a tiny study run (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ic_core.probes.saved import SavedProbe
from ic_core.stats.auroc import (
    REASON_CONSTANT,
    REASON_MISSING,
)

FAST = dict(n_boot=200, n_shuffles=3)


# ---------------------------------------------------------------- CLI on a tiny study (tiny random model)


def tiny_items(n=40, seed=0, all_wrong=False):
    """Arithmetic items carrying their own output (graded without generating): ~40 % right."""
    from ic_core.datasets import PromptItem

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        a, b = int(rng.integers(0, 90)), int(rng.integers(0, 90))
        right = (not all_wrong) and rng.random() < 0.45
        items.append(PromptItem(f"q{i}", f"what is {a} plus {b} ?", str(a + b), kind="numeric",
                                output=str(a + b if right else a + b + 1)))
    return items


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    from ic_core.study.runner import run_study

    folder = tmp_path_factory.mktemp("runs") / "tiny40"
    run_study(tiny, tiny_items(), ["direct", "babble"], folder, generate=False, batch_size=20, dataset_name="t")
    return folder


def run_cli(*args, timeout=300):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


class TestCli:
    def test_probe_json_and_save(self, tiny_run):
        proc = run_cli("probe", "--run", str(tiny_run), "--regime", "direct", "--json", "--n-boot", "100",
                       "--shuffles", "2", "--layer-shuffles", "1", "--save", "auto")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["selection"] == "direct" and out["n"] == 40 and len(out["by_layer"]) == 5
        assert out["by_layer"][0]["auroc_pooled"] is None and out["by_layer"][0]["reason"] == REASON_CONSTANT
        layer = out["by_layer"][2]
        assert 0.0 <= layer["auroc_pooled"] <= 1.0 and layer["ci95"][0] <= layer["auroc_pooled"] <= layer["ci95"][1]
        assert out["last_layers"]["layers"] == [1, 2, 3, 4] and out["last_layers"]["shuffle"]["n_permutations"] == 2
        names = {b["name"]: b for b in out["baselines"]}
        assert names["−H_int"]["auroc_pooled"] is not None
        post = names["−mean token entropy (post-generation)"]
        assert post["auroc_pooled"] is None and post["reason"] == REASON_MISSING
        saved = out["saved_probe"]
        assert Path(saved["path"]).parent == tiny_run / "probes" and saved["layers"] == [1, 2, 3, 4]
        assert "fixed" in saved["choice"]
        assert SavedProbe.load(saved["path"], tiny_run).probe_id == saved["probe_id"]

    def test_probe_json_has_selective_statistics_and_calibration_and_writes_html(self, tiny_run, tmp_path):
        """AURC, E-AURC, AUGRC beside every AUROC; the probe's ECE (binning named) and Brier; the HTML report."""
        html_path = tmp_path / "report.html"
        proc = run_cli("probe", "--run", str(tiny_run), "--regime", "direct", "--n-boot", "100", "--shuffles", "2",
                       "--layer-shuffles", "0", "--html", str(html_path))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        for est in (out["last_layers"], *out["baselines"], *out["other_signals"], *out["by_layer"]):
            sel = est["selective"]
            assert [sel[k]["metric"] for k in ("aurc", "eaurc", "augrc")] == ["AURC", "E-AURC", "AUGRC"]
            if est["auroc_pooled"] is None:
                assert sel["aurc"]["value"] is None and sel["aurc"]["reason"] == est["reason"]
            else:
                lo, hi = sel["augrc"]["ci95"]
                assert lo <= sel["augrc"]["value"] <= hi and sel["eaurc"]["value"] <= sel["aurc"]["value"]
        cal = out["calibration"]
        assert cal["ece_binning"] == "ECE (10 equal-width bins)" and 0 <= cal["ece"] <= 1 and 0 <= cal["brier"] <= 1
        assert sum(cal["reliability"]["counts"]) == out["n"] and out["html_report"] == str(html_path)
        page = html_path.read_text()
        assert page.count("* plotly.js v") == 1 and "Recoverability: probes and baselines" in page
        assert "AURC [95 % CI]" in page and cal["ece_binning"] in page

    def test_html_into_a_missing_folder_is_refused_before_probing(self, tiny_run, tmp_path):
        proc = run_cli("probe", "--run", str(tiny_run), "--regime", "direct", "--html", str(tmp_path / "no" / "r.html"))
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [f"error: Cannot write the HTML report to {tmp_path / 'no' / 'r.html'}: "
                                                    "its folder does not exist."]

    def test_several_regimes_need_a_choice(self, tiny_run):
        proc = run_cli("probe", "--run", str(tiny_run))
        assert proc.returncode == 2 and "error:" in proc.stderr and "--pooled" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_missing_run_is_one_line_error(self, tmp_path):
        proc = run_cli("probe", "--run", str(tmp_path / "nope"))
        assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- transfer between two tiny runs


def minus_items(n=50, seed=5):
    """Other questions than :func:`tiny_items` (subtraction), ~45 % right, own outputs."""
    from ic_core.datasets import PromptItem

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = int(rng.integers(50, 99)), int(rng.integers(0, 50))
        right = rng.random() < 0.45
        out.append(PromptItem(f"q{i}", f"what is {a} minus {b} ?", str(a - b), kind="numeric",
                              output=str(a - b if right else a - b + 1)))
    return out


@pytest.fixture(scope="module")
def minus_run(tiny, tmp_path_factory):
    from ic_core.study.runner import run_study

    folder = tmp_path_factory.mktemp("runs") / "minus50"
    run_study(tiny, minus_items(), ["direct"], folder, generate=False, batch_size=25, dataset_name="m")
    return folder


def counts(folder, regime="direct"):
    from ic_core.runs.store import load_run

    t = load_run(folder).table
    c = t[t["regime"] == regime]["correct"].astype(bool)
    return int(c.sum()), int((~c).sum())


class TestTransferCli:
    def test_transfer_json_has_auroc_ci_shuffle_and_counts(self, tiny_run, minus_run):
        proc = run_cli("probe", "transfer", "--train", str(tiny_run), "--test", str(minus_run), "--json",
                       "--n-boot", "100", "--shuffles", "2")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        (a_pos, a_neg), (b_pos, b_neg) = counts(tiny_run), counts(minus_run)
        assert (out["train"]["n_correct"], out["train"]["n_wrong"]) == (a_pos, a_neg)
        assert (out["test"]["n_correct"], out["test"]["n_wrong"]) == (b_pos, b_neg)
        assert out["test"]["run"] == "minus50:direct" and "permuted" in out["shuffle_control"]
        names = [e["name"] for e in out["estimates"]]
        assert names == ["state probe (last k layers)", "difference-of-means direction", "scalar read-out probe"]
        for e in out["estimates"]:
            assert e["kind"] == "transfer" and e["reason"] is None
            assert e["ci95"][0] <= e["auroc_pooled"] <= e["ci95"][1]
            assert e["shuffle"]["n_permutations"] == 2 and (e["n_correct"], e["n_wrong"]) == (b_pos, b_neg)
        assert len(out["estimates"][0]["chosen_C"]) == 1 and out["estimates"][1]["chosen_C"] == []

    def test_a_copied_run_folder_is_refused_by_its_items(self, tiny_run, tmp_path):
        import shutil

        copy = tmp_path / "copy-of-tiny40"
        shutil.copytree(tiny_run, copy)
        proc = run_cli("probe", "transfer", "--train", str(tiny_run), "--test", str(copy), "--n-boot", "50",
                       "--shuffles", "0")
        assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
        assert "share 40 question(s)" in proc.stderr

    def test_a_probe_fitted_on_a_run_is_refused_on_a_copy_of_its_folder(self, tiny_run, tmp_path):
        """The leak: a probe fitted on all of a run, scored on the held-out items of a copy of the folder."""
        import shutil

        from ic_core.errors import DataError
        from ic_core.probes.saved import fit_saved_probe_for_run
        from ic_core.probes.scores import calibrated_probe_scores, probe_fitted_on_run
        from ic_core.runs.store import load_run

        run = load_run(tiny_run)
        probe = fit_saved_probe_for_run(run, regime="direct")
        copy = tmp_path / "elsewhere" / "tiny40"
        shutil.copytree(tiny_run, copy)
        assert probe_fitted_on_run(probe, copy) and len(probe.train_question_sha256) == 40
        t = run.table[run.table["regime"] == "direct"]
        hidden = np.asarray(run.hidden)[t["row"].to_numpy(int)]
        with pytest.raises(DataError, match="held-out ones included"):
            calibrated_probe_scores(hidden, t["correct"].astype(bool).to_numpy(), np.arange(24), np.arange(24, 40),
                                    model_spec={}, probe=probe, run_path=str(copy))
