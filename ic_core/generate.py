"""Generation with per-token entropy and probability, continuing from a capture's cache."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ic_core.capture import Prefill
from ic_core.errors import PromptError
from ic_core.models import LoadedModel
from ic_core.prompts import RenderedPrompt

MAX_NEW_TOKENS_LIMIT = 1024
TEMPERATURE_RANGE = (0.01, 100.0)
"""Sampling temperatures allowed: below 0.01 the scaled logits overflow to inf (use greedy instead)."""
MAX_SEED = 2**63 - 1
"""Largest seed torch's generator takes (a signed 64-bit integer)."""
_ANSWER_LINE = re.compile(r"####[^\n]*\S[^\n]*\n")

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

StopReason = Literal["eos", "max_new_tokens", "answer_line", "stop"]
TokenCallback = Callable[[int, str], None]
"""Called after each generated token with its id and the text generated so far (without the forced prefix)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Greedy unless ``do_sample``."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    """Seed of the sampling generator (ignored when greedy)."""
    stop_at_answer_line: bool = True
    """Stop once a ``#### <answer>`` line is complete (chain-of-thought regime)."""
    base_model_stops: bool = True
    """End a plain-text (base-model) prompt's answer at a blank line or a new ``Q:`` line
    (:func:`base_model_stops`); off, a base model runs on to ``max_new_tokens``."""

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise PromptError(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}; got {self.max_new_tokens!r}. "
                "Raise ic_core.generate.MAX_NEW_TOKENS_LIMIT for longer answers."
            )
        check_seed(self.seed)
        if not _is_real(self.temperature) or not _is_real(self.top_p):
            raise PromptError(f"temperature and top_p must be finite numbers; got {self.temperature!r} and {self.top_p!r}.")
        low, high = TEMPERATURE_RANGE
        if self.do_sample and not low <= self.temperature <= high:
            raise PromptError(
                f"The sampling temperature must be between {low} and {high:g}; got {self.temperature!r} "
                "(for near-zero temperatures decode greedily instead)."
            )
        if self.do_sample and not 0 < self.top_p <= 1:
            raise PromptError(f"Sampling needs 0 < top_p ≤ 1; got {self.top_p!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(seed: object) -> None:
    """Refuse a seed torch's generator cannot take.

    Raises:
        PromptError: ``seed`` is not an integer in 0 … 2**63 − 1.

    """
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise PromptError(f"The seed must be an integer between 0 and 2**63 - 1; got {seed!r}.")


def check_fits_context(loaded: LoadedModel, rendered: RenderedPrompt, config: GenerationConfig) -> None:
    """Refuse a generation that would run past the model's context window.

    Raises:
        PromptError: the prompt's tokens plus ``max_new_tokens`` exceed ``loaded.max_context``.

    """
    limit = loaded.max_context
    need = len(rendered.input_ids) + config.max_new_tokens
    if limit is not None and need > limit:
        room = limit - len(rendered.input_ids)
        fix = f"lower max_new_tokens to {room:,} or shorten the prompt" if room >= 1 else "shorten the prompt"
        raise PromptError(
            f"The prompt has {len(rendered.input_ids):,} tokens and asks for up to {config.max_new_tokens:,} new ones, "
            f"but the model reads at most {limit:,}: {fix}."
        )


@dataclass(frozen=True)
class Generation:
    """What the model wrote, token by token."""

    text: str
    """Generated text (after the prompt and any forced answer prefix)."""
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    """Each token decoded on its own, for colouring."""
    entropy_bits: tuple[float, ...]
    """Entropy of the full next-token distribution at each step (temperature 1), bits."""
    chosen_probs: tuple[float, ...]
    """Probability the model gave the token it wrote."""
    stop_reason: StopReason
    """``stop``: a stop string appeared; ``text`` ends right before it (the ids still hold its tokens)."""
    elapsed_s: float
    answer_prefix: str | None = None
    n_trimmed_tokens: int = 0
    """How many trailing tokens (of ``tokens``) hold the stop string, wholly or in part, so are not in ``text``."""

    @property
    def answer_text(self) -> str:
        """The assistant's whole answer: the forced prefix followed by the generated text."""
        return (self.answer_prefix or "") + self.text

    @property
    def mean_entropy_bits(self) -> float | None:
        """Mean per-token entropy (a post-generation uncertainty baseline)."""
        return sum(self.entropy_bits) / len(self.entropy_bits) if self.entropy_bits else None


def _prefill(loaded: LoadedModel, rendered: RenderedPrompt, prefill: Prefill | None) -> Prefill:
    """Make sure the cache covers the whole prompt (a read-out may have stopped early)."""
    import torch

    ids = list(rendered.input_ids)
    if prefill is not None and prefill.consumed:
        prefill = None
    if prefill is not None:
        prefill.consumed = True
        if len(prefill.ids) >= len(ids):
            return prefill
    done = prefill.ids if prefill is not None else []
    rest = ids[len(done):]
    tensor = torch.tensor([rest], dtype=torch.long, device=loaded.device)
    past = prefill.past_key_values if prefill is not None else None
    out = loaded.model(input_ids=tensor, past_key_values=past, use_cache=True)
    return Prefill(ids, out.past_key_values, out.logits[0, -1].float())


def _choose(logits: torch.Tensor, config: GenerationConfig, gen: torch.Generator) -> int:
    """(V,) logits → the next token id (greedy, or sampled with temperature and top-p)."""
    import torch

    if not config.do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < config.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def _stop_cut(text: str, stop: Sequence[str], start: int = 0) -> int | None:
    """Where the earliest stop string starts in ``text`` at or after ``start`` (None: none is there)."""
    hits = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


BASE_STOP_BLANK_LINE = "\n\n"
BASE_STOP_NEW_QUESTION = "\nQ:"


def base_model_stops(rendered: RenderedPrompt) -> tuple[str, ...]:
    """Stop strings of a model without a chat template: nothing marks the end of its answer.

    A base model answering a plain-text ``Q: … A:`` prompt goes on to write the next ``Q:`` and
    its answer until ``max_new_tokens``. Its answer ends at a new ``Q:`` line and, except in
    chain of thought (whose reasoning may have paragraphs), at a blank line. Both are looked for
    only after the answer's first non-blank character and are trimmed from the answer. Chat
    prompts get none (their end-of-turn token stops them).
    """
    if rendered.chat_template_used:
        return ()
    if rendered.regime == "cot":
        return (BASE_STOP_NEW_QUESTION,)
    return (BASE_STOP_BLANK_LINE, BASE_STOP_NEW_QUESTION)


def _base_cut(text: str, stops: Sequence[str]) -> int | None:
    """Where a base-model stop string ends the answer ``text`` (after its first non-blank character)."""
    if not stops:
        return None
    body = len(text) - len(text.lstrip())
    return _stop_cut(text, stops, body + 1) if body < len(text) else None


def _trimmed_tokens(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], cut: int) -> int:
    """How many trailing ``ids`` write text at or after character ``cut`` of the decoded answer."""
    kept = len(ids)
    while kept > 0 and len(tokenizer.decode(ids[:kept], skip_special_tokens=True)) > cut:
        kept -= 1
    return len(ids) - kept


