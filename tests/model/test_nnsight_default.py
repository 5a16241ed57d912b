"""The nnsight backend on the bundled SmolLM2-135M-Instruct: the same IntentionState as the transformers path."""

from __future__ import annotations

import numpy as np

from ic_core.analysis import prepare_prompt
from ic_core.backends import get_backend, using
from ic_core.capture import capture, capture_batch

QUESTIONS = ("What is the capital of France?", "What is 17 + 25?", "Who wrote Romeo and Juliet?")


def assert_same_state(a, b):
    """Hidden states within 1e-4, entropies within 1e-4 bits, identical top tokens."""
    np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-4, rtol=0)
    assert abs(a.readout_entropy_bits - b.readout_entropy_bits) < 1e-4
    assert abs(a.readout_entropy_top100_bits - b.readout_entropy_top100_bits) < 1e-4
    np.testing.assert_allclose(a.lens.entropy_bits, b.lens.entropy_bits, atol=1e-4, rtol=0)
    assert a.top_ids.tolist() == b.top_ids.tolist()
    assert a.lens.top_ids[..., 0].tolist() == b.lens.top_ids[..., 0].tolist()
    assert a.skipped_ids == b.skipped_ids


def _rendered(model):
    out = [prepare_prompt(model, q) for q in QUESTIONS]
    out.append(prepare_prompt(model, "What is the capital of Peru?", answer_prefix="The capital of Peru is"))
    return out


def test_single_and_batched_equal_hf(default_model):
    """30 layers, vocab 49152: states within 1e-4, entropies within 1e-4 bits, same top tokens, single and batched."""
    backend = get_backend("nnsight")
    rendered = _rendered(default_model)
    ref_single = [capture(default_model, r)[0] for r in rendered]
    ref_batch = capture_batch(default_model, rendered, batch_size=4)
    with using(backend):
        got_single = [capture(default_model, r)[0] for r in rendered]
        got_batch = capture_batch(default_model, rendered, batch_size=4)
    for a, b in zip(got_single, ref_single):
        assert_same_state(a, b)
    for a, b in zip(got_batch, ref_batch):
        assert_same_state(a, b)
    assert got_single[0].hidden.shape == (31, 576)
    assert rendered[-1].signal == "H_slot" and got_single[-1].skipped_ids == ref_single[-1].skipped_ids
