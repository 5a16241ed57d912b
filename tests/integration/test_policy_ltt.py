"""Issue 12 wiring on the tiny model: LTT fits, read-outs, OOD escalation, agent prompts gated from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ic_core.analysis import analyze
from ic_core.errors import DataError
from ic_core.governance.gate import OUT_OF_DISTRIBUTION, decide_for_analysis
from ic_core.governance.policy import Policy
from ic_core.models import ModelSpec
from ic_core.stats.ood import fit_ood

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _operator_key(monkeypatch):
    monkeypatch.setenv("IC_POLICY_KEY", "test-operator-key-" + "0" * 32)


def _items(n=60, per_item=False):
    from ic_core.datasets import PromptItem

    items = []
    for i in range(n):
        a, b = i % 13, (i * 7) % 11
        right = (i * 37) % 100 < 50
        pre = f"{a} plus {b} is" if per_item else None
        items.append(PromptItem(id=f"t{i:03d}", question=f"what is {a} plus {b} ?", answer=str(a + b), kind="numeric",
                                output=str(a + b if right else a + b + 1), answer_prefix=pre))
    return items


def _run(loaded, folder, n=60, prefix=None, per_item=False):
    """A tiny labelled run: no prefix, one generic ``prefix`` for every item, or each item's own prefix."""
    from ic_core.study.runner import run_study

    return run_study(loaded, _items(n, per_item), ["direct"], folder, generate=False, dataset_name="tinyset",
                     use_item_prefix=per_item, answer_prefix=prefix)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny):
    return _run(tiny, tmp_path_factory.mktemp("runs") / "plain")


@pytest.fixture(scope="module")
def item_run(tmp_path_factory, tiny):
    return _run(tiny, tmp_path_factory.mktemp("runs") / "item", per_item=True)


def _separable(run, seed=0):
    correct = np.array([bool(v) for v in run.table["correct"]])
    rng = np.random.default_rng(seed)
    entropy = np.where(correct, rng.uniform(1.0, 2.0, correct.size), rng.uniform(2.5, 4.0, correct.size))
    table = run.table.copy()
    table["readout_entropy_bits"] = entropy
    return replace(run, table=table)


class TestLttFit:
    def test_separable_run_certifies_and_the_held_out_check_and_simulation_agree(self, plain_run):
        from ic_core.governance.fit import fit_policy_on_run

        fit = fit_policy_on_run(_separable(plain_run), "entropy", None, method="ltt", alpha=0.2, delta=0.1,
                                n_boot=100, n_splits=50)
        pol, risk = fit.policy, fit.risk
        assert risk is not None and risk.ltt.certified and fit.target_met and not pol.escalate_all
        # Every right answer (1-2 bits) is below every wrong one (2.5-4 bits): LTT approves all the right
        # ones and as many wrong ones as α still allows at δ.
        assert pol.t_entropy_bits > 2.0 and pol.t_entropy_bits == risk.ltt.threshold and risk.ltt.coverage >= 0.5
        assert risk.ltt.empirical_error < 0.2 and risk.ltt.p_values[risk.ltt.n_tested - 2] <= 0.1
        assert pol.risk_control["certified"] and pol.risk_control["n_calibration"] == 36
        assert pol.risk_control["alpha"] == 0.2 and pol.target_error == 0.2 and pol.prefix_need == "none"
        sig = fit.signals
        ok = sig.entropy_bits[sig.test_idx] <= pol.t_entropy_bits
        wrong = ~sig.correct[sig.test_idx]
        assert risk.held_out.n == 24 and risk.held_out.n_approved == int(ok.sum())
        assert risk.held_out.errors_approved == int((ok & wrong).sum()) and risk.held_out.error_rate < 0.3
        assert risk.simulation is not None and risk.simulation.n_splits == 50 and risk.simulation.within_delta
        assert pol.held_out["guarantee"] == pol.guarantee and pol.guarantee.startswith("error among approved ≤ 0.2")
        summary = fit.summary()
        assert summary["method"] == "ltt" and summary["risk_control"]["held_out"]["error_rate"] == risk.held_out.error_rate

    def test_too_small_a_run_is_refused_with_the_reason_and_no_threshold(self, plain_run):
        from ic_core.governance.fit import fit_policy_on_run

        fit = fit_policy_on_run(_separable(plain_run), "entropy", None, method="ltt", alpha=0.05, delta=0.1,
                                n_boot=100, n_splits=20)
        pol = fit.policy
        assert not fit.risk.ltt.certified and pol.escalate_all and pol.t_entropy_bits is None
        assert "cannot certify α = 0.05 with 36 items" in fit.risk.ltt.reason
        assert pol.risk_control["reason"] == fit.risk.ltt.reason and pol.risk_control["coverage"] is None
        assert fit.risk.held_out is None and "n too small" in fit.risk.simulation_note
        assert np.all(fit.escalate) and pol.guarantee.startswith("none (not certified: cannot certify")
        from ic_core.governance.rule import explain

        verdict = explain(pol, 1.0, None)
        assert verdict.escalate and verdict.reason.startswith("The policy escalates every prompt: no threshold was "
                                                              "certified (cannot certify α = 0.05 with 36 items")

    def test_empirical_fit_is_unchanged_and_says_so(self, plain_run):
        from ic_core.governance.fit import fit_policy_on_run

        fit = fit_policy_on_run(_separable(plain_run), "entropy", 0.0, n_boot=200)
        assert fit.risk is None and fit.policy.risk_control is None and 2.0 <= fit.policy.t_entropy_bits <= 2.5
        assert fit.summary()["method"] == "empirical (no guarantee)" and fit.policy.guarantee == "none (empirical threshold)"

    def test_bad_levels_and_combined_are_one_line_errors(self, plain_run):
        from ic_core.governance.fit import fit_policy_on_run

        with pytest.raises(DataError, match="needs --alpha"):
            fit_policy_on_run(plain_run, "entropy", None, method="ltt")
        with pytest.raises(DataError, match="α and δ must lie strictly between 0 and 1"):
            fit_policy_on_run(plain_run, "entropy", None, method="ltt", alpha=1.5)
        with pytest.raises(DataError, match="certifies one score"):
            fit_policy_on_run(plain_run, "combined", None, method="ltt", alpha=0.2)
        with pytest.raises(DataError, match="Unknown fit method"):
            fit_policy_on_run(plain_run, "entropy", 0.2, method="bayes")

    def test_probe_ltt_approves_high_p_correct(self, plain_run):
        from ic_core.governance.fit import fit_policy_on_run

        fit = fit_policy_on_run(plain_run, "probe", None, method="ltt", alpha=0.9, delta=0.2, n_boot=100, n_splits=10)
        assert fit.risk.ltt.direction == "ge" and fit.risk.ltt.certified
        assert fit.policy.t_probe == fit.risk.ltt.threshold and 0.0 <= fit.policy.t_probe <= 1.0


