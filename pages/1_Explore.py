"""Explore one prompt: read the model's state before it writes anything, then generate."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ic_core.analysis import Analysis, analyze, answer
from ic_core.errors import ICError
from ic_core.generate import Generation
from ic_core.grading import Grade
from ic_core.models import LoadedModel
from ic_core.narrative import compliance_line
from ic_core.plots.explore import (
    entropy_legend_html,
    lens_figure,
    prompt_tokens_html,
    token_entropy_figure,
    token_spans_html,
    top_tokens_figure,
    visible_token,
)
from ic_core.prompts import REGIMES, TASK_KINDS, custom_template
from ui.common import (
    EXPLORE_KEYS,
    EXPLORE_NOTE_KEY,
    EXPLORE_RESULT_KEY,
    EXPLORE_STALE_KEY,
    GATE_PROBE_KEY,
    UPLOAD_LIMIT_BYTES,
    footer,
    gen_config,
    get_loaded,
    get_second_loaded,
    html_block,
    json_download,
    md_text,
    read_text_upload,
    require_router,
    second_model_picker,
    show_error,
)
from ui.gate_verdict import gate_verdict
from ui.probe_picker import saved_probe_picker, weak_probe_note

K = EXPLORE_KEYS
UPLOAD_KEY = "explore_upload"
UPLOAD_MSG_KEY = "explore.upload_message"
STALE_KEY = EXPLORE_STALE_KEY
# inputs that belong to one question (cleared together when the question changes)
ANSWER_FIELDS = ("answer_prefix", "expected", "aliases", "choices")
REGIME_LABELS = {
    "direct": "direct — answer only",
    "cot": "cot — think step by step",
    "babble": "babble — talk about it, don't solve (control)",
    "custom": "custom template",
}
PREFIX_HELP = (
    "Optional forced start of the answer, e.g. 'The capital of France is'. The model still has not written "
    "a content token, but the state is then read after this prefix — that entropy is H_slot. On the small "
    "default model, raw H_int at the last prompt token mostly measures the boilerplate first word "
    "('The', 'To'…) and predicts nothing; H_slot sits where the answer is decided and does carry the signal."
)


def _init_state() -> None:
    defaults = {"question": "", "regime": "direct", "kind": "short_answer",
                "template": "{question}\nAnswer in one word.", "answer_prefix": "", "expected": "",
                "aliases": "", "choices": ""}
    for name, value in defaults.items():
        st.session_state.setdefault(K[name], value)


def _on_upload() -> None:
    uploaded = st.session_state.get(UPLOAD_KEY)
    if uploaded is None:
        st.session_state.pop(UPLOAD_MSG_KEY, None)
        return
    try:
        st.session_state[K["question"]] = read_text_upload(uploaded.name, uploaded.getvalue())
        _mark_stale()
        st.session_state[UPLOAD_MSG_KEY] = ("ok", f"Loaded **{md_text(uploaded.name)}** into the prompt box.")
    except ICError as exc:
        st.session_state[UPLOAD_MSG_KEY] = ("error", str(exc))


def _mark_stale() -> None:
    """A new question: flag the answer prefix and expected answer if they were set for the old one."""
    s = st.session_state
    s[STALE_KEY] = any(s[K[name]].strip() for name in ANSWER_FIELDS)


def _keep_answer_fields() -> None:
    st.session_state[STALE_KEY] = False


def _clear_answer_fields() -> None:
    for name in ANSWER_FIELDS:
        st.session_state[K[name]] = ""
    st.session_state[STALE_KEY] = False


def stale_answer_warning() -> None:
    """Warn (and offer to clear) when the prefix or expected answer belong to the previous question."""
    s = st.session_state
    if not s.get(STALE_KEY) or not any(s[K[name]].strip() for name in ANSWER_FIELDS):
        return
    held = [f"{label} “{md_text(s[K[name]], 60)}”" for name, label in
            (("answer_prefix", "answer prefix"), ("expected", "expected answer"), ("aliases", "other accepted answers"),
             ("choices", "choices")) if s[K[name]].strip()]
    verb = "was" if len(held) == 1 else "were"
    st.warning(f"The question changed but the {' and the '.join(held)} {verb} set for the previous one.")
    c1, c2 = st.columns(2)
    c1.button("Clear them", key="explore_clear_answer", on_click=_clear_answer_fields)
    c2.button("Keep them", key="explore_keep_answer", on_click=_keep_answer_fields)


def _split(text: str, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(sep) if part.strip())


def current_inputs() -> dict[str, Any]:
    """What the input widgets hold now (plain, comparable values)."""
    s = st.session_state
    return {
        "question": s[K["question"]], "regime": s[K["regime"]], "kind": s[K["kind"]],
        "template": s[K["template"]] if s[K["regime"]] == "custom" else None,
        "answer_prefix": s[K["answer_prefix"]].strip() or None, "expected": s[K["expected"]].strip() or None,
        "aliases": _split(s[K["aliases"]], ","), "choices": _split(s[K["choices"]], "\n"),
    }


def read_state(loaded: LoadedModel, inputs: dict[str, Any]) -> Analysis:
    """The page's one engine call for the risk card (no generation)."""
    template = custom_template(inputs["template"]) if inputs["regime"] == "custom" else None
    return analyze(
        loaded, inputs["question"], regime="direct" if template else inputs["regime"], kind=inputs["kind"],
        template=template, answer_prefix=inputs["answer_prefix"], choices=inputs["choices"],
        expected=inputs["expected"], aliases=inputs["aliases"], do_generate=False,
    )


