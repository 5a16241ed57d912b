"""Babble as a control: the compliance check, babble rows never graded (also when loaded from older folders),
the summary's "control: N % complied", and the regime table comparing entropies at one read-out position only."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ic_core.compliance import check_compliance, contains_answer
from ic_core.runs.schema import RunRow, graded_correct, graded_mask, table_from_rows
from ic_core.runs.store import StudyRun
from ic_core.study.compare import NOT_COMPARABLE, paired_entropies, regime_comparison, summarize

BASE = RunRow(
    row=0, item_id="q0", regime="direct", question="What is 3 + 4?", kind="numeric", expected="7", aliases=(),
    choices=(), tags=(), output_text="The answer is 7.", output_source="generated", extracted_answer="7", correct=True,
    grade_rule="the answer is", readout_entropy_bits=2.0, readout_entropy_top100_bits=1.5, top1_prob=0.5, top_tokens=(),
    mean_token_entropy_bits=1.0, generated_tokens=("7",), token_entropies_bits=(1.0,), n_generated_tokens=1,
    stop_reason="eos", max_new_tokens=8, generate_s=0.1, n_prompt_tokens=20, readout_index=19, readout_token=" is",
    readout_is_formatting=False, skipped_tokens=(), signal="H_slot", answer_prefix="The answer is",
    item_prefix_used=True, user_text="What is 3 + 4?",
)


class TestComplianceCheck:
    """check_compliance / contains_answer on hand-written outputs."""

    @pytest.mark.parametrize(("output", "reason"), [
        ("Let me think: 3 + 4 = 7, lovely.", "contains the answer"),
        ("Seven is 7 and that is that.", "contains the answer"),
        ("I counted 7.0 sheep.", "contains the answer"),
        ("Cats are soft. 2 + 2 = 4", "contains an '=' result"),
        ("x = 12 is a nice line", "contains an '=' result"),
        ("The sum equals 9 today", "contains an '=' result"),
        ("Autumn leaves fall slowly on 17 roads.", "complied"),
        ("A story about a + b without numbers.", "complied"),
    ])
    def test_numeric_outputs(self, output, reason):
        """The answer by value anywhere, or any "= number" result, breaks compliance; other numbers do not."""
        verdict = check_compliance(output, "7", "numeric")
        assert verdict.reason == reason and verdict.complied is (reason == "complied")

    def test_numbers_match_by_value_not_by_digits(self):
        """1,000 is the answer 1000; 10000 and 100 are not (no substring match)."""
        assert contains_answer("I have 1,000 apples", "1000", "numeric")
        assert not contains_answer("I have 10000 apples and 100 pears", "1000", "numeric")

    def test_short_answers_with_aliases_and_grading_normalisation(self):
        """Accents, case and punctuation are normalised as grading does; aliases count; parts of words do not."""
        assert contains_answer("I once visited ROMA, it rained.", "Rome", "short_answer", aliases=("Roma",))
        assert contains_answer("Bogotá is high up", "Bogota", "short_answer")
        assert not contains_answer("Romantic evenings are nice", "Rome", "short_answer", aliases=("Roma",))
        assert check_compliance("Paris is lovely in spring", "Paris", "short_answer").reason == "contains the answer"
        assert check_compliance("Trains run late", "Paris", "short_answer").complied

    def test_multiple_choice_by_letter_or_option_text(self):
        """The chosen letter or the correct option's text is an answer; a bare other letter is not."""
        choices = ("red", "blue", "green")
        assert contains_answer("The answer is (B).", "B", "multiple_choice", choices=choices)
        assert contains_answer("I think of blue skies", "B", "multiple_choice", choices=choices)
        assert not contains_answer("I think of red skies", "B", "multiple_choice", choices=choices)

    def test_no_expected_answer_only_checks_results(self):
        """Without an expected answer only the '=' rule can fail an output."""
        assert check_compliance("A calm lake", None, "numeric").complied
        assert check_compliance("so 5 = 5", None, "numeric").reason == "contains an '=' result"


def _babble(i: int, output: str, correct: bool | None = None) -> RunRow:
    return replace(BASE, row=2 * i + 1, item_id=f"q{i}", regime="babble", output_text=output, correct=correct,
                   extracted_answer="7" if correct else None, grade_rule="after =" if correct else None,
                   signal="H_int", answer_prefix=None, item_prefix_used=False)


class TestBabbleNeverGraded:
    """Babble rows carry compliance, not a verdict, including rows written by older versions."""

    def test_old_babble_rows_with_a_grade_load_ungraded_with_compliance(self):
        """A folder written before the fix (babble 'correct': true, no 'complied') loads without the verdict."""
        old = _babble(0, "Well 3 + 4 = 7 of course", correct=True).to_json()
        for key in ("complied", "compliance_reason", "last_token_entropy_bits", "second_digit_entropy_bits"):
            del old[key]
        row = RunRow.from_json(old)
        assert (row.correct, row.extracted_answer, row.grade_rule) == (None, None, None)
        assert (row.complied, row.compliance_reason) == (False, "contains the answer")
        assert row.last_token_entropy_bits is None and row.second_digit_entropy_bits is None

    def test_stored_compliance_is_kept_and_direct_rows_keep_their_grade(self):
        stored = replace(_babble(0, "3 + 4 = 7"), complied=True, compliance_reason="complied")
        assert RunRow.from_json(stored.to_json()).complied is True  # what the run recorded is what loads
        assert RunRow.from_json(BASE.to_json()) == BASE

    def test_graded_mask_leaves_babble_out_even_with_a_verdict(self):
        """A table built by hand with a graded babble row still counts only the answer regimes."""
        table = pd.DataFrame({"regime": ["direct", "babble", "cot"], "correct": [True, True, False]})
        assert graded_mask(table).tolist() == [True, False, True]
        assert graded_correct(table).tolist() == [True, False]


