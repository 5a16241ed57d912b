"""Governance rules moved out of the Governance page: the escalation rule, the policy from thresholds, the demo."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ic_core.errors import DataError
from ic_core.governance.policy import Policy
from ic_core.governance.rule import escalate, escalates_everything, explain, outcomes
from ic_core.models import ModelSpec
from ic_core.stats.gating import PlattCalibration, evaluate_held_out

SPEC = ModelSpec(source="local", name="tiny-llama").to_dict()
H = np.array([1.0, 2.0, 3.0, 4.0])
P = np.array([0.9, 0.2, 0.6, 0.4])


def _policy(**kw):
    base = dict(signal="h_int", model=SPEC, t_entropy_bits=2.5, regime="direct", kind="short_answer")
    base.update(kw)
    if base["signal"] in ("probe", "combined"):
        base.setdefault("probe", {"path": "", "id": "p1", "platt_coef": 1.0, "platt_intercept": 0.0})
    return Policy(**base)


class TestEscalate:
    """The one escalation rule on arrays."""

    def test_entropy_rule_escalates_above_the_threshold(self):
        np.testing.assert_array_equal(escalate("h_int", H, None, 2.0, None), [False, False, True, True])
        np.testing.assert_array_equal(escalate("h_slot", H, P, 3.5, 0.99), [False, False, False, True])

    def test_probe_rule_escalates_below_the_threshold(self):
        np.testing.assert_array_equal(escalate("probe", H, P, 0.0, 0.5), [False, True, False, True])
        np.testing.assert_array_equal(escalate("probe", None, P, None, 0.6), [False, True, False, True])

    def test_combined_is_either_rule(self):
        np.testing.assert_array_equal(escalate("combined", H, P, 3.5, 0.3), [False, True, False, True])

    def test_escalate_all_ignores_thresholds(self):
        assert escalate("h_int", H, None, None, None, escalate_all=True).tolist() == [True] * 4
        assert escalate("combined", H, P, None, None, escalate_all=True).tolist() == [True] * 4

    def test_missing_scores_or_threshold_are_refused(self):
        with pytest.raises(DataError, match="needs t_probe"):
            escalate("combined", H, P, 2.0, None)
        with pytest.raises(DataError, match="needs p_correct"):
            escalate("probe", H, None, None, 0.5)
        with pytest.raises(DataError, match="Unknown rule signal"):
            escalate("entropy", H, None, 2.0, None)

    def test_same_as_the_stats_combined_rule(self):
        from ic_core.stats.gating import combined_escalate

        rng = np.random.default_rng(3)
        h, p = rng.uniform(0, 5, 200), rng.uniform(0, 1, 200)
        np.testing.assert_array_equal(escalate("combined", h, p, 2.5, 0.4), combined_escalate(h, p, 2.5, 0.4))


class TestExplain:
    """The gate's per-prompt decision is the array rule on one item, with its reason."""

    @pytest.mark.parametrize("signal", ["h_int", "probe", "combined"])
    def test_agrees_with_escalate_on_every_item(self, signal):
        policy = _policy(signal=signal, t_entropy_bits=None if signal == "probe" else 2.5,
                         entropy_signal="h_int" if signal == "combined" else None,
                         t_probe=0.5 if signal != "h_int" else None)
        flags = escalate(signal, H, P, policy.t_entropy_bits, policy.t_probe)
        for h, p, flag in zip(H, P, flags):
            assert explain(policy, float(h), float(p)).escalate == bool(flag)

    def test_reasons_name_what_fired_or_passed(self):
        policy = _policy(signal="combined", entropy_signal="h_int", t_probe=0.5)
        assert explain(policy, 3.0, 0.9).reason == "H_int 3.00 bits > threshold 2.50 bits."
        assert explain(policy, 1.0, 0.9).reason == (
            "H_int 1.00 bits <= threshold 2.50 bits; probe P(correct) 0.90 >= threshold 0.50.")
        both = explain(policy, 3.0, 0.1)
        assert both.escalate and both.reason == (
            "H_int 3.00 bits > threshold 2.50 bits; probe P(correct) 0.10 < threshold 0.50.")

    def test_escalate_all_needs_no_read_out(self):
        v = explain(_policy(escalate_all=True, t_entropy_bits=None), None, None)
        assert v.escalate and "escalates every prompt" in v.reason


