"""Capture backends on the tiny models: nnsight's IntentionState equals the transformers path's."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ic_core.backends import BackendError, HFBackend, current_backend, get_backend, using
from ic_core.capture import capture, capture_batch, next_token_entropy_bits
from ic_core.prompts import render, template_for

QUESTIONS = ("what is the capital of france", "what is the capital of germany ? answer in words",
             "what is 12 plus 7", "think step by step about the capital of italy")


def _rendered(loaded, prefix=None):
    out = []
    for i, q in enumerate(QUESTIONS):
        template = template_for("direct", "free_text", prefix if i % 2 == 0 else None)
        out.append(render(loaded.tokenizer, q, template, (), "last", loaded.max_context))
    return out


def assert_same_state(a, b):
    """Hidden states within 1e-4, entropies within 1e-4 bits, identical top tokens."""
    assert a.hidden.shape == b.hidden.shape
    np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.final_logits, b.final_logits, atol=1e-4, rtol=0)
    assert abs(a.readout_entropy_bits - b.readout_entropy_bits) < 1e-4
    assert abs(a.readout_entropy_top100_bits - b.readout_entropy_top100_bits) < 1e-4
    np.testing.assert_allclose(a.lens.entropy_bits, b.lens.entropy_bits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.lens.kl_to_final_bits, b.lens.kl_to_final_bits, atol=1e-4, rtol=0)
    assert a.top_ids.tolist() == b.top_ids.tolist()
    assert a.lens.top_ids[..., 0].tolist() == b.lens.top_ids[..., 0].tolist()
    assert (a.readout_index, a.signal, a.skipped_ids) == (b.readout_index, b.signal, b.skipped_ids)


@pytest.fixture(scope="module")
def nn_backend():
    return get_backend("nnsight")


class TestSameNumbers:
    """The nnsight trace reads the same state as the transformers forward."""

    def test_single_prompt_each_family(self, tiny_family, nn_backend):
        """One prompt: every field of the state agrees, for Llama, GPT-2 and Gemma 3 (soft-capped)."""
        for rendered in _rendered(tiny_family):
            ref, prefill = capture(tiny_family, rendered)
            with using(nn_backend):
                got, none = capture(tiny_family, rendered)
            assert prefill is not None and none is None
            assert_same_state(got, ref)

    def test_batched_each_family(self, tiny_family, nn_backend):
        """A left-padded batch of different lengths: each row equals the HF batch's and the HF single read."""
        rendered = _rendered(tiny_family, prefix="the answer is")
        ref = capture_batch(tiny_family, rendered, batch_size=3)
        with using(nn_backend):
            got = capture_batch(tiny_family, rendered, batch_size=3)
        assert len(got) == len(ref) == len(QUESTIONS)
        for a, b, r in zip(got, ref, rendered):
            assert_same_state(a, b)
            assert_same_state(a, capture(tiny_family, r)[0])

    def test_lens_computed_in_the_trace(self, tiny_family):
        """The remote trace body (lens unembedded inside the trace) run locally gives the same lens."""
        from ic_core.backends.nnsight_backend import NnsightBackend

        backend = NnsightBackend(remote=False, lens_in_trace=True)
        rendered = _rendered(tiny_family)
        with using(backend):
            got = capture_batch(tiny_family, rendered)
        for a, b in zip(got, capture_batch(tiny_family, rendered)):
            assert_same_state(a, b)

    def test_next_token_entropy(self, tiny, nn_backend):
        """The study's extra plain reads agree too."""
        rows = [[2, 30, 31], [2, 40, 41, 42, 43], [5]]
        ref = next_token_entropy_bits(tiny, rows)
        with using(nn_backend):
            got = next_token_entropy_bits(tiny, rows)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        assert ref.shape == (3,) and np.all(ref > 0)

    def test_whitespace_skip_matches(self, tiny, nn_backend, monkeypatch):
        """Skipping greedy whitespace tokens re-reads the row and lands on the same state as the KV path."""
        import ic_core.capture as cap

        rendered = _rendered(tiny, prefix="the answer is")[0]
        top = int(capture(tiny, rendered, skip_whitespace=False)[0].top_ids[0])
        # Pretend the tiny model's favourite next token is whitespace: both paths step past it.
        monkeypatch.setattr(cap, "_is_whitespace_token", lambda _loaded, t: t == top)
        import ic_core.backends.nnsight_backend as nb
        monkeypatch.setattr(nb, "_is_whitespace_token", lambda _loaded, t: t == top)
        ref, prefill = capture(tiny, rendered, skip_whitespace=True)
        with using(nn_backend):
            got, _ = capture(tiny, rendered, skip_whitespace=True)
        assert ref.skipped_ids and ref.skipped_ids[0] == top
        assert prefill.forced_ids == list(ref.skipped_ids)
        assert_same_state(got, ref)
        np.testing.assert_allclose(got.skipped_entropy_bits, ref.skipped_entropy_bits, atol=1e-4)

    def test_analysis_through_backend(self, tiny, nn_backend):
        """analyze() under the nnsight backend reports the same read-out; generation still works (HF reads the prompt)."""
        from ic_core.analysis import analyze
        from ic_core.generate import GenerationConfig

        cfg = GenerationConfig(max_new_tokens=4)
        ref = analyze(tiny, "what is the capital of france", do_generate=True, gen_config=cfg)
        with using(nn_backend):
            got = analyze(tiny, "what is the capital of france", do_generate=True, gen_config=cfg)
        assert_same_state(got.state, ref.state)
        assert got.top_tokens[0][0] == ref.top_tokens[0][0]
        assert got.generation.token_ids == ref.generation.token_ids


