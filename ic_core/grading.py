"""Answer extraction and matching for numeric, multiple-choice and short answers.

Small models rarely obey "answer with just the number": they echo the question, repeat
option lists and start with boilerplate. Extraction tries explicit answer markers first,
and the question's own words (and echoed options) are removed before any fallback
substring match, so an echo is never graded as an answer.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_NUMERIC_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("#### marker", re.compile(r"####\s*(" + _NUM + ")")),
    ("final answer", re.compile(r"final answer\W{0,3}(?:is\W{0,2})?(" + _NUM + ")", re.I)),
    ("the answer is", re.compile(r"answer\s*(?:is|:)\W{0,2}(" + _NUM + ")", re.I)),
)
_EQUALS = re.compile(r"=\s*(" + _NUM + r")(?!\s*[-+*/×x÷])")
_ANY_NUM = re.compile(_NUM)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPAN_END = re.compile(r"[,.;:!?\n(]")


@dataclass(frozen=True)
class Grade:
    """The answer found in a model's output, and whether it matches."""

    extracted: str | None
    """The extracted answer (None when nothing answer-like was found)."""
    correct: bool | None
    """None when there is no expected answer to compare with."""
    rule: str
    """Which rule extracted it (e.g. ``#### marker``, ``last number``, ``option letter``)."""


def normalize_text(text: str) -> str:
    """Lowercase, strip accents, punctuation, articles and extra spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def parse_number(text: str) -> float | None:
    """``"1,234.5"`` → 1234.5; ``"$12"`` → 12.0; None when it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def find_numbers(text: str) -> list[float]:
    """Every number written in ``text`` (``"1,234"``, ``"$12"``, ``"-3.5"``), parsed, in order."""
    return [v for v in map(parse_number, _ANY_NUM.findall(text)) if v is not None]


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _strip_echo(text: str, question: str, choices: Sequence[str] = ()) -> str:
    """Remove a verbatim echo of the question and of the option list from the output."""
    for piece in [question, *choices]:
        piece = piece.strip()
        if len(piece) >= 3:
            text = text.replace(piece, " ")
    return text


def extract_numeric(text: str, question: str = "") -> tuple[str | None, str]:
    """The model's numeric answer and the rule that found it."""
    for name, pattern in _NUMERIC_RULES:
        values = [v for v in map(parse_number, pattern.findall(text)) if v is not None]
        if values:
            return _format_number(values[-1]), name
    body = _strip_echo(text, question)
    for name, pattern in (("after =", _EQUALS), ("last number", _ANY_NUM)):
        values = [v for v in map(parse_number, pattern.findall(body)) if v is not None]
        if values:
            return _format_number(values[-1]), name
    return None, "none"


def extract_letter(text: str, choices: Sequence[str], question: str = "") -> tuple[str | None, str]:
    """The option letter the model chose, and the rule that found it."""
    n = max(1, min(len(choices) or 5, 26))
    letters = "".join(chr(65 + i) for i in range(n))
    cls = f"[{letters}]"
    listed = [f"{chr(65 + i)}. {c}" for i, c in enumerate(choices)]
    # An echoed option list (two or more "X. text" lines) is not a choice; one such line is.
    body = _strip_echo(text, question, listed if sum(opt in text for opt in listed) >= 2 else ())
    rules = (
        ("#### marker", rf"####\s*\(?({cls})\b"),
        ("the answer is", rf"answer\s*(?:is|:)?\s*(?:option\s*)?\(?({cls})\b(?![a-z'])"),
        ("leading letter", rf"^\W*\(?({cls})(?:[).:]|\s*$|\s)"),
        ("letter in brackets", rf"\(({cls})\)"),
        ("option letter", rf"\b(?:option|choice)\s+({cls})\b"),
    )
    for name, pattern in rules:
        match = re.search(pattern, body.strip())
        if match:
            return match.group(1), name
    norm = normalize_text(body)
    hits = [chr(65 + i) for i, c in enumerate(choices) if normalize_text(c) and f" {normalize_text(c)} " in f" {norm} "]
    if len(hits) == 1:
        return hits[0], "choice text"
    return None, "none"