class TestOutcomes:
    def test_caught_slipped_and_escalated(self):
        flags = np.array([True, False, True, False, True])
        correct = np.array([False, False, True, True, False])
        o = outcomes(flags, correct, np.array([4, 0, 1, 2, 3]))
        assert o.escalated.tolist() == [4, 0, 2] and o.caught.tolist() == [4, 0] and o.slipped.tolist() == [1]

    def test_escalates_everything(self):
        flags = np.array([True, True, False])
        assert escalates_everything(flags, np.array([0, 1])) and not escalates_everything(flags, np.array([1, 2]))
        assert not escalates_everything(flags, np.array([], dtype=int))  # no items: not "everything"


# --------------------------------------------------------------------------------------
# A run's signals (no model: built from a table) and the policy from thresholds
# --------------------------------------------------------------------------------------


def _signals(prefix_mode="fixed"):
    from ic_core.governance.signals import RunSignals

    n = 10
    correct = np.array([True, False] * 5)
    table = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)], "question": [f"q{i}" for i in range(n)],
        "output_text": ["a"] * n, "expected": ["a"] * n, "correct": correct, "row": np.arange(n),
        "regime": ["direct"] * n,
    })
    return RunSignals(
        run_path="/runs/r", dataset="tinyset", regime="direct", kind="numeric", table=table, correct=correct,
        entropy_bits=np.linspace(0.95, 3.05, n), entropy_signal="h_slot" if prefix_mode != "none" else "h_int",
        prefix_mode=prefix_mode, answer_prefix="the answer is" if prefix_mode == "fixed" else None,
        train_idx=np.array([0, 1, 2, 3, 4, 5]), test_idx=np.array([6, 7, 8, 9]), holdout=0.4, seed=3,
        n_ungraded_excluded=2, model=SPEC, n_layers=4, d_model=32,
    )


class FakeSavedProbe:
    probe_id = "abc123"

    def __init__(self):
        self.saved_to = []

    def save(self, stem):
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        path = stem.with_name(stem.name + ".json")
        path.write_text("{}")
        self.saved_to.append(path)
        return path


def _scores(p=None):
    from ic_core.governance.fit import ProbeScores

    p = np.linspace(0.9, 0.1, 10) if p is None else p
    return ProbeScores(p, FakeSavedProbe(), PlattCalibration(1.5, -0.2), "probe fitted on the training items")


class TestRunSignalsViews:
    def test_indices_of_each_view(self):
        sig = _signals()
        assert sig.indices("training").tolist() == [0, 1, 2, 3, 4, 5]
        assert sig.indices("held-out").tolist() == [6, 7, 8, 9] and sig.indices("all").tolist() == list(range(10))
        with pytest.raises(DataError, match="Unknown item view"):
            sig.indices("test")

    def test_items_table_keeps_display_columns_and_rounds_scores(self):
        sig = _signals()
        frame = sig.items_table(np.array([7, 2]), {"H_slot (bits)": sig.entropy_bits + 1e-6})
        assert list(frame.columns) == ["item_id", "question", "output_text", "expected", "correct", "H_slot (bits)"]
        assert frame["item_id"].tolist() == ["i7", "i2"] and frame.index.tolist() == [0, 1]
        np.testing.assert_allclose(frame["H_slot (bits)"], np.round(sig.entropy_bits[[7, 2]], 3))

    def test_default_target_and_threshold_range(self):
        sig = _signals()
        assert sig.default_target_error() == 0.25  # half of 3 wrong out of 6 training items
        assert sig.entropy_threshold_range() == (0.9, pytest.approx(3.2), pytest.approx(2.0))


