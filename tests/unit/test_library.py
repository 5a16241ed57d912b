"""ic_core.library: the policies folder, saved-probe lists, the default policy and the weak-probe reasons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ic_core.errors import DataError
from ic_core.governance.policy import Policy
from ic_core.library import (
    default_policy,
    load_saved_policy,
    policies_root,
    save_to_library,
    saved_policy_files,
    saved_probe_files,
    weak_probe_reasons,
)
from ic_core.probes.saved import fit_saved_probe

SPEC = {"source": "local", "name": "tiny-llama", "dtype": "float32", "device": "cpu", "trust_remote_code": False}


def entropy_policy() -> Policy:
    return Policy(signal="h_int", model=SPEC, regime="direct", kind="short_answer", t_entropy_bits=3.0)


@pytest.fixture
def probe():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(40, 3, 4))
    return fit_saved_probe(hidden, (hidden[:, -1, 0] > 0).astype(int), model_spec=SPEC)


def test_policies_folder_defaults_beside_the_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("IC_POLICIES_DIR", raising=False)
    monkeypatch.setenv("IC_RUNS_DIR", str(tmp_path / "data" / "runs"))
    assert policies_root() == tmp_path / "data" / "policies"
    monkeypatch.setenv("IC_POLICIES_DIR", str(tmp_path / "elsewhere"))
    assert policies_root() == tmp_path / "elsewhere"


def test_saved_policies_are_signed_listed_and_confined(tmp_path):
    folder = tmp_path / "policies"
    path = save_to_library(entropy_policy(), folder)
    assert path.name == f"policy-{Policy.load(path).policy_id}.json" and Policy.load(path).signature_valid()
    (folder / "notes.txt").write_text("not a policy")
    (folder / "link.json").symlink_to(path)
    assert saved_policy_files(folder) == [path]
    assert load_saved_policy(path, folder).policy.policy_id == Policy.load(path).policy_id
    outside = entropy_policy().save(tmp_path / "outside.json")
    with pytest.raises(DataError, match="not a policy file in the policies folder"):
        load_saved_policy(folder / ".." / "outside.json", folder)
    assert outside.is_file()


def test_default_policy_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("IC_POLICY", raising=False)
    assert default_policy() is None
    signed = entropy_policy().save(tmp_path / "signed.json")
    monkeypatch.setenv("IC_POLICY", str(signed))
    assert default_policy().policy.policy_id == Policy.load(signed).policy_id
    unsigned = entropy_policy().save(tmp_path / "unsigned.json", sign=False)
    monkeypatch.setenv("IC_POLICY", str(unsigned))
    with pytest.raises(DataError, match=r"IC_POLICY=.*refused.*unsigned"):
        default_policy()


def test_saved_probe_files_need_both_halves(tmp_path, probe):
    root = tmp_path / "runs"
    whole = probe.save(root / "run-a" / "probes" / "direct_last5")
    half = root / "run-b" / "probes" / "broken.json"
    half.parent.mkdir(parents=True)
    half.write_text("{}")
    assert saved_probe_files(root) == [whole.with_suffix(".json")]
    assert saved_probe_files(tmp_path / "missing") == []


class TestWeakProbeReasons:
    """A probe's P(correct) gets a note when what it records says it barely separates."""

    def strong(self, probe):
        return dataclasses.replace(probe, cv_auroc=0.81, cv_ci_low=0.7, cv_ci_high=0.9, C=1.0, n_train=120)

    def test_a_strong_probe_has_no_note(self, probe):
        assert weak_probe_reasons(self.strong(probe)) == []

    @pytest.mark.parametrize("change, words", [
        ({"cv_auroc": 0.58, "cv_ci_low": 0.45, "cv_ci_high": 0.7}, "0.58 [0.45, 0.70] includes 0.5"),
        ({"cv_auroc": None, "cv_ci_low": None, "cv_ci_high": None}, "was not estimated"),
        ({"C": 1e-4}, "strongest regularisation on the grid (C = 0.0001)"),
        ({"n_train": 30}, "only 30 rows"),
    ])
    def test_each_reason(self, probe, change, words):
        reasons = weak_probe_reasons(dataclasses.replace(self.strong(probe), **change))
        assert len(reasons) == 1 and words in reasons[0]
