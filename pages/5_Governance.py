"""Governance gate: tune an escalation policy on a labelled run, judge it on held-out items, use it, audit it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.governance.audit import read_audit, resolve_audit_path
from ic_core.governance.compare import compare_signals
from ic_core.governance.fit import ProbeScores, RunSignals, fit_policy_on_run, probe_scores, run_signals
from ic_core.governance.gate import gate_check, load_policy_probe
from ic_core.governance.policy import ENTROPY_NAMES, Policy, check_model, probe_entry
from ic_core.models import LoadedModel, ModelSpec
from ic_core.narrative import auroc_text, signal_verdict
from ic_core.plots.gate import confusion_figure, risk_coverage_figure, score_histogram_figure
from ic_core.runs.store import runs_root
from ic_core.stats.gating import (
    HeldOutReport,
    combined_escalate,
    confusion_from_decisions,
    evaluate_held_out,
    risk_coverage,
)
from ui.common import footer, get_loaded, json_download, require_router, show_error

DEMO_SET = "governance_ops"
DEMO_PREFIX = "The answer is"
DEMO_LIMIT = 60
DEMO_COMMAND = (f"python -m ic_core study --data {DEMO_SET} --regimes direct --limit {DEMO_LIMIT} "
                f"--answer-prefix \"{DEMO_PREFIX}\" --max-new-tokens 24")
POLICY_KEY = "gate_policy"
PROBE_KEY = "probe"
SHOW_COLUMNS = ["item_id", "question", "output_text", "expected", "correct"]


# ---------------------------------------------------------------- cached engine calls


@st.cache_resource(max_entries=2, show_spinner="Opening the run…")
def cached_run(path: str, mtime: float) -> Any:
    from ic_core.runs.store import load_run

    return load_run(path)


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_signals(path: str, mtime: float, regime: str | None, holdout: float, seed: int) -> RunSignals:
    return run_signals(cached_run(path, mtime), regime, holdout, seed)


@st.cache_resource(max_entries=4, show_spinner="Fitting a probe on the training items (nested CV)…")
def cached_probe_scores(path: str, mtime: float, regime: str | None, holdout: float, seed: int) -> ProbeScores:
    return probe_scores(cached_run(path, mtime), cached_signals(path, mtime, regime, holdout, seed))


@st.cache_resource(max_entries=2, show_spinner="Comparing signals on the held-out items…")
def cached_comparison(path: str, mtime: float, target: float, holdout: float, seed: int, spec: ModelSpec | None,
                      _loaded: LoadedModel | None) -> Any:
    # ``spec`` keys the cache on the model; ``_loaded`` is that model (not hashed).
    sig = cached_signals(path, mtime, None, holdout, seed)
    try:
        scores = cached_probe_scores(path, mtime, None, holdout, seed)
    except ICError:
        scores = None  # compare_signals fits again and records why it could not
    return compare_signals(cached_run(path, mtime), _loaded, target, signals=sig, scores=scores)


def list_saved_runs() -> list[Any]:
    from ic_core.runs.store import list_runs

    return [r for r in list_runs() if r.n_rows_done > 0]


# ---------------------------------------------------------------- small helpers


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def ci_text(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a (nothing approved)"
    return f"{value:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else " [CI n/a]")


def ci_only(ci: tuple[float, float] | None) -> str:
    return f"95 % CI [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "95 % CI n/a (too few items)"


def items_frame(sig: RunSignals, idx: np.ndarray, extra: dict[str, np.ndarray]) -> pd.DataFrame:
    frame = sig.table.iloc[idx][[c for c in SHOW_COLUMNS if c in sig.table.columns]].copy()
    for name, values in extra.items():
        frame[name] = np.round(values[idx], 3)
    return frame.reset_index(drop=True)


def held_out_metrics(report: HeldOutReport, note: str) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Held-out items", f"{report.n}")
    # Metric values are short (a point estimate); the 95 % CI goes underneath so it is never cut off.
    c2.metric("Escalation rate", pct(report.escalation_rate))
    c2.caption(ci_only(report.escalation_rate_ci))
    c3.metric("Error among approved", pct(report.error_among_approved))
    c3.caption(ci_only(report.error_among_approved_ci))
    c4.metric("Error with no gate", pct(report.error_without_gate))
    conf = report.confusion
    st.caption(f"Held out: **{conf.caught}** wrong answers caught, **{conf.slipped}** slipped through, "
               f"**{conf.cost}** right answers escalated needlessly. {note}")


# ---------------------------------------------------------------- demo


def demo_tab(loaded: LoadedModel | None) -> None:
    st.markdown(
        "A one-click walk-through for governance teams on the bundled **governance_ops** set (60 questions "
        "about shell, git, kubectl, SQL, Docker and deployment safety). The model answers each; we fit "
        "escalation thresholds on part of the items and gate the rest, then show what the gate caught and "
        "what slipped through — for raw **H_int** (the paper's read-out, at the last prompt token), **H_slot** "
        "(after the forced answer prefix *\"The answer is\"*) and a linear **probe** on the state."
    )
    all_runs = list_saved_runs()
    demo_runs = [r for r in all_runs if r.dataset_name == DEMO_SET]
    if not demo_runs:
        st.info(f"No run of {DEMO_SET} yet. Make one here (about {DEMO_LIMIT} items, direct regime, with the "
                f"answer prefix; a few minutes on a laptop CPU), or from a terminal:")
        st.code(DEMO_COMMAND, language="bash")
        if st.button("Make a governance_ops run now", key="gov_demo_make", disabled=loaded is None):
            make_demo_run(loaded)
    candidates = demo_runs + [r for r in all_runs if r.dataset_name != DEMO_SET]
    if not candidates:
        return
    names = [r.name for r in candidates]
    if st.session_state.get("gov_demo_run_name") not in names:
        st.session_state["gov_demo_run_name"] = names[0]
    chosen = st.selectbox("Run to demo on (the newest governance_ops run first)", names, key="gov_demo_run_name",
                          format_func=lambda n: run_label(candidates[names.index(n)]))
    info = candidates[names.index(chosen)]
    c1, c2 = st.columns(2)
    target = c1.slider("Target error among auto-approved answers", 0.0, 0.9, 0.5, 0.05, key="gov_demo_target",
                       help="Thresholds are fitted on the training items to keep the error among approved "
                            "answers at or below this.")
    holdout = c2.slider("Held-out share", 0.2, 0.6, 0.4, 0.05, key="gov_demo_holdout")
    autorun = st.session_state.pop("gov.demo_autorun", False) and info.dataset_name == DEMO_SET
    if st.button("Run the demo", key="gov_demo_run", type="primary") or autorun:
        st.session_state["gov.demo_args"] = (str(info.path), info.mtime, float(target), float(holdout))
    args = st.session_state.get("gov.demo_args")
    if not args:
        return
    try:
        comp = cached_comparison(*args, 0, loaded.spec if loaded else None, loaded)
    except ICError as exc:
        show_error(exc)
        return
    show_comparison(comp)


def headline(comp: Any) -> str:
    """One honest sentence from the held-out AUROCs (nothing hard-coded)."""
    with_signal = [r.name for r in comp.results if r.auroc.ci95 is not None and r.auroc.ci95[0] > 0.5]
    without = [r.name for r in comp.results if r.auroc.ci95 is not None and r.auroc.ci95[0] <= 0.5]
    if not with_signal:
        return ("On these held-out items **no signal separates right from wrong answers beyond chance** (every "
                "95 % interval includes 0.5): a gate built on them escalates at random. Say so rather than "
                "deploy it; a larger or more answerable set, or a stronger model, may change this.")
    text = f"**{', '.join(with_signal)}** rank right answers above wrong ones better than chance on held-out items"
    if without:
        text += f"; **{', '.join(without)}** show no evidence of signal (interval includes 0.5)"
    return text + "."


def make_demo_run(loaded: LoadedModel) -> None:
    from ic_core.datasets import load_bundled
    from ic_core.runs.store import default_run_name, run_path
    from ic_core.study.runner import run_study

    result = load_bundled(DEMO_SET)
    out = run_path(default_run_name(DEMO_SET, ["direct"], DEMO_LIMIT))
    bar = st.progress(0.0, text="Starting…")

    def progress(done: int, total: int, eta_s: float | None, message: str) -> None:
        eta = "" if eta_s is None else f" · about {eta_s:.0f} s left"
        bar.progress(min(1.0, done / max(total, 1)), text=f"{done}/{total}{eta} · {message[:50]}")

    try:
        run_study(loaded, result.items, ["direct"], out, limit=DEMO_LIMIT, answer_prefix=DEMO_PREFIX,
                  gen_config=GenerationConfig(max_new_tokens=24), progress=progress, dataset_name=DEMO_SET,
                  dataset_sha256=result.sha256)
    except ICError as exc:
        show_error(exc)
        return
    st.session_state["gov.demo_autorun"] = True  # one click: the demo runs on the new run right away
    st.rerun()


def show_comparison(comp: Any) -> None:
    sig = comp.signals
    st.markdown(
        f"**Fitted on {sig.train_idx.size} training items, judged on {sig.test_idx.size} held-out items** "
        f"(stratified split, seed {sig.seed}; {sig.n_ungraded_excluded} ungraded rows left out). "
        f"With no gate, {pct(float(np.mean(~sig.correct[sig.test_idx])))} of the held-out answers are wrong. "
        f"Target: at most {comp.target_error:.0%} wrong among auto-approved answers."
    )
    rows = []
    for r in comp.results:
        ho = r.held_out
        rows.append({
            "signal": r.name,
            "held-out AUROC [95 % CI]": auroc_text(r.auroc),
            "shuffled labels": "n/a" if r.auroc.shuffle_mean is None else f"{r.auroc.shuffle_mean:.2f}",
            "verdict": signal_verdict(r.auroc),
            "rule (fitted on training items)": r.threshold_text,
            "escalated [95 % CI]": ci_text(ho.escalation_rate, ho.escalation_rate_ci),
            "error among approved [95 % CI]": ci_text(ho.error_among_approved, ho.error_among_approved_ci),
            "caught": ho.confusion.caught,
            "slipped through": ho.confusion.slipped,
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="gov_demo_table")
    st.markdown(headline(comp))
    for note in comp.notes:
        st.info(note)
    if sig.test_idx.size < 40:
        st.caption(f"Only {sig.test_idx.size} held-out items: the intervals are wide. Read them, not just the "
                   "point values.")
    curves = {r.name: r.held_out_curve for r in comp.results}
    st.plotly_chart(risk_coverage_figure(curves, target_error=comp.target_error), key="gov_demo_rc")
    names = [r.name for r in comp.results]
    default = next((i for i, r in enumerate(comp.results) if r.key != "h_int"), 0)
    chosen = st.selectbox("Show the held-out items for", names, index=default, key="gov_demo_signal")
    r = comp.results[names.index(chosen)]
    te = sig.test_idx
    caught = te[r.escalate[te] & ~sig.correct[te]]
    slipped = te[~r.escalate[te] & ~sig.correct[te]]
    score = {"risk (bits, or −P)": r.risk}
    if te.size and bool(np.all(r.escalate[te])):
        st.warning(f"**{chosen}: every held-out item is escalated** ({r.threshold_text}). Nothing slips through "
                   "only because nothing is approved: this rule saves no human work.")
    c1, c2 = st.columns(2)
    c1.markdown(f"**Caught** — escalated, and the answer was wrong ({caught.size})")
    c1.dataframe(items_frame(sig, caught, score), hide_index=True, key="gov_demo_caught")
    c2.markdown(f"**Slipped through** — approved, but the answer was wrong ({slipped.size})")
    c2.dataframe(items_frame(sig, slipped, score), hide_index=True, key="gov_demo_slipped")


# ---------------------------------------------------------------- tuning


def run_label(info: Any) -> str:
    return f"{info.name} · {info.dataset_name or 'custom'} · {info.model_label} · {info.n_rows_done} rows"


def signal_options(sig: RunSignals) -> dict[str, str]:
    entropy = ENTROPY_NAMES[sig.entropy_signal]
    where = "after the answer prefix" if sig.entropy_signal == "h_slot" else "at the last prompt token"
    return {
        sig.entropy_signal: f"{entropy} ({where})",
        "probe": "probe P(correct) (fitted on the training items)",
        "combined": f"combined: {entropy} or probe",
    }


def fit_context(sig: RunSignals, signal: str, scores: ProbeScores | None) -> tuple:
    """What a fitted threshold belongs to: another run, split, signal or probe makes it stale."""
    return (sig.run_path, sig.regime, sig.holdout, sig.seed, signal, scores.probe.probe_id if scores else None)


def _fit_callback(run: Any, sig: RunSignals, signal: str, scores: ProbeScores | None) -> None:
    s = st.session_state
    try:
        fit = fit_policy_on_run(run, signal, float(s["gov_target"]), signals=sig, scores=scores)
    except ICError as exc:
        s["gov.fit_message"] = ("error", str(exc))
        return
    s["gov.fit"] = {"context": fit_context(sig, signal, scores), "escalate_all": fit.policy.escalate_all,
                    "target": float(s["gov_target"])}
    if fit.policy.t_entropy_bits is not None:
        s["gov_t_entropy"] = float(fit.policy.t_entropy_bits)
    if fit.policy.t_probe is not None:
        s["gov_t_probe"] = float(fit.policy.t_probe)
    kind = "warning" if not fit.target_met else "success"
    s["gov.fit_message"] = (kind, fit.message)


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
    chosen = c1.selectbox("Saved run", names, key="gov_run", format_func=lambda n: run_label(runs[names.index(n)]))
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
        sig = cached_signals(str(info.path), info.mtime, regime, float(holdout), seed)
    except ICError as exc:
        show_error(exc)
        return
    options = signal_options(sig)
    if st.session_state.get("gov_signal") not in options:
        st.session_state["gov_signal"] = sig.entropy_signal
    signal = st.radio("Signal", list(options), format_func=options.get, key="gov_signal", horizontal=True,
                      on_change=_manual_change)
    scores = None
    if signal in ("probe", "combined"):
        scores = choose_probe_scores(run, sig, str(info.path), info.mtime, regime, float(holdout), seed)
        if scores is None:
            return
    st.caption(f"{sig.train_idx.size} training and {sig.test_idx.size} held-out items "
               f"({sig.n_ungraded_excluded} ungraded left out) · prefix mode **{sig.prefix_mode}**.")

    base_train = float(np.mean(~sig.correct[sig.train_idx]))
    st.session_state.setdefault("gov_target", round(min(0.9, base_train / 2), 2))
    c1, c2 = st.columns([3, 1])
    c1.slider("Target error rate among auto-approved answers", 0.0, 0.9, step=0.01, key="gov_target",
              help="'Fit' picks the most permissive threshold that meets this on the training items.")
    c2.button("Fit on training items", key="gov_fit_btn", type="primary", on_click=_fit_callback,
              args=(run, sig, signal, scores))
    message = st.session_state.get("gov.fit_message")
    if message:
        getattr(st, message[0])(message[1])

    h = sig.entropy_bits
    t_e = t_p = None
    if signal in (sig.entropy_signal, "combined"):
        lo, hi = math.floor(float(h.min()) * 10) / 10, math.ceil(float(h.max()) * 10) / 10 + 0.1
        t_e = _clamped_slider(f"Threshold: escalate when {ENTROPY_NAMES[sig.entropy_signal]} > (bits)",
                              "gov_t_entropy", lo, hi, float(np.median(h)), "Entropy above this → a human looks.")
    if signal in ("probe", "combined"):
        t_p = _clamped_slider("Threshold: escalate when P(correct) <", "gov_t_probe", 0.0, 1.0, 0.5,
                              "Calibrated probability below this → a human looks.")
    fit_state = st.session_state.get("gov.fit")
    if fit_state and fit_state["context"] != fit_context(sig, signal, scores):
        fit_state = None  # fitted for another run, split, signal or probe
        _manual_change()
    escalate_all = bool(fit_state and fit_state["escalate_all"])
    if escalate_all:
        escalate = np.ones(sig.correct.size, bool)
    elif signal == "combined":
        escalate = combined_escalate(h, scores.p_correct, t_e, t_p)
    elif signal == "probe":
        escalate = scores.p_correct < t_p
    else:
        escalate = h > t_e

    view = st.radio("Items shown in the live view", ["training", "held-out", "all"], key="gov_view",
                    horizontal=True, help="Tune on training items; the held-out figures below judge the result.")
    idx = {"training": sig.train_idx, "held-out": sig.test_idx, "all": np.arange(sig.correct.size)}[view]
    live_figures(sig, signal, scores, escalate, idx, t_e, t_p)

    st.subheader("Held-out evaluation of this rule")
    report = evaluate_held_out(escalate, sig.correct, sig.test_idx)
    fitted = fit_state is not None
    note = ("Thresholds fitted on the training items only." if fitted else
            "Thresholds set by hand: if you moved them while looking at held-out items, these figures are optimistic.")
    held_out_metrics(report, note)

    policy = build_policy(sig, signal, scores, t_e, t_p, escalate_all, report, fit_state)
    policy_actions(policy, scores, run)


def choose_probe_scores(run: Any, sig: RunSignals, path: str, mtime: float, regime: str | None, holdout: float,
                        seed: int) -> ProbeScores | None:
    """The probe's calibrated scores: fitted on the training items, or the session's probe from another run."""
    session_probe = st.session_state.get(PROBE_KEY)
    external_ok = session_probe is not None and not Path(session_probe.run_path).resolve() == Path(path).resolve()
    source = "fit"
    if external_ok:
        source = st.radio("Probe", ["fit", "session"], key="gov_probe_source", horizontal=True, format_func={
            "fit": "fit one on this run's training items",
            "session": f"the loaded probe {session_probe.probe_id} (fitted on {Path(session_probe.run_path).name})",
        }.get)
    try:
        if source == "session":
            scores = probe_scores(run, sig, session_probe)
        else:
            scores = cached_probe_scores(path, mtime, regime, holdout, seed)
    except ICError as exc:
        show_error(exc)
        return None
    if source == "session":
        st.caption(f"Probe: {scores.source}. It never saw this run's items; its P(correct) is calibrated on the "
                   "training items only.")
    else:
        st.caption(f"Probe: {scores.source} (probe {scores.probe.probe_id}). Training items are scored out of "
                   "fold, held-out items by the probe fitted on all training items — no item is scored by a "
                   "probe that saw it. Probes saved in the run's probes/ folder were fitted on every item, "
                   "held-out ones included, so they are not offered here.")
    return scores


def live_figures(sig: RunSignals, signal: str, scores: ProbeScores | None, escalate: np.ndarray, idx: np.ndarray,
                 t_e: float | None, t_p: float | None) -> None:
    correct = sig.correct[idx]
    conf = confusion_from_decisions(escalate[idx], correct)
    c1, c2, c3 = st.columns(3)
    c1.metric("Escalation rate", pct(conf.escalation_rate))
    c2.metric("Error among auto-approved", pct(conf.error_among_approved))
    c3.metric("Wrong answers caught", pct(conf.share_of_errors_caught))
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(conf), key="gov_confusion")
    entropy_name = ENTROPY_NAMES[sig.entropy_signal]
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
                                               "probability 0–1", escalate_above=False), key="gov_hist_probe")
    extra = {entropy_name + " (bits)": sig.entropy_bits}
    if scores is not None:
        extra["P(correct)"] = scores.p_correct
    esc = idx[escalate[idx]]
    slipped = idx[~escalate[idx] & ~sig.correct[idx]]
    with st.expander(f"Items that would be escalated ({esc.size})"):
        st.dataframe(items_frame(sig, esc, extra), hide_index=True, key="gov_escalated")
    with st.expander(f"Wrong answers that would slip through ({slipped.size})"):
        st.dataframe(items_frame(sig, slipped, extra), hide_index=True, key="gov_slipped")


def build_policy(sig: RunSignals, signal: str, scores: ProbeScores | None, t_e: float | None, t_p: float | None,
                 escalate_all: bool, report: HeldOutReport, fit_state: Any) -> Policy:
    uses_probe = signal in ("probe", "combined")
    return Policy(
        signal=signal, model=sig.model, regime=sig.regime, kind=sig.kind, prefix_mode=sig.prefix_mode,
        answer_prefix=sig.answer_prefix, t_entropy_bits=None if escalate_all else t_e,
        entropy_signal=None if signal == "probe" else sig.entropy_signal,
        t_probe=None if escalate_all else t_p, escalate_all=escalate_all,
        probe=probe_entry("", scores.probe.probe_id, scores.calibration) if uses_probe and scores else None,
        model_n_layers=sig.n_layers, model_d_model=sig.d_model,
        fitted_on={"run_path": sig.run_path, "dataset": sig.dataset, "regime": sig.regime,
                   "n_train": int(sig.train_idx.size), "n_held_out": int(sig.test_idx.size),
                   "n_ungraded_excluded": sig.n_ungraded_excluded, "holdout": sig.holdout, "seed": sig.seed,
                   "thresholds": "fitted on training items" if fit_state else "set by hand",
                   "probe_source": scores.source if uses_probe and scores else None},
        target_error=fit_state["target"] if fit_state else None, held_out=report.to_json(),
        store_prompt_text=bool(st.session_state.get("gov_store_text", False)),
    )


def _with_saved_probe(policy: Policy, scores: ProbeScores | None, run: Any) -> Policy:
    """Save the probe into the run's probes/ folder and point the policy at it."""
    if not policy.uses_probe or scores is None:
        return policy
    stem = Path(run.path) / "probes" / f"gate-{scores.probe.probe_id}"
    path = stem.with_name(stem.name + ".json")
    if not path.is_file():  # the name is the probe's content hash: an existing file is this probe
        path = scores.probe.save(stem)
    entry = probe_entry(str(Path(path).resolve()), scores.probe.probe_id, scores.calibration)
    return Policy.from_dict({**policy.to_dict(), "probe": entry, "policy_id": ""})


