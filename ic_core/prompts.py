"""Regimes, templates, and rendering a question into the exact tokens the model reads.

A *regime* is how the question is asked: ``direct`` (answer only), ``cot`` (reason step by
step, then ``#### answer``), ``babble`` (talk about the topic without solving it: a
control), or ``custom`` (the user's own template). The pre-collapse state is read at the
*read-out token*: by default the last prompt token; optionally the end of the user's text,
or, when a template carries a forced answer prefix, the last token of that prefix.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from secrets import token_hex
from typing import TYPE_CHECKING, Literal

from ic_core.errors import PromptError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Regime = Literal["direct", "cot", "babble", "custom"]
TaskKind = Literal["numeric", "multiple_choice", "short_answer", "free_text"]
REGIMES: tuple[str, ...] = ("direct", "cot", "babble")
TASK_KINDS: tuple[str, ...] = ("numeric", "multiple_choice", "short_answer", "free_text")
Readout = Literal["last", "user_end"] | int
Signal = Literal["H_int", "H_slot"]
"""Which read-out an entropy is: ``H_int`` at the last prompt token, ``H_slot`` after a forced answer prefix."""
READOUT_NAMES: dict[str, str] = {
    "H_int": "H_int (last prompt token)", "H_slot": "H_slot (after the answer prefix)",
    "mixed": "mixed (H_int and H_slot rows)",
}
"""Display names of :func:`readout_label`'s answers."""


def readout_signal(answer_prefix: str | None) -> Signal:
    """The read-out a prompt gives: ``H_slot`` when the state is read after a forced answer prefix, else ``H_int``."""
    return "H_slot" if answer_prefix else "H_int"


def readout_label(signals: Iterable[str]) -> str:
    """The one label for several rows' read-outs: ``H_int`` or ``H_slot`` when all rows agree, else ``mixed``.

    No rows at all read after a prefix, so an empty selection is ``H_int``.
    """
    seen = set(signals)
    if len(seen) > 1:
        return "mixed"
    return seen.pop() if seen else "H_int"

MAX_PROMPT_CHARS = 20_000
"""Longer prompts are refused before tokenisation (the model's context is the real limit)."""
MAX_CHOICES = 26
"""Multiple-choice options are lettered A … Z."""

_DIRECT = {
    "numeric": "{question}\nAnswer with just the final number.",
    "multiple_choice": "{question}\n{choices}\nAnswer with the letter of the correct option only.",
    "short_answer": "{question}\nAnswer in a few words.",
    "free_text": "{question}",
}
_COT = {
    "numeric": "{question}\nThink step by step, then give the final answer on its own line as '#### <number>'.",
    "multiple_choice": "{question}\n{choices}\nThink step by step, then give the final answer as '#### <letter>'.",
    "short_answer": "{question}\nThink step by step, then give the final answer as '#### <answer>'.",
    "free_text": "{question}\nThink step by step before you answer.",
}
_BABBLE = "Write a few sentences about the topic of this question. Do not answer or solve it.\n{question}"

BASE_QUESTION_CUE = "Q:"
"""Starts each question of a plain-text (base-model) prompt; a new one in an answer ends it."""
BASE_ANSWER_CUE = "A:"
"""Ends a plain-text direct or CoT prompt: the read-out sits on it, right before the answer."""
BASE_COT_OPENER = "Let's think step by step."
_BASE_SHOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (("How many days are in a week?", "7"),
                ("A box holds 4 rows of 3 eggs. How many eggs are in the box?", "12")),
    "multiple_choice": (("Which of these animals is a mammal?\nA. shark\nB. dolphin\nC. trout\nD. octopus", "B"),),
    "short_answer": (("What is the largest planet in the Solar System?", "Jupiter"),
                     ("Who wrote the play Romeo and Juliet?", "William Shakespeare")),
    "free_text": (("What colour is the sky on a clear day?", "Blue."),),
}
"""Worked examples before the question of a plain-text direct prompt (none shares a bundled item)."""
_BASE_BABBLE = ("The text below is about the topic of a question. It does not answer or solve it.\n"
                "Question: {question}\nText about the topic:")


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes the user's message (and optionally the start of the answer)."""

    regime: str
    """``direct``, ``cot``, ``babble`` or ``custom``."""
    user: str
    """Message template; ``{question}`` and ``{choices}`` are filled in."""
    system: str | None = None
    """System message; ``None`` lets the chat template use its own default."""
    answer_prefix: str | None = None
    """Forced start of the assistant turn (e.g. ``The answer is``); the state is read after it."""
    kind: str | None = None
    """Task kind of a built-in regime template (:func:`template_for`); None for a custom one. A
    built-in template on a model without a chat template renders as plain text (:func:`base_prompt_text`)."""

    def with_prefix(self, prefix: str | None) -> PromptTemplate:
        """A copy with another forced answer prefix (``None`` or blank removes it)."""
        return replace(self, answer_prefix=(prefix or "").strip() or None)


