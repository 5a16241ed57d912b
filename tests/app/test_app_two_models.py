"""AppTest of the second-model control on Explore and Compare regimes (two tiny models, one a base model)."""

from __future__ import annotations

import pytest

from ic_core.admin import ENV_ALLOWLIST, ENV_SWITCH
from tests.helpers import make_tiny_model, make_tiny_tokenizer, open_page
from ui.common import EXPLORE_KEYS, NO_SECOND_MODEL, SECOND_INJECTED_KEY, SECOND_MODEL_KEY

pytestmark = pytest.mark.app
EXPLORE, COMPARE = "pages/1_Explore.py", "pages/2_Compare_regimes.py"
QUESTION = "what is the capital of france ?"
PICKER = "Compare with a second model"


@pytest.fixture(scope="module")
def second():
    """A second tiny model: GPT-2 family, 3 layers, no chat template (a base model)."""
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer(chat_template=None)
    return from_objects(make_tiny_model(len(tokenizer), n_layers=3, family="gpt2"), tokenizer, name="tiny-base-gpt2")


def pickers(at):
    return [s for s in at.selectbox if s.label == PICKER]


def test_one_allowed_model_offers_no_second_and_says_who_can_change_it(tiny, monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    at = open_page(tiny, EXPLORE)
    assert not pickers(at)
    assert any("allows one model" in c.value and ENV_SWITCH in c.value for c in at.caption)


def test_the_allow_list_offers_its_models_and_gemma_shows_its_terms(tiny, monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "1")
    monkeypatch.setenv(ENV_ALLOWLIST, "gemma3-270m")
    at = open_page(tiny, EXPLORE)
    (picker,) = pickers(at)
    assert picker.options == ["no second model", "Gemma-3-270M"] and picker.value == NO_SECOND_MODEL
    assert picker.proto.default == 0  # nothing extra is loaded until the user picks it
    assert not any("Gemma Terms of Use" in c.value for c in at.caption)


def test_explore_shows_both_cards_and_both_answers(tiny, second):
    at = open_page(tiny, EXPLORE, **{SECOND_INJECTED_KEY: second})
    (picker,) = pickers(at)
    assert "tiny-base-gpt2" in picker.options
    picker.set_value("tiny-base-gpt2").run()
    at.text_area(key=EXPLORE_KEYS["question"]).input(QUESTION)
    at.button(key="explore_read_btn").click().run()
    assert not at.exception, at.exception
    assert [h.value for h in at.subheader].count("Risk card (before generation)") == 2
    heads = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert heads == ["#### tiny-llama", "#### tiny-base-gpt2"]
    entropies = [m for m in at.metric if "bits" in m.label]
    assert len(entropies) == 2 and entropies[0].value != entropies[1].value
    assert any("answer cue" in c.value for c in at.caption)  # the base model's card reads on "A:"
    at.button(key="explore_generate_btn").click().run()
    assert not at.exception, at.exception
    result = at.session_state["explore.result"]
    assert result["analysis"].generation is not None and result["second"]["analysis"].generation is not None
    assert result["second"]["analysis"].rendered.text.endswith(f"Q: {QUESTION}\nA:")
    assert sum("tokens in" in c.value for c in at.caption) == 2


def test_compare_reads_every_regime_on_both_models(tiny, second):
    at = open_page(tiny, COMPARE, **{SECOND_INJECTED_KEY: second, SECOND_MODEL_KEY: "tiny-base-gpt2"})
    at.text_area(key="keep:compare.question").input(QUESTION)
    at.button(key="compare_read_btn").click().run()
    assert not at.exception, at.exception
    result = at.session_state["compare.result"]
    assert set(result["second"]) == {"direct", "cot", "babble"}
    assert result["second"]["cot"].rendered.text.endswith("A: Let's think step by step.")
    assert len(at.get("plotly_chart")) == 2
    assert [m.value for m in at.markdown if m.value.startswith("#### ")] == ["#### tiny-llama", "#### tiny-base-gpt2"]
    assert sum(1 for m in at.metric if "bits" in m.label) == 6


def test_choosing_no_second_model_goes_back_to_one_card(tiny, second):
    at = open_page(tiny, EXPLORE, **{SECOND_INJECTED_KEY: second, SECOND_MODEL_KEY: "tiny-base-gpt2"})
    at.text_area(key=EXPLORE_KEYS["question"]).input(QUESTION)
    at.button(key="explore_read_btn").click().run()
    pickers(at)[0].set_value(NO_SECOND_MODEL).run()
    assert not at.exception, at.exception
    assert [h.value for h in at.subheader].count("Risk card (before generation)") == 1
    assert any("second model changed" in i.value for i in at.info)
