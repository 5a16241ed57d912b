"""Policy upload on the Governance page and the active policy in Explore (issue 11 cases 1, 2 on the app side).

An uploaded policy passes the engine's checks (schema, signature, probe confined to the runs
folder) before it can become active; "Allow unsigned" accepts an unsigned one, which both
pages then mark with a red "unsigned" badge; Explore reads the policy through the same path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import open_page

from ic_core.governance.policy import Policy, probe_entry
from ic_core.stats.gating import PlattCalibration

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
GOVERNANCE, EXPLORE = "pages/5_Governance.py", "pages/1_Explore.py"
QUESTION = "what is the capital of france ?"


def h_int_policy(tiny, **overrides) -> Policy:
    fields = dict(signal="h_int", model=tiny.spec.to_dict(), regime="direct", kind="short_answer", t_entropy_bits=3.0)
    return Policy(**{**fields, **overrides})


def probe_policy(tiny, folder: Path) -> Policy:
    """A signed probe policy whose probe is saved under ``folder``."""
    from ic_core.probes.saved import fit_saved_probe

    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(40, tiny.n_layers + 1, tiny.d_model)).astype(np.float32)
    probe = fit_saved_probe(hidden, (hidden[:, -1, 0] > 0).astype(int), model_spec=tiny.spec.to_dict())
    path = probe.save(folder / "probes" / "gate-probe")
    entry = probe_entry(str(path), probe.probe_id, PlattCalibration(1.0, 0.0))
    return h_int_policy(tiny, signal="probe", t_entropy_bits=None, t_probe=0.5, probe=entry).sign()


def start(tiny):
    return open_page(tiny, GOVERNANCE)


def upload(at, policy_json: str, allow_unsigned: bool = False):
    if allow_unsigned:
        at.checkbox(key="gov_allow_unsigned").check().run()
    at.file_uploader(key="gov_upload").upload("policy.json", policy_json.encode("utf-8"), "application/json").run()
    assert not at.exception, at.exception
    return at


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def badges(at) -> list[str]:
    return [m.value for m in at.markdown if ":red-badge[" in m.value and "unsigned" in m.value]


def use_button(at):
    return [b for b in at.button if b.key == "gov_use_upload"]


@pytest.fixture
def env(runs_dir):
    return runs_dir


class TestUpload:
    def test_unsigned_policy_is_refused_by_default(self, tiny, env):
        at = upload(start(tiny), h_int_policy(tiny).to_json())
        assert "Policy refused" in errors(at) and "unsigned" in errors(at)
        assert at.checkbox(key="gov_allow_unsigned").value is False
        assert not use_button(at) and "gate_policy" not in at.session_state

    def test_wrongly_signed_policy_is_refused(self, tiny, env):
        forged = h_int_policy(tiny).sign(key=b"not-the-operator-key-" * 2)
        at = upload(start(tiny), forged.to_json())
        assert "wrong signature" in errors(at) and not use_button(at)

    def test_edited_threshold_breaks_the_signature(self, tiny, env):
        text = h_int_policy(tiny).sign().to_json().replace('"t_entropy_bits": 3.0', '"t_entropy_bits": 99.0')
        at = upload(start(tiny), text)
        assert "Policy refused" in errors(at) and not use_button(at)

    def test_signed_policy_becomes_active_without_a_badge(self, tiny, env):
        policy = h_int_policy(tiny).sign()
        at = upload(start(tiny), policy.to_json())
        assert not at.error and not badges(at)
        use_button(at)[0].click().run()
        assert at.session_state["gate_policy"].policy_id == policy.policy_id
        assert any(f"**Active policy** `{policy.policy_id}`" in m.value for m in at.markdown) and not badges(at)

    def test_allow_unsigned_activates_it_with_the_red_badge_here_and_in_explore(self, tiny, env):
        policy = h_int_policy(tiny)
        at = upload(start(tiny), policy.to_json(), allow_unsigned=True)
        assert not at.error and len(badges(at)) == 1  # beside the upload's "Valid policy"
        use_button(at)[0].click().run()
        assert at.session_state["gate_policy"].policy_id == policy.policy_id
        assert len(badges(at)) == 2  # the upload and the active policy
        at.switch_page(EXPLORE).run()
        at.text_area(key="keep:explore.prompt").input(QUESTION)
        at.selectbox(key="keep:explore.kind").set_value("short_answer")
        at.button(key="explore_read_btn").click().run()
        assert not at.exception, at.exception
        assert len(badges(at)) == 1
        assert any("Gate: " in e.value for e in (*at.success, *at.warning))

    def test_probe_outside_the_runs_folder_is_refused_before_it_can_be_active(self, tiny, env, tmp_path):
        policy = probe_policy(tiny, tmp_path / "elsewhere")
        for allow_unsigned in (False, True):
            at = upload(start(tiny), policy.to_json(), allow_unsigned=allow_unsigned)
            assert "Policy refused" in errors(at) and "outside the runs folder" in errors(at)
            assert not use_button(at) and "gate_policy" not in at.session_state

    def test_probe_inside_the_runs_folder_is_loaded_from_its_pinned_file(self, tiny, env):
        policy = probe_policy(tiny, env / "some-run")
        at = upload(start(tiny), policy.to_json())
        assert not at.error
        use_button(at)[0].click().run()
        assert at.session_state["probe"].probe_id == policy.probe["id"]


class TestExploreReadsTheSameWay:
    def test_an_unsigned_policy_put_in_the_session_gets_no_verdict(self, tiny):
        """Only the engine path makes a policy active: an unsigned one placed in the session is refused."""
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state["_injected_model"] = tiny
        at.session_state["gate_policy"] = h_int_policy(tiny)
        at.run()
        at.text_area(key="keep:explore.prompt").input(QUESTION)
        at.button(key="explore_read_btn").click().run()
        assert not at.exception, at.exception
        shown = " ".join(w.value for w in at.warning)
        assert "active policy is refused" in shown and "unsigned" in shown
        assert not any("Gate: approve" in s.value for s in at.success)


class TestRefusedInTheApp:
    """Issue 11 'done when', app side: a swapped probe and a policy pinned to other weights give no verdict."""

    def test_a_probe_edited_after_fitting_is_refused_on_upload(self, tiny, env):
        import json

        policy = probe_policy(tiny, env / "some-run")
        probe_json = Path(policy.probe["path"])
        meta = json.loads(probe_json.read_text())
        meta["cv_auroc"] = 0.99  # the probe id (weights + layers) is unchanged; its pinned SHA-256 is not
        probe_json.write_text(json.dumps(meta))
        at = upload(start(tiny), policy.to_json())
        assert "Policy refused" in errors(at) and "the probe was swapped or changed" in errors(at)
        assert not use_button(at) and "gate_policy" not in at.session_state

    def test_a_policy_pinned_to_other_weights_gives_no_verdict_in_explore(self, tiny, env):
        policy = h_int_policy(tiny, model={**tiny.spec.to_dict(), "weights_sha256": "0" * 64}).sign()
        at = upload(start(tiny), policy.to_json())
        assert not at.error
        use_button(at)[0].click().run()
        at.switch_page(EXPLORE).run()
        at.text_area(key="keep:explore.prompt").input(QUESTION)
        at.button(key="explore_read_btn").click().run()
        assert not at.exception, at.exception
        shown = " ".join(m.value for m in (*at.error, *at.warning))
        assert "no verdict for this read-out" in shown and "with weights 0000000000000000" in shown
        assert not any("Gate: " in s.value for s in at.success)