def extract_short(text: str, question: str = "") -> tuple[str | None, str]:
    """A short answer span, and the rule that found it."""
    marked = re.search(r"####\s*([^\n]+)", text)
    if marked:
        return marked.group(1).strip(), "#### marker"
    body = _strip_echo(text, question).strip()
    said = re.search(r"(?:final answer|the answer)\s*(?:is\s*:?|:)\s*(.+)", body, re.I)
    if said:
        return _SPAN_END.split(said.group(1).strip(), maxsplit=1)[0].strip() or None, "the answer is"
    first = re.split(r"(?<=[.!?])\s|\n", body, maxsplit=1)[0] if body else ""
    copula = re.search(r"\b(?:is|are|was)\s+(.+)", first)
    if copula:
        after = _SPAN_END.split(copula.group(1).strip(), maxsplit=1)[0].strip()
        subject = first[: copula.start()].strip()
        asked = set(normalize_text(question).split())
        if subject and asked and set(normalize_text(after).split()) <= asked:
            # "São Tomé is the capital": the words after "is" only restate the question.
            return subject, "before 'is'"
        return after or None, "after 'is'"
    span = re.sub(r"(?<=\w)[.!?]+$", "", first.strip())  # " Paris." -> "Paris": the full stop is not the answer
    return (span or None), "first sentence"


def _matches_alias(span: str, aliases: Sequence[str]) -> bool:
    norm = f" {normalize_text(span)} "
    return any(normalize_text(a) and f" {normalize_text(a)} " in norm for a in aliases)


def grade(
    output: str,
    expected: str | None,
    kind: str = "short_answer",
    aliases: Sequence[str] = (),
    choices: Sequence[str] = (),
    question: str = "",
    tolerance: float = 1e-6,
) -> Grade:
    """Extract the answer from ``output`` and compare it with ``expected``.

    Args:
        output: The assistant's whole answer (forced prefix + generated text).
        expected: The reference answer (number, letter or short text); None to only extract.
        kind: ``numeric``, ``multiple_choice``, ``short_answer`` or ``free_text``.
        aliases: Other accepted short answers.
        choices: Option texts of a multiple-choice question (A, B, … in order).
        question: The question, so that an echo of it is not taken for an answer.
        tolerance: Relative tolerance of numeric matches.

    """
    expected = expected.strip() if isinstance(expected, str) and expected.strip() else None
    if kind == "numeric":
        got, rule = extract_numeric(output, question)
        if expected is None or got is None:
            return Grade(got, None if expected is None else False, rule)
        want = parse_number(expected)
        ok = want is not None and math.isclose(float(got), want, rel_tol=tolerance, abs_tol=tolerance)
        return Grade(got, ok, rule)
    if kind == "multiple_choice":
        got, rule = extract_letter(output, choices, question)
        want = expected.upper() if expected else None
        if want and len(want) > 1 and choices:  # expected given as option text
            want = next((chr(65 + i) for i, c in enumerate(choices) if normalize_text(c) == normalize_text(want)), want)
        return Grade(got, None if want is None else got == want, rule)
    accepted = [a for a in ([expected] if expected else []) + list(aliases) if a]
    got, rule = extract_short(output, question)
    if expected is None:
        return Grade(got, None, rule)
    if got is not None and _matches_alias(got, accepted):
        return Grade(got, True, rule)
    if rule == "first sentence":
        # Boilerplate openings ("Sure! The capital …") hide the answer: look in the first
        # two sentences of the output with the question's words removed.
        body = _strip_echo(output, question)
        head = " ".join(re.split(r"(?<=[.!?])\s+|\n+", body.strip())[:2])
        hit = next((a for a in accepted if _matches_alias(head, [a])), None)
        if hit is not None:
            return Grade(hit, True, "answer in first sentences")
    return Grade(got, False, rule)
