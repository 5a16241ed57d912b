"""Issue 11 cases 2 and 3: signed policies and the policy schema.

Case -> test: forged threshold with a recomputed id -> ``test_forged_threshold_with_recomputed_id_refused``;
wrong key -> ``test_wrong_key_refused``; unsigned -> ``test_unsigned_refused_without_flag`` /
``test_unsigned_accepted_with_flag``; malformed fields -> ``TestSchema``; fuzz ->
``test_fuzz_from_json_only_data_error``; swapped probe -> tests/integration/test_gate.py
``test_swapped_probe_refused_by_digest``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ic_core.errors import DataError
from ic_core.governance.policy import Policy
from ic_core.models import ModelSpec

KEY = "k" * 40
SPEC = ModelSpec(source="local", name="tiny-llama").to_dict()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("IC_POLICY_KEY", KEY)
    monkeypatch.delenv("IC_POLICY_KEY_FILE", raising=False)


def _probe_policy(**kw) -> Policy:
    base = dict(signal="probe", model=SPEC, t_probe=0.7, probe={"path": "p.json", "id": "x", "platt_coef": 1.0,
                "platt_intercept": 0.0})
    base.update(kw)
    return Policy(**base)


def _doc(tmp_path) -> dict:
    path = _probe_policy().save(tmp_path / "p.json")
    return json.loads(path.read_text())


def test_saved_policy_is_signed_and_verifies(tmp_path):
    path = _probe_policy().save(tmp_path / "p.json")
    loaded = Policy.load(path)
    assert loaded.is_signed and len(loaded.signature) == 64
    assert loaded.t_probe == 0.7


def test_forged_threshold_with_recomputed_id_refused(tmp_path):
    doc = _doc(tmp_path)
    doc["t_probe"] = 0.0  # approve everything
    doc["policy_id"] = ""
    doc["policy_id"] = Policy(**{k: v for k, v in doc.items() if k != "signature"}).policy_id
    with pytest.raises(DataError, match="wrong signature: it was edited after signing"):
        Policy.from_json(json.dumps(doc))


def test_wrong_key_refused(tmp_path, monkeypatch):
    text = _probe_policy().save(tmp_path / "p.json").read_text()
    monkeypatch.setenv("IC_POLICY_KEY", "z" * 40)
    with pytest.raises(DataError, match="wrong signature"):
        Policy.from_json(text)


def test_unsigned_refused_without_flag(tmp_path):
    path = _probe_policy().save(tmp_path / "p.json", sign=False)
    with pytest.raises(DataError, match=r"is unsigned: sign it .* --allow-unsigned"):
        Policy.load(path)


def test_unsigned_accepted_with_flag(tmp_path):
    path = _probe_policy().save(tmp_path / "p.json", sign=False)
    policy = Policy.load(path, allow_unsigned=True)
    assert not policy.is_signed and policy.t_probe == 0.7


def test_signed_policy_without_key_cannot_be_verified(tmp_path, monkeypatch):
    text = _probe_policy().save(tmp_path / "p.json").read_text()
    monkeypatch.delenv("IC_POLICY_KEY")
    with pytest.raises(DataError, match="signed but cannot be verified: No operator key"):
        Policy.from_json(text)


class TestSchema:
    """Each malformed field is a one-line DataError."""

    @pytest.mark.parametrize(("path", "value", "message"), [
        (("probe", "platt_coef"), "1.0", "'probe.platt_coef' must be a finite number; got str"),
        (("probe", "platt_coef"), [1.0], "'probe.platt_coef' must be a finite number; got list"),
        (("probe", "platt_intercept"), None, "'probe.platt_intercept' must be a finite number; got NoneType"),
        (("probe", "platt_intercept"), 1e300, r"'probe.platt_intercept' must be in \[-1000000.0, 1000000.0\]"),
        (("t_probe",), -5, r"'t_probe' must be in \[0.0, 1.0\]; got -5"),
        (("t_probe",), 1.5, r"'t_probe' must be in \[0.0, 1.0\]"),
        (("model", "dtype"), "float64", "model.dtype 'float64' is not one of float32, bfloat16, float16"),
        (("model", "source"), "bogus", "model.source 'bogus' is not one of default, hub, local, gguf"),
        (("model_n_layers",), 0, "'model_n_layers' must be a positive integer"),
    ])
    def test_bad_field(self, tmp_path, path, value, message):
        doc = _doc(tmp_path)
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        with pytest.raises(DataError, match=message) as info:
            Policy.from_json(json.dumps(doc), allow_unsigned=True)
        assert "\n" not in str(info.value)

    def test_nan_refused(self, tmp_path):
        text = json.dumps(_doc(tmp_path)).replace('"platt_coef": 1.0', '"platt_coef": NaN')
        with pytest.raises(DataError, match="NaN is not a finite number"):
            Policy.from_json(text, allow_unsigned=True)

    def test_5000_digit_number_past_int_string_limit(self, tmp_path):
        text = json.dumps(_doc(tmp_path)).replace('"t_probe": 0.7', '"t_probe": ' + "9" * 5000)
        with pytest.raises(DataError, match="not valid JSON: Exceeds the limit") as info:
            Policy.from_json(text, allow_unsigned=True)
        assert "\n" not in str(info.value)

    def test_huge_int_within_python_limit(self, tmp_path):
        text = json.dumps(_doc(tmp_path)).replace('"t_probe": 0.7', '"t_probe": ' + "9" * 4000)
        with pytest.raises(DataError, match="integer past 1e"):
            Policy.from_json(text, allow_unsigned=True)

    def test_deep_nesting(self):
        text = '{"fitted_on": ' + "[" * 100_000 + "]" * 100_000 + "}"
        with pytest.raises(DataError, match="nests deeper than 32 levels"):
            Policy.from_json(text, allow_unsigned=True)

    def test_moderate_nesting_in_fitted_on(self, tmp_path):
        doc = _doc(tmp_path)
        doc["fitted_on"] = json.loads("[" * 50 + "]" * 50)
        with pytest.raises(DataError, match="nests deeper than 32 levels"):
            Policy.from_json(json.dumps(doc), allow_unsigned=True)


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_json, field=st.sampled_from(["t_probe", "probe", "model", "signature", "fitted_on", "policy_id", "x"]))
def test_fuzz_from_json_only_data_error(data, field):
    base = json.loads(_probe_policy().sign(KEY.encode()).to_json())
    for doc in (data, {**base, field: data}):
        text = json.dumps(doc, allow_nan=True)
        for allow in (True, False):
            try:
                Policy.from_json(text, allow_unsigned=allow)
            except DataError as exc:
                assert "\n" not in str(exc)
