"""Saved policies and probes every session sees (issue 17 item 4), and the weak-probe note (item 11).

A policy saved on the Governance page is written signed into the policies folder; another
AppTest session picks it; ``IC_POLICY`` makes a verified default active in a new session; a
tampered file in the folder is refused; Explore offers the probes saved in run folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import open_page

from ic_core.datasets import PromptItem
from ic_core.governance.policy import Policy
from ic_core.library import save_to_library, saved_policy_files

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
GOVERNANCE, EXPLORE = "pages/5_Governance.py", "pages/1_Explore.py"


def _items(n: int = 60) -> list[PromptItem]:
    """Sums whose given outputs are right for about half the items."""
    return [PromptItem(id=f"sum-{i:03d}", question=f"what is {i % 9} plus {i % 7} ?", answer=str(i % 9 + i % 7),
                       kind="numeric", output=str(i % 9 + i % 7 + (i % 2)), answer_prefix="the answer is")
            for i in range(n)]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory, tiny):
    from ic_core.study.runner import run_study

    root = tmp_path_factory.mktemp("shared") / "runs"
    run_study(tiny, _items(), ["direct"], root / "sums-tiny", generate=False, dataset_name="sums")
    run_study(tiny, _items(40), ["direct"], root / "sums-other", generate=False, dataset_name="sums")
    return root


@pytest.fixture()
def folders(monkeypatch, tmp_path, saved_runs):
    policies = tmp_path / "policies"
    monkeypatch.setenv("IC_RUNS_DIR", str(saved_runs))
    monkeypatch.setenv("IC_POLICIES_DIR", str(policies))
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.delenv("IC_POLICY", raising=False)
    return saved_runs, policies


def session(tiny, page: str):
    return open_page(tiny, page)


def texts(elements) -> str:
    return " | ".join(e.value for e in elements)


def entropy_policy(tiny) -> Policy:
    return Policy(signal="h_int", model=tiny.spec.to_dict(), regime="direct", kind="short_answer", t_entropy_bits=3.0)


def test_a_policy_saved_in_one_session_is_picked_in_another(tiny, folders):
    _, policies = folders
    first = session(tiny, GOVERNANCE)
    first.button(key="gov_fit_btn").click().run()
    first.button(key="gov_save_library").click().run()
    assert not first.exception, first.exception
    files = saved_policy_files(policies)
    assert len(files) == 1 and "Saved as" in texts(first.success)
    saved = Policy.load(files[0])  # signed: loads without allow_unsigned
    assert saved.signature_valid()

    second = session(tiny, GOVERNANCE)
    assert "gate_policy" not in second.session_state
    assert second.selectbox(key="gov_saved_policy").options == [files[0].name]
    second.button(key="gov_use_saved").click().run()
    assert not second.exception and not second.error
    assert second.session_state["gate_policy"].policy_id == saved.policy_id
    second.switch_page(EXPLORE).run()
    assert "No gate policy loaded" not in texts(second.info)


@pytest.mark.parametrize("damage", ["edited", "unsigned"])
def test_a_tampered_or_unsigned_saved_policy_is_refused(tiny, folders, damage):
    _, policies = folders
    if damage == "edited":
        path = save_to_library(entropy_policy(tiny), policies)
        doc = json.loads(path.read_text())
        doc["t_entropy_bits"] = 99.0  # loosened by hand: the id and signature no longer match
        path.write_text(json.dumps(doc))
    else:  # a consistent document that nobody signed, dropped into the folder
        path = entropy_policy(tiny).save(policies / "policy-dropped.json", sign=False)
    at = session(tiny, GOVERNANCE)
    at.button(key="gov_use_saved").click().run()
    assert not at.exception
    assert "Policy refused" in texts(at.error)
    assert "gate_policy" not in at.session_state


def test_the_administrators_default_policy_is_active_in_every_new_session(tiny, folders, monkeypatch, tmp_path):
    policy = entropy_policy(tiny)
    path = policy.save(tmp_path / "default.json")  # signed with the test operator key
    monkeypatch.setenv("IC_POLICY", str(path))
    for _ in range(2):
        at = session(tiny, EXPLORE)
        assert at.session_state["gate_policy"].policy_id == Policy.load(path).policy_id
    gov = session(tiny, GOVERNANCE)
    assert "administrator's default policy" in texts(gov.caption)


def test_an_unsigned_default_policy_is_refused_with_a_reason(tiny, folders, monkeypatch, tmp_path):
    path = entropy_policy(tiny).save(tmp_path / "unsigned.json", sign=False)
    monkeypatch.setenv("IC_POLICY", str(path))
    at = session(tiny, GOVERNANCE)
    assert "gate_policy" not in at.session_state
    shown = texts(at.error).replace("\\", "")  # md_text escapes _
    assert "Default policy refused" in shown and "IC_POLICY=" in shown and "is unsigned" in shown


def test_explore_offers_saved_probes_and_notes_a_weak_one(tiny, folders):
    from ic_core.probes.saved import fit_saved_probe

    runs, _ = folders
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(30, tiny.n_layers + 1, tiny.d_model)).astype(np.float32)
    probe = fit_saved_probe(hidden, rng.integers(0, 2, 30), model_spec=tiny.spec.to_dict())
    probe.save(runs / "sums-tiny" / "probes" / "noise_last5")
    at = session(tiny, EXPLORE)
    at.text_area(key="keep:explore.prompt").input("what is 2 plus 2 ?").run()
    at.button(key="explore_read_btn").click().run()
    assert not at.exception, at.exception
    box = at.selectbox(key="explore_saved_probe")
    assert box.options == ["sums-tiny/probes/noise_last5"]
    at.button(key="explore_load_probe").click().run()
    assert not at.exception, at.exception
    assert any(m.label == "Probe P(correct)" for m in at.metric)
    note = texts(at.warning)
    assert "barely separates" in note and "only 30 rows" in note


def test_the_fit_message_is_cleared_when_another_run_is_picked(tiny, folders):
    """Issue 17 item 5: no "Approves N of M" message of the previous run beside the new run's figures."""
    at = session(tiny, GOVERNANCE)
    at.button(key="gov_fit_btn").click().run()
    fitted = texts(at.success) + texts(at.warning)
    assert "training" in fitted or "approve" in fitted.lower()
    other = "sums-other" if at.selectbox(key="gov_run").value == "sums-tiny" else "sums-tiny"
    at.selectbox(key="gov_run").set_value(other).run()
    assert not at.exception, at.exception
    assert fitted[:40] not in texts(at.success) + texts(at.warning)
    assert "gov.fit_message" not in at.session_state
