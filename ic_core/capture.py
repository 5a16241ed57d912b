"""One forward pass → the pre-collapse state I at the read-out token.

The forward pass keeps only the read-out position of every layer and unembeds only that
position (``logits_to_keep=1``). Its KV cache can be handed to generation
(:class:`Prefill`), so checking a prompt before answering it costs almost nothing extra.

When a forced answer prefix ends right before a whitespace token the model always writes
(SmolLM2 writes a lone space before digits), the read-out would measure that formatting
token. ``skip_whitespace`` lets the model write such tokens greedily (at most
:data:`MAX_SKIPPED`) and reads the state after them; they become the first generated tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.backends import current_backend
from ic_core.lens import LensResult, logit_lens
from ic_core.models import LoadedModel
from ic_core.prompts import RenderedPrompt, Signal
from ic_core.stats.entropy import entropy_top_k_bits

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle
    from transformers import Cache

    from ic_core.arch import ArchLayout

MAX_SKIPPED = 3
TOP_K = 10


@dataclass(frozen=True)
class IntentionState:
    """The model's state at the read-out position, before any content token is written."""

    hidden: np.ndarray
    """(L + 1, d) float32 residual stream per hidden_states index (0 = embeddings)."""
    final_logits: np.ndarray
    """(V,) float32 next-token logits at the read-out position."""
    readout_entropy_bits: float
    """Entropy of the full next-token distribution at the read-out, bits: H_int, or H_slot after a prefix."""
    readout_entropy_top100_bits: float
    """Entropy of the softmax renormalised over the top-100 logits, bits (paper code's variant)."""
    top_ids: np.ndarray
    """(k,) most likely next-token ids."""
    top_probs: np.ndarray
    """(k,) their probabilities."""
    lens: LensResult
    """Logit lens at the read-out position (B = 1)."""
    readout_index: int
    """Position read in the prompt (before any skipped whitespace tokens)."""
    signal: Signal
    """Which read-out ``readout_entropy_bits`` is (``H_int`` or ``H_slot``)."""
    skipped_ids: tuple[int, ...] = ()
    """Whitespace tokens the model wrote greedily before the read-out (see module doc)."""
    skipped_entropy_bits: tuple[float, ...] = ()
    skipped_probs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        assert self.hidden.ndim == 2 and self.final_logits.ndim == 1
        assert self.lens.entropy_bits.shape == (1, self.hidden.shape[0] - 1)

    @property
    def n_layers(self) -> int:
        """L, the number of transformer blocks."""
        return self.hidden.shape[0] - 1

    @property
    def top1_prob(self) -> float:
        """Probability of the most likely next token."""
        return float(self.top_probs[0])


@dataclass
class Prefill:
    """The KV cache after reading a prompt, ready for generation to continue from."""

    ids: list[int]
    """Every token the cache covers (prompt up to the read-out, plus skipped tokens)."""
    past_key_values: Cache
    """The model's KV cache over ``ids`` (extended in place by generation)."""
    next_logits: torch.Tensor
    """(V,) float32 logits for the next token."""
    forced_ids: list[int] = field(default_factory=list)
    """Skipped whitespace tokens: already written, reported as the first generated tokens."""
    forced_entropy_bits: list[float] = field(default_factory=list)
    forced_probs: list[float] = field(default_factory=list)
    consumed: bool = False
    """Generation extends the cache in place, so a prefill serves one generation only."""


