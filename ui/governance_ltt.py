"""The Governance page's risk-controlled thresholds: read-out choice, Learn then Test, its checks.

The page asks here for the read-out (agent-ready ones first) and the threshold method; with
"risk-controlled (Learn then Test)" this module fits through the engine
(:func:`ic_core.governance.fit.fit_policy_on_run` with ``method="ltt"``) and shows the
certified threshold or the plain refusal, the held-out check with CIs, the repeated-split
simulation, the OOD share and what a per-item prefix would have bought. Signal quality
(AUROC beside AURC, E-AURC, AUGRC; reliability for the probe) is shown for both methods.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.governance.fit import PolicyFit, ProbeScores, fit_policy_on_run
from ic_core.governance.fit_ltt import (
    EMPIRICAL_LABEL,
    ReadoutOption,
    comparison_lines,
    held_out_ood_share,
    other_run_ood_share,
)
from ic_core.governance.signals import RunSignals
from ic_core.narrative import ci_caption, percent_text, quality_rows
from ic_core.plots.calibration import reliability_figure, simulation_figure
from ic_core.runs.store import StudyRun
from ic_core.stats.risk_control import METHODS as BOUNDS
from ic_core.stats.risk_simulation import N_SPLITS
from ic_core.stats.selective import brier_score, reliability_bins
from ui.common import cached_run, md_text, show_error
from ui.governance_cache import (
    cached_quality,
    cached_readout_options,
    keep_ltt_fit,
    list_saved_runs,
    ltt_fits,
)
from ui.progress import ProgressBar

LTT_LABEL = "risk-controlled (Learn then Test)"
METHOD_LABELS = {"empirical": EMPIRICAL_LABEL, "ltt": LTT_LABEL}
BOUND_LABELS = {"clopper_pearson": "Clopper–Pearson (exact binomial)", "hoeffding_bentkus": "Hoeffding–Bentkus"}
BOUND_SHORT = {"clopper_pearson": "exact Clopper–Pearson bound", "hoeffding_bentkus": "Hoeffding–Bentkus bound"}
LTT_STATE = "gov.ltt_key"
"""The key of the Learn-then-Test fit the user last asked for (its result lives in :func:`ltt_fits`)."""


# ---------------------------------------------------------------- choices


def readout_choice(path: str, mtime: float, regime: str | None) -> ReadoutOption | None:
    """The read-out to gate on, agent-ready ones first (the run's own first among them); None: not gateable."""
    options = cached_readout_options(path, mtime, regime)
    if not options:
        return None
    options = sorted(options, key=lambda o: (not o.agent_ready, not o.native))
    keys = [o.readout for o in options]
    if st.session_state.get("gov_readout") not in keys:
        st.session_state["gov_readout"] = keys[0]
    labels = {o.readout: o.label + (" · what this run read" if o.native else "") for o in options}
    chosen = st.radio("Read-out (agent-ready first)", keys, format_func=labels.get, key="gov_readout",
                      help="Agent-ready read-outs gate an agent's prompt as it is; a per-item prefix needs a "
                           "hand-written answer start for every prompt (research only).")
    return options[keys.index(chosen)]


def method_choice() -> str:
    """``empirical`` (the old fit, no guarantee) or ``ltt`` (a certified threshold, or a plain refusal)."""
    return st.radio("Threshold method", list(METHOD_LABELS), format_func=METHOD_LABELS.get, key="gov_method",
                    horizontal=True, help="Learn then Test certifies: error among approved ≤ α with probability "
                                          "≥ 1 − δ on items like the training (calibration) items.")


# ---------------------------------------------------------------- signal quality (both methods)


def signal_quality_section(sig: RunSignals, scores: ProbeScores | None) -> None:
    """Held-out AUROC beside AURC, E-AURC and AUGRC for each signal shown; reliability for the probe."""
    st.subheader("How well the signals rank the held-out answers")
    # The run's entropy always (negated: low entropy ranks as trusted), the probe beside it. Named in words:
    # a leading minus sign read as "~H_slot" in the table's font.
    entries = [(f"{sig.entropy_name} (low = trusted)", -sig.entropy_bits)]
    if scores is not None:
        entries.append(("probe P(correct)", scores.p_correct))
    try:
        qualities = [cached_quality(name, np.asarray(s, dtype=np.float64), sig.correct, sig.test_idx, sig.seed)
                     for name, s in entries]
    except ICError as exc:
        show_error(exc)
        return
    st.dataframe(pd.DataFrame(quality_rows(qualities)), hide_index=True, key="gov_quality")
    st.caption(f"On the {sig.test_idx.size} held-out items; 95 % percentile-bootstrap CIs (1000 resamples), "
               "AUROC's shuffle control over 20 label permutations. AURC: mean error among the k most trusted "
               "answers (lower is better); E-AURC: AURC above a perfect ranking's; AUGRC: area under the "
               "approved-and-wrong share (Traub et al. 2024).")
    if scores is not None:
        reliability_section(scores.p_correct[sig.test_idx], sig.correct[sig.test_idx])


def reliability_section(p_correct: np.ndarray, correct: np.ndarray) -> None:
    """Reliability diagram of the probe's P(correct) on held-out items, with ECE (binning stated) and Brier."""
    try:
        bins = reliability_bins(p_correct, correct, n_bins=10, binning="equal_width")
        brier = brier_score(p_correct, correct)
    except ICError as exc:
        show_error(exc)
        return
    st.plotly_chart(reliability_figure(bins, title=f"Probe calibration on {bins.n} held-out items"),
                    key="gov_reliability")
    st.caption(f"{bins.label} = **{bins.ece:.3f}** · Brier score **{brier:.3f}** (0 = perfect; 0.25 = always ½) · "
               f"bins of width 0.1 on [0, 1], bubble size = items in the bin.")


# ---------------------------------------------------------------- Learn then Test


def _ltt_inputs() -> tuple[float, float, str, int]:
    c1, c2, c3, c4 = st.columns([1, 1, 2, 1])
    alpha = c1.number_input("α (error among approved)", 0.01, 0.99, 0.25, 0.01, key="gov_alpha",
                            help="The guarantee: error among auto-approved answers at most α …")
    delta = c2.number_input("δ (failure probability)", 0.01, 0.5, 0.1, 0.01, key="gov_delta",
                            help="… with probability at least 1 − δ over the calibration items.")
    bound = c3.selectbox("Binomial bound", list(BOUNDS), format_func=BOUND_LABELS.get, key="gov_bound")
    n_splits = c4.number_input("Simulation splits", 20, 2000, N_SPLITS, 10, key="gov_splits",
                               help="Random calibration/test splits of all items for the check of the guarantee.")
    return float(alpha), float(delta), str(bound), int(n_splits)


def ltt_fit(run: StudyRun, sig: RunSignals, signal: str, scores: ProbeScores | None,
            readout: str) -> PolicyFit | None:
    """α/δ inputs, the Certify button, and the fit it asked for (None until pressed, or when inputs changed)."""
    alpha, delta, bound, n_splits = _ltt_inputs()
    probe_key = None if scores is None else (scores.source, scores.probe.probe_id)
    key = (sig.run_path, sig.regime, sig.holdout, sig.seed, readout, signal, probe_key, alpha, delta, bound,
           n_splits, float(run.path.stat().st_mtime) if run.path.exists() else 0.0)
    if st.button("Certify a threshold on the training items", key="gov_ltt_btn", type="primary"):
        st.session_state[LTT_STATE] = key
        if key not in ltt_fits():
            bar = ProgressBar("splits", task="governance:ltt_split")
            try:
                fit = fit_policy_on_run(run, signal, None, regime=sig.regime, holdout=sig.holdout, seed=sig.seed,
                                        scores=scores, signals=sig, method="ltt", alpha=alpha, delta=delta,
                                        bound=bound, readout=readout, ood="auto", n_splits=n_splits, progress=bar)
            except ICError as exc:
                bar.bar.empty()
                st.session_state.pop(LTT_STATE, None)
                show_error(exc)
                return None
            bar.bar.empty()
            keep_ltt_fit(key, fit)
    if st.session_state.get(LTT_STATE) != key or key not in ltt_fits():
        st.info("Set α and δ, then press **Certify**: the threshold is certified on the training items and "
                "checked on the held-out ones and on repeated random splits.")
        return None
    fit = ltt_fits()[key]
    store_text = bool(st.session_state.get("gov_store_text", False))
    if fit.policy.store_prompt_text != store_text:
        fit = replace(fit, policy=replace(fit.policy, store_prompt_text=store_text, policy_id=""))
    return fit


def ltt_results(run: StudyRun, fit: PolicyFit) -> None:
    """The certified threshold or the refusal, the held-out check, the simulation, OOD and the read-out comparison."""
    risk = fit.risk
    assert risk is not None
    ltt, sig = risk.ltt, fit.signals
    name = "P(correct)" if ltt.direction == "ge" else sig.entropy_name
    op, unit = ("≥", "") if ltt.direction == "ge" else ("≤", " bits")
    if ltt.certified:
        assert ltt.coverage is not None
        st.success(f"**Certified:** approve when {name} {op} {ltt.threshold:.4g}{unit}. On items like these "
                   f"{ltt.n} calibration items, the error among auto-approved answers is at most "
                   f"{ltt.alpha:g} with probability at least {1 - ltt.delta:g} ({BOUND_SHORT[ltt.method]}).")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Certified threshold", f"{ltt.threshold:.4g}{unit}")
        c2.metric("Certified coverage", f"{ltt.coverage:.1%}")
        c2.caption(f"{ltt.n_approved} of {ltt.n} calibration items approved")
        c3.metric("Calibration items", f"{ltt.n}")
        c4.metric("Errors among approved (calibration)", f"{ltt.errors_approved} of {ltt.n_approved}")
    else:
        st.warning(f"**No threshold certified:** {ltt.reason}. The policy escalates every prompt.")
    held_out_check(risk)
    simulation_section(risk)
    ood_section(run, fit)
    comparison_section(risk.comparison)


def held_out_check(risk: Any) -> None:
    """Realised error among approved and coverage on the held-out items, with Wilson 95 % CIs."""
    ho = risk.held_out
    if ho is None:
        return
    st.markdown(f"**Held-out check of the guarantee** ({ho.n} items the threshold never saw)")
    c1, c2, c3 = st.columns(3)
    c1.metric("Held-out error among approved", percent_text(ho.error_rate))
    c1.caption(ci_caption(ho.error_ci) + f" · {ho.errors_approved} of {ho.n_approved} approved were wrong")
    c2.metric("Held-out coverage", percent_text(ho.coverage))
    c2.caption(ci_caption(ho.coverage_ci))
    c3.metric("α asked for", f"{risk.ltt.alpha:g}")
    c3.caption("one split: the realised error may exceed α by chance, in at most about δ of splits")


def simulation_section(risk: Any) -> None:
    """The repeated-split simulation: histogram of realised errors, exceedance rate against δ."""
    sim = risk.simulation
    if sim is None:
        st.info(f"Repeated-split check not run: {risk.simulation_note}.")
        return
    st.plotly_chart(simulation_figure(sim), key="gov_simulation")
    verdict = ("within δ (at most δ + 3 standard errors)" if sim.within_delta
               else "**above δ + 3 standard errors**: the guarantee is not borne out on this run")
    st.caption(f"{sim.text()}. Exceedance rate {sim.exceedance_rate:.1%} ± {sim.exceedance_se:.1%} against "
               f"δ = {sim.delta:g}: {verdict}. Each split's test part adds its own sampling noise, so this "
               "over-states exceedance of the true risk.")


def ood_section(run: StudyRun, fit: PolicyFit) -> None:
    """The share of held-out items (and of another run) outside the distance model of the training states."""
    policy = fit.policy
    if policy.ood is None or policy.ood_layer is None:
        st.caption(f"Out-of-distribution check: {fit.ood_note or 'no distance model stored'}.")
        return
    try:
        share = held_out_ood_share(run, fit.signals, policy.ood, policy.ood_layer)
    except ICError as exc:
        show_error(exc)
        return
    st.markdown(f"**Out of distribution** (layer {policy.ood_layer}, calibrated to flag "
                f"{policy.ood['outside_rate']:.0%} of items like the training ones): "
                + share.text("held-out items"))
    others = [r for r in list_saved_runs() if str(r.path) != str(run.path)]
    if not others:
        return
    names = ["—"] + [r.name for r in others]
    pick = st.selectbox("OOD share of another run's prompts", names, key="gov_ood_other",
                        format_func=lambda n: "choose a run…" if n == "—" else others[names.index(n) - 1].picker_label())
    if pick == "—":
        return
    info = others[names.index(pick) - 1]
    try:
        other = other_run_ood_share(cached_run(str(info.path), info.mtime), policy.ood, policy.ood_layer,
                                    policy.model, policy.prefix_mode, policy.answer_prefix)
    except ICError as exc:
        show_error(exc)
        return
    st.markdown(f"{md_text(info.name)}: " + other.text("items") + " The gate escalates these as out of "
                "distribution.")


def comparison_section(comparison: dict[str, Any] | None) -> None:
    """What a per-item prefix would have bought over the agent-ready read-out, on the same held-out items."""
    if not comparison:
        st.caption("What a per-item prefix would buy cannot be shown for this run: it read no per-item prefixes "
                   "(a study with item prefixes records both read-outs of every item).")
        return
    st.markdown(f"**What a per-item prefix would have bought** (same {comparison.get('n_held_out', '')} held-out "
                "items, same α and δ):")
    for line in comparison_lines(comparison):
        st.markdown(f"- {md_text(line)}")
