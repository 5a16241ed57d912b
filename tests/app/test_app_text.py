"""Stored and user text renders as text (issue 11 case 7): the escaping helpers and the Explore page."""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from ic_core.plots.explore import token_spans_html
from ui.common import html_block, md_text

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")
HOSTILE = [
    "![x](http://127.0.0.1:9/beacon.png)",
    '<img src="http://127.0.0.1:9/beacon.png">',
    "[click](javascript:alert(1))",
    "<script>alert(1)</script>",
    "**bold** _it_ `code` ~~gone~~",
    ":red[coloured] $x^2$ :material/home:",
    "# heading",
    "- list item",
    "1. numbered",
    "> quote",
    "line one\n\n![x](http://127.0.0.1:9/beacon.png)",
    "&lt;img src=x&gt;",
    "back\\slash \\![x](y)",
]


def inline_html(text: str) -> str:
    """The HTML CommonMark makes of ``text`` inside a paragraph, without the <p> wrapper."""
    out = MARKDOWN.render("Shown: " + text).strip()
    assert out.startswith("<p>Shown: ") and out.endswith("</p>"), out
    return out[len("<p>Shown: "):-len("</p>")]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_text_renders_every_character_literally(text):
    import html

    shown = inline_html(md_text(text))
    assert "<" not in shown.replace("&lt;", "") and ">" not in shown.replace("&gt;", "")  # no tag at all
    assert html.unescape(shown) == " ".join(text.splitlines())  # exactly the characters, lines joined


def test_md_text_cuts_and_handles_none():
    assert md_text(None) == ""
    assert md_text("abcdef", limit=3) == "abc…"


def test_html_block_keeps_a_blank_line_token_inside_the_html_block():
    spans = token_spans_html(["ok", "\n\n", "![x](http://127.0.0.1:9/beacon.png)"], [0.1, 0.2, 0.3])
    assert "<img" in MARKDOWN.render(spans)  # without it the blank line ends the block and Markdown runs
    kept = MARKDOWN.render(html_block(spans))
    assert "<img" not in kept and "![x](http://127.0.0.1:9/beacon.png)" in kept and "&#10;&#10;" in kept


def test_explore_shows_hostile_expected_answer_and_prefix_as_text(tiny):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["_injected_model"] = tiny
    at.session_state["max_new_tokens"] = 2
    at.run()
    at.text_area(key="keep:explore.prompt").input("what is the capital of france ?")
    at.text_input(key="keep:explore.prefix").input('the answer is <img src="http://127.0.0.1:9/b.png">')
    at.text_input(key="keep:explore.expected").input("![x](http://127.0.0.1:9/beacon.png)")
    at.button(key="explore_read_btn").click().run()
    at.button(key="explore_generate_btn").click().run()
    assert not at.exception, at.exception
    bodies = [e.value for kind in ("markdown", "caption", "info", "success", "warning", "error")
              for e in getattr(at, kind)]
    graded = [b for b in bodies if "expected" in b and "beacon" in b]
    assert graded, bodies  # the grade names the expected answer
    html = "\n".join(MARKDOWN.render(b) for b in bodies)
    assert "<img" not in html and "127.0.0.1:9/b.png" in html and "127.0.0.1:9/beacon.png" in html


@pytest.mark.parametrize("text", ["![x](http://127.0.0.1:9/beacon.png)", "[click](http://127.0.0.1:9/x)",
                                  "cost $x^2$ here", "back\\slash ![x](y)"])
def test_error_messages_echoing_user_text_stay_inert(text):
    """``show_error`` text may echo a file name or model id: no image, no link, no LaTeX (no raw HTML in st.error)."""
    import html

    from ui.common import inert_message

    message = f"Cannot read the file '{text}': it is not UTF-8 text."
    out = MarkdownIt("commonmark", {"html": False}).render(inert_message(message))
    assert "<img" not in out and "<a " not in out
    assert html.unescape(out.strip()[len("<p>"):-len("</p>")]) == message