class TestReadouts:
    def test_last_token_readout_of_a_per_item_run_and_the_comparison(self, item_run):
        from ic_core.governance.fit import fit_policy_on_run
        from ic_core.governance.signals import run_signals

        auto = run_signals(item_run)
        assert auto.prefix_mode == "per_item" and auto.entropy_signal == "h_slot"
        last = run_signals(item_run, readout="last-token")
        assert last.prefix_mode == "none" and last.entropy_signal == "h_int" and not last.states_at_readout
        np.testing.assert_allclose(last.entropy_bits, item_run.table["last_token_entropy_bits"].to_numpy(float))
        np.testing.assert_allclose(last.item_prefix_bits, auto.entropy_bits)
        fit = fit_policy_on_run(item_run, "entropy", None, method="ltt", alpha=0.9, delta=0.2, readout="last-token",
                                n_boot=50, n_splits=10, ood="auto")
        assert fit.policy.signal == "h_int" and fit.policy.prefix_need == "none" and fit.policy.agent_ready
        assert fit.policy.ood is None and "states were read after the answer prefix" in fit.ood_note
        comp = fit.risk.comparison
        assert set(comp) == {"last_token_H_int", "item_prefix_H_slot", "n_held_out"}
        assert comp["n_held_out"] == fit.signals.test_idx.size == 24
        assert all(0.0 <= comp[k]["held_out_auroc_wrong"] <= 1.0 for k in ("last_token_H_int", "item_prefix_H_slot"))
        # The research-only fit on the same run carries the same comparison (agent-ready read-out beside it).
        research = fit_policy_on_run(item_run, "entropy", None, method="ltt", alpha=0.9, delta=0.2, n_boot=50,
                                     n_splits=10)
        assert research.policy.prefix_mode == "per_item" and research.risk.comparison == comp
        lines = research.risk.lines()
        assert "what a per-item prefix buys, on the same held-out items:" in lines
        auc = comp["last_token_H_int"]["held_out_auroc_wrong"]
        assert any(line.startswith(f"  last-token H_int (agent-ready): held-out AUROC {auc:.3f} on 24 items")
                   for line in lines)
        with pytest.raises(DataError, match="states were read after the answer prefix"):
            fit_policy_on_run(item_run, "probe", None, method="ltt", alpha=0.5, readout="last-token")
        with pytest.raises(DataError, match="needs rows read after one generic prefix"):
            run_signals(item_run, readout="kind-prefix")

    def test_item_prefix_readout_is_refused_on_a_plain_run(self, plain_run):
        from ic_core.governance.signals import run_signals

        with pytest.raises(DataError, match="per-item prefixes"):
            run_signals(plain_run, readout="item-prefix")
        with pytest.raises(DataError, match="Unknown read-out"):
            run_signals(plain_run, readout="middle")


