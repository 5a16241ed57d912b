"""Babble as a control: whether an output obeyed "do not answer".

The babble regime asks the model to write about anything but the answer. Its outputs are
never graded as answers; instead each is checked for compliance. An output complies when it
contains neither the item's answer (or an alias, normalised as :mod:`ic_core.grading` does)
nor a worked result (``= 12``, ``a + b = c``, ``equals 12``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ic_core.grading import extract_letter, find_numbers, normalize_text, parse_number

_RESULT = re.compile(r"=\s*-?\$?\d|\bequals?\s+-?\$?\d", re.I)
"""An ``=`` result or a spelled-out one: ``= 12``, ``3 + 4 = 7``, ``equals 7``."""


@dataclass(frozen=True)
class Compliance:
    """The compliance verdict on one control output."""

    complied: bool
    """True when the output neither gives the answer nor works out a result."""
    reason: str
    """``complied``, ``contains the answer`` or ``contains an '=' result``."""


def _has_number(text: str, expected: str) -> bool:
    want = parse_number(expected)
    return want is not None and any(math.isclose(v, want, rel_tol=1e-6, abs_tol=1e-6) for v in find_numbers(text))


def _has_text(text: str, accepted: Sequence[str]) -> bool:
    norm = f" {normalize_text(text)} "
    return any(normalize_text(a) and f" {normalize_text(a)} " in norm for a in accepted)


def contains_answer(
    output: str, expected: str | None, kind: str, aliases: Sequence[str] = (), choices: Sequence[str] = (),
) -> bool:
    """Whether ``output`` states the expected answer or one of its aliases anywhere.

    Numbers match by value (``1,000`` is 1000); texts after :func:`ic_core.grading.normalize_text`
    as whole words; a multiple-choice answer by its letter (as grading extracts it) or its option text.
    """
    expected = expected.strip() if isinstance(expected, str) and expected.strip() else None
    accepted = [a for a in ([expected] if expected else []) + list(aliases) if a and a.strip()]
    if not accepted:
        return False
    if kind == "numeric" and any(_has_number(output, a) for a in accepted):
        return True
    if kind == "multiple_choice" and expected:
        letter = expected.upper()
        index = ord(letter) - 65 if len(letter) == 1 else -1
        if extract_letter(output, choices)[0] == letter:
            return True
        if 0 <= index < len(choices):
            accepted = [*accepted, choices[index]]
        accepted = [a for a in accepted if len(a.strip()) > 1]  # a bare letter is not a text answer
    return _has_text(output, accepted)


def check_compliance(
    output: str, expected: str | None, kind: str, aliases: Sequence[str] = (), choices: Sequence[str] = (),
) -> Compliance:
    """The compliance of one babble output (see the module doc)."""
    if contains_answer(output, expected, kind, aliases, choices):
        return Compliance(False, "contains the answer")
    if _RESULT.search(output):
        return Compliance(False, "contains an '=' result")
    return Compliance(True, "complied")
