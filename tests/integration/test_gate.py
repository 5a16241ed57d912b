"""The gate on the tiny model: decisions, read-out checks, probes, audit records, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ic_core.analysis import analyze
from ic_core.errors import DataError, PromptError
from ic_core.governance.audit import prompt_hmac, prompt_sha256, read_audit
from ic_core.governance.gate import decide_for_analysis, gate_check
from ic_core.governance.keys import operator_key
from ic_core.governance.policy import ModelMismatchError, Policy, probe_entry
from ic_core.models import ModelSpec
from ic_core.stats.gating import PlattCalibration

ROOT = Path(__file__).resolve().parents[2]
Q = "what is the capital of france?"
PREFIX = "the capital of france is"


def _policy(tiny, **kw):
    base = dict(signal="h_int", model=tiny.spec.to_dict(), t_entropy_bits=5.0, kind="short_answer",
                model_n_layers=tiny.n_layers, model_d_model=tiny.d_model)
    base.update(kw)
    return Policy(**base)


class FakeProbe:
    """A saved-probe stand-in: P(correct) from the mean of the last layer's state."""

    probe_id = "probe-123"

    def __init__(self, p=0.3):
        self.p = p
        self.seen = None

    def predict_proba_correct(self, state):
        self.seen = state
        return self.p


@pytest.fixture(scope="module")
def h_int(tiny):
    return analyze(tiny, Q, kind="short_answer").state.readout_entropy_bits


@pytest.fixture(scope="module")
def h_slot(tiny):
    return analyze(tiny, Q, kind="short_answer", answer_prefix=PREFIX).state.readout_entropy_bits


