"""Shared fixtures: a tiny random Llama with an in-memory word-level tokenizer (milliseconds,
no network), the same over other architecture families (``tiny_family``), and the bundled
default model for the ``model`` tier."""

from __future__ import annotations

import contextlib
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


TINY_FAMILIES = ("llama", "gpt2", "gemma3")
"""Architectures ``tiny_family`` runs over: their blocks, final norm and unembedding live at
different attribute paths (``model.layers``/``model.norm``, ``transformer.h``/``transformer.ln_f``),
GPT-2 adds position embeddings after the token embedding, and Gemma 3 scales its embeddings
and soft-caps its logits."""
GEMMA_SOFTCAP = 2.0
"""Small enough that the tiny Gemma's logits are visibly capped (the real models use 30)."""


def make_tiny_model(vocab_size: int, n_layers: int = 4, seed: int = 0, family: str = "llama"):
    """A random causal LM of ``family`` (one of :data:`TINY_FAMILIES`) small enough to run in milliseconds."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False, initializer_range=0.2, **ids,
        )
    elif family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=256,
            initializer_range=0.2, **ids,
        )
    elif family == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
            sliding_window=8, final_logit_softcapping=GEMMA_SOFTCAP, initializer_range=0.2, **ids,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def tiny():
    """A LoadedModel wrapping the tiny random Llama (shared; do not mutate)."""
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer)), tokenizer, name="tiny-llama")


@contextlib.contextmanager
def forward_lengths(model):
    """Record the token count (T of input_ids (B, T)) of every top-level forward pass of ``model``."""
    lengths: list[int] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        lengths.append(int(ids.shape[1]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield lengths
    finally:
        handle.remove()


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_family(request, tiny):
    """The tiny model over each of :data:`TINY_FAMILIES` (the Llama is ``tiny`` itself)."""
    if request.param == "llama":
        return tiny
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer), family=request.param), tokenizer, name=f"tiny-{request.param}")


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
