"""Compare regimes: the same question asked directly, with chain of thought, and as babble."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import streamlit as st

from ic_core.analysis import Analysis, analyze, answer
from ic_core.generate import MAX_NEW_TOKENS_LIMIT
from ic_core.models import LoadedModel
from ic_core.narrative import compliance_line
from ic_core.plots.explore import entropy_legend_html, lens_overlay_figure, token_spans_html
from ic_core.prompts import REGIMES, TASK_KINDS, custom_template
from ui.common import (
    EXPLORE_KEYS,
    KEEP_PREFIX,
    footer,
    gen_config,
    get_loaded,
    get_second_loaded,
    html_block,
    json_download,
    md_text,
    require_router,
    second_model_picker,
    show_error,
)
from ui.progress import duration_text, left_text, measured_speed, remember_speed

P = KEEP_PREFIX + "compare."
RESULT_KEY = "compare.result"
COT_DEFAULT_TOKENS = 192
TOKEN_TASK = "generate:token"  # measured seconds per generated token (the next answers' time left)
REGIME_TITLES = {"direct": "Direct", "cot": "Chain of thought", "babble": "Babble (control)", "custom": "Custom"}


# inputs taken over from Explore when it holds a new question
FROM_EXPLORE = ("question", "answer_prefix", "kind", "expected", "aliases", "choices")
TAKEN_KEY = "compare.taken_from_explore"


def _init_state() -> None:
    s = st.session_state
    defaults = {
        "question": "", "answer_prefix": "", "kind": "short_answer", "expected": "",
        "aliases": "", "choices": "", "use_custom": False, "template": "{question}\nAnswer in one word.",
        "cot_tokens": COT_DEFAULT_TOKENS,
    }
    for name, value in defaults.items():
        s.setdefault(P + name, value)
    take_from_explore()


def take_from_explore() -> None:
    """When Explore holds a question not taken yet, take it with its prefix, kind and expected answer."""
    s = st.session_state
    question = s.get(EXPLORE_KEYS["question"], "") or ""
    if not question.strip() or s.get(TAKEN_KEY) == question:
        return
    for name in FROM_EXPLORE:
        value = s.get(EXPLORE_KEYS[name])
        if value is not None:
            s[P + name] = value
    s[TAKEN_KEY] = question
    s["compare.taken_note"] = True


def _split(text: str, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(sep) if part.strip())


def current_inputs() -> dict[str, Any]:
    """The input widgets' values as plain data."""
    s = st.session_state
    return {
        "question": s[P + "question"], "kind": s[P + "kind"], "expected": s[P + "expected"].strip() or None,
        "answer_prefix": s[P + "answer_prefix"].strip() or None,
        "aliases": _split(s[P + "aliases"], ","), "choices": _split(s[P + "choices"], "\n"),
        "template": s[P + "template"] if s[P + "use_custom"] else None,
    }


def read_all(loaded: LoadedModel, inputs: dict[str, Any]) -> dict[str, Analysis]:
    """One read-out per regime (and the custom template when given), nothing generated."""
    custom = custom_template(inputs["template"]) if inputs["template"] is not None else None
    common = dict(kind=inputs["kind"], choices=inputs["choices"], expected=inputs["expected"], aliases=inputs["aliases"])
    # a forced prefix applies to direct only: CoT must reason first and babble must not answer
    out = {regime: analyze(loaded, inputs["question"], regime=regime,
                           answer_prefix=inputs["answer_prefix"] if regime == "direct" else None, **common)
           for regime in REGIMES}
    if custom is not None:
        out["custom"] = analyze(loaded, inputs["question"], template=custom, **common)
    return out