class TestPolicyFromThresholds:
    def test_hand_set_entropy_thresholds_are_recorded_as_such(self):
        from ic_core.governance.fit import evaluate_thresholds

        sig = _signals()
        ev = evaluate_thresholds(sig, "h_slot", 2.0, 0.4, store_prompt_text=True)
        np.testing.assert_array_equal(ev.escalate, sig.entropy_bits > 2.0)
        assert ev.held_out.n == 4 and ev.held_out.escalation_rate == 1.0  # held-out entropies are all > 2.0
        p = ev.policy
        assert (p.signal, p.entropy_signal, p.t_entropy_bits, p.t_probe) == ("h_slot", "h_slot", 2.0, None)
        assert p.prefix_mode == "fixed" and p.answer_prefix == "the answer is" and p.store_prompt_text
        assert p.fitted_on == {"run_path": "/runs/r", "dataset": "tinyset", "regime": "direct", "n_train": 6,
                               "n_held_out": 4, "n_ungraded_excluded": 2, "holdout": 0.4, "seed": 3,
                               "probe_source": None, "thresholds": "set by hand"}
        assert p.target_error is None and p.held_out == ev.held_out.to_json()
        assert (p.model_n_layers, p.model_d_model) == (4, 32)

    def test_combined_with_a_probe_and_a_fitted_origin(self):
        from ic_core.governance.fit import FITTED_ON_TRAINING, evaluate_thresholds

        sig, scores = _signals(), _scores()
        ev = evaluate_thresholds(sig, "combined", 2.5, 0.5, scores=scores, target_error=0.2,
                                 threshold_origin=FITTED_ON_TRAINING)
        np.testing.assert_array_equal(ev.escalate, (sig.entropy_bits > 2.5) | (scores.p_correct < 0.5))
        p = ev.policy
        assert p.probe == {"path": "", "id": "abc123", "platt_coef": 1.5, "platt_intercept": -0.2}
        assert p.fitted_on["thresholds"] == "fitted on training items" and p.target_error == 0.2
        assert p.fitted_on["probe_source"] == "probe fitted on the training items"

    def test_escalate_all_keeps_no_thresholds(self):
        from ic_core.governance.fit import policy_from_thresholds

        sig, scores = _signals(), _scores()
        report = evaluate_held_out(np.ones(10, bool), sig.correct, sig.test_idx, n_boot=50)
        p = policy_from_thresholds(sig, "probe", 2.0, 0.7, report, scores=scores, escalate_all=True,
                                   threshold_origin=None)
        assert p.escalate_all and p.t_entropy_bits is None and p.t_probe is None and p.entropy_signal is None
        assert "thresholds" not in p.fitted_on  # the CLI's documents never recorded it

    def test_the_same_rule_as_the_cli_fit(self):
        """A fitted policy rebuilt from its own thresholds gives the fit's decisions and document."""
        from ic_core.governance.fit import evaluate_thresholds, fit_policy_on_run

        sig = _signals()
        fit = fit_policy_on_run(None, "entropy", 0.0, signals=sig, n_boot=100)
        ev = evaluate_thresholds(sig, "h_slot", fit.policy.t_entropy_bits, None, target_error=0.0,
                                 threshold_origin=None, n_boot=100)
        np.testing.assert_array_equal(ev.escalate, fit.escalate)
        assert ev.policy.policy_id == fit.policy.policy_id

    def test_a_probe_rule_without_scores_is_refused(self):
        from ic_core.governance.fit import evaluate_thresholds

        with pytest.raises(DataError, match="needs p_correct"):
            evaluate_thresholds(_signals(), "probe", None, 0.5)

    def test_threshold_context_changes_with_split_signal_and_probe(self):
        from dataclasses import replace

        from ic_core.governance.fit import threshold_context

        sig, scores = _signals(), _scores()
        base = threshold_context(sig, "combined", scores)
        assert base == ("/runs/r", "direct", 0.4, 3, "combined", "abc123")
        assert threshold_context(replace(sig, holdout=0.5), "combined", scores) != base
        assert threshold_context(sig, "probe", scores) != base and threshold_context(sig, "combined", None) != base