def input_panel() -> None:
    """Prompt, upload, regime, task kind, template, prefix and the expected answer."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.text_area("Prompt", key=K["question"], height=130, placeholder="e.g. What is the capital of France?",
                     help="The question as the user would ask it. The regime below wraps it in its instructions.",
                     on_change=_mark_stale)
        stale_answer_warning()
        # the widget can only state whole MB, so the label states the prompt limit in words
        st.file_uploader("…or upload a .txt file (UTF-8 text; longer than the model's context is refused with a "
                         "message)", type=["txt"], key=UPLOAD_KEY, on_change=_on_upload,
                         max_upload_size=UPLOAD_LIMIT_BYTES // 1_000_000)  # the widget states "1MB per file"
        message = st.session_state.get(UPLOAD_MSG_KEY)
        if message and message[0] == "error":
            st.error(f"**Upload refused.** {md_text(message[1])}")
        elif message:
            st.caption(message[1])
        note = st.session_state.get(EXPLORE_NOTE_KEY)
        if note and note["note"] and note["question"] == st.session_state[K["question"]]:
            st.info(f"**About this example.** {md_text(note['note'])}")
    with right:
        st.radio("Regime", (*REGIMES, "custom"), key=K["regime"], format_func=REGIME_LABELS.get,
                 help="How the question is asked. The paper compares direct answers, chain of thought, "
                      "and a babble control.")
        if st.session_state[K["regime"]] == "custom":
            st.text_area("Custom template", key=K["template"], height=80,
                         help="Your own wording. It must contain {question}; {choices} is optional.")
        st.selectbox("Task kind", TASK_KINDS, key=K["kind"],
                     help="Picks the template wording and how the answer is graded.")
        st.text_input("Forced answer prefix (optional → H_slot)", key=K["answer_prefix"], help=PREFIX_HELP,
                      placeholder="e.g. The capital of France is", on_change=_keep_answer_fields)
        with st.expander("Expected answer (optional, to grade the output)",
                         expanded=bool(st.session_state[K["expected"]])):
            st.text_input("Expected answer", key=K["expected"], placeholder="e.g. Paris", on_change=_keep_answer_fields)
            st.text_input("Other accepted answers (comma-separated)", key=K["aliases"])
            st.text_area("Choices (one per line, for multiple choice)", key=K["choices"], height=90)


def probe_reading(analysis: Analysis) -> None:
    """P(correct) from the session's probe, or a picker over the probes saved in run folders."""
    probe = st.session_state.get(GATE_PROBE_KEY)
    if probe is None:
        probe = saved_probe_picker("explore")
    if probe is None:
        return
    try:
        p_correct = probe.predict_proba_correct(analysis.state)
    except ICError as exc:
        st.warning(f"**Probe not applicable to this read-out.** {exc}")
        return
    st.metric("Probe P(correct)", f"{p_correct:.0%}",
              help="A linear probe trained on a saved study predicts, from this same state, how likely the "
                   "model's answer is to be right. It is only meaningful for questions like the study's.")
    weak_probe_note(probe)


