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
