"""CLI tier: `python -m ic_core analyze`, including bad input (one line, exit 2, no traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    return lines[0]


def test_analyze_on_a_local_folder(tiny_dir):
    proc = run_cli("analyze", "--prompt", "what is 1 plus 2?", "--kind", "numeric", "--model", str(tiny_dir),
                   "--generate", "--expected", "3", "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_layers"] == 4 and len(out["lens"]) == 4 and out["regime"] == "direct"
    assert isinstance(out["correct"], bool) and len(out["token_entropies_bits"]) >= 1


def test_empty_prompt_is_one_line_error(tiny_dir):
    assert "empty" in _one_line_error(run_cli("analyze", "--prompt", "  ", "--model", str(tiny_dir)))


def test_unknown_regime_is_one_line_error():
    assert "regime" in _one_line_error(run_cli("analyze", "--prompt", "hi", "--regime", "shout"))


def test_unknown_model_is_one_line_error():
    line = _one_line_error(run_cli("analyze", "--prompt", "hi", "--model", "no-such-org/no-such-model-xyz"))
    assert "huggingface-cli download" in line or "local folder" in line


def test_missing_model_folder_is_one_line_error():
    assert "does not exist" in _one_line_error(run_cli("analyze", "--prompt", "hi", "--model", "./nowhere/model"))


@pytest.mark.model
def test_done_when_capital_of_france():
    proc = run_cli("analyze", "--prompt", "What is the capital of France?", "--generate", "--expected", "Paris",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["correct"] is True and out["n_layers"] == 30 and len(out["lens"]) == 30
    assert 0 < out["h_int_bits"] < 15.6 and out["model"] == "SmolLM2-135M-Instruct"
