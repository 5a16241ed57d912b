"""Policy fields of issue 12: risk_control, ood/ood_layer, prefix_need; round trip, refusals, older files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.governance.policy import Policy
from ic_core.stats.ood import fit_ood

MODEL = {"source": "local", "name": "tiny-llama", "dtype": "float32", "device": "cpu", "trust_remote_code": False}
RC = {"method": "ltt", "bound": "clopper_pearson", "alpha": 0.2, "delta": 0.1, "n_calibration": 120,
      "coverage": 0.4, "certified": True, "reason": None, "needed_n": None, "direction": "le"}


def _ood_json(d=8, seed=0):
    rng = np.random.default_rng(seed)
    return fit_ood(rng.normal(size=(80, d)), n_components=3).to_json()


def _policy(**kw):
    base = dict(signal="h_int", model=MODEL, t_entropy_bits=2.5, model_n_layers=4, model_d_model=8)
    base.update(kw)
    return Policy(**base)


class TestRoundTrip:
    def test_new_fields_survive_save_and_load_and_are_signed(self, tmp_path):
        pol = _policy(risk_control=RC, ood=_ood_json(), ood_layer=4, prefix_need="none")
        loaded = Policy.load(pol.save(tmp_path / "p.json"))
        assert loaded.risk_control == RC and loaded.ood_layer == 4 and loaded.prefix_need == "none"
        assert loaded.ood["threshold"] == pol.ood["threshold"] and loaded.policy_id == pol.policy_id
        assert loaded.guarantee == "error among approved ≤ 0.2 with probability ≥ 0.9 (LTT, Clopper-Pearson, n=120)"
        # The signature covers the new fields: change the OOD threshold and the file is refused.
        data = json.loads((tmp_path / "p.json").read_text())
        data["ood"]["threshold"] = 1e6
        with pytest.raises(DataError, match="edited after it was made"):
            Policy.from_dict(data)

    def test_uncertified_policy_escalates_all_and_says_why(self):
        rc = {**RC, "certified": False, "coverage": None, "reason": "cannot certify α = 0.05 with 40 items; need ≈ 45",
              "needed_n": 45}
        pol = _policy(t_entropy_bits=None, escalate_all=True, risk_control=rc)
        assert pol.guarantee.startswith("none (not certified: cannot certify α = 0.05 with 40 items")
        assert "no threshold certified" in pol.describe()

    def test_empirical_policy_says_it_has_no_guarantee(self):
        assert _policy().guarantee == "none (empirical threshold)"


class TestRefusals:
    @pytest.mark.parametrize(("change", "match"), [
        ({"alpha": 1.5}, "risk_control.alpha"),
        ({"delta": 0.0}, "risk_control.delta"),
        ({"method": "magic"}, "risk_control.method"),
        ({"bound": "chebyshev"}, "risk_control.bound"),
        ({"n_calibration": 0}, "risk_control.n_calibration"),
        ({"coverage": None}, "needs the coverage"),
        ({"coverage": 1.2}, "risk_control.coverage"),
        ({"extra": 1}, "Unknown risk_control keys"),
        ({"alpha": float("nan")}, "finite"),
    ])
    def test_malformed_risk_control(self, change, match):
        with pytest.raises(DataError, match=match):
            _policy(risk_control={**RC, **change})

    def test_uncertified_risk_control_with_a_threshold_is_refused(self):
        rc = {**RC, "certified": False, "coverage": None, "reason": "cannot certify"}
        with pytest.raises(DataError, match="must escalate every prompt"):
            _policy(risk_control=rc)
        with pytest.raises(DataError, match="needs the reason"):
            _policy(t_entropy_bits=None, escalate_all=True, risk_control={**rc, "reason": None})

    def test_certified_but_escalate_all_is_refused(self):
        with pytest.raises(DataError, match="certified but the policy escalates every prompt"):
            _policy(t_entropy_bits=None, escalate_all=True, risk_control=RC)

    def test_malformed_ood(self):
        good = _ood_json()
        with pytest.raises(DataError, match="go together"):
            _policy(ood=good)
        with pytest.raises(DataError, match="ood_layer"):
            _policy(ood=good, ood_layer=9)
        with pytest.raises(DataError, match="Not an OOD model"):
            _policy(ood={**good, "kind": "other"}, ood_layer=2)
        with pytest.raises(DataError, match="inconsistent shapes"):
            _policy(ood={**good, "mean": good["mean"][:-1]}, ood_layer=2)
        with pytest.raises(DataError, match="width 16"):
            _policy(ood=_ood_json(d=16), ood_layer=2)

    def test_prefix_need_must_match_the_prefix_mode(self):
        with pytest.raises(DataError, match="Unknown prefix_need"):
            _policy(prefix_need="sometimes")
        with pytest.raises(DataError, match="contradicts prefix_mode 'none'"):
            _policy(prefix_need="per_kind")
        pol = _policy(signal="h_slot", prefix_mode="fixed", answer_prefix="The answer is", prefix_need="per_kind")
        assert pol.agent_ready and not _policy(signal="h_slot", prefix_mode="per_item").agent_ready


class TestOlderFiles:
    def test_a_file_written_before_the_new_fields_loads_with_its_id(self, monkeypatch):
        """A document with exactly the fields of before issue 12, hashed the way it was then, still loads."""
        monkeypatch.setenv("IC_POLICY_KEY", "test-operator-key-" + "0" * 32)
        doc = {
            "signal": "h_int", "model": MODEL, "regime": "direct", "kind": "short_answer", "template_user": None,
            "prefix_mode": "none", "answer_prefix": None, "t_entropy_bits": 2.5, "entropy_signal": None,
            "t_probe": None, "escalate_all": False, "probe": None, "model_n_layers": 4, "model_d_model": 8,
            "fitted_on": {}, "target_error": 0.2, "held_out": {}, "store_prompt_text": False,
            "created": "2026-11-01T00:00:00+00:00", "format_version": 1,
        }
        body = {k: v for k, v in doc.items() if k != "created"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        doc["policy_id"] = hashlib.sha256(text.encode()).hexdigest()[:16]
        doc["signature"] = ""
        pol = Policy.from_dict(doc, allow_unsigned=True)
        assert pol.risk_control is None and pol.ood is None and pol.prefix_need is None
        assert pol.guarantee == "none (empirical threshold)" and pol.agent_ready
        signed = pol.sign()
        assert "risk_control" not in json.loads(signed.to_json())
        assert Policy.from_json(signed.to_json()).policy_id == doc["policy_id"]