def risk_card(loaded: LoadedModel, analysis: Analysis, slot: str = "") -> None:
    """What the model's state says before any token is written.

    Args:
        loaded: The model that made the read-out.
        analysis: Its read-out.
        slot: ``""`` for the page's model; ``"second"`` for the second model's card (its own widget
            keys; the session's probe and gate policy belong to the first model, so they are not shown).

    """
    state, rendered = analysis.state, analysis.rendered
    signal = analysis.signal_name
    st.subheader("Risk card (before generation)")
    where = "after the forced answer prefix" if rendered.answer_prefix else "at the last prompt token"
    c1, c2, c3 = st.columns(3)
    c1.metric(f"{signal} (bits)", f"{state.readout_entropy_bits:.2f}",
              help=f"Entropy of the full next-token distribution {where}, in bits. 0 = certain; "
                   f"log2(vocabulary) = uniform. Top-100 variant (the paper code's): "
                   f"{state.readout_entropy_top100_bits:.2f} bits.")
    c2.metric("Top-1 probability", f"{state.top1_prob:.1%}", help="Probability of the single most likely next token.")
    c3.metric("Prompt tokens", f"{rendered.n_tokens}", help=f"Read in one forward pass ({analysis.check_s:.2f} s).")
    top_token = visible_token(analysis.top_tokens[0][0]) if analysis.top_tokens else "?"
    equivalent = 2 ** state.readout_entropy_bits
    among = f"{equivalent:.1f}" if equivalent < 10 else f"{equivalent:,.0f}"
    st.caption(f"{state.readout_entropy_bits:.2f} bits ≈ as unsure as a fair pick among {among} tokens. "
               f"Most likely next token: “{md_text(top_token)}”. This describes the *next token only*: see the Learn page "
               "for when it does and does not predict a correct answer.")
    if rendered.readout_is_answer_cue:
        st.caption(f"No chat template: the prompt is plain text ending “{md_text(rendered.text.split(chr(10))[-1][-30:])}”, "
                   f"so {signal} is read on the answer cue, right before the answer's first word.")
    elif rendered.readout_is_formatting and not rendered.answer_prefix:
        st.warning(
            f"The read-out token is a formatting token (“{md_text(visible_token(rendered.readout_token))}”), so "
            f"{signal} measures how the answer will *start* (often boilerplate such as \"The\"), not the "
            "answer itself. On the small default model this raw H_int does not predict correctness; add a "
            "forced answer prefix (e.g. \"The capital of France is\") to read H_slot where the answer is decided.",
        )
    with st.expander("Other read-outs of the same state"):
        st.markdown(
            f"- **{signal}, top-100 variant**: {state.readout_entropy_top100_bits:.3f} bits (softmax renormalised over "
            f"the 100 largest logits, as in the paper's code)\n"
            f"- **{signal}, full vocabulary**: {state.readout_entropy_bits:.3f} bits\n"
            f"- **check time**: {analysis.check_s:.2f} s"
        )
    if slot:
        st.caption("The session's probe and gate policy are fitted on the first model, so they are shown there only.")
    else:
        probe_reading(analysis)
        gate_verdict(loaded, analysis)
    tabs = st.tabs(["Next tokens", "Entropy by layer", "Prompt tokens"])
    with tabs[0]:
        st.plotly_chart(top_tokens_figure(analysis.top_tokens), key=f"explore_top_fig{slot}")
    with tabs[1]:
        lens = state.lens
        st.plotly_chart(lens_figure(lens.layers, lens.entropy_bits[0], lens.kl_to_final_bits[0],
                                    analysis.lens_top_tokens), key=f"explore_lens_fig{slot}")
        st.caption("Logit lens: each layer's state pushed through the final norm and unembedding. "
                   "KL to final (dotted, right axis) shows how far a layer still is from the model's own output.")
    with tabs[2]:
        readout_view(analysis)