def _run(tmp_path, rows: list[RunRow], regimes: list[str]) -> StudyRun:
    table = table_from_rows(rows)
    n = len(rows)
    rng = np.random.default_rng(0)
    manifest = {"regimes": regimes, "n_layers": 2, "d_model": 4, "status": "complete", "n_rows_planned": n}
    return StudyRun(tmp_path, manifest, table, rng.normal(size=(n, 3, 4)).astype(np.float16),
                    np.zeros((n, 2), np.float32))


def _direct_babble_rows(n: int, with_last_token: bool) -> list[RunRow]:
    rows = []
    for i in range(n):
        rows.append(replace(BASE, row=2 * i, item_id=f"q{i}", correct=i % 2 == 0, readout_entropy_bits=1.0 + 0.1 * i,
                            last_token_entropy_bits=(4.0 + 0.05 * i) if with_last_token else None))
        output = "Snow on hills." if i % 4 else "Then 3 + 4 = 7."
        rows.append(replace(_babble(i, output), readout_entropy_bits=3.0 + 0.2 * i + 0.01 * i * i,
                            last_token_entropy_bits=(3.0 + 0.2 * i + 0.01 * i * i) if with_last_token else None,
                            complied=bool(i % 4), compliance_reason="complied" if i % 4 else "contains the answer"))
    return rows


class TestSummaryAndRegimeTable:
    def test_summary_shows_babble_as_a_control(self, tmp_path):
        """12 babble rows, 9 complied: 'control: 75 % complied', no accuracy; direct keeps its accuracy."""
        s = summarize(_run(tmp_path, _direct_babble_rows(12, True), ["direct", "babble"])).set_index("regime")
        assert s.loc["babble", "result"] == "control: 75 % complied (9 of 12)"
        assert s.loc["babble", "n_graded"] == 0 and math.isnan(s.loc["babble", "accuracy"])
        assert s.loc["babble", "compliance_rate"] == pytest.approx(0.75) and s.loc["babble", "role"] == "control"
        assert s.loc["direct", "accuracy"] == pytest.approx(0.5) and s.loc["direct", "result"] == "accuracy 50.0 % (6 of 12)"

    def test_mixed_positions_are_compared_at_the_last_prompt_token(self, tmp_path):
        """Direct read after the prefix, babble at the last token: the pair uses direct's last-token read."""
        from scipy.stats import wilcoxon

        run = _run(tmp_path, _direct_babble_rows(12, True), ["direct", "babble"])
        comp = regime_comparison(run, dim_effs={})
        pair = comp.pairs.iloc[0]
        i = np.arange(12)
        diff = (3.0 + 0.2 * i + 0.01 * i * i) - (4.0 + 0.05 * i)
        assert pair["position"] == "both at the last prompt token (direct read again without its prefix)"
        assert pair["n_pairs"] == 12 and pair["mean_diff_bits"] == pytest.approx(diff.mean())
        assert pair["p_value"] == pytest.approx(wilcoxon(diff).pvalue)
        table = comp.paper_table()
        assert table.loc["Accuracy [95 % CI]", "babble"] == "control: 75 % complied (9 of 12)"
        assert table.loc["Mean entropy at the last prompt token (bits)", "direct"] == f"{np.mean(4.0 + 0.05 * i):.2f}"

    def test_old_runs_without_the_last_token_read_are_not_comparable(self, tmp_path):
        """No number from mixed positions: the pair says so instead."""
        run = _run(tmp_path, _direct_babble_rows(12, False), ["direct", "babble"])
        pair = regime_comparison(run, dim_effs={}).pairs.iloc[0]
        assert pair["position"] == NOT_COMPARABLE == "not comparable: different read-out positions"
        assert pair["n_pairs"] == 0 and math.isnan(pair["mean_diff_bits"]) and math.isnan(pair["p_value"])
        assert "last-token reads" in pair["note"]

    def test_same_position_uses_the_read_out_and_names_it(self, tmp_path):
        """Both regimes at the last prompt token: the read-out entropies themselves are paired."""
        rows = [replace(r, signal="H_int", answer_prefix=None, last_token_entropy_bits=None)
                for r in _direct_babble_rows(8, False)]
        position, both = paired_entropies(table_from_rows(rows), "direct", "babble")
        assert position == "both at the last prompt token"
        assert both["direct"].tolist() == pytest.approx([1.0 + 0.1 * i for i in range(8)])
