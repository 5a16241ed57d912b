"""One prompt end to end: render → capture I → (optionally) generate → grade.

:func:`analyze` is the call the CLI, the app's pages and the gate share for the check;
:func:`answer` is the one call that generates after a check: it continues from the check's
KV cache (:class:`ic_core.capture.Prefill`, kept on the :class:`Analysis`) instead of
reading the prompt again, and grades the answer when there is something to grade it by.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ic_core.capture import IntentionState, Prefill, capture
from ic_core.compliance import Compliance, check_compliance
from ic_core.errors import PromptError
from ic_core.generate import Generation, GenerationConfig, TokenCallback, generate
from ic_core.grading import Grade, grade
from ic_core.models import LoadedModel, ModelSpec
from ic_core.prompts import (
    PromptTemplate,
    Readout,
    RenderedPrompt,
    check_choice_texts,
    check_text,
    render,
    template_for,
)
from ic_core.runs.schema import CONTROL_REGIME


@dataclass(frozen=True)
class Analysis:
    """A prompt's pre-generation read-out, and what the model then wrote."""

    model_label: str
    rendered: RenderedPrompt
    state: IntentionState
    top_tokens: tuple[tuple[str, float], ...]
    """Most likely next tokens at the read-out, decoded, with probabilities."""
    lens_top_tokens: tuple[str, ...]
    """Per lens layer, its most likely token, decoded."""
    skipped_tokens: tuple[str, ...]
    check_s: float
    """Seconds spent on the pre-generation check (render + forward + lens)."""
    generation: Generation | None = None
    grade: Grade | None = None
    """The answer's grade; None for the control regime (babble), whose output is checked for compliance instead."""
    expected: str | None = None
    question: str = ""
    """The question as the user gave it (what the grade compares the answer's wording with)."""
    kind: str = "free_text"
    """Task kind: picks the grading rule."""
    choices: tuple[str, ...] = ()
    """Option texts for multiple choice."""
    aliases: tuple[str, ...] = ()
    """Other accepted answers."""
    model_spec: ModelSpec | None = None
    """The model that made the read-out (:meth:`made_by` compares it)."""
    prefill: Prefill | None = field(default=None, repr=False, compare=False)
    """The check's KV cache, for :func:`answer`; one generation consumes it (None afterwards)."""
    compliance: Compliance | None = None
    """For the control regime (babble): whether the output obeyed "do not answer", by the rule studies use
    (:func:`ic_core.compliance.check_compliance`); None for the answer regimes."""

    @property
    def is_control(self) -> bool:
        """Whether the prompt was rendered in the control regime (babble): never graded, checked for compliance."""
        return self.rendered.regime == CONTROL_REGIME

    @property
    def graded(self) -> bool:
        """Whether an answer gets a grade: an expected answer is known, or the task kind grades without one."""
        return self.expected is not None or self.kind != "free_text"

    def made_by(self, loaded: LoadedModel) -> bool:
        """Whether ``loaded`` is the model (same full spec) that made this read-out."""
        if self.model_spec is not None:
            return self.model_spec == loaded.spec
        return self.model_label == loaded.spec.label

    @property
    def signal_name(self) -> str:
        """``H_slot`` when read after a forced answer prefix, else ``H_int`` (the state's read-out)."""
        return self.state.signal

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the CLI's output and the app's download)."""
        s = self.state
        out: dict[str, Any] = {
            "model": self.model_label,
            "n_layers": s.n_layers,
            "regime": self.rendered.regime,
            "rendered_prompt": self.rendered.text,
            "n_prompt_tokens": self.rendered.n_tokens,
            "last_token": self.rendered.readout_token,
            "readout_index": self.rendered.readout_index,
            "readout_is_formatting_token": self.rendered.readout_is_formatting,
            "answer_prefix": self.rendered.answer_prefix,
            "skipped_whitespace_tokens": list(self.skipped_tokens),
            "signal": self.signal_name,
            "readout_entropy_bits": s.readout_entropy_bits,
            "readout_entropy_top100_bits": s.readout_entropy_top100_bits,
            # Documented aliases kept for scripts written against earlier versions: the same
            # read-out entropy, whichever ``signal`` it is (not always H_int).
            "h_int_bits": s.readout_entropy_bits,
            "h_int_top100_bits": s.readout_entropy_top100_bits,
            "top1_prob": s.top1_prob,
            "top_tokens": [{"token": t, "prob": p} for t, p in self.top_tokens],
            "lens": [
                {
                    "layer": int(layer),
                    "entropy_bits": float(s.lens.entropy_bits[0, j]),
                    "top_token": self.lens_top_tokens[j],
                    "kl_to_final_bits": float(s.lens.kl_to_final_bits[0, j]),
                }
                for j, layer in enumerate(s.lens.layers)
            ],
            "check_s": self.check_s,
        }
        if self.generation is not None:
            g = self.generation
            out.update({
                "output_text": g.answer_text,
                "generated_tokens": list(g.tokens),
                "token_entropies_bits": list(g.entropy_bits),
                "token_probs": list(g.chosen_probs),
                "mean_token_entropy_bits": g.mean_entropy_bits,
                "stop_reason": g.stop_reason,
                "generate_s": g.elapsed_s,
            })
        if self.grade is not None:
            out.update({
                "expected": self.expected,
                "extracted_answer": self.grade.extracted,
                "correct": self.grade.correct,
                "grade_rule": self.grade.rule,
            })
        if self.compliance is not None:
            out.update({
                "expected": self.expected,
                "complied": self.compliance.complied,
                "compliance_reason": self.compliance.reason,
            })
        return out


def check_choices(kind: str, choices: Sequence[str]) -> None:
    """Refuse a multiple-choice question with fewer than two options, or options that cannot be lettered.

    Raises:
        PromptError: ``kind`` is ``multiple_choice`` and ``choices`` has fewer than two entries; more
            than 26 options, or one that is not valid text (:func:`ic_core.prompts.check_choice_texts`).

    """
    if kind == "multiple_choice" and len(choices) < 2:
        raise PromptError("A multiple-choice question needs at least two options: type them one per line.")
    check_choice_texts(choices)


def check_grading_texts(expected: str | None, aliases: Sequence[str]) -> None:
    """Refuse an expected answer or alias that is not valid text (lone surrogate, NUL).

    Raises:
        PromptError: a text that :func:`ic_core.prompts.check_text` refuses.

    """
    if expected is not None:
        check_text(expected, "The expected answer")
    for alias in aliases:
        check_text(alias, "An accepted alias")


def answer(loaded: LoadedModel, analysis: Analysis, gen_config: GenerationConfig | None = None,
           on_token: TokenCallback | None = None, stop: Sequence[str] = ()) -> Analysis:
    """Generate the answer to an analysed prompt from the check's KV cache, and grade it.

    The check's :class:`~ic_core.capture.Prefill` serves one generation (it is extended in
    place): the returned :class:`Analysis` drops it, and answering an analysis whose cache is
    already used reads the prompt again (one more forward pass over it) instead of failing.

    Args:
        loaded: The model that made the read-out.
        analysis: Output of :func:`analyze`.
        gen_config: Decoding settings.
        on_token: Called after every generated token (:func:`ic_core.generate.generate`).
        stop: Stop strings that end the answer as soon as it contains one.

    Returns:
        A copy of ``analysis`` with ``generation`` and, when :attr:`Analysis.graded`, its ``grade`` — or, in
        the control regime (babble), its ``compliance`` instead (the answer is never graded there, as in studies).

    Raises:
        PromptError: ``loaded`` is not the model that made the read-out (read the state again).

    """
    if not analysis.made_by(loaded):
        raise PromptError(
            f"This read-out was made with {analysis.model_label}, not {loaded.spec.label} "
            f"({loaded.spec.dtype}, {loaded.spec.device}): read the state again before generating."
        )
    generation = generate(loaded, analysis.rendered, gen_config, analysis.prefill, on_token, stop)
    result_grade, compliance = verdict_of(analysis, generation.answer_text)
    return replace(analysis, generation=generation, grade=result_grade, compliance=compliance, prefill=None)


def verdict_of(analysis: Analysis, output: str) -> tuple[Grade | None, Compliance | None]:
    """``(grade, compliance)`` of one output of ``analysis``'s prompt, by the rules a study applies to a row.

    The control regime (babble) is checked for compliance (:func:`ic_core.compliance.check_compliance`) and never
    graded; an answer regime is graded (:func:`ic_core.grading.grade`). Nothing is judged when there is nothing
    to judge by (:attr:`Analysis.graded` is False: free text without an expected answer; a control without one).
    """
    if not analysis.graded:
        return None, None
    if analysis.is_control:
        if analysis.expected is None:  # "does not name the answer" cannot be checked without the answer
            return None, None
        return None, check_compliance(output, analysis.expected, analysis.kind, analysis.aliases, analysis.choices)
    return grade(output, analysis.expected, analysis.kind, analysis.aliases, analysis.choices, analysis.question), None


def analyze(
    loaded: LoadedModel,
    question: str,
    regime: str = "direct",
    kind: str = "free_text",
    template: PromptTemplate | None = None,
    answer_prefix: str | None = None,
    choices: Sequence[str] = (),
    readout: Readout = "last",
    expected: str | None = None,
    aliases: Sequence[str] = (),
    do_generate: bool = False,
    gen_config: GenerationConfig | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> Analysis:
    """Read the pre-collapse state of one prompt, then optionally generate and grade.

    Args:
        loaded: The model.
        question: The user's question.
        regime: ``direct``, ``cot`` or ``babble`` (ignored when ``template`` is given).
        kind: Task kind, which picks the template wording and the grading rule.
        template: A custom template instead of the regime's.
        answer_prefix: Forced start of the answer; the state is then read after it (H_slot).
        choices: Option texts for multiple choice.
        readout: Where I is read: ``last``, ``user_end`` or a token index.
        expected: Reference answer, to grade the generation.
        aliases: Other accepted answers.
        do_generate: Generate an answer after the check (continuing from its cache; see :func:`answer`).
        gen_config: Decoding settings.
        history: Earlier turns of a conversation, ``(role, text)``, rendered before the question
            (:func:`ic_core.prompts.render`); the read-out stays at the end, as for one prompt.

    Raises:
        PromptError: bad prompt, template, read-out position or length; a multiple-choice
            question with fewer than two or more than 26 options; a question, option, answer
            prefix, expected answer or alias holding a lone surrogate or a NUL character.

    """
    start = time.perf_counter()
    check_choices(kind, choices)
    check_grading_texts(expected, aliases)
    rendered = prepare_prompt(loaded, question, regime, kind, template, answer_prefix, choices, readout, history)
    state, prefill = capture(loaded, rendered)
    analysis = analysis_of(loaded, rendered, state, time.perf_counter() - start, question, kind, prefill,
                           expected=expected, choices=tuple(choices), aliases=tuple(aliases))
    return answer(loaded, analysis, gen_config) if do_generate else analysis


def prepare_prompt(
    loaded: LoadedModel, question: str, regime: str = "direct", kind: str = "free_text",
    template: PromptTemplate | None = None, answer_prefix: str | None = None, choices: Sequence[str] = (),
    readout: Readout = "last", history: Sequence[tuple[str, str]] = (),
) -> RenderedPrompt:
    """The prompt :func:`analyze` reads (same arguments), rendered but not read: for batched checks.

    Raises:
        PromptError: as :func:`ic_core.prompts.render`.

    """
    template = template or template_for(regime, kind)
    if answer_prefix is not None:
        template = template.with_prefix(answer_prefix)
    return render(loaded.tokenizer, question, template, tuple(choices), readout, loaded.max_context, history)


def analysis_of(
    loaded: LoadedModel, rendered: RenderedPrompt, state: IntentionState, check_s: float, question: str,
    kind: str = "free_text", prefill: Prefill | None = None, **extra: Any,
) -> Analysis:
    """The :class:`Analysis` of a read-out already made (by :func:`ic_core.capture.capture` or a batch).

    Args:
        loaded: The model that made it.
        rendered: The prompt read.
        state: Its state.
        check_s: Seconds the check took.
        question: The user's question.
        kind: Task kind.
        prefill: The read's KV cache, when one is kept for an answer.
        **extra: Other :class:`Analysis` fields (``expected``, ``choices``, ``aliases``).

    """
    tok = loaded.tokenizer
    top = tuple((tok.decode([int(i)]), float(p)) for i, p in zip(state.top_ids, state.top_probs))
    lens_top = tuple(tok.decode([int(i)]) for i in state.lens.top_ids[0, :, 0])
    skipped = tuple(tok.decode([i]) for i in state.skipped_ids)
    return Analysis(
        loaded.spec.label, rendered, state, top, lens_top, skipped, check_s, question=question, kind=kind,
        model_spec=loaded.spec, prefill=prefill, **extra,
    )
