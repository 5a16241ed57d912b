"""The active gate policy of a session: how it is uploaded, activated, read and shown.

Every page reads the active policy through :func:`active_policy`, so the Governance page and
Explore's risk card apply the same engine checks (:meth:`ic_core.governance.policy.Policy.verify`
for signatures, :func:`ic_core.governance.gate.load_policy_probe` for the probe) and both show
the red "unsigned" badge for a policy the user accepted without a valid signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from ic_core.errors import DataError, ICError
from ic_core.governance.fit import attach_saved_probe
from ic_core.governance.gate import load_policy_probe
from ic_core.governance.policy import Policy
from ic_core.library import (
    DEFAULT_POLICY_ENV,
    LoadedPolicy,
    default_policy,
    load_saved_policy,
    policies_root,
    save_to_library,
    saved_policy_files,
)
from ic_core.narrative import recorded_held_out_text
from ic_core.runs.store import runs_root
from ui.common import GATE_PROBE_KEY, json_download, md_text, show_error

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.scores import ProbeScores
    from ic_core.runs.store import StudyRun

PREFIX_NEED_TEXT = {
    "none": "nothing (agent-ready: the prompt is read as it is)",
    "per_kind": "one generic answer prefix per kind of task (agent-ready)",
    "per_item": "each prompt's own answer prefix (research only)",
}

GATE_POLICY_KEY = "gate_policy"
"""The active gate policy (set only by :func:`activate_policy`)."""
UNSIGNED_OK_KEY = "gate_policy_unsigned_ok"
"""The id of an unsigned policy the user explicitly accepted ("Allow unsigned")."""
DEFAULT_TRIED_KEY = "gate_policy_default_tried"
"""Set once the administrator's default policy (``IC_POLICY``) was tried in this session."""
DEFAULT_ERROR_KEY = "gate_policy_default_error"
"""Why the default policy was refused (shown on the Governance page)."""
DEFAULT_ID_KEY = "gate_policy_default_id"
"""The id of the default policy when it was activated."""


def use_loaded(loaded: LoadedPolicy) -> None:
    """Make a verified policy (and its probe) the session's gate."""
    activate_policy(loaded.policy)
    st.session_state.pop(GATE_PROBE_KEY, None)
    if loaded.probe is not None:
        st.session_state[GATE_PROBE_KEY] = loaded.probe


def apply_default_policy() -> None:
    """Once per session: activate ``$IC_POLICY`` through the engine's checks (a refusal is remembered, not raised)."""
    if st.session_state.get(DEFAULT_TRIED_KEY):
        return
    st.session_state[DEFAULT_TRIED_KEY] = True
    if st.session_state.get(GATE_POLICY_KEY) is not None:
        return
    try:
        loaded = default_policy()
    except DataError as exc:
        st.session_state[DEFAULT_ERROR_KEY] = str(exc)
        return
    if loaded is not None:
        use_loaded(loaded)
        st.session_state[DEFAULT_ID_KEY] = loaded.policy.policy_id


def activate_policy(policy: Policy, allow_unsigned: bool = False) -> None:
    """Make ``policy`` the session's gate policy, after the engine's signature check.

    Raises:
        DataError: unsigned or wrongly signed, and ``allow_unsigned`` is off.

    """
    if not allow_unsigned:
        policy.verify()
    st.session_state[GATE_POLICY_KEY] = policy
    st.session_state[UNSIGNED_OK_KEY] = policy.policy_id if allow_unsigned else None


def active_policy() -> tuple[Policy, bool] | None:
    """The active gate policy and whether it is unsigned (no valid signature); None when none is active.

    Every page reads the policy here, so each reader gets the same engine check.

    Raises:
        DataError: the policy fails :meth:`Policy.verify` and was not accepted as unsigned.

    """
    apply_default_policy()
    policy = st.session_state.get(GATE_POLICY_KEY)
    if policy is None:
        return None
    if st.session_state.get(UNSIGNED_OK_KEY) != policy.policy_id:
        policy.verify()
        return policy, False
    return policy, not policy_signature_ok(policy)


def policy_signature_ok(policy: Policy) -> bool:
    """Whether the policy carries a valid signature under the operator key (False when it cannot be checked)."""
    from ic_core.governance.keys import KeyMissingError

    try:
        return policy.signature_valid()
    except KeyMissingError:
        return False


def unsigned_badge() -> None:
    """The red badge shown beside an unsigned active policy."""
    st.badge("unsigned", icon=":material/gpp_bad:", color="red",
             help="This policy has no valid signature: anyone who could edit the file could have changed it.")


