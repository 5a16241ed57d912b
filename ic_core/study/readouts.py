"""Extra read-outs of a study row: the last prompt token of a prefixed prompt, and the slot after the first digit.

The main read-out of a direct row after an answer prefix is H_slot; CoT and babble rows are
read at the last prompt token (H_int). To compare regimes at the same position, a direct row
read after a prefix also gets a plain read of the same prompt without the prefix. Optionally
(issue 15 part 5) numeric rows get the entropy after the prefix and the gold answer's first
digit, teacher-forced: the second digit's slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ic_core.capture import IntentionState
    from ic_core.datasets import PromptItem
    from ic_core.models import LoadedModel
    from ic_core.prompts import RenderedPrompt


class PlannedRow(Protocol):
    """What the extra reads need of a planned study row."""

    regime: str
    item: PromptItem
    rendered: RenderedPrompt
    last_token: RenderedPrompt | None
    """The prompt without its answer prefix when ``rendered`` is read after one, else None."""


@dataclass(frozen=True)
class ExtraReads:
    """The extra entropies of one row, bits (None where the row has no such read)."""

    last_token_entropy_bits: float | None = None
    """H_int: the read-out itself for H_int rows, the prompt without its prefix for H_slot rows."""
    second_digit_entropy_bits: float | None = None
    """After the answer prefix and the gold answer's first digit (only when the study asked for it)."""


def first_digit_of(answer: str | None) -> str | None:
    """The first digit of a non-negative numeric gold answer whose integer part has ≥ 2 digits (``"148"`` → ``"1"``).

    None otherwise (one digit, negative, or not a number): there is no second-digit slot to read.
    """
    text = (answer or "").strip().replace(",", "")
    digits = text.split(".")[0]
    return digits[0] if len(digits) >= 2 and text.replace(".", "", 1).isdigit() else None


def second_digit_ids(tokenizer: Any, p: PlannedRow) -> list[int] | None:
    """The prompt read after its prefix, then a space and the gold answer's first digit, as the model reads them.

    None when the row does not qualify: not direct, no prefix, not numeric, or an answer of one digit.
    """
    digit = first_digit_of(p.item.answer) if p.item.kind == "numeric" else None
    if p.regime != "direct" or p.rendered.signal != "H_slot" or digit is None:
        return None
    forced = tokenizer(" " + digit, add_special_tokens=False)["input_ids"]
    return list(p.rendered.input_ids[: p.rendered.readout_index + 1]) + list(forced)


def extra_reads(loaded: LoadedModel, batch: Sequence[PlannedRow], states: Sequence[IntentionState], second_digit: bool,
                batch_size: int) -> list[ExtraReads]:
    """One batched plain read for the rows that need an extra position (see :func:`run_study`)."""
    from ic_core.capture import next_token_entropy_bits

    wanted: list[tuple[int, str, list[int]]] = []
    for i, p in enumerate(batch):
        if p.last_token is not None:
            wanted.append((i, "last", list(p.last_token.input_ids[: p.last_token.readout_index + 1])))
        ids = second_digit_ids(loaded.tokenizer, p) if second_digit else None
        if ids is not None:
            wanted.append((i, "digit", ids))
    values = next_token_entropy_bits(loaded, [ids for *_, ids in wanted], batch_size) if wanted else []
    got: dict[tuple[int, str], float] = {(i, what): float(v) for (i, what, _), v in zip(wanted, values)}
    return [
        ExtraReads(
            last_token_entropy_bits=got.get((i, "last"), s.readout_entropy_bits if p.rendered.signal == "H_int" else None),
            second_digit_entropy_bits=got.get((i, "digit")),
        )
        for i, (p, s) in enumerate(zip(batch, states))
    ]