def template_for(regime: str, kind: str = "free_text", answer_prefix: str | None = None) -> PromptTemplate:
    """The built-in template of a regime for a task kind.

    Raises:
        PromptError: for an unknown regime or kind.

    """
    if kind not in TASK_KINDS:
        raise PromptError(f"Unknown task kind {kind!r}; choose one of {', '.join(TASK_KINDS)}.")
    if regime == "direct":
        user = _DIRECT[kind]
    elif regime == "cot":
        user = _COT[kind]
    elif regime == "babble":
        user = _BABBLE
    else:
        raise PromptError(f"Unknown regime {regime!r}; choose one of {', '.join(REGIMES)} (or a custom template).")
    return PromptTemplate(regime, user, kind=kind).with_prefix(answer_prefix)


def base_prompt_text(template: PromptTemplate, question: str, choices: Sequence[str] = ()) -> tuple[str, str]:
    """The plain-text prompt a model without a chat template reads for a built-in regime.

    direct: few-shot ``Q: … / A: …`` examples of the task kind, then ``Q: <question>`` and
    ``A:``; CoT: ``Q: <question>`` and ``A: Let's think step by step.`` (zero-shot: a 270M base
    model copies a worked example's final answer); babble: a line saying the text talks about
    the question's topic without answering it. A forced answer prefix follows after a space.

    Returns:
        ``(text, question_line)``: the whole prompt, and the part holding the question (``user_end``).

    Raises:
        PromptError: a custom template (``kind`` None), a bad question or bad options.

    """
    if template.kind is None:
        raise PromptError("Only a built-in regime template has a plain-text (base-model) form.")
    question = clean_prompt(question)
    check_template_texts(template)
    asked = question + ("\n" + format_choices(choices) if choices else "")
    line = f"{BASE_QUESTION_CUE} {asked}"
    if template.regime == "babble":
        text = _BASE_BABBLE.format(question=asked)
        line = asked
    elif template.regime == "cot":  # zero-shot: a worked example's answer gets copied by a small base model
        text = f"{line}\n{BASE_ANSWER_CUE} {BASE_COT_OPENER}"
    else:
        shots = "".join(f"{BASE_QUESTION_CUE} {q}\n{BASE_ANSWER_CUE} {a}\n\n" for q, a in _BASE_SHOTS[template.kind])
        text = f"{shots}{line}\n{BASE_ANSWER_CUE}"
    if template.system:
        text = template.system + "\n\n" + text
    return text + (" " + template.answer_prefix if template.answer_prefix else ""), line


def custom_template(user: str, answer_prefix: str | None = None, system: str | None = None) -> PromptTemplate:
    """A user-written template; it must contain ``{question}``."""
    if "{question}" not in user:
        raise PromptError("A custom template must contain {question} where the question goes.")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(user) if name is not None]
    except ValueError as exc:
        raise PromptError(f"The template has unbalanced braces ({exc}); write a literal brace as {{{{ or }}}}.") from exc
    for name, spec, conv in fields:
        if name not in ("question", "choices") or spec or conv:
            raise PromptError(
                f"The template has a field other than {{question}}/{{choices}}: {{{name}}}. "
                "Write a literal brace as {{ or }}."
            )
    return PromptTemplate("custom", user, system).with_prefix(answer_prefix)


def format_choices(choices: list[str] | tuple[str, ...]) -> str:
    """``A. first\\nB. second…`` for multiple-choice questions (checked by :func:`check_choice_texts`)."""
    check_choice_texts(choices)
    return "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))