def input_panel() -> None:
    """Question, task kind, expected answer, optional custom template, CoT budget."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.text_area("Question", key=P + "question", height=110, placeholder="e.g. What is 48 + 67?")
        if st.session_state.pop("compare.taken_note", False):
            st.caption("Question, answer prefix and expected answer taken from Explore.")
        st.text_input("Forced answer prefix for direct (optional → H_slot)", key=P + "answer_prefix",
                      placeholder="e.g. The capital of France is",
                      help="Direct is then read after this prefix (H_slot), where the answer is decided; CoT and "
                           "babble never use a prefix. Without it every regime is read at the last prompt token "
                           "(raw H_int), which on the small default model carries little signal.")
        st.checkbox("Add a custom template as a fourth regime", key=P + "use_custom")
        if st.session_state[P + "use_custom"]:
            st.text_area("Custom template (must contain {question})", key=P + "template", height=80)
    with right:
        st.selectbox("Task kind", TASK_KINDS, key=P + "kind", help="Picks each regime's wording and the grading rule.")
        st.number_input("Max new tokens for CoT", min_value=16, max_value=MAX_NEW_TOKENS_LIMIT, step=16,
                        key=P + "cot_tokens",
                        help="Chain of thought writes its reasoning before the answer, so it needs more room. "
                             "Direct and babble use the sidebar's setting.")
        with st.expander("Expected answer (optional, to grade the outputs)",
                         expanded=bool(st.session_state[P + "expected"])):
            st.text_input("Expected answer", key=P + "expected")
            st.text_input("Other accepted answers (comma-separated)", key=P + "aliases")
            st.text_area("Choices (one per line, for multiple choice)", key=P + "choices", height=90)


def h_int_row(analyses: dict[str, Analysis]) -> None:
    """The read-out entropy of each regime side by side (H_slot for direct after a prefix), with the difference."""
    base = analyses["direct"].state.readout_entropy_bits
    other_readout = bool(analyses["direct"].rendered.answer_prefix)  # H_slot vs H_int: no difference shown
    for col, (regime, a) in zip(st.columns(len(analyses)), analyses.items()):
        h = a.state.readout_entropy_bits
        col.metric(f"{REGIME_TITLES[regime]}: {a.signal_name} (bits)", f"{h:.2f}",
                   delta=None if regime == "direct" or other_readout else f"{h - base:+.2f} bits vs direct",
                   delta_color="off",
                   help=f"Top-1 probability {a.state.top1_prob:.1%}; top-100 variant "
                        f"{a.state.readout_entropy_top100_bits:.2f} bits; read-out token {a.rendered.readout_token!r}.")


def generate_all(loaded: LoadedModel, analyses: dict[str, Analysis]) -> None:
    """Answer every regime from its check's cache (CoT with its own token budget), graded by the engine."""
    base = gen_config()
    cot = dataclasses.replace(base, max_new_tokens=int(st.session_state[P + "cot_tokens"]))
    budgets = {regime: (cot if regime == "cot" else base).max_new_tokens for regime in analyses}
    total = sum(budgets.values())
    progress = st.progress(0.0, text="Generating…")
    done = 0
    for regime, a in list(analyses.items()):
        per_token = measured_speed(TOKEN_TASK)
        left = None if per_token is None else per_token * (total - done)
        progress.progress(done / total, text=f"Generating: {REGIME_TITLES[regime]} · {left_text(left)} "
                                             "(at most; answers often stop earlier)")
        start = time.monotonic()
        analyses[regime] = answer(loaded, a, cot if regime == "cot" else base)
        n_tokens = len(analyses[regime].generation.tokens) if analyses[regime].generation else 0
        if n_tokens:
            remember_speed(TOKEN_TASK, (time.monotonic() - start) / n_tokens)
        done += budgets[regime]
    progress.empty()


def outputs_row(analyses: dict[str, Analysis]) -> None:
    """The outputs side by side, tokens coloured by entropy, graded when an answer is known."""
    st.markdown(entropy_legend_html(), unsafe_allow_html=True)
    for col, (regime, a) in zip(st.columns(len(analyses)), analyses.items()):
        g, verdict, expected = a.generation, a.grade, a.expected
        if g is None:
            continue
        with col:
            st.markdown(f"**{REGIME_TITLES[regime]}**")
            st.markdown(html_block(token_spans_html(g.tokens, g.entropy_bits, g.chosen_probs, g.answer_prefix,
                                                    trimmed=g.n_trimmed_tokens)),
                        unsafe_allow_html=True)
            mean = g.mean_entropy_bits
            st.caption(f"{len(g.tokens)} tokens · stop: {g.stop_reason}"
                       + (f" · mean entropy {mean:.2f} bits" if mean is not None else ""))
            if a.compliance is not None:  # babble: checked for compliance (the study rule), never graded
                st.info(compliance_line(a.compliance.complied, a.compliance.reason))
                continue
            if verdict is None:
                continue
            found = f"“{md_text(verdict.extracted)}”" if verdict.extracted is not None else "nothing answer-like"
            rule = md_text(verdict.rule)
            if verdict.correct is True:
                st.success(f"**Correct:** {found} ({rule})")
            elif verdict.correct is False:
                st.warning(f"**Wrong:** {found}, expected “{md_text(expected)}” ({rule})")
            else:
                st.info(f"Extracted {found} ({rule})")


