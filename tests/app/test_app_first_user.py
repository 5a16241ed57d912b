"""What a first-time user hits on Explore and Compare regimes (issue 17 items 6 and 10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import open_page

from ui.common import EXPLORE_KEYS as K

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
EXPLORE, COMPARE, LEARN = "pages/1_Explore.py", "pages/2_Compare_regimes.py", "pages/6_Learn.py"
BURKINA = "what is the capital of burkina faso ?"
PERU = "what is the capital of peru ?"


def session(tiny, page: str = EXPLORE):
    return open_page(tiny, page)


def with_answer_fields(tiny):
    at = session(tiny)
    at.text_area(key=K["question"]).input(BURKINA).run()
    at.text_input(key=K["answer_prefix"]).input("the capital of burkina faso is").run()
    at.text_input(key=K["expected"]).input("ouagadougou").run()
    assert not at.warning  # set for this question: nothing to warn about
    return at


def stale_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "set for the previous one" in w.value]


class TestExploreAnswerFields:
    """Item 6: a new question does not silently keep the old prefix and expected answer."""

    def test_typing_a_new_question_warns_and_clear_empties_them(self, tiny):
        at = with_answer_fields(tiny)
        at.text_area(key=K["question"]).input(PERU).run()
        warning = stale_warnings(at)
        assert len(warning) == 1 and "burkina faso is" in warning[0] and "ouagadougou" in warning[0]
        at.button(key="explore_clear_answer").click().run()
        assert not at.exception
        assert at.text_input(key=K["answer_prefix"]).value == "" and at.text_input(key=K["expected"]).value == ""
        assert at.text_area(key=K["question"]).value == PERU and not stale_warnings(at)

    def test_keep_them_keeps_them_and_stops_warning(self, tiny):
        at = with_answer_fields(tiny)
        at.text_area(key=K["question"]).input(PERU).run()
        at.button(key="explore_keep_answer").click().run()
        assert not stale_warnings(at)
        assert at.text_input(key=K["expected"]).value == "ouagadougou"

    def test_an_uploaded_question_warns_too(self, tiny):
        at = with_answer_fields(tiny)
        at.file_uploader(key="explore_upload").upload("q.txt", PERU.encode(), "text/plain").run()
        assert at.text_area(key=K["question"]).value == PERU
        assert len(stale_warnings(at)) == 1

    def test_a_question_without_answer_fields_is_not_flagged(self, tiny):
        at = session(tiny)
        at.text_area(key=K["question"]).input(BURKINA).run()
        at.text_area(key=K["question"]).input(PERU).run()
        assert not stale_warnings(at)


class TestCompareRegimes:
    """Item 10: a forced-prefix field, and Explore's question, prefix and expected answer carried over."""

    def test_explore_inputs_are_carried_over(self, tiny):
        at = with_answer_fields(tiny)
        at.switch_page(COMPARE).run()
        assert not at.exception, at.exception
        assert at.text_area(key="keep:compare.question").value == BURKINA
        assert at.text_input(key="keep:compare.answer_prefix").value == "the capital of burkina faso is"
        assert at.text_input(key="keep:compare.expected").value == "ouagadougou"
        assert any("taken from Explore" in c.value for c in at.caption)

    def test_a_compare_edit_survives_until_explore_has_a_new_question(self, tiny):
        at = with_answer_fields(tiny)
        at.switch_page(COMPARE).run()
        at.text_input(key="keep:compare.expected").input("bobo-dioulasso").run()
        at.switch_page(EXPLORE).run()
        at.switch_page(COMPARE).run()
        assert at.text_input(key="keep:compare.expected").value == "bobo-dioulasso"  # same Explore question
        at.switch_page(EXPLORE).run()
        at.text_area(key=K["question"]).input(PERU).run()
        at.button(key="explore_clear_answer").click().run()
        at.switch_page(COMPARE).run()
        assert at.text_area(key="keep:compare.question").value == PERU
        assert at.text_input(key="keep:compare.expected").value == ""

    def test_the_prefix_gives_direct_an_h_slot_read_out(self, tiny):
        at = session(tiny, COMPARE)
        at.text_area(key="keep:compare.question").input(PERU)
        at.text_input(key="keep:compare.answer_prefix").input("the capital of peru is")
        at.button(key="compare_read_btn").click().run()
        assert not at.exception, at.exception
        labels = [m.label for m in at.metric]
        assert labels[0] == "Direct: H_slot (bits)" and labels[1].endswith(": H_int (bits)")
        analyses = at.session_state["compare.result"]["analyses"]
        assert analyses["direct"].rendered.answer_prefix == "the capital of peru is"
        assert analyses["cot"].rendered.answer_prefix is None and analyses["babble"].rendered.answer_prefix is None
        assert not any(m.delta for m in at.metric)  # H_slot and H_int are not one scale
        assert any("after the forced answer prefix (H_slot)" in c.value for c in at.caption)

    def test_a_learn_example_for_compare_is_not_replaced_by_explores_question(self, tiny):
        at = with_answer_fields(tiny)  # Explore holds the Burkina Faso question, never taken by Compare
        at.switch_page(LEARN).run()
        button = next(b for b in at.button if b.key and b.key.startswith("learn_compare_"))
        button.click().run()
        at.switch_page(COMPARE).run()
        assert not at.exception, at.exception
        question = at.text_area(key="keep:compare.question").value
        assert question and question != BURKINA
        assert at.text_input(key="keep:compare.expected").value != "ouagadougou"