def upload_policy() -> None:
    """Read an uploaded policy through the engine: schema, signature, and its probe confined to the runs folder.

    Only a policy that passed every check can be made active (a refused one never reaches the session).
    """
    uploaded = st.file_uploader("Load a policy file (JSON)", type=["json"], key="gov_upload")
    allow_unsigned = st.checkbox("Allow unsigned", value=False, key="gov_allow_unsigned",
                                 help="Accept a policy without a valid signature. Anyone who can edit such a file "
                                      "can change its thresholds; the policy is shown with a red 'unsigned' badge.")
    if uploaded is None:
        return
    try:
        policy = Policy.from_json(uploaded.getvalue(), allow_unsigned=allow_unsigned)
        probe = load_policy_probe(policy, runs_root())  # only from inside the runs folder, digest pinned
    except ICError as exc:
        st.error(f"**Policy refused.** {md_text(exc)}")
        return
    unsigned = not policy_signature_ok(policy)
    if unsigned:
        unsigned_badge()
    st.success(f"Valid policy {policy.policy_id}: {policy.describe()}")
    if st.button("Use the uploaded policy", key="gov_use_upload"):
        activate_policy(policy, allow_unsigned=unsigned)
        st.session_state.pop(GATE_PROBE_KEY, None)
        if probe is not None:
            st.session_state[GATE_PROBE_KEY] = probe


def default_policy_notice() -> None:
    """Say that the active policy is the administrator's default, or why the default was refused."""
    error = st.session_state.get(DEFAULT_ERROR_KEY)
    if error:
        st.error(f"**Default policy refused.** {md_text(error)}")
    current = st.session_state.get(GATE_POLICY_KEY)
    if current is not None and current.policy_id == st.session_state.get(DEFAULT_ID_KEY):
        st.caption(f"This is the administrator's default policy ({DEFAULT_POLICY_ENV}); every new session starts with it.")


def saved_policy_picker() -> None:
    """Pick a policy saved in the policies folder; it is verified (signature, probe) before it is used."""
    folder = policies_root()
    files = saved_policy_files(folder)
    if not files:
        st.caption(f"No saved policies in {md_text(folder)} yet: save one from the 'Tune' tab "
                   "(set IC_POLICIES_DIR to use another folder).")
        return
    choice = st.selectbox("Saved policy", [str(p) for p in files], format_func=lambda p: Path(p).name,
                          key="gov_saved_policy", help=f"Policies saved (signed) in {folder}.")
    if st.button("Use the saved policy", key="gov_use_saved"):
        try:
            use_loaded(load_saved_policy(choice, folder))
        except ICError as exc:
            st.error(f"**Policy refused.** {md_text(exc)}")
            return
        st.success(f"Policy {st.session_state[GATE_POLICY_KEY].policy_id} is active.")


def save_policy_button(policy: Policy) -> None:
    """Write ``policy`` signed into the policies folder, so every session can pick it."""
    if st.button("Save to the policies folder", key="gov_save_library",
                 help="Signed with the operator key; other sessions find it under 'Saved policy'."):
        try:
            path = save_to_library(policy)
        except ICError as exc:
            show_error(exc)
            return
        st.success(f"Saved as {md_text(path)}.")


def show_active_policy(policy: Policy, unsigned: bool) -> None:
    """The active policy's rule and settings; stored strings (the model name) shown as text."""
    if unsigned:
        unsigned_badge()
    st.markdown(f"**Active policy** `{policy.policy_id}` — {policy.describe()}  \n"
                f"Signal {policy.signal}, regime {policy.regime}, prefix mode {policy.prefix_mode}, "
                f"model {md_text(policy.model.get('name'))}.")
    recorded = recorded_held_out_text(policy)
    if recorded:
        st.caption(recorded)


def policy_actions(policy: Policy, scores: ProbeScores | None, run: StudyRun) -> None:
    """The fitted policy: its probe saved next to the run, signed, then used, saved or downloaded."""
    st.subheader("This policy")
    st.checkbox("Audit log may store the prompt text (otherwise only its SHA-256)", key="gov_store_text")
    try:
        saved = attach_saved_probe(policy, scores, run.path)
    except ICError as exc:
        show_error(exc)
        return
    try:
        saved = saved.sign()  # the operator key: the policy it activates and downloads is a signed one
    except ICError as exc:
        show_error(exc)
        return
    if saved.uses_probe:
        st.caption(f"The policy's probe is saved at {md_text(saved.probe['path'])}; keep it with the policy file.")
    st.markdown(f"**Rule:** {saved.describe()}  \n**Guarantee:** {md_text(saved.guarantee)}  \n"
                f"**Needs from a prompt:** {PREFIX_NEED_TEXT.get(saved.prefix_need or '', 'not recorded')}  \n"
                f"**Policy id:** `{saved.policy_id}` (signed)")
    c1, c2, c3 = st.columns(3)
    if c1.button("Use this policy in Explore (and the live gate)", key="gov_use_btn"):
        activate_policy(saved)
        if saved.uses_probe:
            st.session_state[GATE_PROBE_KEY] = scores.probe
        st.success(f"Policy {saved.policy_id} is active: Explore's risk card now shows its verdict.")
    with c2:
        save_policy_button(saved)
    with c3:
        json_download("Download policy (JSON)", saved.to_dict(), f"policy-{saved.policy_id}.json", key="gov_dl")