class _LastPositionRecorder:
    """Forward hooks that keep only the last position of every ``hidden_states`` entry.

    ``output_hidden_states=True`` would materialise (B, T, d) for all L + 1 entries; for a
    batch of long prompts that is hundreds of MB, and we only ever read the last position.
    Entry 0 is the input of block 0 (the embeddings, after any position embedding or scaling
    the family adds), entries 1..L−1 the outputs of blocks 0..L−2, entry L the final norm's
    output (or block L−1's where the family does not put the normed state last). The parts
    come from :attr:`ic_core.models.LoadedModel.arch`.
    """

    def __init__(self, arch: ArchLayout) -> None:
        blocks = list(arch.blocks)
        self._first = blocks[0]
        self._outputs = [*blocks[:-1], arch.final_norm if arch.last_hidden_is_normed else blocks[-1]]
        self._rows: list[torch.Tensor | None] = [None] * (len(self._outputs) + 1)
        self._handles: list[RemovableHandle] = []

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> _LastPositionRecorder | None:
        """A recorder over the model's blocks, or None when the config runs fewer blocks than it holds."""
        arch = loaded.arch
        return cls(arch) if arch.n_layers == loaded.n_layers else None

    def _keep_input(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tensor = args[0] if args else kwargs["hidden_states"]
        self._rows[0] = tensor[:, -1, :]

    def _hook(self, index: int) -> Callable[[torch.nn.Module, Any, Any], None]:
        def keep_last(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            self._rows[index] = tensor[:, -1, :]
        return keep_last

    def __enter__(self) -> _LastPositionRecorder:
        self._handles = [self._first.register_forward_pre_hook(self._keep_input, with_kwargs=True)]
        self._handles += [m.register_forward_hook(self._hook(i + 1)) for i, m in enumerate(self._outputs)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def stacked(self) -> torch.Tensor:
        """(B, L + 1, d) float32."""
        import torch

        return torch.stack(self._rows, dim=1).float()


def _forward(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    past: Cache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Cache]:
    """One forward pass over (B, T) ids → (states (B, L + 1, d), last-position logits (B, V), KV cache)."""
    import torch

    recorder = _LastPositionRecorder.for_model(loaded)
    kwargs = dict(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        past_key_values=past, use_cache=True, output_hidden_states=recorder is None,
    )
    with recorder if recorder is not None else contextlib.nullcontext():
        try:
            out = loaded.model(**kwargs, logits_to_keep=1)
        except TypeError:  # older architectures without logits_to_keep
            out = loaded.model(**kwargs)
    if recorder is not None:
        states = recorder.stacked()
    else:
        states = torch.stack([h[:, -1, :] for h in out.hidden_states], dim=1).float()
    return states, out.logits[:, -1, :].float(), out.past_key_values


def _is_whitespace_token(loaded: LoadedModel, token_id: int) -> bool:
    if token_id in (loaded.tokenizer.all_special_ids or []):
        return False
    text = loaded.tokenizer.decode([token_id])
    return text != "" and text.strip() == ""


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B rows of ids → left-padded ids (B, T), attention mask (B, T) and position ids (B, T)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def _read_batch(
    loaded: LoadedModel, rows: Sequence[Sequence[int]], skip_whitespace: bool, prefix: tuple[int, Cache] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[list[float]], list[list[float]], Cache, torch.Tensor,
           torch.Tensor]:
    """Forward B left-padded rows; optionally step past greedy whitespace tokens.

    ``prefix`` — ``(n, cache)`` with ``cache`` over the first ``n`` ids of the one row — makes
    the pass read only the rest (the cache is extended in place).
    """
    import torch

    from ic_core.lens import torch_entropy_bits

    device = loaded.device
    pad = loaded.tokenizer.pad_token_id
    ids, mask, positions = left_padded(rows, pad, device)
    past = None
    if prefix is not None:
        assert len(rows) == 1 and 0 < prefix[0] < len(rows[0])
        past, ids, positions = prefix[1], ids[:, prefix[0]:], positions[:, prefix[0]:]
    states, logits, past = _forward(loaded, ids, mask, positions, past)
    skipped: list[list[int]] = [[] for _ in rows]
    skipped_h: list[list[float]] = [[] for _ in rows]
    skipped_p: list[list[float]] = [[] for _ in rows]
    for _ in range(MAX_SKIPPED if skip_whitespace else 0):
        top = logits.argmax(-1).tolist()
        step = [i for i, t in enumerate(top) if _is_whitespace_token(loaded, t)]
        if not step:
            break
        h = torch_entropy_bits(logits)
        p = torch.softmax(logits, -1)
        new_tok = torch.full((len(rows), 1), pad, dtype=torch.long, device=device)
        new_mask = torch.zeros((len(rows), 1), dtype=torch.long, device=device)
        for i in step:
            new_tok[i, 0] = top[i]
            new_mask[i, 0] = 1
            skipped[i].append(top[i])
            skipped_h[i].append(float(h[i]))
            skipped_p[i].append(float(p[i, top[i]]))
        mask = torch.cat([mask, new_mask], dim=1)
        positions = positions[:, -1:] + new_mask
        s2, l2, past = _forward(loaded, new_tok, mask, positions, past)
        sel = torch.tensor(step, device=device)
        states[sel], logits[sel] = s2[sel], l2[sel]
    return states, logits, skipped, skipped_h, skipped_p, past, mask, positions


class PrecomputedLens:
    """The lens logits a backend computed itself, in place of :class:`ic_core.arch.ArchLayout`.

    A remote trace unembeds the lens layers where the weights are; :func:`ic_core.lens.logit_lens`
    then takes them from here, so the rest of the lens (entropy, KL, top tokens) is shared.
    """

    def __init__(self, lens_logits: torch.Tensor) -> None:
        self._logits = lens_logits  # (B, L - 1, V)

    def lens_logits(self, mid: torch.Tensor) -> torch.Tensor:
        """(B·(L−1), d) residuals → the precomputed (B·(L−1), V) float32 logits."""
        assert mid.shape[0] == self._logits.shape[0] * self._logits.shape[1], (mid.shape, self._logits.shape)
        return self._logits.reshape(mid.shape[0], -1).float()


def _to_states(
    loaded: LoadedModel, states: torch.Tensor, logits: torch.Tensor, prompts: Sequence[RenderedPrompt],
    skipped: list[list[int]], skipped_h: list[list[float]], skipped_p: list[list[float]], k: int,
    lens_logits: torch.Tensor | None = None,
) -> list[IntentionState]:
    import torch

    arch = loaded.arch if lens_logits is None else PrecomputedLens(lens_logits)
    lens = logit_lens(arch, states, logits, k=5)  # type: ignore[arg-type]
    with torch.inference_mode():
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
    logits_np = logits.cpu().numpy()
    hidden_np = states.cpu().numpy().astype(np.float32)
    result = []
    for i in range(states.shape[0]):
        result.append(IntentionState(
            hidden=hidden_np[i],
            final_logits=logits_np[i],
            readout_entropy_bits=float(lens.entropy_bits[i, -1]),
            readout_entropy_top100_bits=float(entropy_top_k_bits(logits_np[i], 100)),
            top_ids=top_i[i].cpu().numpy(),
            top_probs=top_p[i].cpu().numpy().astype(np.float64),
            lens=lens.row(i),
            readout_index=int(prompts[i].readout_index),
            signal=prompts[i].signal,
            skipped_ids=tuple(skipped[i]),
            skipped_entropy_bits=tuple(skipped_h[i]),
            skipped_probs=tuple(skipped_p[i]),
        ))
    return result


def default_skip(rendered: RenderedPrompt) -> bool:
    """Skip whitespace only when reading after a forced answer prefix at the prompt's end."""
    return bool(rendered.answer_prefix) and rendered.readout_index == rendered.n_tokens - 1


def capture(
    loaded: LoadedModel, rendered: RenderedPrompt, skip_whitespace: bool | None = None, k: int = TOP_K,
    prefix: tuple[int, Cache] | None = None,
) -> tuple[IntentionState, Prefill | None]:
    """Read I for one prompt with one forward pass; also return the cache for generation.

    Reads through the backend chosen with :func:`ic_core.backends.using` (default: this module's
    transformers path, :func:`hf_capture`). Another backend keeps no cache: the prefill is then
    None (generation reads the prompt itself) and ``prefix`` is not used.

    Args:
        loaded: The model.
        rendered: Output of :func:`ic_core.prompts.render`.
        skip_whitespace: Read past greedy whitespace tokens; default: only after an answer prefix.
        k: Number of top next tokens kept.
        prefix: ``(n, cache)``: a KV cache already over the first ``n`` ids of the read row
            (0 < n < row length; a copy the call may extend), so only the rest is read.

    """
    backend = current_backend()
    if backend is not None and backend.name != "hf":
        return backend.capture(loaded, rendered, skip_whitespace, k)
    return hf_capture(loaded, rendered, skip_whitespace, k, prefix)


def hf_capture(
    loaded: LoadedModel, rendered: RenderedPrompt, skip_whitespace: bool | None = None, k: int = TOP_K,
    prefix: tuple[int, Cache] | None = None,
) -> tuple[IntentionState, Prefill]:
    """:func:`capture` on the in-process transformers model (same arguments), with its KV cache."""
    import torch

    skip = default_skip(rendered) if skip_whitespace is None else skip_whitespace
    row = list(rendered.input_ids[: rendered.readout_index + 1])
    with loaded.lock, torch.inference_mode():
        states, logits, skipped, sk_h, sk_p, past, _, _ = _read_batch(loaded, [row], skip, prefix)
        state = _to_states(loaded, states, logits, [rendered], skipped, sk_h, sk_p, k)[0]
    prefill = Prefill(row + skipped[0], past, logits[0], list(skipped[0]), list(sk_h[0]), list(sk_p[0]))
    return state, prefill


def capture_batch(
    loaded: LoadedModel,
    rendered: Sequence[RenderedPrompt],
    batch_size: int = 16,
    skip_whitespace: bool | None = None,
    k: int = TOP_K,
    max_batch_tokens: int = 8192,
) -> list[IntentionState]:
    """Read I for many prompts, left-padded in batches; same numbers as :func:`capture`.

    Batches are cut so that batch width × rows stays under ``max_batch_tokens``. Reads through
    the backend chosen with :func:`ic_core.backends.using` (default :func:`hf_capture_batch`).
    """
    backend = current_backend()
    if backend is not None and backend.name != "hf":
        return backend.capture_batch(loaded, rendered, batch_size, skip_whitespace, k, max_batch_tokens)
    return hf_capture_batch(loaded, rendered, batch_size, skip_whitespace, k, max_batch_tokens)


ReadRows = tuple[
    "torch.Tensor", "torch.Tensor", list[list[int]], list[list[float]], list[list[float]], "torch.Tensor | None"
]
Reader = Callable[[LoadedModel, Sequence[Sequence[int]], bool], ReadRows]
"""``read(loaded, rows, skip_whitespace)`` → states (B, L + 1, d), logits (B, V), per row the
skipped whitespace ids, their entropies and probabilities, and the lens logits (B, L − 1, V) when
the backend computed them itself (else None: the lens uses ``loaded.arch``): one backend's
forward over B rows."""


def _hf_reader(loaded: LoadedModel, rows: Sequence[Sequence[int]], skip_whitespace: bool) -> ReadRows:
    states, logits, skipped, sk_h, sk_p, *_ = _read_batch(loaded, rows, skip_whitespace)
    return states, logits, skipped, sk_h, sk_p, None


def hf_capture_batch(
    loaded: LoadedModel, rendered: Sequence[RenderedPrompt], batch_size: int = 16,
    skip_whitespace: bool | None = None, k: int = TOP_K, max_batch_tokens: int = 8192,
) -> list[IntentionState]:
    """:func:`capture_batch` on the in-process transformers model (same arguments)."""
    return capture_batch_with(_hf_reader, loaded, rendered, batch_size, skip_whitespace, k, max_batch_tokens)


def capture_batch_with(
    read: Reader, loaded: LoadedModel, rendered: Sequence[RenderedPrompt], batch_size: int = 16,
    skip_whitespace: bool | None = None, k: int = TOP_K, max_batch_tokens: int = 8192,
) -> list[IntentionState]:
    """:func:`capture_batch` with the forward pass of any backend (``read``, see :data:`Reader`)."""
    import torch

    order = sorted(range(len(rendered)), key=lambda i: rendered[i].readout_index)
    results: list[IntentionState | None] = [None] * len(rendered)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < batch_size and (
            (end - start + 1) * (rendered[order[end]].readout_index + 1 + MAX_SKIPPED) <= max_batch_tokens
        ):
            end += 1
        chunk = [rendered[i] for i in order[start:end]]
        skips = {default_skip(r) if skip_whitespace is None else skip_whitespace for r in chunk}
        rows = [list(r.input_ids[: r.readout_index + 1]) for r in chunk]
        with loaded.lock, torch.inference_mode():
            states, logits, skipped, sk_h, sk_p, lens = read(loaded, rows, any(skips))
            # Rows that must not skip keep their first read-out: re-read them alone if mixed.
            out = _to_states(loaded, states, logits, chunk, skipped, sk_h, sk_p, k, lens)
        for pos, idx in enumerate(order[start:end]):
            want = default_skip(chunk[pos]) if skip_whitespace is None else skip_whitespace
            results[idx] = out[pos] if want or not out[pos].skipped_ids else _read_alone(read, loaded, chunk[pos], k)
        start = end
    return [r for r in results if r is not None]


def _read_alone(read: Reader, loaded: LoadedModel, rendered: RenderedPrompt, k: int) -> IntentionState:
    """One prompt read at its own read-out (no whitespace skipping)."""
    import torch

    row = list(rendered.input_ids[: rendered.readout_index + 1])
    with loaded.lock, torch.inference_mode():
        states, logits, skipped, sk_h, sk_p, lens = read(loaded, [row], False)
        return _to_states(loaded, states, logits, [rendered], skipped, sk_h, sk_p, k, lens)[0]


def read_single(read: Reader, loaded: LoadedModel, rendered: RenderedPrompt, skip_whitespace: bool | None = None,
                k: int = TOP_K) -> IntentionState:
    """:func:`capture`'s state (no cache) with the forward pass of any backend (``read``)."""
    import torch

    skip = default_skip(rendered) if skip_whitespace is None else skip_whitespace
    row = list(rendered.input_ids[: rendered.readout_index + 1])
    with loaded.lock, torch.inference_mode():
        states, logits, skipped, sk_h, sk_p, lens = read(loaded, [row], skip)
        return _to_states(loaded, states, logits, [rendered], skipped, sk_h, sk_p, k, lens)[0]


def next_token_entropy_bits(loaded: LoadedModel, rows: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """(n,) entropy in bits of the next-token distribution after each row of token ids.

    A plain read (no whitespace skipping, no states kept) for the extra read-outs of a study:
    the last prompt token of a direct prompt whose main read-out is after a prefix, or a
    teacher-forced position such as the slot after the answer's first digit. Reads through the
    backend chosen with :func:`ic_core.backends.using` (default :func:`hf_next_token_entropy_bits`).

    Raises:
        ValueError: a row is empty.

    """
    backend = current_backend()
    if backend is not None and backend.name != "hf":
        return backend.next_token_entropy_bits(loaded, rows, batch_size)
    return hf_next_token_entropy_bits(loaded, rows, batch_size)


def hf_next_token_entropy_bits(loaded: LoadedModel, rows: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """:func:`next_token_entropy_bits` on the in-process transformers model."""
    return next_token_entropy_with(_hf_reader, loaded, rows, batch_size)


def next_token_entropy_with(read: Reader, loaded: LoadedModel, rows: Sequence[Sequence[int]],
                            batch_size: int = 16) -> np.ndarray:
    """:func:`next_token_entropy_bits` with the forward pass of any backend (``read``).

    Raises:
        ValueError: a row is empty.

    """
    import torch

    from ic_core.lens import torch_entropy_bits

    if any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one token")
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        chunk = [list(r) for r in rows[start:start + batch_size]]
        with loaded.lock, torch.inference_mode():
            _, logits, *_ = read(loaded, chunk, False)
            out[start:start + len(chunk)] = torch_entropy_bits(logits).double().cpu().numpy()
    return out