class TestOodGate:
    Q = "what is the capital of france?"

    def test_a_prompt_far_from_the_calibration_states_is_escalated_with_the_distance(self, tiny):
        base = analyze(tiny, self.Q, kind="short_answer")
        layer = tiny.n_layers
        rng = np.random.default_rng(0)
        cluster = base.state.hidden[layer][None, :] + rng.normal(scale=1e-3, size=(60, tiny.d_model))
        ood = fit_ood(cluster, n_components=3).to_json()
        pol = Policy(signal="h_int", model=tiny.spec.to_dict(), t_entropy_bits=64.0, kind="short_answer",
                     model_n_layers=tiny.n_layers, model_d_model=tiny.d_model, ood=ood, ood_layer=layer)
        inside = decide_for_analysis(pol, base)
        assert inside.decision == "approve" and inside.guarantee == "none (empirical threshold)"
        assert inside.signals["ood_distance"] <= inside.signals["ood_threshold"]
        far = decide_for_analysis(pol, analyze(tiny, "please list seven prime numbers and explain", kind="short_answer"))
        assert far.decision == "escalate" and far.guarantee == OUT_OF_DISTRIBUTION
        assert far.reason.startswith("out of distribution (distance ")
        assert "the guarantee holds only for prompts like the calibration items" in far.reason
        assert far.signals["ood_distance"] > far.signals["ood_threshold"] > 0
        # Without the OOD model the same prompt passes the (permissive) rule.
        assert decide_for_analysis(replace(pol, ood=None, ood_layer=None, policy_id=""),
                                   analyze(tiny, "please list seven prime numbers and explain",
                                           kind="short_answer")).decision == "approve"


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ic_core", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dir_loaded(tiny_dir):
    from ic_core.models import load_model

    return load_model(ModelSpec.parse(str(tiny_dir)))


class TestAgentPromptsFromTheCli:
    @pytest.mark.parametrize(("prefix", "readout", "entropy_key"), [
        (None, "last-token", "h_int_bits"),
        ("the answer is", "kind-prefix", "h_slot_bits"),
    ])
    def test_fit_ltt_then_gate_an_agent_prompt_without_a_prefix(self, dir_loaded, tmp_path, prefix, readout,
                                                                  entropy_key):
        run = _run(dir_loaded, tmp_path / "run", n=80, prefix=prefix)  # 48 training items: 24 set the OOD threshold
        out = tmp_path / "policy.json"
        proc = run_cli("policy", "fit", "--run", str(run.path), "--signal", "entropy", "--method", "ltt",
                       "--alpha", "0.9", "--delta", "0.2", "--readout", readout, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["method"] == "ltt" and res["risk_control"]["certified"] and res["readout"] == readout
        assert res["ood"]["layer"] == 4 and res["prefix_need"] == ("none" if prefix is None else "per_kind")
        assert "LTT: approve when score <=" in proc.stderr and "held-out (32 items)" in proc.stderr
        assert "simulation: 200 splits" in proc.stderr
        proc = run_cli("gate", "--policy", str(out), "--prompt", "what is 3 plus 4 ?", "--json", "--no-audit")
        assert proc.returncode == 0, proc.stderr
        dec = json.loads(proc.stdout)
        assert entropy_key in dec["signals"] and "ood_distance" in dec["signals"]
        assert dec["guarantee"] in (Policy.load(out).guarantee, OUT_OF_DISTRIBUTION)
        show = run_cli("policy", "show", str(out))
        assert show.returncode == 0 and json.loads(show.stdout)["guarantee"].startswith("error among approved ≤ 0.9")

    def test_a_per_item_fit_lists_agent_ready_read_outs_first_and_what_the_prefix_bought(self, dir_loaded, tmp_path):
        run = _run(dir_loaded, tmp_path / "run", n=60, per_item=True)
        out = tmp_path / "policy.json"
        proc = run_cli("policy", "fit", "--run", str(run.path), "--signal", "entropy", "--method", "ltt",
                       "--alpha", "0.9", "--delta", "0.2", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr.splitlines()
        head = err.index("read-outs of this run, agent-ready first:")
        assert err[head + 1].startswith("  --readout last-token   H_int at the last prompt token — agent-ready")
        assert err[head + 2].startswith("  --readout item-prefix  H_slot after each item's own prefix — research only")
        assert err[head + 2].endswith("<- this fit") and "<- this fit" not in err[head + 1]
        assert err[head + 3].startswith("note: this policy needs each prompt's own answer prefix (research only)")
        assert head < next(i for i, line in enumerate(err) if line.startswith("LTT: "))
        res = json.loads(proc.stdout)
        comp = res["risk_control"]["readout_comparison"]
        assert comp["n_held_out"] == 24
        i = err.index("what a per-item prefix buys, on the same held-out items:")
        auc = comp["last_token_H_int"]["held_out_auroc_wrong"]
        assert err[i + 1].startswith(f"  last-token H_int (agent-ready): held-out AUROC {auc:.3f} on 24 items")
        assert err[i + 2].startswith("  per-item-prefix H_slot (research only): held-out AUROC")
        assert any(line.startswith("simulation: 200 splits") and "of splits (δ = 0.2)" in line for line in err)

    def test_ltt_without_alpha_exits_2_with_one_line(self, dir_loaded, tmp_path):
        run = _run(dir_loaded, tmp_path / "run")
        proc = run_cli("policy", "fit", "--run", str(run.path), "--signal", "entropy", "--method", "ltt",
                       "--out", str(tmp_path / "p.json"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == ["error: Method 'ltt' needs --alpha (target error among approved) "
                                                    "and --delta."]