class TestAttachSavedProbe:
    def test_saves_once_into_the_runs_probes_folder(self, tmp_path):
        from ic_core.governance.fit import attach_saved_probe, evaluate_thresholds

        sig, scores = _signals(), _scores()
        policy = evaluate_thresholds(sig, "probe", None, 0.5, scores=scores).policy
        attached = attach_saved_probe(policy, scores, tmp_path)
        path = tmp_path / "probes" / "gate-abc123.json"
        assert attached.probe["path"] == str(path.resolve()) and path.is_file()
        assert attached.probe["id"] == "abc123" and attached.probe["platt_coef"] == 1.5
        assert attached.policy_id != policy.policy_id and attached.policy_id == attached.content_hash()
        again = attach_saved_probe(policy, scores, tmp_path)
        assert len(scores.probe.saved_to) == 1 and again.policy_id == attached.policy_id  # not written twice

    def test_policies_without_a_probe_are_unchanged(self, tmp_path):
        from ic_core.governance.fit import attach_saved_probe, evaluate_thresholds

        policy = evaluate_thresholds(_signals(), "h_slot", 2.0, None).policy
        assert attach_saved_probe(policy, _scores(), tmp_path) is policy and not (tmp_path / "probes").exists()

    def test_unwritable_folder_is_a_data_error(self, tmp_path):
        from ic_core.governance.fit import attach_saved_probe, evaluate_thresholds

        sig, scores = _signals(), _scores()
        policy = evaluate_thresholds(sig, "probe", None, 0.5, scores=scores).policy
        blocker = tmp_path / "file"
        blocker.write_text("x")  # a file where the run folder should be: mkdir fails
        with pytest.raises(DataError, match="Could not save the probe next to the run"):
            attach_saved_probe(policy, scores, blocker)


# --------------------------------------------------------------------------------------
# Audit rows and the demo's runs
# --------------------------------------------------------------------------------------


def test_audit_rows_newest_first_with_short_hash_and_hidden_prompt():
    from ic_core.governance.audit import audit_rows

    records = [
        {"time": "t1", "decision": "approve", "reason": "r1", "policy_id": "p", "model": "m", "elapsed_s": 0.1,
         "prompt_sha256": "a" * 64, "signals": {"h_int_bits": 1.5}},
        {"time": "t2", "decision": "escalate", "reason": "r2", "policy_id": "p", "model": "m", "elapsed_s": 0.2,
         "prompt_sha256": "b" * 64, "prompt": "é?", "signals": {}},
    ]
    rows = audit_rows(records)
    assert [r["time"] for r in rows] == ["t2", "t1"]
    assert rows[0]["prompt"] == "é?" and rows[1]["prompt"] == "(not stored)"
    assert rows[1]["prompt_sha256"] == "a" * 16 and json.loads(rows[1]["signals"]) == {"h_int_bits": 1.5}


@dataclass
class _Info:
    name: str
    dataset_name: str | None
    n_rows_done: int


def test_demo_runs_come_first_and_empty_runs_are_left_out():
    from ic_core.governance.demo import DEMO_SET, demo_candidates, runs_with_rows

    runs = [_Info("a", "capitals", 5), _Info("b", DEMO_SET, 60), _Info("c", DEMO_SET, 0), _Info("d", None, 3),
            _Info("e", DEMO_SET, 10)]
    kept = runs_with_rows(runs)
    assert [r.name for r in kept] == ["a", "b", "d", "e"]
    demo, candidates = demo_candidates(kept)
    assert [r.name for r in demo] == ["b", "e"] and [r.name for r in candidates] == ["b", "e", "a", "d"]


def test_demo_command_makes_the_demo_run():
    from ic_core.governance.demo import DEMO_COMMAND

    assert DEMO_COMMAND == ('python -m ic_core study --data governance_ops --regimes direct --limit 60 '
                            '--answer-prefix "The answer is" --max-new-tokens 8')


# --------------------------------------------------------------------------------------
# The Governance page's sentences (ic_core.narrative)
# --------------------------------------------------------------------------------------