class TestGateCheck:
    def test_approve_and_escalate_around_the_signal(self, tiny, h_int, tmp_path):
        log = tmp_path / "audit.jsonl"
        ok = gate_check(tiny, _policy(tiny, t_entropy_bits=h_int + 0.5), Q, audit_log=log)
        assert ok.decision == "approve" and not ok.escalate
        assert ok.signals["h_int_bits"] == pytest.approx(h_int, abs=1e-4)
        assert "<= threshold" in ok.reason and "H_int" in ok.reason
        bad = gate_check(tiny, _policy(tiny, t_entropy_bits=h_int - 0.5), Q, audit_log=log)
        assert bad.decision == "escalate"
        assert bad.reason == f"H_int {bad.signals['h_int_bits']:.2f} bits > threshold {h_int - 0.5:.2f} bits."
        assert 0 < bad.elapsed_s < 30 and bad.model == "tiny-llama" and bad.prompt_sha256 == prompt_sha256(Q)
        recs, skipped = read_audit(log)
        assert skipped == 0 and [r["decision"] for r in recs] == ["approve", "escalate"]
        assert recs[1]["policy_id"] == bad.policy_id and "prompt" not in recs[1]
        assert recs[1]["signals"]["h_int_bits"] == pytest.approx(h_int, abs=1e-4)

    def test_prompt_text_stored_only_when_the_policy_allows(self, tiny, tmp_path):
        log = tmp_path / "audit.jsonl"
        gate_check(tiny, _policy(tiny, store_prompt_text=True), Q, audit_log=log)
        assert read_audit(log)[0][0]["prompt"] == Q

    def test_no_audit_record_when_disabled(self, tiny, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("IC_AUDIT_LOG", raising=False)
        d = gate_check(tiny, _policy(tiny), Q, audit_log=False)
        assert d.audit_log is None and not (tmp_path / "audit").exists()
        d = gate_check(tiny, _policy(tiny), Q)  # default path
        assert Path(d.audit_log) == tmp_path / "audit" / "gate_audit.jsonl"
        assert len(read_audit(d.audit_log)[0]) == 1

    def test_h_slot_per_item_prefix(self, tiny, h_slot, tmp_path):
        pol = _policy(tiny, signal="h_slot", prefix_mode="per_item", t_entropy_bits=h_slot - 0.1)
        d = gate_check(tiny, pol, Q, answer_prefix=PREFIX, audit_log=False)
        assert d.decision == "escalate" and d.signals["h_slot_bits"] == pytest.approx(h_slot, abs=1e-4)
        assert "h_int_bits" not in d.signals and d.reason.startswith("H_slot")
        with pytest.raises(PromptError, match="per-item answer prefix"):
            gate_check(tiny, pol, Q, audit_log=False)

    def test_fixed_prefix_is_applied_and_contradictions_refused(self, tiny, h_slot):
        pol = _policy(tiny, signal="h_slot", prefix_mode="fixed", answer_prefix=PREFIX, t_entropy_bits=h_slot + 1)
        d = gate_check(tiny, pol, Q, audit_log=False)
        assert d.signals["h_slot_bits"] == pytest.approx(h_slot, abs=1e-4) and d.decision == "approve"
        with pytest.raises(PromptError, match="would read the state somewhere else"):
            gate_check(tiny, pol, Q, answer_prefix="the answer is", audit_log=False)
        with pytest.raises(PromptError, match="do not give one"):
            gate_check(tiny, _policy(tiny), Q, answer_prefix=PREFIX, audit_log=False)

    def test_model_mismatch_refused(self, tiny):
        pol = _policy(tiny, model=ModelSpec().to_dict())
        with pytest.raises(ModelMismatchError, match="SmolLM2-135M-Instruct"):
            gate_check(tiny, pol, Q, audit_log=False)

    def test_escalate_all_policy(self, tiny):
        pol = _policy(tiny, t_entropy_bits=None, escalate_all=True)
        d = gate_check(tiny, pol, Q, audit_log=False)
        assert d.decision == "escalate" and "every prompt" in d.reason

    def test_empty_prompt(self, tiny):
        with pytest.raises(PromptError, match="empty"):
            gate_check(tiny, _policy(tiny), "   ", audit_log=False)


class TestDecideForAnalysis:
    def test_probe_is_calibrated_and_thresholded(self, tiny):
        entry = probe_entry("probes/p.json", "probe-123", PlattCalibration(coef=1.0, intercept=1.0))
        pol = _policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry)
        analysis = analyze(tiny, Q, kind="short_answer")
        probe = FakeProbe(p=0.3)
        d = decide_for_analysis(pol, analysis, probe)
        expected = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + 1.0)))  # 0.538
        assert d.signals["probe_p_correct"] == pytest.approx(expected) and d.signals["probe_p_correct_raw"] == 0.3
        assert d.decision == "approve" and probe.seen is analysis.state
        d = decide_for_analysis(pol, analysis, FakeProbe(p=0.1))
        assert d.decision == "escalate" and "probe P(correct) 0.23 < threshold 0.50" in d.reason

    def test_combined_fires_on_either_rule(self, tiny, h_int):
        entry = probe_entry("p.json", "probe-123", PlattCalibration(1.0, 0.0))
        pol = _policy(tiny, signal="combined", entropy_signal="h_int", t_entropy_bits=h_int + 1, t_probe=0.5,
                      probe=entry)
        analysis = analyze(tiny, Q, kind="short_answer")
        assert decide_for_analysis(pol, analysis, FakeProbe(0.9)).decision == "approve"
        d = decide_for_analysis(pol, analysis, FakeProbe(0.2))
        assert d.decision == "escalate" and d.reason.startswith("probe P(correct) 0.20 < threshold")
        pol2 = _policy(tiny, signal="combined", entropy_signal="h_int", t_entropy_bits=h_int - 1, t_probe=0.5,
                       probe=entry)
        assert decide_for_analysis(pol2, analysis, FakeProbe(0.9)).reason.startswith("H_int")

    def test_probe_missing_or_different(self, tiny):
        entry = probe_entry("p.json", "probe-999", PlattCalibration(1.0, 0.0))
        pol = _policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry)
        analysis = analyze(tiny, Q, kind="short_answer")
        with pytest.raises(DataError, match="load the saved probe"):
            decide_for_analysis(pol, analysis, None)
        with pytest.raises(DataError, match="calibrated with probe probe-999"):
            decide_for_analysis(pol, analysis, FakeProbe())

    def test_readout_must_match_the_policy(self, tiny):
        slot = _policy(tiny, signal="h_slot", prefix_mode="per_item")
        with pytest.raises(PromptError, match="reads H_slot"):
            decide_for_analysis(slot, analyze(tiny, Q, kind="short_answer"))
        with pytest.raises(PromptError, match="reads raw H_int"):
            decide_for_analysis(_policy(tiny), analyze(tiny, Q, kind="short_answer", answer_prefix=PREFIX))


