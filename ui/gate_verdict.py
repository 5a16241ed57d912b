"""Explore's gate verdict: the active policy's decision on one read-out, audited once per read."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ic_core.analysis import Analysis
from ic_core.errors import ICError
from ic_core.governance.audit import resolve_audit_path
from ic_core.governance.gate import audit_decision, decide_for_analysis, load_policy_probe
from ic_core.governance.policy import check_model
from ic_core.models import LoadedModel
from ic_core.narrative import guarantee_line
from ic_core.runs.store import runs_root
from ui.common import EXPLORE_RESULT_KEY, GATE_PROBE_KEY, md_text
from ui.gate_policy import active_policy, unsigned_badge
from ui.probe_picker import weak_probe_note

AUDITED_KEY = "explore.audited"


def _audit_once(policy: Any, decision: Any, analysis: Analysis) -> None:
    """Log the verdict to the audit log once per read-out (page reruns must not add records)."""
    marker = (id(analysis.state), policy.policy_id)  # the state is one read's, kept when the answer is added
    if st.session_state.get(AUDITED_KEY) == marker:
        return
    question = st.session_state.get(EXPLORE_RESULT_KEY, {}).get("inputs", {}).get("question") or analysis.rendered.user_text
    audit_decision(policy, decision, question, resolve_audit_path())
    st.session_state[AUDITED_KEY] = marker


def gate_verdict(loaded: LoadedModel, analysis: Analysis) -> None:
    """The pre-generation gate's decision, when the Governance page has made a policy active."""
    try:
        current = active_policy()  # the Governance page's engine path: a refused policy gives no verdict
    except ICError as exc:
        st.warning(f"**Gate: no verdict, the active policy is refused.** {md_text(exc)}")
        return
    if current is None:
        st.info("No gate policy loaded — fit one on the Governance page.")
        return
    policy, unsigned = current
    if unsigned:
        unsigned_badge()
    uses_probe = policy.uses_probe
    try:
        check_model(policy, loaded)
        probe = st.session_state.get(GATE_PROBE_KEY) if uses_probe else None
        if uses_probe and probe is None:
            probe = load_policy_probe(policy, runs_root())
        decision = decide_for_analysis(policy, analysis, probe=probe)
        _audit_once(policy, decision, analysis)
    except ICError as exc:
        st.warning(f"**Gate: no verdict for this read-out.** {md_text(exc)}")
        return
    p_correct = decision.signals.get("probe_p_correct")
    extra = f" Probe P(correct) = {p_correct:.2f}." if p_correct is not None else ""
    if decision.decision == "approve":
        st.success(f"**Gate: approve.** {decision.reason}{extra}")
    else:
        st.warning(f"**Gate: escalate to a human.** {decision.reason}{extra}")
    st.markdown(guarantee_line(decision))
    if p_correct is not None and probe is not None:
        weak_probe_note(probe)
