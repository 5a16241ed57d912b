"""Issue 11 'done when': a forged policy, a swapped probe and a fake weights file are refused by
both entry points an agent's operator starts from the command line — ``gate`` and ``serve`` —
with one line and exit 2, before anything is decided or served. (The app side:
tests/app/test_app_policy_upload.py; an injected assistant turn stays text everywhere:
tests/integration/test_prompt_injection.py, tests/model/test_special_tokens.py and
tests/integration/test_serve.py::…planted_chat_tokens_stay_text.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ic_core.governance.policy import Policy, probe_entry
from ic_core.models import ModelSpec
from ic_core.stats.gating import PlattCalibration

ROOT = Path(__file__).resolve().parents[2]
Q = "what is the capital of france?"
API_KEY = "refusal-test-key-0123456789"


def _run(*args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "IC_API_KEYS": API_KEY,
           "IC_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


def _policy(tiny_dir, **kw) -> Policy:
    spec = ModelSpec.parse(str(tiny_dir))
    return Policy(**{**dict(signal="h_int", model=spec.to_dict(), t_entropy_bits=0.5, kind="short_answer",
                            model_n_layers=4, model_d_model=32), **kw})


def _forged(tiny_dir, tmp_path) -> Path:
    path = _policy(tiny_dir).save(tmp_path / "policy.json")
    doc = json.loads(path.read_text())
    doc["t_entropy_bits"] = 64.0  # approve everything; recompute the unkeyed id as an attacker can
    doc["policy_id"] = Policy(**{**{k: v for k, v in doc.items() if k != "signature"}, "policy_id": ""}).policy_id
    path.write_text(json.dumps(doc))
    return path


def _swapped_probe(tiny_dir, tmp_path) -> Path:
    from ic_core.probes.saved import fit_saved_probe

    spec = ModelSpec.parse(str(tiny_dir))
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(40, 5, 32))
    probe = fit_saved_probe(hidden, np.arange(40) % 2, model_spec=spec.to_dict())
    probe_json = probe.save(tmp_path / "policy.probe")
    entry = probe_entry(str(probe_json), probe.probe_id, PlattCalibration(1.0, 0.0))
    path = _policy(tiny_dir, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry).save(tmp_path / "policy.json")
    meta = json.loads(probe_json.read_text())
    meta["cv_auroc"] = 0.99
    probe_json.write_text(json.dumps(meta))
    return path


def _fake_weights(tiny_dir, tmp_path) -> Path:
    spec = ModelSpec.parse(str(tiny_dir))
    return _policy(tiny_dir, model={**spec.to_dict(), "weights_sha256": "0" * 64}).save(tmp_path / "policy.json")


CASES = {
    "forged policy": (_forged, "wrong signature"),
    "swapped probe": (_swapped_probe, "the probe was swapped or changed"),
    "fake weights": (_fake_weights, "weights"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["gate", "serve"])
def test_refused_with_one_line(tiny_dir, tmp_path, case, command):
    build, message = CASES[case]
    policy = build(tiny_dir, tmp_path)
    log = tmp_path / "audit.jsonl"
    args = (["gate", "--policy", str(policy), "--prompt", Q, "--audit-log", str(log)] if command == "gate" else
            ["serve", "--policy", str(policy), "--port", "9", "--audit-log", str(log)])
    proc = _run(*args, tmp_path=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0]
    assert not log.exists()  # nothing was decided, so nothing was logged