def _saved_probe(tiny, folder, seed=0):
    """A real saved probe for the tiny model's state shape, written to ``folder/p``."""
    from ic_core.probes.saved import fit_saved_probe

    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(40, tiny.n_layers + 1, tiny.d_model))
    y = np.arange(40) % 2
    hidden[:, -1, 0] += y
    probe = fit_saved_probe(hidden, y, model_spec=tiny.spec.to_dict(), run_path=str(folder))
    return probe, probe.save(Path(folder) / "p")


class TestLoadPolicyProbe:
    """``load_policy_probe``: the one engine call that turns a policy's probe path into a probe, confined to a root."""

    def _probe_policy(self, tiny, path, probe_id):
        entry = probe_entry(str(path), probe_id, PlattCalibration(1.0, 0.0))
        return _policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry)

    def test_inside_the_root_loads_the_named_probe(self, tiny, tmp_path):
        from ic_core.governance.gate import load_policy_probe

        probe, path = _saved_probe(tiny, tmp_path / "runs" / "r" / "probes")
        loaded = load_policy_probe(self._probe_policy(tiny, path, probe.probe_id), tmp_path / "runs")
        assert loaded.probe_id == probe.probe_id and loaded.layers == probe.layers
        assert load_policy_probe(_policy(tiny), tmp_path / "runs") is None  # an entropy policy reads no probe

    def test_outside_the_root_is_refused_before_reading(self, tiny, tmp_path):
        from ic_core.governance.gate import load_policy_probe

        probe, path = _saved_probe(tiny, tmp_path / "elsewhere")
        (tmp_path / "runs").mkdir()
        policy = self._probe_policy(tiny, path, probe.probe_id)
        with pytest.raises(DataError, match="outside the runs folder"):
            load_policy_probe(policy, tmp_path / "runs")
        with pytest.raises(DataError, match="outside the runs folder"):  # an override path is confined too
            load_policy_probe(_policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5,
                                      probe=policy.probe), tmp_path / "runs", tmp_path / "runs" / ".." / "elsewhere" / "p")

    def test_another_probe_or_no_path_is_refused(self, tiny, tmp_path):
        from ic_core.governance.gate import load_policy_probe

        _, path = _saved_probe(tiny, tmp_path / "runs")
        with pytest.raises(DataError, match="calibrated with probe probe-999"):
            load_policy_probe(self._probe_policy(tiny, path, "probe-999"), tmp_path / "runs")
        with pytest.raises(DataError, match="names no probe file"):
            load_policy_probe(self._probe_policy(tiny, "", "probe-999"), tmp_path / "runs")


    def test_swapped_probe_refused_by_digest(self, tiny, tmp_path):
        """Issue 11 case 1: same id, same path, other weights (a probe refitted or edited in place) -> refused."""
        from ic_core.governance.gate import load_policy_probe

        probe, path = _saved_probe(tiny, tmp_path / "runs" / "r")
        policy = self._probe_policy(tiny, path, probe.probe_id)
        assert policy.probe["npz_sha256"] and policy.probe["json_sha256"]
        assert load_policy_probe(policy, tmp_path / "runs").probe_id == probe.probe_id
        # The probe id (a 48-bit content hash) is unchanged by metadata edits; the pinned SHA-256 is not.
        meta = json.loads(path.read_text())
        meta["cv_auroc"] = 0.99
        path.write_text(json.dumps(meta))
        with pytest.raises(DataError, match="the probe was swapped or changed"):
            load_policy_probe(policy, tmp_path / "runs")
        other, _ = _saved_probe(tiny, tmp_path / "runs" / "other", seed=1)
        other.save(path.with_suffix(""))  # a different probe under the same name: its id differs
        with pytest.raises(DataError, match="calibrated with probe"):
            load_policy_probe(policy, tmp_path / "runs")