def export(result: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary of every regime (with outputs once generated); a second model's under ``second_model``."""
    out: dict[str, Any] = {regime: a.to_json() for regime, a in result["analyses"].items()}
    if result.get("second"):
        out["second_model"] = {regime: a.to_json() for regime, a in result["second"].items()}
    return out


def readout_views(analyses: dict[str, Analysis], slot: str = "") -> None:
    """One model's read-outs: entropy per regime, the lens curves on one chart, and where they were read."""
    h_int_row(analyses)
    curves = {r: (a.state.lens.layers, a.state.lens.entropy_bits[0]) for r, a in analyses.items()}
    st.plotly_chart(lens_overlay_figure(curves), key=f"compare_lens_fig{slot}")
    direct = analyses["direct"].rendered
    if direct.answer_prefix:
        st.caption("Direct is read after the forced answer prefix (H_slot); CoT and babble at the last prompt "
                   "token (H_int), before any token is written. Compare them as two read-outs, not one scale.")
    elif direct.plain_text_template:
        st.caption("No chat template: each regime is a plain-text prompt (direct ends “A:”, CoT “A: Let's think "
                   "step by step.”), read at its last token, right before the answer or the reasoning starts.")
    else:
        st.caption("H_int is read at the last prompt token, before any token is written. On the small default "
                   "model that token is the newline after the assistant header, so H_int mostly measures how the "
                   "answer starts; add a forced prefix above for H_slot, and see the Learn page.")


require_router(__file__)
st.title("Compare regimes")
st.caption("The same question asked three ways: **direct** (answer only), **chain of thought** (reason step by "
           "step, then `#### answer`), and **babble** (write about the topic without solving it — a control). "
           "The paper reports lower H_int with CoT on a 7B model; check whether it holds here.")
_init_state()
loaded = get_loaded()
input_panel()
second_model_picker("Compare regimes")
loaded2 = get_second_loaded()
if st.button("Read all regimes", type="primary", key="compare_read_btn", disabled=loaded is None):
    st.session_state.pop(RESULT_KEY, None)
    inputs = current_inputs()
    try:
        with st.spinner("Reading the state of each regime" + (" on both models…" if loaded2 else "…")):
            analyses = read_all(loaded, inputs)
            second = None if loaded2 is None else read_all(loaded2, inputs)
        st.session_state[RESULT_KEY] = {"inputs": inputs, "analyses": analyses, "second": second}
    except Exception as exc:  # the UI boundary: an engine error becomes one message, never a traceback
        show_error(exc)

result = st.session_state.get(RESULT_KEY)
if result is None:
    st.info("Type a question and press **Read all regimes**. Nothing is generated until you ask.")
elif loaded is not None:
    if result["inputs"] != current_inputs():
        st.info("The inputs changed since this read-out. Press **Read all regimes** to update.")
    analyses = result["analyses"]
    second = result.get("second")
    if second is not None and (loaded2 is None or not all(a.made_by(loaded2) for a in second.values())):
        st.info("The second model changed since this read-out: press **Read all regimes** to read it on both.")
        second = None
    pairs = [(loaded, analyses, "")] + ([(loaded2, second, "second")] if second is not None else [])
    if second is None:
        readout_views(analyses)
    else:
        for col, (model, model_analyses, slot) in zip(st.columns(2, gap="large"), pairs):
            with col:
                st.markdown(f"#### {md_text(model.spec.label)}")
                readout_views(model_analyses, slot)
    st.subheader("Outputs")
    budget = st.session_state[P + "cot_tokens"]
    if st.button("Generate all", key="compare_generate_btn",
                 help=f"Direct and babble: up to {st.session_state.get('max_new_tokens', 64)} tokens (sidebar); "
                      f"CoT: up to {budget} tokens."):
        if not all(a.made_by(loaded) for a in analyses.values()):
            st.warning("The model changed since this read-out. Press **Read all regimes** again first.")
        else:
            try:
                for model, model_analyses, _ in pairs:
                    generate_all(model, model_analyses)
            except Exception as exc:  # the UI boundary (see show_error)
                show_error(exc)
    if any(a.generation is not None for a in analyses.values()):
        for model, model_analyses, _ in pairs:
            if second is not None:
                st.markdown(f"**{md_text(model.spec.label)}**")
            outputs_row(model_analyses)
    else:
        per_token = measured_speed(TOKEN_TASK)
        most = budget + 2 * int(st.session_state.get("max_new_tokens", 64))
        speed = (f"at the measured {per_token:.2f} s per token, at most {duration_text(per_token * most)} for all "
                 "three" if per_token is not None else "the time left is measured from the first answer")
        st.caption(f"CoT gets {budget} new tokens here (it reasons before answering); the others use the sidebar's "
                   f"{st.session_state.get('max_new_tokens', 64)} — {speed}.")
    json_download("Download JSON", export(result), "compare_regimes.json", key="compare_download")
st.divider()
footer(loaded)
