"""Governance gate: tune an escalation policy on a labelled run, judge it on held-out items, use it, audit it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.governance.audit import audit_rows, read_audit, resolve_audit_path
from ic_core.governance.fit import (
    FITTED_ON_TRAINING,
    SET_BY_HAND,
    ProbeScores,
    evaluate_thresholds,
    fit_policy_on_run,
    probe_scores,
    threshold_context,
)
from ic_core.governance.gate import gate_check, load_policy_probe
from ic_core.governance.policy import check_model
from ic_core.governance.rule import outcomes
from ic_core.governance.signals import RunSignals
from ic_core.models import LoadedModel
from ic_core.narrative import (
    ci_caption,
    decision_text,
    guarantee_line,
    held_out_caption,
    percent_text,
    probe_source_caption,
    signal_labels,
    split_caption,
    threshold_origin_note,
)
from ic_core.plots.gate import confusion_figure, risk_coverage_figure, score_histogram_figure
from ic_core.probes.scores import probe_fitted_on_run
from ic_core.runs.store import StudyRun, runs_root
from ic_core.stats.gating import HeldOutReport, confusion_from_decisions, risk_coverage
from ui.common import GATE_PROBE_KEY, cached_run, footer, get_loaded, md_text, require_router, show_error
from ui.gate_policy import (
    active_policy,
    default_policy_notice,
    policy_actions,
    saved_policy_picker,
    show_active_policy,
    upload_policy,
)
from ui.governance_cache import ITEM_COLUMN_CONFIG, cached_probe_scores, cached_signals, list_saved_runs
from ui.governance_demo import demo_tab
from ui.governance_ltt import ltt_fit, ltt_results, method_choice, readout_choice, signal_quality_section
from ui.probe_picker import weak_probe_note

PROBE_KEY = GATE_PROBE_KEY


def held_out_metrics(report: HeldOutReport, note: str) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Held-out items", f"{report.n}")
    # Metric values are short (a point estimate); the 95 % CI goes underneath so it is never cut off.
    c2.metric("Escalation rate", percent_text(report.escalation_rate))
    c2.caption(ci_caption(report.escalation_rate_ci))
    c3.metric("Error among approved", percent_text(report.error_among_approved))
    c3.caption(ci_caption(report.error_among_approved_ci))
    c4.metric("Error with no gate", percent_text(report.error_without_gate))
    st.caption(held_out_caption(report, note))


# ---------------------------------------------------------------- tuning


def _fit_callback(run: StudyRun, sig: RunSignals, signal: str, scores: ProbeScores | None) -> None:
    s = st.session_state
    context = threshold_context(sig, signal, scores)
    try:
        fit = fit_policy_on_run(run, signal, float(s["gov_target"]), signals=sig, scores=scores)
    except ICError as exc:
        s["gov.fit_message"] = ("error", str(exc), context)
        return
    s["gov.fit"] = {"context": threshold_context(sig, signal, scores), "escalate_all": fit.policy.escalate_all,
                    "target": float(s["gov_target"])}
    if fit.policy.t_entropy_bits is not None:
        s["gov_t_entropy"] = float(fit.policy.t_entropy_bits)
    if fit.policy.t_probe is not None:
        s["gov_t_probe"] = float(fit.policy.t_probe)
    kind = "warning" if not fit.target_met else "success"
    s["gov.fit_message"] = (kind, fit.message, context)  # shown only while the same run/split/signal is on


def _manual_change() -> None:
    st.session_state.pop("gov.fit", None)
    st.session_state.pop("gov.fit_message", None)


def _clamped_slider(label: str, key: str, lo: float, hi: float, default: float, help_text: str) -> float:
    s = st.session_state
    value = s.get(key, default)
    s[key] = float(min(max(value, lo), hi))
    return st.slider(label, lo, hi, step=0.01, key=key, on_change=_manual_change, help=help_text)


def tune_tab(loaded: LoadedModel | None) -> None:
    runs = list_saved_runs()
    if not runs:
        st.info("No saved study runs yet. Run one on the Study page, or from a terminal, e.g.:")
        st.code('python -m ic_core study --data capitals --regimes direct --limit 150', language="bash")
        return
    c1, c2, c3 = st.columns([3, 1, 1])
    names = [r.name for r in runs]
    if st.session_state.get("gov_run") not in names:
        st.session_state["gov_run"] = names[0]
    chosen = c1.selectbox("Saved run", names, key="gov_run", format_func=lambda n: runs[names.index(n)].picker_label(),
                          on_change=_manual_change)
    info = runs[names.index(chosen)]
    holdout = c2.slider("Held-out share", 0.2, 0.6, 0.4, 0.05, key="gov_holdout")
    seed = int(c3.number_input("Split seed", 0, 10_000, 0, key="gov_seed"))
    try:
        run = cached_run(str(info.path), info.mtime)
    except ICError as exc:
        show_error(exc)
        return
    regime = None
    if len(run.regimes) > 1:
        regime = st.selectbox("Regime", run.regimes, key="gov_regime")
    try:
        option = readout_choice(str(info.path), info.mtime, regime)
        readout = option.as_argument if option is not None else "auto"
        sig = cached_signals(str(info.path), info.mtime, regime, float(holdout), seed, readout)
    except ICError as exc:
        show_error(exc)
        return
    method = method_choice()
    options = signal_labels(sig.entropy_signal)
    if method == "ltt":
        options.pop("combined")  # Learn then Test certifies one score
    if st.session_state.get("gov_signal") not in options:
        st.session_state["gov_signal"] = sig.entropy_signal
    signal = st.radio("Signal", list(options), format_func=options.get, key="gov_signal", horizontal=True,
                      on_change=_manual_change)
    scores = None
    if signal in ("probe", "combined"):
        scores = choose_probe_scores(run, sig, str(info.path), info.mtime, regime, float(holdout), seed, readout)
        if scores is None:
            return
    st.caption(split_caption(sig))
    if method == "ltt":
        ltt_flow(run, sig, signal, scores, readout)
        return

    st.session_state.setdefault("gov_target", sig.default_target_error())
    c1, c2 = st.columns([3, 1])
    c1.slider("Target error rate among auto-approved answers", 0.0, 0.9, step=0.01, key="gov_target",
              help="'Fit' picks the most permissive threshold that meets this on the training items.")
    c2.button("Fit on training items", key="gov_fit_btn", type="primary", on_click=_fit_callback,
              args=(run, sig, signal, scores))
    message = st.session_state.get("gov.fit_message")
    if message and message[2] == threshold_context(sig, signal, scores):
        getattr(st, message[0])(message[1])
    elif message:
        _manual_change()  # the message was about another run, split, signal or probe

    t_e = t_p = None
    if signal in (sig.entropy_signal, "combined"):
        lo, hi, median = sig.entropy_threshold_range()
        t_e = _clamped_slider(f"Threshold: escalate when {sig.entropy_name} > (bits)",
                              "gov_t_entropy", lo, hi, median, "Entropy above this → a human looks.")
    if signal in ("probe", "combined"):
        t_p = _clamped_slider("Threshold: escalate when P(correct) <", "gov_t_probe", 0.0, 1.0, 0.5,
                              "Calibrated probability below this → a human looks.")
    fit_state = st.session_state.get("gov.fit")
    if fit_state and fit_state["context"] != threshold_context(sig, signal, scores):
        fit_state = None  # fitted for another run, split, signal or probe
        _manual_change()
    try:
        rule = evaluate_thresholds(
            sig, signal, t_e, t_p, scores=scores, escalate_all=bool(fit_state and fit_state["escalate_all"]),
            target_error=fit_state["target"] if fit_state else None,
            threshold_origin=FITTED_ON_TRAINING if fit_state else SET_BY_HAND,
            store_prompt_text=bool(st.session_state.get("gov_store_text", False)),
        )
    except ICError as exc:
        show_error(exc)
        return

    view = st.radio("Items shown in the live view", ["training", "held-out", "all"], key="gov_view",
                    horizontal=True, help="Tune on training items; the held-out figures below judge the result.")
    live_figures(sig, signal, scores, rule.escalate, sig.indices(view), t_e, t_p)
    signal_quality_section(sig, scores)

    st.subheader("Held-out evaluation of this rule")
    held_out_metrics(rule.held_out, threshold_origin_note(fit_state is not None))
    policy_actions(rule.policy, scores, run)


def ltt_flow(run: StudyRun, sig: RunSignals, signal: str, scores: ProbeScores | None, readout: str) -> None:
    """Learn then Test: α/δ, the certified threshold (or the refusal) and its checks, then the policy."""
    fit = ltt_fit(run, sig, signal, scores, readout)
    if fit is None:
        signal_quality_section(sig, scores)
        return
    ltt_results(run, fit)
    st.subheader("What this rule does to the held-out items" if fit.risk.ltt.certified
                 else "What this rule (escalate every prompt) does to the held-out items")
    live_figures(sig, signal, scores, fit.escalate, sig.test_idx, fit.policy.t_entropy_bits, fit.policy.t_probe)
    signal_quality_section(sig, scores)
    st.subheader("Held-out evaluation of this rule")
    held_out_metrics(fit.held_out, "Threshold certified on the training items only (Learn then Test)."
                     if fit.risk.ltt.certified else "No threshold was certified, so every prompt is escalated.")
    policy_actions(fit.policy, scores, run)


def choose_probe_scores(run: StudyRun, sig: RunSignals, path: str, mtime: float, regime: str | None, holdout: float,
                        seed: int, readout: str = "auto") -> ProbeScores | None:
    """The probe's calibrated scores: fitted on the training items, or the session's probe from another run."""
    session_probe = st.session_state.get(PROBE_KEY)
    external_ok = session_probe is not None and not probe_fitted_on_run(session_probe, path)
    source = "fit"
    if external_ok:
        source = st.radio("Probe", ["fit", "session"], key="gov_probe_source", horizontal=True, format_func={
            "fit": "fit one on this run's training items",
            "session": f"the loaded probe {md_text(session_probe.probe_id)} (fitted on "
                       f"{md_text(Path(session_probe.run_path).name)})",
        }.get)
    try:
        if source == "session":
            scores = probe_scores(run, sig, session_probe)
        else:
            scores = cached_probe_scores(path, mtime, regime, holdout, seed, readout)
    except ICError as exc:
        show_error(exc)
        return None
    st.caption(probe_source_caption(scores.source, scores.probe.probe_id, external=source == "session"))
    return scores


def live_figures(sig: RunSignals, signal: str, scores: ProbeScores | None, escalate: np.ndarray, idx: np.ndarray,
                 t_e: float | None, t_p: float | None) -> None:
    correct = sig.correct[idx]
    conf = confusion_from_decisions(escalate[idx], correct)
    c1, c2, c3 = st.columns(3)
    c1.metric("Escalation rate", percent_text(conf.escalation_rate))
    c2.metric("Error among auto-approved", percent_text(conf.error_among_approved))
    c3.metric("Wrong answers caught", percent_text(conf.share_of_errors_caught))
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(conf), key="gov_confusion")
    entropy_name = sig.entropy_name
    curves = {}
    if signal != "probe":
        curves[entropy_name] = risk_coverage(sig.entropy_bits[idx], correct)
    if scores is not None:
        curves["probe"] = risk_coverage(-scores.p_correct[idx], correct)
    point = (conf.n_approved / max(conf.n, 1), conf.error_among_approved)
    right.plotly_chart(risk_coverage_figure(curves, point=point), key="gov_rc")
    if t_e is not None:
        st.plotly_chart(score_histogram_figure(sig.entropy_bits[idx], correct, t_e, entropy_name, "bits"),
                        key="gov_hist_entropy")
    if t_p is not None and scores is not None:
        st.plotly_chart(score_histogram_figure(scores.p_correct[idx], correct, t_p, "probe P(correct)",
                                               "probability", escalate_above=False), key="gov_hist_probe")
    extra = {entropy_name + " (bits)": sig.entropy_bits}
    if scores is not None:
        extra["P(correct)"] = scores.p_correct
    seen = outcomes(escalate, sig.correct, idx)
    with st.expander(f"Items that would be escalated ({seen.escalated.size})"):
        st.dataframe(sig.items_table(seen.escalated, extra), hide_index=True, key="gov_escalated", column_config=ITEM_COLUMN_CONFIG)
    with st.expander(f"Wrong answers that would slip through ({seen.slipped.size})"):
        st.dataframe(sig.items_table(seen.slipped, extra), hide_index=True, key="gov_slipped", column_config=ITEM_COLUMN_CONFIG)


# ---------------------------------------------------------------- policy file and live gate


def policy_tab(loaded: LoadedModel | None) -> None:
    saved_policy_picker()
    upload_policy()
    try:
        current = active_policy()
    except ICError as exc:
        show_error(exc)
        return
    if current is None:
        default_policy_notice()
        st.info("No policy active. Fit one in the 'Tune' tab, pick a saved one, or load a policy file.")
        return
    policy, unsigned = current
    default_policy_notice()
    show_active_policy(policy, unsigned)
    if loaded is None:
        return
    try:
        check_model(policy, loaded)
    except ICError as exc:
        show_error(exc)
        return
    probe = st.session_state.get(PROBE_KEY) if policy.uses_probe else None
    if policy.uses_probe and probe is None:
        try:
            probe = load_policy_probe(policy, runs_root())  # only from inside the runs folder
        except ICError as exc:
            show_error(exc)
            return
    st.subheader("Try the gate on a prompt")
    prompt = st.text_area("Prompt the agent is about to act on", key="gov_prompt", height=80)
    prefix = None
    if policy.prefix_mode == "per_item":
        prefix = st.text_input("This prompt's answer prefix (ending right before the answer)", key="gov_prefix",
                               placeholder="The capital of Peru is")
    choices = ()
    if policy.kind == "multiple_choice":
        choices = tuple(c.strip() for c in st.text_area("Options, one per line", key="gov_choices").splitlines()
                        if c.strip())
    if st.button("Check with the gate", key="gov_check_btn", type="primary"):
        try:
            decision = gate_check(loaded, policy, prompt, probe=probe, answer_prefix=prefix, choices=choices)
        except ICError as exc:
            show_error(exc)
        else:
            (st.success if decision.decision == "approve" else st.warning)(decision_text(decision))
            st.markdown(guarantee_line(decision))
            if probe is not None and decision.signals.get("probe_p_correct") is not None:
                weak_probe_note(probe)


# ---------------------------------------------------------------- audit log


def audit_tab() -> None:
    try:
        path = resolve_audit_path()
    except ICError as exc:
        show_error(exc)
        return
    n = st.number_input("Show the last N records", 1, 10_000, 50, key="gov_audit_n")
    try:
        records, skipped = read_audit(path, last_n=int(n))
    except ICError as exc:
        show_error(exc)
        return
    st.caption(f"Audit log: `{path}` (set IC_AUDIT_LOG to move it) · {len(records)} record(s) shown · "
               f"{skipped} unreadable line(s) skipped (a torn last line after a crash counts here).")
    if not records:
        st.info("No gate decisions logged yet.")
        return
    st.dataframe(pd.DataFrame(audit_rows(records)), hide_index=True, key="gov_audit_table")


# ---------------------------------------------------------------- page


require_router(__file__)
st.title("Governance gate")
st.caption(
    "Before an agent acts on a model's answer, read the model's state once (no generation) and escalate to a "
    "human when the signal says *uncertain*. Thresholds are fitted on labelled items and judged on held-out "
    "items, with 95 % bootstrap intervals."
)
loaded_model = get_loaded()
tabs = st.tabs(["Demo for governance teams", "Tune a policy on a run", "Policy file & live gate", "Audit log"])
with tabs[0]:
    demo_tab(loaded_model)
with tabs[1]:
    tune_tab(loaded_model)
with tabs[2]:
    policy_tab(loaded_model)
with tabs[3]:
    audit_tab()
footer(loaded_model)