def readout_view(analysis: Analysis) -> None:
    """The prompt token by token, with the read-out token marked."""
    rendered = analysis.rendered
    read_tok = analysis.skipped_tokens[-1] if analysis.skipped_tokens else rendered.readout_token
    st.caption(f"Read-out token: “{md_text(visible_token(read_tok))}” (highlighted). "
               + ("Chat template applied." if rendered.chat_template_used else "No chat template."))
    if analysis.skipped_tokens:
        st.caption(f"After the prefix the model writes {len(analysis.skipped_tokens)} whitespace token(s) "
                   f"({md_text(', '.join(repr(t) for t in analysis.skipped_tokens))}); the state is read after them "
                   "(dashed), so it measures the answer, not the spacing.")
    elif rendered.readout_is_formatting and not rendered.readout_is_answer_cue:
        st.caption("Note: the read-out is a **formatting token** (whitespace, punctuation or a special token): its "
                   "entropy mostly reflects how the answer *starts*, not the answer. Add a forced answer "
                   "prefix to read H_slot instead.")
    st.markdown(html_block(prompt_tokens_html(rendered.tokens, rendered.readout_index, analysis.skipped_tokens,
                                              rendered.readout_is_formatting)), unsafe_allow_html=True)


def grade_view(result_grade: Grade | None, expected: str | None) -> None:
    """Correct / wrong, with the extracted answer and the rule that found it."""
    if result_grade is None:
        st.caption("No expected answer given, so the output is not graded.")
        return
    found = f"“{md_text(result_grade.extracted)}”" if result_grade.extracted is not None else "nothing answer-like"
    rule, want = md_text(result_grade.rule), md_text(expected)
    if result_grade.correct is True:
        st.success(f"**Correct.** Extracted {found}; expected “{want}” (rule: {rule}).")
    elif result_grade.correct is False:
        st.warning(f"**Wrong.** Extracted {found}; expected “{want}” (rule: {rule}).")
    else:
        st.info(f"Extracted {found} (rule: {rule}); no expected answer to compare with.")


def _answer_into(loaded: LoadedModel, result: dict[str, Any]) -> None:
    answered = answer(loaded, result["analysis"], gen_config())  # continues from the check's cache
    # "generation"/"grade" mirror the answered analysis for readers of the session result.
    result["analysis"], result["generation"], result["grade"] = answered, answered.generation, answered.grade


