"""Builders shared by every tier: a tiny random model (Llama, GPT-2 or Gemma 3) with an in-memory
word-level tokenizer (milliseconds, no network), and a forward-pass counter."""

from __future__ import annotations

import contextlib

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


def free_port() -> int:
    """A free TCP port on the loopback interface (servers in tests bind 127.0.0.1 only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout_s: float = 15.0) -> None:
    """Terminate a server started by a test (by its pid), killing it if it does not exit in time."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


@contextlib.contextmanager
def streamlit_server(log, env_extra=None, start_timeout_s: float = 90.0):
    """``streamlit run app.py`` on a free loopback port until the block ends; yields its URL.

    Fails the test with the server's log when it exits or is not healthy within ``start_timeout_s``.
    """
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit was not healthy after {start_timeout_s} s:\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc)
