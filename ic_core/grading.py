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


_STEP_MARK = re.compile(r"^[ \t]*(?:\d{1,2}[.)]|[-*•]|step\s+\d{1,2}\s*[:.)])[ \t]+", re.I | re.M)
_SAID = re.compile(r"(?:final answer|the answer)\s*(?:is\s*:?|:)\s*([^\n]+)", re.I)
_QUOTE_PAIRS = {'"': '"”', "“": '”"', "«": "»", "„": "“”"}


def _unquote(span: str) -> str:
    """``“"Paris" and "France"”`` → ``Paris``: a span that opens with a quote is its first quoted part."""
    span = span.strip()
    while span[:1] in _QUOTE_PAIRS:
        closers = _QUOTE_PAIRS[span[0]]
        end = min((i for i in (span.find(c, 1) for c in closers) if i > 0), default=-1)
        inner = span[1:end] if end > 0 else span[1:]
        if not inner.strip():
            break
        span = inner.strip()
    return span.strip("\"“”«»„ ")


def _span(text: str) -> str:
    """The answer span at the start of ``text``: unquoted, up to the first clause break."""
    text = text.strip()
    if text[:1] in _QUOTE_PAIRS:  # a quoted answer may hold a comma or full stop
        return _unquote(text)
    return _unquote(_SPAN_END.split(text, maxsplit=1)[0])


def _copula(sentence: str, question: str) -> tuple[str, str] | None:
    """``X is Y`` → Y (or X when Y only restates the question); None without a copula."""
    found = re.search(r"\b(?:is|are|was)\s+(.+)", sentence)
    if not found:
        return None
    after = _span(found.group(1))
    subject = _unquote(sentence[: found.start()])
    asked = set(normalize_text(question).split())
    if subject and asked and set(normalize_text(after).split()) <= asked:
        # "São Tomé is the capital": the words after "is" only restate the question.
        return subject, "before 'is'"
    return after, "after 'is'"


def extract_short(text: str, question: str = "") -> tuple[str | None, str]:
    """A short answer span, and the rule that found it.

    Reasoning comes before its conclusion: of several "the answer is" the last counts, and
    in a list of steps ("1. …", "Step 2: …") the last step that says "X is Y" about the
    question's words. List numbers and quotes around the answer are not part of it.
    """
    marked = re.search(r"####\s*([^\n]+)", text)
    if marked:
        return _unquote(marked.group(1)) or None, "#### marker"
    body = _strip_echo(text, question).strip()
    said = _SAID.findall(body)
    if said:
        last = said[-1]
        while nested := _SAID.search(last):  # "the final answer: The answer is X"
            last = nested.group(1)
        return _span(last) or None, "the answer is"
    steps = len(_STEP_MARK.findall(body)) >= 2
    body = _STEP_MARK.sub("", body).strip()
    lines = [line.strip() for line in body.splitlines() if any(ch.isalnum() for ch in line)]
    if steps:
        topic = {w for w in normalize_text(question).split() if len(w) >= 4}
        for line in reversed(lines):
            for sentence in reversed(re.split(r"(?<=[.!?])\s", line)):
                hit = _copula(sentence, question)
                if hit and hit[0] and topic & set(normalize_text(sentence).split()):
                    return hit[0], f"{hit[1]} (last step on the question)"
    first = re.split(r"(?<=[.!?])\s", lines[0], maxsplit=1)[0] if lines else ""
    hit = _copula(first, question)
    if hit:
        return hit[0] or None, hit[1]
    span = re.sub(r"(?<=\w)[.!?]+$", "", _unquote(first))  # " Paris." -> "Paris": the full stop is not the answer
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