class TestCliProbeRoot:
    """Which folder ``gate`` reads a policy's probe from."""

    def _policy(self, tiny, probe_path):
        entry = probe_entry(str(probe_path), "x", PlattCalibration(1.0, 0.0))
        return _policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry)

    def test_beside_the_policy_file_elsewhere_the_runs_root(self, tiny, tmp_path, monkeypatch):
        from ic_core.cli.gate import probe_root

        monkeypatch.setenv("IC_RUNS_DIR", str(tmp_path / "runs"))
        policy_file = tmp_path / "pol" / "policy.json"
        assert probe_root(policy_file, self._policy(tiny, tmp_path / "pol" / "policy.probe.json"), None) == \
            tmp_path / "pol"
        assert probe_root(policy_file, self._policy(tiny, "/etc/passwd"), None) == tmp_path / "runs"
        dotdot = tmp_path / "pol" / ".." / "secret" / "p.json"  # lexically leaves the policy's folder
        assert probe_root(policy_file, self._policy(tiny, dotdot), None) == tmp_path / "runs"
        assert probe_root(policy_file, self._policy(tiny, "/etc/passwd"), str(tmp_path / "mine" / "p.json")) == \
            tmp_path / "mine"

    def test_gate_refuses_a_policy_probe_outside_both(self, tiny, tiny_dir, tmp_path):
        """A policy naming a probe outside its own folder and the runs root: refused, before the model loads."""
        probe, path = _saved_probe(tiny, tmp_path / "elsewhere")
        spec = ModelSpec.parse(str(tiny_dir))
        pol = Policy(signal="probe", model=spec.to_dict(), t_probe=0.5, kind="short_answer", model_n_layers=4,
                     model_d_model=32, probe=probe_entry(str(path), probe.probe_id, PlattCalibration(1.0, 0.0)))
        policy_file = pol.save(tmp_path / "pol" / "policy.json")
        (tmp_path / "runs").mkdir()
        proc = run_cli("gate", "--policy", str(policy_file), "--prompt", Q, "--no-audit",
                       env_extra={"IC_RUNS_DIR": str(tmp_path / "runs")})
        assert proc.returncode == 2 and "outside the runs folder" in proc.stderr and "Traceback" not in proc.stderr


