"""Shared fixtures: a tiny random Llama with an in-memory word-level tokenizer (milliseconds,
no network), and the bundled default model for the ``model`` tier."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = (
    "what is the capital of france paris germany berlin italy rome answer a b c d number "
    "think step by step write few sentences about topic this question do not or solve it "
    "with just final letter correct option only in words give its own line as before you "
    "and then sure here are plus minus times equals"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
PUNCT = list("?.,:;!'#<>()-+=*/\"")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def make_tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A lower-casing word-level tokenizer over a fixed vocabulary (numbers 0–199 included)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab_list = SPECIALS + PUNCT + WORDS + [str(i) for i in range(200)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = chat_template
    return fast


def make_tiny_model(vocab_size: int, n_layers: int = 4, seed: int = 0):
    """A random Llama small enough to run in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.2, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny():
    """A LoadedModel wrapping the tiny random Llama (shared; do not mutate)."""
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny):
    """The tiny model saved as a local folder (for CLI and ModelSpec tests)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def default_model():
    """The bundled SmolLM2-135M-Instruct (converted once to the user's cache)."""
    from ic_core.models import get_model

    return get_model()


@pytest.fixture(autouse=True)
def _navigation_mode(request, monkeypatch):
    """Make AppTest run app.py (router + sidebar) on every run, as the server does.

    AppTest builds a fresh PagesManager per run and, because a ``pages/`` folder sits next to
    app.py, flags the app as an old-style multipage app; later runs then execute only the page
    file and skip app.py. The server clears that flag once st.navigation has run and keeps it
    cleared, so app-tier tests do the same after each construction. Tests named
    ``test_fresh_server*`` keep the first-visit behaviour they check.
    """
    if request.node.get_closest_marker("app") is None or request.node.name.startswith("test_fresh_server"):
        return
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs folder that the app and ic_core.study use (IC_RUNS_DIR)."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("IC_RUNS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _audit_log_in_tmp(tmp_path, monkeypatch):
    """No test writes to the repository's default audit log (tests that care set their own)."""
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "audit" / "gate_audit.jsonl"))
