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

    def test_several_regimes_need_a_choice(self, tiny_run):
        proc = run_cli("probe", "--run", str(tiny_run))
        assert proc.returncode == 2 and "error:" in proc.stderr and "--pooled" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_missing_run_is_one_line_error(self, tmp_path):
        proc = run_cli("probe", "--run", str(tmp_path / "nope"))
        assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
