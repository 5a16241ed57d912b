"""Integration tier: policies fitted on a saved tiny run (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.governance.policy import Policy
from ic_core.models import ModelSpec


@pytest.fixture(autouse=True)
def _operator_key(monkeypatch):
    """Policies are signed on save and verified on load (issue 11 case 2): give this module a key."""
    monkeypatch.setenv("IC_POLICY_KEY", "test-operator-key-" + "0" * 32)


SPEC = ModelSpec(source="local", name="tiny-llama").to_dict()


# --------------------------------------------------------------------------------------
# On a saved tiny run (integration tier)
# --------------------------------------------------------------------------------------


def _labelled_items(n=60, prefix="the answer is", op="plus"):
    from ic_core.datasets import PromptItem

    items = []
    for i in range(n):
        a, b = i % 13, (i * 7) % 11
        right = (i * 37) % 100 < 50
        items.append(PromptItem(id=f"t{i:03d}", question=f"what is {a} {op} {b} ?", answer=str(a + b), kind="numeric",
                                output=str(a + b if right else a + b + 1), answer_prefix=prefix))
    return items


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    from ic_core.study.runner import run_study

    return run_study(tiny, _labelled_items(), ["direct"], tmp_path_factory.mktemp("runs") / "r", generate=False,
                     dataset_name="tinyset")


def _with_entropy(run, entropy):
    from dataclasses import replace

    table = run.table.copy()
    table["readout_entropy_bits"] = entropy
    return replace(run, table=table)


class TestRunFitting:
    def test_run_signals_split_and_prefix_mode(self, tiny_run):
        from ic_core.governance.signals import run_signals

        sig = run_signals(tiny_run, holdout=0.4, seed=0)
        assert sig.prefix_mode == "fixed" and sig.answer_prefix == "the answer is" and sig.entropy_signal == "h_slot"
        assert (sig.train_idx.size, sig.test_idx.size) == (36, 24) and sig.kind == "numeric"
        assert sig.model["name"] == "tiny-llama" and (sig.n_layers, sig.d_model) == (4, 32)
        with pytest.raises(DataError, match="not in this run"):
            run_signals(tiny_run, regime="cot")

    def test_known_separation_is_found_and_judged_on_held_out_items(self, tiny_run):
        from ic_core.governance.fit import fit_policy_on_run

        correct = np.array([bool(v) for v in tiny_run.table["correct"]])
        rng = np.random.default_rng(0)
        entropy = np.where(correct, rng.uniform(1.0, 2.0, correct.size), rng.uniform(2.5, 4.0, correct.size))
        fit = fit_policy_on_run(_with_entropy(tiny_run, entropy), "entropy", 0.0, n_boot=200)
        assert fit.policy.signal == "h_slot" and fit.target_met
        assert 2.0 <= fit.policy.t_entropy_bits <= 2.5
        assert fit.held_out.error_among_approved == 0.0 and fit.held_out.n == 24
        wrong_held_out = int((~fit.signals.correct[fit.signals.test_idx]).sum())
        assert fit.held_out.confusion.caught == wrong_held_out and fit.held_out.confusion.cost == 0
        assert fit.policy.held_out["n_held_out"] == 24 and fit.policy.fitted_on["n_train"] == 36
        with pytest.raises(DataError, match="read H_slot .* not H_int"):
            fit_policy_on_run(tiny_run, "h_int", 0.2)

    def test_probe_scores_never_come_from_a_probe_that_saw_the_item(self, tiny_run, tmp_path):
        from ic_core.governance.fit import fit_policy_on_run, probe_scores, with_probe_path
        from ic_core.governance.signals import run_signals

        sig = run_signals(tiny_run)
        ps = probe_scores(tiny_run, sig)
        assert ps.probe.n_train == 36  # fitted on the training items only
        from ic_core.probes.overlap import question_hash

        # It records exactly those items, so it can be refused later on any run that shares one of them.
        assert set(ps.probe.train_question_sha256) == {question_hash(q) for q in sig.table["question"].iloc[sig.train_idx]}
        assert np.all((ps.p_correct > 0) & (ps.p_correct < 1))
        hidden = np.asarray(tiny_run.hidden)[sig.hidden_rows]
        raw = ps.probe.predict_proba_correct_batch(hidden[sig.test_idx])
        np.testing.assert_allclose(ps.p_correct[sig.test_idx], ps.calibration.apply(raw))
        fit = fit_policy_on_run(tiny_run, "combined", 0.4, signals=sig, scores=ps, n_boot=200)
        assert fit.policy.signal == "combined" and fit.policy.entropy_signal == "h_slot"
        fit = with_probe_path(fit, tmp_path / "p")
        assert Path(fit.policy.probe["path"]).is_file() and fit.policy.probe["id"] == ps.probe.probe_id
        # A probe fitted on this whole run has seen the held-out items: refused.
        from ic_core.probes.saved import fit_saved_probe_for_run

        whole = fit_saved_probe_for_run(tiny_run)
        with pytest.raises(DataError, match="held-out ones included"):
            probe_scores(tiny_run, sig, whole)

    def test_external_probe_is_calibrated_on_training_items(self, tiny_run, tmp_path_factory, tiny):
        from ic_core.governance.fit import probe_scores
        from ic_core.governance.signals import run_signals
        from ic_core.probes.saved import fit_saved_probe_for_run
        from ic_core.study.runner import run_study

        other = run_study(tiny, _labelled_items(40, op="minus"), ["direct"], tmp_path_factory.mktemp("o") / "o", generate=False)
        external = fit_saved_probe_for_run(other)
        sig = run_signals(tiny_run)
        ps = probe_scores(tiny_run, sig, external)
        assert ps.probe is external and "another run" in ps.source
        hidden = np.asarray(tiny_run.hidden)[sig.hidden_rows]
        np.testing.assert_allclose(ps.p_correct, ps.calibration.apply(external.predict_proba_correct_batch(hidden)))

    def test_cli_fit_with_an_external_probe_points_the_policy_at_it(self, tiny_run, tmp_path_factory, tiny, capsys):
        """``policy fit --probe`` reads the operator's probe file from its own folder and records its path."""
        import argparse

        from ic_core.cli.policy import run_fit
        from ic_core.probes.saved import fit_saved_probe_for_run
        from ic_core.study.runner import run_study

        other = run_study(tiny, _labelled_items(40, op="minus"), ["direct"], tmp_path_factory.mktemp("o") / "o", generate=False)
        probe_json = fit_saved_probe_for_run(other).save(tmp_path_factory.mktemp("probes") / "ext")
        out = tmp_path_factory.mktemp("pol") / "policy.json"
        args = argparse.Namespace(run=str(tiny_run.path), signal="probe", target_error=0.4, out=str(out),
                                  probe=str(probe_json), probe_out=None, regime=None, holdout=0.4, seed=0,
                                  store_prompt_text=False)
        assert run_fit(args) == 0
        policy = Policy.load(out)
        summary = json.loads(capsys.readouterr().out)
        assert policy.signal == "probe" and policy.probe["path"] == str(Path(probe_json).resolve())
        assert summary["policy_id"] == policy.policy_id and "another run" in summary["probe"]["source"]
        assert "thresholds" not in policy.fitted_on  # the CLI's documents keep their keys
