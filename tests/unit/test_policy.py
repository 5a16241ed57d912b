"""Policy documents (validation, hashing, model checks) and threshold fitting on arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.governance.policy import ModelMismatchError, Policy, check_model
from ic_core.models import ModelSpec
from ic_core.stats.gating import (
    Confusion,
    confusion_at,
    evaluate_held_out,
    fit_combined,
    fit_platt,
    fit_threshold,
    risk_coverage,
    split_items,
)


@pytest.fixture(autouse=True)
def _operator_key(monkeypatch):
    """Policies are signed on save and verified on load (issue 11 case 2): give this module a key."""
    monkeypatch.setenv("IC_POLICY_KEY", "test-operator-key-" + "0" * 32)


SPEC = ModelSpec(source="local", name="tiny-llama").to_dict()


def _policy(**kw):
    base = dict(signal="h_int", model=SPEC, t_entropy_bits=2.5, regime="direct", kind="short_answer")
    base.update(kw)
    return Policy(**base)


class FakeLoaded:
    def __init__(self, spec=SPEC, n_layers=4, d_model=32):
        self.spec = ModelSpec.from_dict(spec)
        self.n_layers, self.d_model = n_layers, d_model


class TestPolicyDocument:
    def test_round_trip_keeps_every_field_and_id(self, tmp_path):
        p = _policy(target_error=0.1, fitted_on={"n_train": 30, "n_held_out": 20}, store_prompt_text=True)
        path = p.save(tmp_path / "sub" / "policy.json")
        q = Policy.load(path)
        assert q == p.sign() and q.is_signed and q.policy_id == p.policy_id and len(p.policy_id) == 16
        assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file

    def test_id_is_a_content_hash(self):
        a, b = _policy(), _policy()
        assert a.policy_id == b.policy_id  # creation time is not part of the content
        assert _policy(t_entropy_bits=2.6).policy_id != a.policy_id

    def test_edited_file_is_refused(self):
        data = json.loads(_policy().to_json())
        data["t_entropy_bits"] = 9.0
        with pytest.raises(DataError, match="edited"):
            Policy.from_json(json.dumps(data))

    def test_bad_json(self):
        with pytest.raises(DataError, match="not valid JSON"):
            Policy.from_json("{not json")
        with pytest.raises(DataError, match="JSON object"):
            Policy.from_json("[1, 2]")

    def test_unknown_signal(self):
        data = json.loads(_policy().to_json())
        data["signal"] = "vibes"
        data["policy_id"] = ""
        with pytest.raises(DataError, match="Unknown policy signal 'vibes'"):
            Policy.from_dict(data)

    def test_missing_and_unknown_fields(self):
        data = json.loads(_policy().to_json())
        del data["model"]
        with pytest.raises(DataError, match="missing required fields: model"):
            Policy.from_dict(data)
        data = json.loads(_policy().to_json())
        data["colour"] = "red"
        with pytest.raises(DataError, match="Unknown policy fields: colour"):
            Policy.from_dict(data)

    @pytest.mark.parametrize(
        ("name", "value", "match"),
        [
            ("t_entropy_bits", "2.5", "must be int or float or null"),
            ("store_prompt_text", 1, "must be bool"),
            ("t_entropy_bits", True, "must be int or float or null"),
            ("model", "default", "must be dict"),
        ],
    )
    def test_wrong_types(self, name, value, match):
        data = json.loads(_policy().to_json())
        data[name] = value
        data["policy_id"] = ""
        with pytest.raises(DataError, match=match):
            Policy.from_dict(data)

    def test_wrong_format_version(self):
        data = json.loads(_policy().to_json())
        data["format_version"] = 99
        with pytest.raises(DataError, match="format_version 99"):
            Policy.from_dict(data)

    def test_signal_needs_its_threshold_and_readout(self):
        with pytest.raises(DataError, match="needs t_entropy_bits"):
            _policy(t_entropy_bits=None)
        with pytest.raises(DataError, match="H_slot is read after a forced answer prefix"):
            _policy(signal="h_slot")
        with pytest.raises(DataError, match="needs t_probe"):
            _policy(signal="probe", t_entropy_bits=None)
        with pytest.raises(DataError, match="probe entry"):
            _policy(signal="probe", t_probe=0.5)
        assert _policy(signal="h_slot", prefix_mode="per_item").entropy_name == "H_slot"
        assert _policy(t_entropy_bits=None, escalate_all=True).describe().startswith("Escalate every")

    def test_model_mismatch_is_refused(self):
        p = _policy(model_n_layers=4, model_d_model=32)
        check_model(p, FakeLoaded())  # same model: passes
        check_model(p, FakeLoaded(spec={**SPEC, "device": "cuda"}))  # device may differ
        with pytest.raises(ModelMismatchError, match="fitted on model tiny-llama .* loaded model is SmolLM2"):
            check_model(p, FakeLoaded(spec=ModelSpec().to_dict()))
        with pytest.raises(ModelMismatchError, match="n_layers=4"):
            check_model(p, FakeLoaded(n_layers=30))


class TestArrays:
    def test_confusion_cells(self):
        risk = np.array([0.1, 0.2, 0.8, 0.9, 0.5])
        correct = np.array([True, False, True, False, True])
        c = confusion_at(0.5, risk, correct)  # escalate 0.8, 0.9
        assert c == Confusion(caught=1, slipped=1, cost=1, approved_right=2)
        assert c.escalation_rate == pytest.approx(0.4)
        assert c.error_among_approved == pytest.approx(1 / 3)
        assert c.share_of_errors_caught == pytest.approx(0.5)
        assert confusion_at(-1.0, risk, correct).error_among_approved is None

    def test_risk_coverage_groups_ties(self):
        rc = risk_coverage([1.0, 1.0, 2.0, 3.0], [True, False, True, False])
        np.testing.assert_allclose(rc.thresholds, [1.0, 2.0, 3.0])
        np.testing.assert_allclose(rc.coverage, [0.5, 0.75, 1.0])
        np.testing.assert_allclose(rc.error_among_approved, [0.5, 1 / 3, 0.5])
        assert rc.base_error == 0.5
        assert rc.area == pytest.approx(0.5 * 0.5 + 0.25 / 3 + 0.25 * 0.5)

    def test_risk_coverage_of_a_perfect_signal(self):
        rc = risk_coverage([0.0, 1.0, 2.0, 3.0], [True, True, False, False])
        np.testing.assert_allclose(rc.error_among_approved, [0, 0, 1 / 3, 0.5])

    def test_fit_threshold_known_optimum(self):
        # Right answers have risk 0..9, wrong ones 5.5..14.5: approving up to risk 7 gives
        # 8 right + 2 wrong (0.2); up to 8 gives 9 right + 3 wrong (0.25).
        right = np.arange(10.0)
        wrong = np.arange(10.0) + 5.5
        risk = np.r_[right, wrong]
        correct = np.r_[np.ones(10, bool), np.zeros(10, bool)]
        fit = fit_threshold(risk, correct, 0.2, np.arange(20))
        assert fit.target_met
        assert fit.threshold == pytest.approx(7.25)  # halfway from 7.0 to the next value 7.5
        assert (fit.train.n_approved, fit.train.slipped) == (10, 2)
        strict = fit_threshold(risk, correct, 0.0, np.arange(20))
        assert strict.threshold == pytest.approx(5.25) and strict.train.slipped == 0

    def test_fit_threshold_looks_only_at_training_items(self):
        risk = np.array([0.0, 1.0, 2.0, 3.0, 0.5, 0.6])
        correct = np.array([True, True, False, False, False, False])
        train = np.array([0, 1, 2, 3])
        a = fit_threshold(risk, correct, 0.0, train)
        risk2 = risk.copy()
        risk2[4:] = [99.0, -5.0]
        b = fit_threshold(risk2, correct, 0.0, train)
        assert a.threshold == b.threshold == pytest.approx(1.5)

    def test_unreachable_target_escalates_everything(self):
        fit = fit_threshold([0.0, 1.0, 2.0], [False, True, True], 0.1, [0, 1, 2])
        assert not fit.target_met and fit.threshold is None
        assert fit.train.n_escalated == 3
        assert "escalate everything" in fit.message

    def test_fit_threshold_rejects_bad_input(self):
        with pytest.raises(DataError, match="target error"):
            fit_threshold([1.0], [True], 1.5, [0])
        with pytest.raises(DataError, match="aligned"):
            fit_threshold([1.0, 2.0], [True], 0.1, [0])
        with pytest.raises(DataError, match="NaN"):
            fit_threshold([np.nan], [True], 0.1, [0])

    def test_fit_combined_uses_both_rules(self):
        # Wrong items: one has high entropy (caught by the entropy rule), one low P(correct).
        h = np.array([1.0, 1.1, 1.2, 1.3, 5.0, 1.05])
        p = np.array([0.9, 0.8, 0.85, 0.95, 0.9, 0.1])
        correct = np.array([True, True, True, True, False, False])
        fit = fit_combined(h, p, correct, 0.0, np.arange(6))
        assert fit.target_met and fit.train.n_approved == 4 and fit.train.slipped == 0
        assert 1.3 <= fit.t_entropy_bits < 5.0 and 0.1 < fit.t_probe <= 0.8
        # Flipped labels: every way of approving a right answer also approves a wrong one.
        none = fit_combined(h, p, ~correct, 0.0, np.arange(6))
        assert not none.target_met and none.t_entropy_bits is None and none.train.n_escalated == 6

    def test_split_is_stratified_seeded_and_partitions(self):
        correct = np.r_[np.ones(30, bool), np.zeros(20, bool)]
        tr, te = split_items(correct, holdout=0.4, seed=3)
        assert len(te) == 20 and len(tr) == 30
        assert sorted(np.r_[tr, te].tolist()) == list(range(50))
        assert correct[te].sum() == 12  # 60 % right in both shares
        tr2, te2 = split_items(correct, holdout=0.4, seed=3)
        assert np.array_equal(te, te2)
        assert not np.array_equal(te, split_items(correct, holdout=0.4, seed=4)[1])

    def test_split_refuses_one_class_and_small_n(self):
        with pytest.raises(DataError, match="Only one class") as info:
            split_items(np.r_[np.ones(39, bool), False])
        # the hint names what is enough, not just what is wrong
        assert "1 wrong answers" in str(info.value) and "at least 2 right and 2 wrong answers" in str(info.value)
        assert "at least 20 graded items in all (10 to train, 10 held out)" in str(info.value)
        with pytest.raises(DataError, match="n too small"):
            split_items(np.r_[np.ones(8, bool), np.zeros(8, bool)])

    def test_held_out_uses_only_held_out_items(self):
        rng = np.random.default_rng(0)
        correct = rng.random(60) < 0.5
        escalate = rng.random(60) < 0.3
        test = np.arange(40, 60)
        a = evaluate_held_out(escalate, correct, test, n_boot=200)
        esc2, cor2 = escalate.copy(), correct.copy()
        esc2[:40] = ~esc2[:40]
        cor2[:40] = ~cor2[:40]
        b = evaluate_held_out(esc2, cor2, test, n_boot=200)
        assert a == b and a.n == 20
        assert a.confusion == Confusion(
            caught=int((escalate[test] & ~correct[test]).sum()), slipped=int((~escalate[test] & ~correct[test]).sum()),
            cost=int((escalate[test] & correct[test]).sum()), approved_right=int((~escalate[test] & correct[test]).sum()),
        )
        lo, hi = a.escalation_rate_ci
        assert lo <= a.escalation_rate <= hi and hi - lo > 0.05
        lo, hi = a.error_among_approved_ci
        assert lo <= a.error_among_approved <= hi
        assert a.to_json()["n_held_out"] == 20

    def test_held_out_with_nothing_approved(self):
        r = evaluate_held_out(np.ones(12, bool), np.r_[np.ones(6, bool), np.zeros(6, bool)], np.arange(12), n_boot=100)
        assert r.escalation_rate == 1.0 and r.error_among_approved is None and r.error_among_approved_ci is None

    def test_platt_calibration_is_monotone_and_fits_the_rate(self):
        rng = np.random.default_rng(1)
        raw = rng.uniform(0.05, 0.95, 400)
        correct = rng.random(400) < 0.3  # raw scores carry no information; true rate 0.3
        cal = fit_platt(raw, correct)
        out = cal.apply(raw)
        assert abs(out.mean() - correct.mean()) < 0.02
        assert np.all(np.diff(cal.apply(np.linspace(0.1, 0.9, 9))) * np.sign(cal.coef) >= 0)
        with pytest.raises(DataError, match="one class"):
            fit_platt(raw[:5], np.ones(5, bool))