def run_cli(*args, env_extra=None, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


class TestGateCli:
    def test_gate_decision_and_audit(self, tiny_dir, tmp_path):
        spec = ModelSpec.parse(str(tiny_dir))
        pol = Policy(signal="h_int", model=spec.to_dict(), t_entropy_bits=0.5, kind="short_answer",
                     model_n_layers=4, model_d_model=32)
        path = pol.save(tmp_path / "policy.json")
        log = tmp_path / "audit.jsonl"
        proc = run_cli("gate", "--policy", str(path), "--prompt", Q, "--json", "--audit-log", str(log))
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["decision"] == "escalate" and out["policy_id"] == pol.policy_id
        assert out["signals"]["h_int_bits"] > 0.5 and out["elapsed_s"] > 0 and "threshold 0.50 bits" in out["reason"]
        recs, skipped = read_audit(log)
        assert skipped == 0 and len(recs) == 1 and recs[0]["prompt_hmac"] == prompt_hmac(operator_key(), Q)
        # The human-readable form, and the model given explicitly (same model: accepted).
        proc = run_cli("gate", "--policy", str(path), "--prompt", Q, "--model", str(tiny_dir), "--no-audit")
        assert proc.returncode == 0 and proc.stdout.startswith("ESCALATE: H_int")
        assert len(read_audit(log)[0]) == 1

    def test_model_mismatch_exits_2_with_one_line(self, tiny_dir, tmp_path):
        spec = ModelSpec.parse(str(tiny_dir))
        path = Policy(signal="h_int", model=spec.to_dict(), t_entropy_bits=0.5).save(tmp_path / "p.json")
        proc = run_cli("gate", "--policy", str(path), "--prompt", Q, "--model", "default", "--json")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Policy") and "SmolLM2" in lines[0]

    def test_unsigned_forged_and_signed_policies_from_the_cli(self, tiny_dir, tmp_path):
        """Issue 11 case 2 from the CLI: unsigned refused unless --allow-unsigned; a forged threshold refused;
        ``policy sign`` then ``verify``; ``show`` reports the status; the audit record says cli and signed."""
        spec = ModelSpec.parse(str(tiny_dir))
        pol = Policy(signal="h_int", model=spec.to_dict(), t_entropy_bits=0.5, kind="short_answer",
                     model_n_layers=4, model_d_model=32)
        unsigned = pol.save(tmp_path / "unsigned.json", sign=False)
        proc = run_cli("gate", "--policy", str(unsigned), "--prompt", Q, "--no-audit")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is unsigned" in proc.stderr
        assert "--allow-unsigned" in proc.stderr
        proc = run_cli("gate", "--policy", str(unsigned), "--prompt", Q, "--no-audit", "--allow-unsigned", "--json")
        assert proc.returncode == 0 and "warning: policy" in proc.stderr and "is unsigned" in proc.stderr
        assert json.loads(proc.stdout)["policy_signed"] is False
        show = json.loads(run_cli("policy", "show", str(unsigned)).stdout)
        assert show["signature_status"] == "unsigned" and show["weights"] == "weights not pinned"
        assert run_cli("policy", "verify", str(unsigned)).returncode == 2
        # Sign it, verify it, gate with it: the record names the source and the signed policy.
        proc = run_cli("policy", "sign", str(unsigned), "--out", str(tmp_path / "signed.json"))
        assert proc.returncode == 0 and proc.stdout.startswith(f"signed policy {pol.policy_id}")
        proc = run_cli("policy", "verify", str(tmp_path / "signed.json"))
        assert proc.returncode == 0 and proc.stdout.startswith("OK: policy")
        assert json.loads(run_cli("policy", "show", str(tmp_path / "signed.json")).stdout)["signature_status"] == "valid"
        log = tmp_path / "audit.jsonl"
        proc = run_cli("gate", "--policy", str(tmp_path / "signed.json"), "--prompt", Q, "--audit-log", str(log))
        assert proc.returncode == 0 and "warning" not in proc.stderr
        (rec,), _ = read_audit(log)
        assert rec["source"] == "cli" and rec["policy_signed"] is True and rec["policy_id"] == pol.policy_id
        # Forge: raise the threshold so everything is approved, recompute the id; the signature no longer fits.
        doc = json.loads((tmp_path / "signed.json").read_text())
        doc["t_entropy_bits"] = 64.0
        doc["policy_id"] = Policy(**{**{k: v for k, v in doc.items() if k != "signature"}, "policy_id": ""}).policy_id
        (tmp_path / "forged.json").write_text(json.dumps(doc))
        proc = run_cli("gate", "--policy", str(tmp_path / "forged.json"), "--prompt", Q, "--no-audit")
        assert proc.returncode == 2 and "wrong signature" in proc.stderr and "Traceback" not in proc.stderr
        proc = run_cli("policy", "verify", str(tmp_path / "forged.json"))
        assert proc.returncode == 2 and "wrong signature" in proc.stderr
        # Another operator's key does not verify this operator's policy.
        proc = run_cli("policy", "verify", str(tmp_path / "signed.json"), env_extra={"IC_POLICY_KEY": "x" * 40})
        assert proc.returncode == 2 and "wrong signature" in proc.stderr

    def test_policy_pinned_to_other_weights_refused(self, tiny_dir, tmp_path):
        """Issue 11 case 6 from the CLI: same model name and folder, other weights digest -> exit 2, nothing logged."""
        spec = ModelSpec.parse(str(tiny_dir))
        pol = Policy(signal="h_int", model={**spec.to_dict(), "weights_sha256": "0" * 64}, t_entropy_bits=0.5,
                     kind="short_answer", model_n_layers=4, model_d_model=32)
        path = pol.save(tmp_path / "pinned.json")
        log = tmp_path / "audit.jsonl"
        proc = run_cli("gate", "--policy", str(path), "--prompt", Q, "--audit-log", str(log))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "weights" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and not log.exists()

    def test_keygen_creates_a_key_once(self, tmp_path):
        key = tmp_path / "k" / "operator.key"
        proc = run_cli("policy", "keygen", "--out", str(key))
        assert proc.returncode == 0 and key.is_file() and (key.stat().st_mode & 0o777) == 0o600
        assert len(key.read_text().strip()) == 64
        proc = run_cli("policy", "keygen", "--out", str(key))
        assert proc.returncode == 2 and "never overwritten" in proc.stderr

    def test_bad_policy_file_exits_2(self, tmp_path):
        bad = tmp_path / "p.json"
        bad.write_text('{"signal": "vibes"')
        proc = run_cli("gate", "--policy", str(bad), "--prompt", Q)
        assert proc.returncode == 2 and "not valid JSON" in proc.stderr


@pytest.fixture(scope="module")
def dir_run(tmp_path_factory, tiny_dir):
    """A tiny study run made with the model loaded from tiny_dir (so the CLI can load it again)."""
    from ic_core.datasets import PromptItem
    from ic_core.models import load_model
    from ic_core.study.runner import run_study

    loaded = load_model(ModelSpec.parse(str(tiny_dir)))
    items = [
        PromptItem(id=f"c{i:03d}", question=f"what is {i % 13} plus {i % 7} ?", answer=str(i % 13 + i % 7),
                   kind="numeric", output=str(i % 13 + i % 7 + (0 if (i * 37) % 100 < 50 else 1)))
        for i in range(60)
    ]
    return run_study(loaded, items, ["direct"], tmp_path_factory.mktemp("runs") / "r", generate=False,
                     dataset_name="tinyset")


class TestPolicyFitCli:
    def test_fit_entropy_then_gate(self, dir_run, tmp_path):
        out = tmp_path / "policy.json"
        proc = run_cli("policy", "fit", "--run", str(dir_run.path), "--signal", "entropy", "--target-error", "0.45",
                       "--out", str(out), "--holdout", "0.4", "--seed", "1")
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["note"].startswith("signal 'entropy' read as H_int") and res["signal"] == "h_int"
        assert (res["n_train"], res["n_held_out"]) == (36, 24)
        ho = res["held_out"]
        assert ho["n_held_out"] == 24 and len(ho["escalation_rate_ci95"]) == 2
        assert ho["escalation_rate_ci95"][0] <= ho["escalation_rate"] <= ho["escalation_rate_ci95"][1]
        policy = Policy.load(out)
        assert policy.policy_id == res["policy_id"] and policy.fitted_on["seed"] == 1
        log = tmp_path / "audit.jsonl"
        proc = run_cli("gate", "--policy", str(out), "--prompt", "what is 3 plus 4 ?", "--json", "--audit-log", str(log))
        assert proc.returncode == 0, proc.stderr
        decision = json.loads(proc.stdout)
        assert decision["decision"] in ("approve", "escalate") and decision["policy_id"] == policy.policy_id
        if policy.escalate_all:
            assert decision["decision"] == "escalate"
        else:
            h = decision["signals"]["h_int_bits"]
            assert decision["decision"] == ("escalate" if h > policy.t_entropy_bits else "approve")
        assert read_audit(log)[0][0]["decision"] == decision["decision"]

    def test_fit_probe_saves_the_probe_and_the_gate_uses_it(self, dir_run, tmp_path):
        out = tmp_path / "p.json"
        proc = run_cli("policy", "fit", "--run", str(dir_run.path), "--signal", "probe", "--target-error", "0.45",
                       "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["probe"]["source"].startswith("last-5-layers probe fitted on the training items")
        assert Path(res["probe"]["path"]) == (tmp_path / "p.probe.json").resolve() and Path(res["probe"]["path"]).is_file()
        proc = run_cli("gate", "--policy", str(out), "--prompt", "what is 3 plus 4 ?", "--json", "--no-audit")
        assert proc.returncode == 0, proc.stderr
        assert 0.0 < json.loads(proc.stdout)["signals"]["probe_p_correct"] < 1.0

    def test_bad_arguments_are_one_line_errors(self, dir_run, tmp_path):
        proc = run_cli("policy", "fit", "--run", str(tmp_path / "nope"), "--signal", "entropy", "--target-error",
                       "0.2", "--out", str(tmp_path / "p.json"))
        assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
        proc = run_cli("policy", "fit", "--run", str(dir_run.path), "--signal", "entropy", "--target-error", "1.5",
                       "--out", str(tmp_path / "p.json"))
        assert proc.returncode == 2 and "target error rate must be in [0, 1)" in proc.stderr
