"""Builders shared by every tier: a tiny random model (Llama, GPT-2, Gemma 3 and five more families) with an in-memory
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


ARCH_FAMILIES = (*TINY_FAMILIES, "qwen3", "mistral", "phi3", "gpt_neox", "olmo2")
"""Every family :func:`make_tiny_model` builds (``tests/integration/test_arch_families.py`` runs
over all of them): Qwen3 and OLMo 2 norm their queries and keys, Mistral uses a sliding window,
Phi-3 fuses its QKV and gate/up projections, GPT-NeoX keeps its blocks in ``gpt_neox.layers``,
its final norm in ``final_layer_norm`` and its unembedding in ``embed_out``."""


def _tiny_config(family: str, vocab_size: int, n_layers: int):
    """The config of one tiny family (d = 32, 4 heads, 2 KV heads where the family has them)."""
    import transformers

    ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    decoder = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                   initializer_range=0.2, **ids)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=256,
                                       initializer_range=0.2, **ids)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=n_layers, num_attention_heads=4, rotary_pct=0.5,
                                          max_position_embeddings=256, initializer_range=0.2,
                                          tie_word_embeddings=False, **ids)
    extra = {
        "llama": dict(tie_word_embeddings=False),
        "gemma3": dict(head_dim=8, sliding_window=8, final_logit_softcapping=GEMMA_SOFTCAP),
        "qwen3": dict(head_dim=8, tie_word_embeddings=True),
        "mistral": dict(sliding_window=8, tie_word_embeddings=False),
        "phi3": dict(tie_word_embeddings=False),
        "olmo2": dict(tie_word_embeddings=False),
    }
    classes = {"llama": "LlamaConfig", "gemma3": "Gemma3TextConfig", "qwen3": "Qwen3Config",
               "mistral": "MistralConfig", "phi3": "Phi3Config", "olmo2": "Olmo2Config"}
    if family not in classes:
        raise ValueError(f"unknown tiny family {family!r}")
    return getattr(transformers, classes[family])(**decoder, **extra[family])


def make_tiny_model(vocab_size: int, n_layers: int = 4, seed: int = 0, family: str = "llama"):
    """A random causal LM of ``family`` (one of :data:`ARCH_FAMILIES`) small enough to run in milliseconds."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _tiny_config(family, vocab_size, n_layers)
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


def open_page(model, page: str | None = None, **state):
    """An AppTest of app.py (router + sidebar) with ``model`` injected, switched to ``page``.

    ``state`` goes into the session before the first run; the app must render without an exception.
    """
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state["_injected_model"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def finish_jobs(at, timeout_s: float = 600.0):
    """Wait for the background jobs an AppTest page queued (the job queue is this process's), then rerun it."""
    from ic_core.jobs import job_queue

    for job in job_queue().jobs():
        assert job_queue().wait(job.job_id, timeout=timeout_s).finished
    at.run()
    assert not at.exception, at.exception
    return at
