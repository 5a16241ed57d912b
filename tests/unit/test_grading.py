"""Unit tier: answer extraction and matching tables."""

import pytest

from ic_core.grading import find_numbers, grade, normalize_text, parse_number

NUMERIC = [
    ("Let me think. 3 + 4 = 7\n#### 7", "7", True, "#### marker"),
    ("The final answer is 1,234.", "1234", True, "final answer"),
    ("The answer is 85.", "85", True, "the answer is"),
    ("To solve this, add 47 and 38: 47 + 38 = 85", "85", True, "after ="),
    ("What is 47 + 38? I think 47 + 38 is 84", "85", False, "last number"),
    ("It costs $12.50 in total, so 12.5", "12.5", True, "last number"),
    ("I don't know.", "5", False, "none"),
]


@pytest.mark.parametrize("text,expected,correct,rule", NUMERIC)
def test_numeric_table(text, expected, correct, rule):
    g = grade(text, expected, "numeric", question="What is 47 + 38?")
    assert (g.correct, g.rule) == (correct, rule)


def test_numeric_echo_of_question_is_not_an_answer():
    q = "What is 12 + 30?"
    g = grade("What is 12 + 30?", "30", "numeric", question=q)
    assert g.correct is False and g.extracted is None


CHOICES = ["a hammer", "a thermometer", "a ruler", "a scale"]
LETTERS = [
    ("#### B", "B", True, "#### marker"),
    ("The answer is (C).", "C", True, "the answer is"),
    ("B. a thermometer", "B", True, "leading letter"),
    ("I would pick (D) because it weighs", "D", True, "letter in brackets"),
    ("You measure temperature with a thermometer.", "B", True, "choice text"),
    ("A. a hammer\nB. a thermometer\nC. a ruler\nD. a scale\nThe answer is B", "B", True, "the answer is"),
    ("A. a hammer\nB. a thermometer\nC. a ruler\nD. a scale", "B", None, "none"),
]


@pytest.mark.parametrize("text,expected,correct,rule", LETTERS)
def test_letter_table(text, expected, correct, rule):
    g = grade(text, expected, "multiple_choice", choices=CHOICES, question="Which tool measures temperature?")
    assert g.rule == rule
    if correct is None:  # echoed option list alone: nothing chosen
        assert g.extracted is None and g.correct is False
    else:
        assert g.correct is correct


def test_letter_expected_as_option_text():
    assert grade("#### B", "a thermometer", "multiple_choice", choices=CHOICES).correct is True


SHORT = [
    ("The capital of France is Paris.", "Paris", [], True),
    ("The capital of Australia is Sydney, not Canberra.", "Canberra", [], False),
    ("Sure! The capital of Ukraine is Kiev.", "Kyiv", ["Kiev"], True),
    ("The capital of the United States is Washington, D.C.", "Washington, D.C.", ["Washington"], True),
    ("#### Bern", "Bern", ["Berne"], True),
    ("The answer is: Ottawa", "Ottawa", [], True),
    ("Paris.", "Paris", [], True),
    ("I'm not sure about that.", "Paris", [], False),
    ("São Tomé is the capital.", "Sao Tome", [], True),
]


@pytest.mark.parametrize("text,expected,aliases,correct", SHORT)
def test_short_answer_table(text, expected, aliases, correct):
    q = "What is the capital of " + "X?"
    assert grade(text, expected, "short_answer", aliases=aliases, question=q).correct is correct


def test_short_answer_question_echo_does_not_count():
    q = "Is Paris the capital of France or Germany?"
    g = grade("Is Paris the capital of France or Germany? Germany.", "Paris", "short_answer", question=q)
    assert g.correct is False


def test_no_expected_answer_only_extracts():
    g = grade("The answer is 4", None, "numeric")
    assert g.extracted == "4" and g.correct is None


@pytest.mark.parametrize(("text", "extracted"), [(" Paris.", "Paris"), ("Lima?", "Lima"), ("Yes!", "Yes"),
                                                 ("Paris", "Paris"), ("...", None)])
def test_first_sentence_span_drops_its_full_stop(text, extracted):
    g = grade(text, "Paris", "short_answer")
    assert g.extracted == extracted and g.correct is (extracted == "Paris")


# Chain-of-thought answers of the default model (SmolLM2-135M-Instruct, greedy, 160 tokens).
COT_FRANCE = ('1. First, I\'ll identify the main components of the answer: "Paris" and "France".\n2. I\'ll break down '
              'the answer into its constituent parts: "Paris" is the capital of France, and "France" is the name of the '
              'European country.\n3. I\'ll add the final step: "The answer is "Paris" and "France" are the names of the '
              'European countries."\n\nSo, the answer is "Paris" and "France" are the names of the European countries.')
COT_PERU = ('To solve this problem, I will break it down step by step:\n\n1. Identify the given information: The answer is '
            '"Pepón" (capital of Peru).\n2. Determine the answer: The answer is "Pepón" (capital of Peru).\n3. Provide the '
            'final answer: The answer is "Pepón" (capital of Peru).')
COT_ASKS = '1. First, I need to know the country\'s capital.\n2. So, I\'ll ask: "What is the capital of France?"'


@pytest.mark.parametrize(("text", "question", "expected", "extracted", "correct"), [
    (COT_FRANCE, "What is the capital of France?", "Paris", "Paris", True),  # was '"Paris" and "France"'
    (COT_PERU, "What is the capital of Peru?", "Lima", "Pepón", False),  # was 'The answer is "Pepón'
    (COT_ASKS, "What is the capital of France?", "Paris", "First, I need to know the country's capital", False),  # was '1'
    (COT_ASKS + "\n3. The capital of France is Paris.", "What is the capital of France?", "Paris", "Paris", True),
    ("Step 1: Find it\nThe capital of Kenya is Nairobi.\nStep 2: Check it\nNairobi is a big city.",
     "What is the capital of Kenya?", "Nairobi", "Nairobi", True),
    ("“Paris”, of course.", "What is the capital of France?", "Paris", "Paris", True),
    ('The answer is "Washington, D.C."', "What is the capital of the USA?", "Washington, D.C.", "Washington, D.C.", True),
])
def test_reasoning_answers_give_their_conclusion_without_list_numbers_or_quotes(text, question, expected, extracted, correct):
    """A step list's number is not the answer, the last "the answer is" concludes, quotes are not part of the answer."""
    g = grade(text, expected, "short_answer", question=question)
    assert (g.extracted, g.correct) == (extracted, correct)


def test_helpers():
    assert normalize_text("  The Côte d'Ivoire! ") == "cote d ivoire"
    assert parse_number("1,234.50") == 1234.5 and parse_number("abc") is None and parse_number("nan") is None


def test_find_numbers_parses_every_number_in_order():
    """The numbers compliance checks compare with the answer: separators and currency as parse_number reads them."""
    assert find_numbers("3 + 4 = 7, then $1,200 and -2.5.") == [3.0, 4.0, 7.0, 1200.0, -2.5]
    assert find_numbers("no digits here") == []


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(
    output=st.text(max_size=400),
    expected=st.one_of(st.none(), st.text(max_size=20)),
    kind=st.sampled_from(["numeric", "multiple_choice", "short_answer", "free_text"]),
    choices=st.lists(st.text(max_size=15), max_size=6),
    question=st.text(max_size=80),
)
def test_grading_never_crashes(output, expected, kind, choices, question):
    """Any model output and any reference answer grade to a Grade, never an exception."""
    g = grade(output, expected, kind, aliases=[expected or ""], choices=choices, question=question)
    assert g.correct in (True, False, None) and isinstance(g.rule, str)