class TestGovernanceText:
    def test_rates_and_intervals(self):
        from ic_core.narrative import ci_caption, percent_text, rate_ci_text

        assert percent_text(0.4249) == "42%" and percent_text(None) == "n/a" and percent_text(float("nan")) == "n/a"
        assert rate_ci_text(0.2, (0.1, 0.35)) == "20% [10%, 35%]" and rate_ci_text(0.2, None) == "20% [CI n/a]"
        assert rate_ci_text(None, None) == "n/a (nothing approved)"
        assert ci_caption((0.1, 0.35)) == "95 % CI [10%, 35%]" and ci_caption(None) == "95 % CI n/a (too few items)"

    def test_signal_labels_follow_the_read_out(self):
        from ic_core.narrative import signal_labels

        assert signal_labels("h_slot") == {"h_slot": "H_slot (after the answer prefix)",
                                           "probe": "probe P(correct) (fitted on the training items)",
                                           "combined": "combined: H_slot or probe"}
        assert list(signal_labels("h_int")) == ["h_int", "probe", "combined"]
        assert signal_labels("h_int")["h_int"] == "H_int (at the last prompt token)"

    def test_split_and_held_out_captions(self):
        from ic_core.narrative import held_out_caption, split_caption, threshold_origin_note

        sig = _signals()
        assert split_caption(sig) == "6 training and 4 held-out items (2 ungraded left out) · prefix mode **fixed**."
        flags = np.array([False] * 6 + [True, True, False, False])  # held out: 6 right but escalated, 7 caught, 9 slips
        report = evaluate_held_out(flags, sig.correct, sig.test_idx, n_boot=50)
        text = held_out_caption(report, threshold_origin_note(False))
        assert text.startswith("Held out: **1** wrong answers caught, **1** slipped through, **1** right answers")
        assert text.endswith("these figures are optimistic.")
        assert threshold_origin_note(True) == "Thresholds fitted on the training items only."

    def test_comparison_intro_headline_and_warnings(self):
        from ic_core.governance.compare import SignalComparison
        from ic_core.narrative import (
            comparison_headline,
            comparison_intro,
            escalates_everything_warning,
            small_sample_note,
        )

        @dataclass
        class Est:
            ci95: tuple[float, float] | None

        @dataclass
        class Res:
            name: str
            auroc: Est

        sig = _signals()
        strong, flat, none = Res("probe P(correct)", Est((0.6, 0.9))), Res("H_int", Est((0.4, 0.7))), Res("x", Est(None))
        comp = SignalComparison(sig, (flat, strong, none), 0.2, ())
        assert comparison_intro(comp) == (
            "**Fitted on 6 training items, judged on 4 held-out items** (stratified split, seed 3; 2 ungraded rows "
            "left out). With no gate, 50% of the held-out answers are wrong. Target: at most 20% wrong among "
            "auto-approved answers.")
        assert comparison_headline(comp) == ("**probe P(correct)** rank right answers above wrong ones better than "
                                             "chance on held-out items; **H_int** show no evidence of signal "
                                             "(interval includes 0.5).")
        assert comparison_headline(SignalComparison(sig, (flat, none), 0.2, ())).startswith(
            "On these held-out items **no signal separates")
        assert small_sample_note(39) == ("Only 39 held-out items: the intervals are wide. Read them, not just the "
                                         "point values.")
        assert small_sample_note(40) is None
        assert escalates_everything_warning("H_slot", "escalate everything").startswith(
            "**H_slot: every held-out item is escalated** (escalate everything). Nothing slips through")

    def test_policy_and_decision_text(self):
        from ic_core.governance.gate import Decision
        from ic_core.narrative import active_policy_text, decision_text, recorded_held_out_text

        policy = _policy(held_out={"n_held_out": 24, "escalation_rate": 0.25, "error_among_approved": None})
        assert active_policy_text(policy) == (
            f"**Active policy** `{policy.policy_id}` — Escalate when H_int > 2.50 bits.  \n"
            "Signal h_int, regime direct, prefix mode none, model tiny-llama.")
        assert recorded_held_out_text(policy) == ("Held-out figures recorded in the policy: n = 24, escalation rate "
                                                  "25%, error among approved n/a.")
        assert recorded_held_out_text(_policy()) is None
        d = Decision("escalate", "H_int 3.00 bits > threshold 2.50 bits.", {}, "pid", 0.123, "m", audit_log="/a.jsonl")
        assert decision_text(d) == "**ESCALATE** — H_int 3.00 bits > threshold 2.50 bits. (0.12 s, logged to /a.jsonl)"

    def test_probe_source_caption(self):
        from ic_core.narrative import probe_source_caption

        assert "It never saw this run's items" in probe_source_caption("probe x fitted on another run", "x", True)
        own = probe_source_caption("last-5-layers probe fitted on the training items only", "abc", False)
        assert own.startswith("Probe: last-5-layers probe fitted on the training items only (probe abc).")
        assert "no item is scored by a probe that saw it" in own