def invalid_text_reason(value: str) -> str | None:
    """Why ``value`` is not valid text (a lone UTF-16 surrogate or a NUL character), or None when it is."""
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        return "contains unpaired UTF-16 surrogates (e.g. a '\\ud800' escape); it is not valid text"
    if "\x00" in value:
        return "contains a NUL character; it is not valid text"
    return None


def check_text(value: object, what: str) -> str:
    """``value`` when it is valid text; otherwise a one-line error naming ``what``.

    Raises:
        PromptError: not a string, or it holds a lone surrogate or a NUL character.

    """
    if not isinstance(value, str):
        raise PromptError(f"{what} must be text, got {type(value).__name__}.")
    reason = invalid_text_reason(value)
    if reason:
        raise PromptError(f"{what} {reason}.")
    return value


def check_choice_texts(choices: Sequence[object]) -> None:
    """Refuse more options than letters A … Z, and options that are not valid text.

    Raises:
        PromptError: more than :data:`MAX_CHOICES` options, or an option that :func:`check_text` refuses.

    """
    if len(choices) > MAX_CHOICES:
        raise PromptError(f"{len(choices)} options given; multiple choice is lettered A … Z, so at most {MAX_CHOICES}.")
    for i, choice in enumerate(choices):
        check_text(choice, f"Option {chr(65 + i)}")


def check_template_texts(template: PromptTemplate) -> None:
    """Refuse a template whose message, system text or answer prefix is not valid text.

    Raises:
        PromptError: a field that :func:`check_text` refuses.

    """
    check_text(template.user, "The template")
    if template.system is not None:
        check_text(template.system, "The system message")
    if template.answer_prefix is not None:
        check_text(template.answer_prefix, "The answer prefix")


def clean_prompt(question: str) -> str:
    """Validate and normalise a user's question text.

    Raises:
        PromptError: empty, whitespace-only, too long, or containing binary control characters.

    """
    if not isinstance(question, str):
        raise PromptError("The prompt must be text.")
    text = question.replace("\r\n", "\n").strip()
    if not text:
        raise PromptError("The prompt is empty: type a question first.")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"The prompt has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}. Shorten it, or raise "
            "ic_core.prompts.MAX_PROMPT_CHARS."
        )
    if any(unicodedata.category(ch) == "Cs" for ch in text):
        raise PromptError("The prompt contains unpaired UTF-16 surrogates (e.g. a '\\ud800' escape); it is not valid text.")
    bad = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\t")
    if bad:
        raise PromptError(f"The prompt contains {bad} control character(s); it looks like binary data, not text.")
    return text


@dataclass(frozen=True)
class RenderedPrompt:
    """The exact input the model reads, and where the pre-collapse state is taken."""

    text: str
    """Full rendered text: chat template + user message + forced answer prefix."""
    input_ids: tuple[int, ...]
    """Token ids of ``text`` (length T)."""
    tokens: tuple[str, ...]
    """Each token decoded for display (length T)."""
    readout_index: int
    """Position whose state is I (0 ≤ index < T); the model only sees ids[: index + 1]."""
    regime: str
    user_text: str
    """The user message after templating."""
    answer_prefix: str | None
    chat_template_used: bool
    plain_text_template: bool = False
    """A built-in regime rendered as plain text for a model without a chat template
    (:func:`base_prompt_text`): its answers end at a blank line or a new ``Q:`` line
    (:func:`ic_core.generate.base_model_stops`)."""

    @property
    def readout_token(self) -> str:
        """The read-out token as text."""
        return self.tokens[self.readout_index]

    @property
    def n_tokens(self) -> int:
        """Prompt length T in tokens."""
        return len(self.input_ids)

    @property
    def signal(self) -> Signal:
        """``H_slot`` when read after a forced answer prefix, else ``H_int`` (:func:`readout_signal`)."""
        return readout_signal(self.answer_prefix)

    @property
    def readout_is_formatting(self) -> bool:
        """True when the read-out token is whitespace, punctuation or a special token."""
        return is_formatting_token(self.readout_token)

    @property
    def readout_is_answer_cue(self) -> bool:
        """True when a plain-text prompt is read on its ``A:`` cue, right before the answer's first word.

        That token is punctuation, but no template boilerplate follows it: the next token is the
        answer (or, for CoT, its reasoning), so the read-out is not a formatting slot.
        """
        return (self.plain_text_template and not self.answer_prefix and self.readout_index == self.n_tokens - 1
                and self.text.rstrip().endswith((BASE_ANSWER_CUE, BASE_COT_OPENER)))


