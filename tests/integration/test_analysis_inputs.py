"""Engine-level input checks of :func:`ic_core.analysis.analyze` (issue 11 case 8).

The CLI refuses these texts in argparse; the app and the API call ``analyze`` directly, so the
engine refuses them too, with one line and before any forward pass.
"""

import pytest
from helpers import forward_lengths

from ic_core.analysis import analyze
from ic_core.errors import PromptError

QUESTION = "what is the capital of france?"
BAD = {"surrogate": ("paris \ud800", "unpaired UTF-16 surrogates"), "nul": ("paris\x00", "NUL character")}


@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
@pytest.mark.parametrize("field, label", [("expected", "The expected answer"), ("aliases", "An accepted alias"),
                                          ("answer_prefix", "The answer prefix"), ("choices", "Option B")])
def test_bad_text_is_refused_before_any_forward_pass(tiny, field, label, bad):
    text, reason = BAD[bad]
    kwargs = {"expected": text} if field == "expected" else {
        "aliases": ("paname", text)} if field == "aliases" else {
        "answer_prefix": f"the answer is {text}"} if field == "answer_prefix" else {
        "choices": ("paris", text), "kind": "multiple_choice"}
    with forward_lengths(tiny.model) as lengths, pytest.raises(PromptError) as info:
        analyze(tiny, QUESTION, **kwargs)
    assert str(info.value).startswith(f"{label} contains ") and reason in str(info.value)
    assert "\n" not in str(info.value) and lengths == []


def test_more_than_26_choices_are_refused(tiny):
    choices = [str(i) for i in range(27)]
    with forward_lengths(tiny.model) as lengths, pytest.raises(PromptError, match="^27 options given; .* at most 26"):
        analyze(tiny, QUESTION, kind="multiple_choice", choices=choices)
    assert lengths == []
    a = analyze(tiny, QUESTION, kind="multiple_choice", choices=choices[:26], expected="Z")
    assert "Z. 25" in a.rendered.user_text and a.expected == "Z"


def test_valid_texts_still_pass(tiny):
    a = analyze(tiny, QUESTION, expected="paris", aliases=("paname",), do_generate=True)
    assert a.grade is not None and a.aliases == ("paname",)
