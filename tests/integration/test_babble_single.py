"""A single prompt in the babble regime is judged as studies judge it: compliance, never a grade (issue 17)."""

from dataclasses import replace

import pytest

from ic_core.analysis import analyze, answer, verdict_of
from ic_core.compliance import Compliance, check_compliance
from ic_core.generate import GenerationConfig

QUESTION = "what is the capital of france?"
FAST = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def babble(tiny):
    return analyze(tiny, QUESTION, regime="babble", kind="short_answer", expected="paris")


@pytest.fixture(scope="module")
def direct(tiny):
    return analyze(tiny, QUESTION, regime="direct", kind="short_answer", expected="paris")


class TestVerdictOf:
    """The rule applied to one output: compliance for babble, the grade for an answer regime."""

    def test_babble_naming_the_answer_did_not_comply(self, babble):
        """'Paris' in a babble output is a broken control, not a correct answer."""
        assert babble.is_control
        result_grade, compliance = verdict_of(babble, "Well, Paris is a lovely city.")
        assert result_grade is None and compliance == Compliance(False, "contains the answer")

    def test_babble_about_something_else_complied(self, babble):
        assert verdict_of(babble, "Rivers and bridges and old stones.") == (None, Compliance(True, "complied"))

    def test_babble_with_a_worked_result_did_not_comply(self, tiny):
        a = analyze(tiny, "what is 3 plus 4?", regime="babble", kind="numeric", expected="8")
        assert verdict_of(a, "so 3 + 4 = 9 maybe")[1] == Compliance(False, "contains an '=' result")

    def test_babble_aliases_count_as_the_answer(self, tiny):
        a = analyze(tiny, QUESTION, regime="babble", kind="short_answer", expected="paris", aliases=("lutetia",))
        assert verdict_of(a, "they called it Lutetia once")[1].reason == "contains the answer"

    def test_direct_is_graded_not_checked(self, direct):
        """An output naming the answer in the direct regime is a correct answer, with no compliance verdict."""
        assert not direct.is_control
        result_grade, compliance = verdict_of(direct, "The capital is Paris.")
        assert compliance is None and result_grade is not None and result_grade.correct is True

    def test_a_control_without_an_expected_answer_is_not_said_to_comply(self, tiny):
        """Short answer, no expected answer: "does not name the answer" cannot be checked, so no verdict
        (the Compare page said "Control complied" for "The capital of France is Paris.")."""
        a = analyze(tiny, QUESTION, regime="babble", kind="short_answer")
        assert a.graded and a.is_control
        assert verdict_of(a, "The capital of France is Paris.") == (None, None)

    def test_nothing_to_judge_by(self, tiny):
        """Free text with no expected answer: neither a grade nor a compliance verdict."""
        a = analyze(tiny, QUESTION, regime="babble")
        assert not a.graded and verdict_of(a, "Paris") == (None, None)


class TestAnswer:
    """End to end on the tiny model: what :func:`answer` stores and exports."""

    def test_generated_babble_gets_the_study_rule(self, tiny, babble):
        done = answer(tiny, babble, FAST)
        out = done.generation.answer_text
        assert done.grade is None
        assert done.compliance == check_compliance(out, "paris", "short_answer")
        data = done.to_json()
        assert data["complied"] is done.compliance.complied and data["compliance_reason"] == done.compliance.reason
        assert "correct" not in data and "grade_rule" not in data and data["expected"] == "paris"

    def test_generated_direct_answer_is_graded(self, tiny, direct):
        done = answer(tiny, direct, FAST)
        assert done.compliance is None and done.grade is not None
        assert "complied" not in done.to_json() and isinstance(done.to_json()["correct"], bool)

    def test_a_custom_template_is_not_the_control(self, babble):
        """Only the babble regime is the control: a rendered prompt of another regime is graded."""
        other = replace(babble, rendered=replace(babble.rendered, regime="custom"))
        assert not other.is_control and verdict_of(other, "Paris")[1] is None


def test_compliance_line_names_the_verdict():
    """The sentence pages show for a babble output (narrative.compliance_line)."""
    from ic_core.narrative import compliance_line

    assert compliance_line(True, "complied").startswith("**Control complied:** the output neither names the answer")
    line = compliance_line(False, "contains the answer")
    assert line.startswith("**Control did not comply:** the output contains the answer (") and "never graded" in line