class TestSelection:
    """Choosing a backend."""

    def test_default_is_hf(self):
        """No backend chosen: current_backend() is None and capture uses the KV-cache path."""
        assert current_backend() is None
        assert isinstance(get_backend("hf"), HFBackend)

    def test_using_restores(self, nn_backend):
        """using() sets the backend for its block only."""
        with using(nn_backend):
            assert current_backend() is nn_backend
        assert current_backend() is None

    def test_unknown_and_bad_combination(self):
        """Unknown names and hf --remote are refused with one line."""
        with pytest.raises(BackendError, match="Unknown capture backend"):
            get_backend("vllm")
        with pytest.raises(BackendError, match="--backend nnsight"):
            get_backend("hf", remote=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestRemote:
    """--remote fails fast here, with one clear line (no network is touched)."""

    def test_missing_key(self, monkeypatch):
        """No NDIF_API_KEY: refused before any connection, saying which variable to set."""
        monkeypatch.delenv("NDIF_API_KEY", raising=False)
        monkeypatch.setattr("ic_core.backends.ndif._config_value", lambda attr: None)
        with pytest.raises(BackendError) as err:
            get_backend("nnsight", remote=True)
        msg = str(err.value)
        assert "NDIF_API_KEY" in msg and "\n" not in msg

    def test_unreachable(self, monkeypatch):
        """A key but NDIF at a closed local port: refused within the connect timeout, naming the host."""
        port = _closed_port()
        monkeypatch.setenv("NDIF_API_KEY", "test-key")
        monkeypatch.setenv("NDIF_HOST", f"http://127.0.0.1:{port}")
        with pytest.raises(BackendError) as err:
            get_backend("nnsight", remote=True)
        msg = str(err.value)
        assert f"127.0.0.1:{port}" in msg and "cannot be reached" in msg and "\n" not in msg
        assert "test-key" not in msg

    def test_bad_host(self, monkeypatch):
        """NDIF_HOST that is not a URL."""
        monkeypatch.setenv("NDIF_API_KEY", "k")
        monkeypatch.setenv("NDIF_HOST", "api.ndif.us")
        with pytest.raises(BackendError, match="not an http"):
            get_backend("nnsight", remote=True)


class TestHardwareFlags:
    """--device cuda, --load-in-4bit: refused here in one line; the memory estimate counts dtype and 4 bits."""

    def test_refused_without_gpu(self):
        from ic_core.backends.hardware import check_hardware, cuda_available

        if cuda_available():
            pytest.skip("this machine has a GPU")
        with pytest.raises(BackendError, match="no CUDA GPU"):
            check_hardware("cuda", "bfloat16", False)
        with pytest.raises(BackendError, match="needs a CUDA GPU"):
            check_hardware("cpu", "bfloat16", True)
        check_hardware("cpu", "bfloat16", False)  # bfloat16 on the CPU is fine

    def test_estimate_counts_dtype_and_quantization(self, tiny):
        """fp32 = 4 bytes/param, bf16 = 2; 4-bit: block linears at 0.5625 bytes, the rest in bf16."""
        import torch

        from ic_core.backends.hardware import NF4_BYTES_PER_PARAM, estimate_load_bytes

        config = tiny.model.config
        n = sum(p.numel() for p in tiny.model.parameters())
        linear = sum(m.weight.numel() for m in tiny.arch.blocks.modules() if isinstance(m, torch.nn.Linear))
        assert estimate_load_bytes(config, "float32") == 4 * n
        assert estimate_load_bytes(config, "bfloat16") == 2 * n
        four = estimate_load_bytes(config, "bfloat16", load_in_4bit=True)
        assert four == round(2 * (n - linear) + NF4_BYTES_PER_PARAM * linear) and four < 2 * n

    def test_check_fits_refuses_with_sizes(self, tiny, monkeypatch):
        from ic_core.backends.hardware import check_fits
        from ic_core.models import ModelSpec

        monkeypatch.setenv("IC_MEMORY_LIMIT_GB", "0.00001")  # ~10 kB
        with pytest.raises(BackendError, match="GiB for its weights in float32"):
            check_fits(tiny.model.config, ModelSpec(source="local", name="tiny"))
        monkeypatch.setenv("IC_MEMORY_LIMIT_GB", "1")
        assert check_fits(tiny.model.config, ModelSpec(source="local", name="tiny", dtype="bfloat16")) > 0


def test_cli_remote_without_key_is_one_line(tmp_path):
    """`analyze --backend nnsight --remote` with no key: exit 2, one line, before any model is loaded."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "NDIF_API_KEY"}
    env["NNSIGHT_CONFIG"] = str(tmp_path / "none.yaml")
    r = subprocess.run([sys.executable, "-m", "ic_core", "analyze", "--prompt", "hi", "--backend", "nnsight", "--remote",
                        "--model", "meta-llama/Llama-3.1-70B-Instruct"], cwd=Path(__file__).resolve().parents[2],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: --remote") and "NDIF_API_KEY" in r.stderr and r.stderr.count("\n") == 1


def test_an_nnsight_read_leaves_other_libraries_classes_intact(tiny):
    """nnsight mounts ``save`` on every object at import; after our import no object has it, and a
    class that lists its public attributes (anyio's TypedAttributeSet, under httpx and FastAPI)
    can still be defined — before the fix the OpenAI Agents test failed on it after this module."""
    with using(get_backend("nnsight")):
        state, _ = capture(tiny, _rendered(tiny)[0])
    assert np.isfinite(state.readout_entropy_bits)
    assert "save" not in vars(object) and not hasattr(object(), "save")
    from anyio import TypedAttributeSet, typed_attribute

    class Probe(TypedAttributeSet):  # raised "Attribute 'save' is missing its type annotation" before
        path: str = typed_attribute()

    assert Probe.path is not None
