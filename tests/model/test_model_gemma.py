"""Model tier: Gemma 3 270M (base), the second offline model (installed by the Makefile; about a minute)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ic_core.analysis import analyze
from ic_core.generate import GenerationConfig
from ic_core.model_registry import GEMMA_SHA256, find_gemma_gguf
from ic_core.models import ModelSpec, converted_path_for, load_model
from ic_core.prompts import custom_template

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]
VOCAB = 262_144


@pytest.fixture(scope="module")
def gemma():
    """Gemma 3 270M from its converted copy in the user's cache (joined and converted on first use)."""
    return load_model(ModelSpec.parse("gemma3-270m"))


def test_loads_with_its_shape_identity_and_layout(gemma):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    assert (gemma.n_layers, gemma.d_model, gemma.vocab_size) == (18, 640, VOCAB)
    assert gemma.spec == ModelSpec(source="default", name="Gemma-3-270M") and not gemma.has_chat_template
    assert gemma.weights_sha256 == GEMMA_SHA256
    gguf = find_gemma_gguf()
    assert (converted_path_for(gguf, GEMMA_SHA256) / "model.safetensors").is_file()
    assert gemma.arch.family == "gemma2/3" and gemma.arch.embed_scale == pytest.approx(640**0.5, rel=1e-3)
    assert gemma.arch.logit_softcap is None  # Gemma 3 does not cap its final logits


def test_a_plain_q_a_template_with_an_answer_prefix_reads_the_slot_and_answers_paris(gemma):
    """Without a chat template the prompt is plain text; the read-out is after the forced prefix (H_slot)."""
    template = custom_template("Q: {question}", answer_prefix="A: The capital of France is")
    a = analyze(gemma, "What is the capital of France?", template=template, expected="Paris", do_generate=True,
                gen_config=GenerationConfig(max_new_tokens=4))
    assert a.rendered.text == "Q: What is the capital of France?\n\nA: The capital of France is"
    assert not a.rendered.chat_template_used and a.signal_name == "H_slot"
    assert a.top_tokens[0][0] == " Paris"
    assert a.generation.text.startswith(" Paris") and a.grade.correct is True


def test_cli_analyze_answers_grades_and_lays_out_the_lens_as_for_the_default(default_model):
    cmd = [sys.executable, "-m", "ic_core", "analyze", "--model", "gemma3-270m", "--prompt",
           "What is the capital of France?", "--generate", "--expected", "Paris", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    j = json.loads(out.stdout)
    assert j["model"] == "Gemma-3-270M" and j["n_layers"] == 18
    # the few-shot answer is " Paris." and the first-sentence rule keeps its full stop
    assert j["correct"] is True and j["extracted_answer"].rstrip(".") == "Paris"
    assert "Q:" not in j["output_text"] and j["stop_reason"] == "stop"
    assert 0 < j["h_int_bits"] < math.log2(VOCAB)
    default = analyze(default_model, "What is the capital of France?", expected="Paris").to_json()
    assert set(j) >= set(default) - {"output_text"}
    assert [row["layer"] for row in j["lens"]] == list(range(1, 19))
    assert [set(row) for row in j["lens"]] == [set(default["lens"][0])] * 18
    assert j["lens"][-1]["entropy_bits"] == pytest.approx(j["h_int_bits"], abs=1e-4)
    assert j["lens"][-1]["kl_to_final_bits"] == pytest.approx(0.0, abs=1e-6)


def test_the_built_in_direct_regime_is_a_few_shot_q_a_prompt_and_the_answer_stops_before_the_next_q(gemma):
    """No chat template: few-shot Q:/A:, read on the A: cue; the stop rules end the answer at the blank line."""
    a = analyze(gemma, "What is the capital of France?", kind="short_answer", expected="Paris", do_generate=True,
                gen_config=GenerationConfig(max_new_tokens=32))
    assert a.rendered.plain_text_template and a.rendered.text.endswith("Q: What is the capital of France?\nA:")
    assert a.rendered.readout_is_answer_cue and a.signal_name == "H_int"
    assert a.top_tokens[0][0] == " Paris"
    assert a.generation.stop_reason == "stop" and len(a.generation.token_ids) < 32
    assert a.generation.answer_text.strip().startswith("Paris") and "Q:" not in a.generation.answer_text
    assert a.grade.correct is True and a.grade.extracted == "Paris"


def test_with_the_item_prefix_the_answer_is_one_sentence(gemma):
    a = analyze(gemma, "What is the capital of France?", kind="short_answer", expected="Paris",
                answer_prefix="The capital of France is", do_generate=True, gen_config=GenerationConfig(max_new_tokens=32))
    assert a.rendered.text.endswith("\nA: The capital of France is") and a.signal_name == "H_slot"
    assert a.generation.answer_text.startswith("The capital of France is Paris") and "Q:" not in a.generation.answer_text
    assert "\n\n" not in a.generation.answer_text and a.grade.correct is True