def generation_panel(loaded: LoadedModel, result: dict[str, Any], slot: str = "",
                     second: tuple[LoadedModel, dict[str, Any]] | None = None) -> None:
    """The Generate button and, once pressed, the coloured output.

    Args:
        loaded: The model that answers.
        result: Its session result (``analysis``, ``generation``, ``grade``).
        slot: ``""`` for the first model (it draws the button), ``"second"`` for the second's output.
        second: The second model and its result: the button then generates both answers.

    """
    analysis: Analysis = result["analysis"]
    st.subheader("Generation")
    if not analysis.made_by(loaded):
        st.warning("The model changed since this read-out. Press **Read the state** again first.")
        return
    cfg_note = "sampling" if st.session_state.get("do_sample") else "greedy"
    if not slot and st.button("Generate both answers" if second else "Generate", key="explore_generate_btn",
                              type="primary",
                              help=f"Write the answer ({cfg_note}, up to {st.session_state.get('max_new_tokens', 64)} "
                                   "tokens; change it in the sidebar)."):
        try:
            with st.spinner("Generating…"):
                _answer_into(loaded, result)
                if second is not None and second[1]["analysis"].made_by(second[0]):
                    _answer_into(*second)
        except Exception as exc:  # the UI boundary (see show_error)
            show_error(exc)
    generation: Generation | None = result["analysis"].generation
    if generation is None:
        st.caption("Nothing generated yet: the risk card was computed from the prompt alone. "
                   + ("Press **Generate both answers** (left) to see what both models write." if slot else
                      "Press **Generate** to see what the model writes."))
        return
    st.markdown(html_block(token_spans_html(generation.tokens, generation.entropy_bits, generation.chosen_probs,
                                            generation.answer_prefix, trimmed=generation.n_trimmed_tokens)),
                unsafe_allow_html=True)
    st.markdown(html_block(entropy_legend_html()), unsafe_allow_html=True)
    mean = generation.mean_entropy_bits
    st.caption(f"{len(generation.tokens)} tokens in {generation.elapsed_s:.1f} s · stop: {generation.stop_reason}"
               + (f" · mean token entropy {mean:.2f} bits" if mean is not None else "")
               + " · hover a token for its entropy and probability")
    if result["analysis"].compliance is not None:  # babble: the control is checked for compliance, never graded
        c = result["analysis"].compliance
        st.info(compliance_line(c.complied, c.reason))
    else:
        grade_view(result["analysis"].grade, result["analysis"].expected)
    if generation.tokens:
        st.plotly_chart(token_entropy_figure(generation.tokens, generation.entropy_bits), key=f"explore_tok_fig{slot}")
    with st.expander("Output as plain text"):
        st.text(generation.answer_text)


def downloads(result: dict[str, Any]) -> None:
    """JSON of the risk card, with the generation and grade once they exist."""
    analysis: Analysis = result["analysis"]
    name = "risk_card_and_generation.json" if analysis.generation else "risk_card.json"
    json_download("Download JSON", analysis.to_json(), name, key="explore_download")


require_router(__file__)
st.title("Explore a prompt")
st.caption("Read the model's internal state **before** it writes anything (the risk card), then let it answer "
           "and compare. New here? The **Learn** page explains what the numbers mean.")
_init_state()
loaded = get_loaded()
input_panel()
second_model_picker("Explore")
loaded2 = get_second_loaded()
if st.button("Read the state", type="primary", key="explore_read_btn", disabled=loaded is None):
    st.session_state.pop(EXPLORE_RESULT_KEY, None)
    inputs = current_inputs()
    try:
        with st.spinner("Reading the state (one forward pass" + (" per model)…" if loaded2 else ")…")):
            analysis = read_state(loaded, inputs)
            second_result = None if loaded2 is None else {"analysis": read_state(loaded2, inputs), "generation": None,
                                                          "grade": None}
        st.session_state[EXPLORE_RESULT_KEY] = {"analysis": analysis, "inputs": inputs, "generation": None,
                                                "grade": None, "second": second_result}
    except Exception as exc:  # the UI boundary: an engine error becomes one message, never a traceback
        show_error(exc)

result = st.session_state.get(EXPLORE_RESULT_KEY)
if result is None:
    st.info("Type a question (or pick an example on the **Learn** page) and press **Read the state**.")
elif loaded is not None:
    if result["inputs"] != current_inputs():
        st.info("The inputs changed since this read-out (shown below for the previous inputs). "
                "Press **Read the state** to update.")
    second = result.get("second")
    if second is not None and loaded2 is not None and second["analysis"].made_by(loaded2):
        pair = (loaded2, second)
        first_col, second_col = st.columns(2, gap="large")
        with first_col:
            st.markdown(f"#### {md_text(loaded.spec.label)}")
            risk_card(loaded, result["analysis"])
            generation_panel(loaded, result, second=pair)
        with second_col:
            st.markdown(f"#### {md_text(loaded2.spec.label)}")
            risk_card(loaded2, second["analysis"], slot="second")
            generation_panel(loaded2, second, slot="second")
    else:
        if second is not None:
            st.info("The second model changed since this read-out: press **Read the state** to read it on both.")
        card_col, gen_col = st.columns(2, gap="large")
        with card_col:
            risk_card(loaded, result["analysis"])
        with gen_col:
            generation_panel(loaded, result)
    downloads(result)
st.divider()
footer(loaded)
