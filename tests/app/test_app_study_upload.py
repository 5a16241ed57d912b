"""AppTest of the Study page's upload (issue 17 items 1, 2, 7): accepted answers, kinds, the items limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import finish_jobs

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
STUDY = "pages/3_Study.py"
LIMIT = "Items (limit)"


def oceans(n_good: int, n_bad: int = 0) -> bytes:
    """A CSV with other headers: ``prompt``/``gold``/``type``; bad rows have no question."""
    rows = ["prompt,gold,type", "Which ocean is the largest?,Pacific|Pacific Ocean,short",
            "What is the currency of Japan?,yen|JPY|Japanese yen,short", "What is 2 + 2?,4,math"]
    rows += [f"What is {i} + 1?,{i + 1},math" for i in range(n_good - 3)]
    rows += [",x,short" for _ in range(n_bad)]
    return ("\n".join(rows) + "\n").encode()


def open_upload(tiny, data: bytes):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["_injected_model"] = tiny
    at.run()
    at.switch_page(STUDY).run()
    at.radio(key="keep:study.source").set_value("Upload CSV / JSONL").run()
    at.file_uploader(key="study_upload").upload("oceans.csv", data, "text/csv").run()
    assert not at.exception, at.exception
    return at


def preview(at):
    return next(df.value for df in at.dataframe if "also accepted" in df.value.columns)


def test_preview_shows_the_accepted_answers_per_row(tiny):
    at = open_upload(tiny, oceans(5))
    table = preview(at)
    assert list(table["answer"][:3]) == ["Pacific", "yen", "4"]
    assert list(table["also accepted"][:3]) == ["Pacific Ocean", "JPY | Japanese yen", ""]
    assert list(table["kind"][:3]) == ["short_answer", "short_answer", "numeric"]
    captions = " ".join(c.value for c in at.caption).replace("\\", "")  # md_text escapes _
    assert "question ← prompt" in captions and "answer ← gold" in captions and "kind ← type" in captions
    assert "math → numeric" in captions and "short → short_answer" in captions
    assert not at.error


def test_answer_column_may_also_be_the_aliases_column(tiny):
    at = open_upload(tiny, oceans(5))
    box = next(s for s in at.selectbox if s.label == "aliases")
    box.set_value("gold").run()
    assert not at.exception and not at.error
    assert list(preview(at)["also accepted"][:2]) == ["Pacific Ocean", "JPY | Japanese yen"]


def test_kind_for_rows_without_one_and_kind_words(tiny):
    at = open_upload(tiny, b"prompt,gold,type\nSay hi,hello,chat\nWhat is 3 + 4?,7,\n")
    assert any("Unknown kind 'chat'" in str(df.value.to_dict()) for df in at.dataframe)
    at.text_input(key="study_upload_kind_values").set_value("chat=free_text").run()
    at.selectbox(key="study_upload_kind").set_value("short_answer").run()
    assert not at.exception
    assert list(preview(at)["kind"]) == ["free_text", "short_answer"]
    at.text_input(key="study_upload_kind_values").set_value("chat").run()
    assert at.error and "write value=kind" in at.error[0].value


def test_items_limit_follows_the_good_rows_after_a_fix(tiny):
    at = open_upload(tiny, oceans(14, n_bad=16))
    assert at.number_input(key="keep:study.limit").value == 14
    at.file_uploader(key="study_upload").upload("fixed.csv", oceans(30), "text/csv").run()
    assert not at.exception
    assert at.number_input(key="keep:study.limit").value == 20  # the default comes back, not 14
    at.number_input(key="keep:study.limit").set_value(25).run()
    at.file_uploader(key="study_upload").upload("short.csv", oceans(10), "text/csv").run()
    assert at.number_input(key="keep:study.limit").value == 10
    at.file_uploader(key="study_upload").upload("fixed.csv", oceans(30), "text/csv").run()
    assert at.number_input(key="keep:study.limit").value == 25


def test_a_finished_run_drops_stop_and_the_next_estimate_is_measured(tiny, runs_dir):
    """Issue 17 item 8 and the cosmetic list: no Stop beside a finished run; the estimate comes from this machine."""
    at = open_upload(tiny, oceans(4))
    at.checkbox(key="keep:study.generate").uncheck().run()
    at.button(key="study_run_btn").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    assert any("Saved" in s.value for s in at.success)
    assert not [b.key for b in at.button if b.key and "stop" in b.key]  # neither the page's nor the sidebar's Stop
    at.run()
    estimate = next(c.value for c in at.caption if "rows (items × regimes)" in c.value)
    assert "At the speed measured on this machine" in estimate and "s per row" in estimate
    assert "1–3 s" not in estimate