def policy_actions(policy: Policy, scores: ProbeScores | None, run: Any) -> None:
    st.subheader("This policy")
    st.checkbox("Audit log may store the prompt text (otherwise only its SHA-256)", key="gov_store_text")
    try:
        saved = _with_saved_probe(policy, scores, run)
    except OSError as exc:
        show_error(ICError(f"Could not save the probe next to the run ({exc}); the policy cannot be used."))
        return
    if saved.uses_probe:
        st.caption(f"The policy's probe is saved at `{saved.probe['path']}`; keep it with the policy file.")
    st.markdown(f"**Rule:** {saved.describe()}  \n**Policy id:** `{saved.policy_id}`")
    c1, c2 = st.columns(2)
    if c1.button("Use this policy in Explore (and the live gate)", key="gov_use_btn"):
        st.session_state[POLICY_KEY] = saved
        if saved.uses_probe:
            st.session_state[PROBE_KEY] = scores.probe
        st.success(f"Policy {saved.policy_id} is active: Explore's risk card now shows its verdict.")
    with c2:
        json_download("Download policy (JSON)", saved.to_dict(), f"policy-{saved.policy_id}.json", key="gov_dl")


# ---------------------------------------------------------------- policy file and live gate


def policy_tab(loaded: LoadedModel | None) -> None:
    uploaded = st.file_uploader("Load a policy file (JSON)", type=["json"], key="gov_upload")
    if uploaded is not None:
        try:
            policy = Policy.from_json(uploaded.getvalue())
        except ICError as exc:
            show_error(exc)
        else:
            st.success(f"Valid policy {policy.policy_id}: {policy.describe()}")
            if st.button("Use the uploaded policy", key="gov_use_upload"):
                st.session_state[POLICY_KEY] = policy
    policy = st.session_state.get(POLICY_KEY)
    if policy is None:
        st.info("No policy active. Fit one in the 'Tune' tab, or load a policy file.")
        return
    st.markdown(f"**Active policy** `{policy.policy_id}` — {policy.describe()}  \n"
                f"Signal {policy.signal}, regime {policy.regime}, prefix mode {policy.prefix_mode}, "
                f"model {policy.model.get('name')}.")
    held = policy.held_out or {}
    if held:
        st.caption(f"Held-out figures recorded in the policy: n = {held.get('n_held_out')}, escalation rate "
                   f"{pct(held.get('escalation_rate'))}, error among approved {pct(held.get('error_among_approved'))}.")
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
            text = f"{decision.reason} ({decision.elapsed_s:.2f} s, logged to {decision.audit_log})"
            (st.success if decision.decision == "approve" else st.warning)(
                f"**{decision.decision.upper()}** — {text}")


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
    frame = pd.DataFrame([{
        "time": r.get("time"), "decision": r.get("decision"), "reason": r.get("reason"),
        "policy_id": r.get("policy_id"), "model": r.get("model"), "elapsed_s": r.get("elapsed_s"),
        "prompt_sha256": str(r.get("prompt_sha256", ""))[:16], "prompt": r.get("prompt", "(not stored)"),
        "signals": json.dumps(r.get("signals", {}), ensure_ascii=False),
    } for r in reversed(records)])
    st.dataframe(frame, hide_index=True, key="gov_audit_table")


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
