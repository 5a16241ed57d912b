"""Hostile run folders on the Study page (issue 11 case 7): stored text renders as text, bad folders are broken entries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import open_page
from markdown_it import MarkdownIt

from ic_core.datasets import PromptItem
from ic_core.generate import GenerationConfig
from ic_core.study.runner import run_study

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
STUDY = "pages/3_Study.py"
BEACON = "![x](http://127.0.0.1:9/beacon.png)"
HTML_BEACON = '<img src="http://127.0.0.1:9/beacon2.png">'
LINK = "[click](http://127.0.0.1:9/phish)"
HOSTILE = [
    PromptItem("i-0", "what is the capital of france", f"paris {BEACON}", answer_prefix=f"the answer {BEACON}"),
    PromptItem("i-1", "what is the capital of italy", f"rome {HTML_BEACON}", answer_prefix=f"so {HTML_BEACON}"),
    PromptItem(f"id {LINK}", "what is the capital of spain", "madrid", answer_prefix="it is"),
]
# Streamlit's Markdown, made stricter: raw HTML passes through, so an unescaped <img> would show up.
MARKDOWN = MarkdownIt("commonmark", {"html": True})


def open_study(tiny):
    return open_page(tiny, STUDY)


def markdown_bodies(at) -> list[str]:
    kinds = ("markdown", "caption", "info", "success", "warning", "error", "subheader", "title", "header")
    return [e.value for kind in kinds for e in getattr(at, kind)]


def rendered(at) -> str:
    return "\n".join(MARKDOWN.render(body) for body in markdown_bodies(at))


def select_item(at, index: int):
    pick = next(s for s in at.selectbox if s.key and s.key.startswith("study_item_pick"))
    pick.set_value(index).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def hostile_run(tiny, runs_dir):
    return run_study(tiny, HOSTILE, ["direct"], runs_dir / "hostile", gen_config=GenerationConfig(max_new_tokens=2),
                     generate=False, dataset_name=f"set {BEACON}")


class TestStoredTextIsText:
    @pytest.mark.parametrize(("index", "url"), [(0, "127.0.0.1:9/beacon.png"), (1, "127.0.0.1:9/beacon2.png")])
    def test_answer_prefix_and_expected_show_literally_with_no_image(self, tiny, hostile_run, index, url):
        at = select_item(open_study(tiny), index)
        html = rendered(at)
        assert "<img" not in html and "<a " not in html
        assert not at.get("imgs") and not at.get("image")
        shown = MARKDOWN.render("\n\n".join(markdown_bodies(at)))
        literal = BEACON if index == 0 else HTML_BEACON
        # the characters themselves reach the viewer (HTML-escaped in the rendered page)
        assert literal.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in shown, shown[:2000]
        assert url in shown

    def test_item_id_and_set_name_are_neither_links_nor_images(self, tiny, hostile_run):
        at = select_item(open_study(tiny), 2)
        html = rendered(at)
        assert "<a " not in html and "<img" not in html
        assert f"set {BEACON}" in html  # the run summary's set name, literally


class TestBrokenRunFolders:
    @pytest.fixture
    def runs(self, tiny, runs_dir, hostile_run):
        garbage = runs_dir / "garbage-manifest"
        garbage.mkdir()
        (garbage / "manifest.json").write_bytes(os.urandom(1024))
        damaged = runs_dir / "damaged-shard"
        shutil.copytree(hostile_run.path, damaged)
        shard = next((damaged / "states").glob("shard-*.npz"))
        shard.write_bytes(b"PK\x03\x04" + os.urandom(1020))
        os.utime(hostile_run.path / "items.jsonl")  # the good run stays the newest
        return hostile_run, garbage, damaged

    def test_bad_folders_are_listed_as_broken_and_the_good_run_still_opens(self, tiny, runs):
        good, garbage, damaged = runs
        at = open_study(tiny)
        select = at.selectbox(key="study_run_select")
        assert select.value == str(good.path)
        assert at.metric[0].value == "3 / 3" and any(df.value.shape[0] == 3 for df in at.dataframe)
        labels = select.options  # AppTest lists the options as shown (format_func applied)
        garbage_label = next(label for label in labels if "garbage-manifest" in label)
        assert garbage_label.startswith("⚠ garbage-manifest · broken: ") and "\n" not in garbage_label
        assert "manifest" in garbage_label.split("broken: ", 1)[1]
        assert any("run folder(s) cannot be opened" in c.value for c in at.caption)

    def test_a_damaged_shard_is_a_broken_entry_with_its_reason(self, tiny, runs):
        good, _, damaged = runs
        at = open_study(tiny)
        at.selectbox(key="study_run_select").set_value(str(damaged)).run()
        assert not at.exception, at.exception
        errors = " ".join(e.value for e in at.error)
        assert "This run folder cannot be opened" in errors and "shard" in errors
        select = at.selectbox(key="study_run_select")
        assert any(o.startswith("⚠ damaged-shard · broken: State file shard-") for o in select.options)
        select.set_value(str(good.path)).run()  # the page still works for the good runs
        assert not at.exception and not at.error
        assert at.metric[0].value == "3 / 3"