def is_formatting_token(token_text: str) -> bool:
    """Whitespace, punctuation-only and ``<|special|>`` tokens carry format, not content."""
    stripped = token_text.strip()
    if not stripped or (stripped.startswith("<") and stripped.endswith(">") and len(stripped) > 2):
        return True
    return all(unicodedata.category(ch).startswith(("P", "S", "Z")) for ch in stripped)


def fill_user_message(template: PromptTemplate, question: str, choices: list[str] | tuple[str, ...] = ()) -> str:
    """Put the question (and lettered choices) into the template."""
    question = clean_prompt(question)
    check_template_texts(template)
    user = template.user if choices else template.user.replace("\n{choices}", "").replace("{choices}", "")
    return user.format(question=question, choices=format_choices(choices)).strip()


def render(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    template: PromptTemplate,
    choices: list[str] | tuple[str, ...] = (),
    readout: Readout = "last",
    max_tokens: int | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> RenderedPrompt:
    """Render a question through the chat template (when the tokenizer has one).

    Args:
        tokenizer: A transformers tokenizer.
        question: The user's question (validated by :func:`clean_prompt`).
        template: Regime template, possibly with a forced answer prefix.
        choices: Option texts for multiple-choice questions.
        readout: ``last`` (default), ``user_end`` (last token of the user's text), or a
            token index (negative counts from the end).
        max_tokens: Refuse prompts longer than this (the model's context).
        history: Earlier turns of a conversation, ``(role, text)`` with role ``user``,
            ``assistant`` or ``tool``, placed between the system message and the question;
            their text is plain text like the question's (:func:`check_history`). Empty: the
            single-prompt rendering, token for token.

    Raises:
        PromptError: bad question, template, history, read-out position or length.

    """
    user_text = fill_user_message(template, question, choices)
    turns = check_history(history)
    chat = bool(getattr(tokenizer, "chat_template", None))
    plain = not chat and template.kind is not None
    if chat:
        head, segments = _chat_segments(tokenizer, template, user_text, turns)
    elif plain:
        earlier = "".join(text + "\n\n" for _, text in turns)
        body, user_text = base_prompt_text(template, question, choices)
        head = earlier + body
        segments = [(head, "user")]
    else:
        earlier = "".join(text + "\n\n" for _, text in turns)
        head = (template.system + "\n\n" if template.system else "") + earlier + user_text + "\n\n"
        segments = [(head, "user")]
    if template.answer_prefix and not plain:
        segments.append((template.answer_prefix, "prefix"))
    text = head + ("" if plain else template.answer_prefix or "")
    ids, user_end = _encode(tokenizer, text, segments, chat)
    if not ids:
        raise PromptError("The prompt rendered to zero tokens.")
    if max_tokens is not None and len(ids) > max_tokens:
        raise PromptError(
            f"The rendered prompt has {len(ids):,} tokens but the model reads at most {max_tokens:,}. Shorten it."
        )
    tokens = tuple(tokenizer.decode([i]) for i in ids)
    index = _readout_index(tokenizer, text, user_text, ids, readout, chat) if user_end is None or readout != "user_end" \
        else max(0, min(len(ids) - 1, user_end - 1))
    return RenderedPrompt(text, ids, tokens, index, template.regime, user_text, template.answer_prefix, chat, plain)


def _readout_index(tokenizer: PreTrainedTokenizerBase, text: str, user_text: str, ids: tuple[int, ...], readout: Readout, chat: bool) -> int:
    n = len(ids)
    if readout == "last":
        return n - 1
    if readout == "user_end":
        end = text.rfind(user_text) + len(user_text)
        prefix_ids = tokenizer(text[:end], add_special_tokens=not chat, split_special_tokens=not chat)["input_ids"]
        return max(0, min(n - 1, len(prefix_ids) - 1))
    if isinstance(readout, int) and not isinstance(readout, bool):
        index = readout + n if readout < 0 else readout
        if 0 <= index < n:
            return index
        raise PromptError(f"Read-out index {readout} is outside the prompt's {n} tokens.")
    raise PromptError(f"Unknown read-out position {readout!r}; use 'last', 'user_end' or a token index.")


def control_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of the tokenizer's special (control) tokens: ``all_special_ids`` and added tokens marked special.

    ``<unk>`` is included: some tokenizers (SmolLM2's) make their end-of-text token the unknown
    token, so leaving it out would let a planted ``<|endoftext|>`` through.
    """
    ids = set(tokenizer.all_special_ids)
    ids |= {int(i) for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)}
    return frozenset(ids)


HISTORY_ROLES = ("user", "assistant", "tool")
"""Roles an earlier turn of a conversation may have."""


def check_history(history: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The earlier turns of a conversation, checked: known roles, valid text, within the length limit.

    Raises:
        PromptError: an unknown role, a text :func:`check_text` refuses, or one over
            :data:`MAX_PROMPT_CHARS` characters.

    """
    turns = []
    for k, (role, text) in enumerate(history):
        if role not in HISTORY_ROLES:
            raise PromptError(f"Turn {k + 1} has role {role!r}; earlier turns are {', '.join(HISTORY_ROLES)}.")
        check_text(text, f"Turn {k + 1} ({role})")
        if len(text) > MAX_PROMPT_CHARS:
            raise PromptError(f"Turn {k + 1} has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
        turns.append((role, text.replace("\r\n", "\n")))
    return turns


def _chat_segments(
    tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, user_text: str,
    history: Sequence[tuple[str, str]] = (),
) -> tuple[str, list[tuple[str, str | None]]]:
    """The chat-rendered head and its pieces: ``(text, None)`` from the template, ``(text, role)`` from a message.

    The template is rendered once around random placeholders to find where the message texts sit.
    """
    contents = [*([("system", template.system)] if template.system else []), *history, ("user", user_text)]
    marks = [f"ICMSG{role.upper()}{token_hex(8)}" for role, _ in contents]

    def rendered(fill: Sequence[str]) -> str:
        messages = [{"role": role, "content": text} for (role, _), text in zip(contents, fill)]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template that refuses a role or an order raises its own error types
            if not history:
                raise
            raise PromptError(f"The model's chat template cannot render this conversation: {exc}") from exc

    head, marked = rendered([text for _, text in contents]), rendered(marks)
    if any(marked.count(mark) != 1 for mark in marks):
        raise PromptError("The model's chat template repeats or drops the message text; the user's text cannot be kept apart from its control tokens.")
    segments: list[tuple[str, str | None]] = []
    rest = marked
    for k in sorted(range(len(contents)), key=lambda i: marked.find(marks[i])):
        before, _, rest = rest.partition(marks[k])
        segments += [(before, None), (contents[k][1], contents[k][0])]
    segments.append((rest, None))
    if "".join(piece for piece, _ in segments) != head:
        raise PromptError("The model's chat template rewrites the message text; the user's text cannot be kept apart from its control tokens.")
    return head, segments


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, segments: list[tuple[str, str | None]], chat: bool) -> tuple[tuple[int, ...], int | None]:
    """Ids of ``text`` in which only the chat template's own pieces may yield control tokens.

    Without a chat template everything is user text: one call with special tokens split. With
    one, the whole text tokenized as before is kept when its control tokens are exactly those
    of the template pieces (same ids as ever for ordinary prompts); otherwise the user's text
    smuggled control strings, and the ids are built piece by piece, user pieces as plain text.
    Also returns, for piecewise ids, how many of them end the user message.

    Raises:
        PromptError: the tokenizer cannot encode a user piece without control tokens.

    """
    def encode(piece: str, plain: bool) -> list[int]:
        return [int(i) for i in tokenizer(piece, add_special_tokens=not chat, split_special_tokens=plain)["input_ids"]]

    if not chat:
        return tuple(encode(text, True)), None
    controls = control_token_ids(tokenizer)
    parsed_controls = controls - {tokenizer.unk_token_id}  # plain unknown text may map to <unk>, nothing else
    pieces: list[int] = []
    user_end = None
    for piece, role in segments:
        ids = encode(piece, role is not None) if piece else []
        if role is not None and parsed_controls.intersection(ids):
            raise PromptError("The tokenizer turns the user's text into control tokens even as plain text; this model cannot be used safely.")
        pieces += ids
        if role == "user":
            user_end = len(pieces)
    whole = encode(text, False)
    if [i for i in whole if i in controls] == [i for i in pieces if i in controls]:
        return tuple(whole), None
    return tuple(pieces), user_end