def generate(
    loaded: LoadedModel, rendered: RenderedPrompt, config: GenerationConfig | None = None, prefill: Prefill | None = None,
    on_token: TokenCallback | None = None, stop: Sequence[str] = (),
) -> Generation:
    """Generate an answer; reuse ``prefill`` (from :func:`ic_core.capture.capture`) when given.

    Args:
        loaded: The model.
        rendered: The prompt the model answers (its forced answer prefix is already in it).
        config: Decoding settings.
        prefill: The capture's cache; without it the prompt is read here.
        on_token: Called after every generated token (see :data:`TokenCallback`), e.g. to stream.
        stop: Strings that end the answer as soon as the generated text contains one; the
            text is cut right before the earliest (``stop_reason == "stop"``).

    """
    import torch

    from ic_core.lens import torch_entropy_bits

    config = config or GenerationConfig()
    check_fits_context(loaded, rendered, config)
    base_stops = base_model_stops(rendered) if config.base_model_stops else ()
    start = time.perf_counter()
    eos = loaded.eos_token_ids
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    with loaded.lock, torch.inference_mode():
        state = _prefill(loaded, rendered, prefill)
        ids = list(state.forced_ids)
        entropies, probs = list(state.forced_entropy_bits), list(state.forced_probs)
        logits, past = state.next_logits, state.past_key_values
        reason: StopReason = "max_new_tokens"
        cut: int | None = None
        while len(ids) < config.max_new_tokens:
            token = _choose(logits.cpu(), config, gen)
            entropies.append(float(torch_entropy_bits(logits)))
            probs.append(float(torch.softmax(logits, -1)[token]))
            if token in eos:
                reason = "eos"
                break
            ids.append(token)
            if on_token is not None or stop or base_stops:
                so_far = loaded.tokenizer.decode(ids, skip_special_tokens=True)
                cuts = [c for c in (_stop_cut(so_far, stop), _base_cut(so_far, base_stops)) if c is not None]
                cut = min(cuts) if cuts else None
                if on_token is not None:
                    on_token(token, so_far if cut is None else so_far[:cut])
                if cut is not None:
                    reason = "stop"
                    break
            if config.stop_at_answer_line and _ANSWER_LINE.search(loaded.tokenizer.decode(ids)):
                reason = "answer_line"
                break
            out = loaded.model(
                input_ids=torch.tensor([[token]], device=loaded.device), past_key_values=past, use_cache=True
            )
            logits, past = out.logits[0, -1].float(), out.past_key_values
    if reason == "eos":  # the end token's own entropy/probability are not part of the answer
        entropies, probs = entropies[:-1], probs[:-1]
    tokenizer = loaded.tokenizer
    return Generation(
        text=tokenizer.decode(ids, skip_special_tokens=True)[:cut],
        n_trimmed_tokens=0 if cut is None else _trimmed_tokens(tokenizer, ids, cut),
        token_ids=tuple(ids),
        tokens=tuple(tokenizer.decode([i]) for i in ids),
        entropy_bits=tuple(entropies),
        chosen_probs=tuple(probs),
        stop_reason=reason,
        elapsed_s=time.perf_counter() - start,
        answer_prefix=rendered.answer_prefix,
    )
