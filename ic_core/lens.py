"""Logit lens at the read-out position: what each layer would predict if it were the last.

For layer ℓ < L we apply the model's final norm and its unembedding to the residual
``hidden_states[ℓ]``, and the family's logit soft-capping where it has one (Gemma 2/3), so
each row is the distribution the model would emit from that state; row L uses the model's
own logits (``hidden_states[L]`` is already normed; norming it again would be wrong). The
parts come from :class:`ic_core.arch.ArchLayout`. Only the read-out position is
unembedded, all layers in one matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from ic_core.arch import ArchLayout

LN2 = math.log(2.0)


@dataclass(frozen=True)
class LensResult:
    """Per-layer lens read-out for B prompts (B = 1 for a single analysis)."""

    layers: np.ndarray
    """(L,) hidden_states indices 1..L (layer 0, the embeddings, is not a prediction)."""
    entropy_bits: np.ndarray
    """(B, L) entropy of each layer's next-token distribution; column L−1 is the model's own."""
    kl_to_final_bits: np.ndarray
    """(B, L) KL(final ‖ layer) in bits; 0 in the last column."""
    top_ids: np.ndarray
    """(B, L, k) most likely next-token ids per layer."""
    top_probs: np.ndarray
    """(B, L, k) their probabilities."""

    def __post_init__(self) -> None:
        b, n = self.entropy_bits.shape
        assert self.layers.shape == (n,), (self.layers.shape, n)
        assert self.kl_to_final_bits.shape == (b, n)
        assert self.top_ids.shape[:2] == (b, n) and self.top_probs.shape == self.top_ids.shape

    def row(self, i: int) -> LensResult:
        """The lens of prompt ``i`` alone (B = 1)."""
        return LensResult(
            self.layers, self.entropy_bits[i : i + 1], self.kl_to_final_bits[i : i + 1],
            self.top_ids[i : i + 1], self.top_probs[i : i + 1],
        )


def torch_entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """(…, V) logits → (…,) entropy in bits over the last axis (computed in float32)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return (-(logp.exp() * logp).sum(-1)).clamp_min(0.0) / LN2


def logit_lens(arch: ArchLayout, hidden: torch.Tensor, final_logits: torch.Tensor, k: int = 5) -> LensResult:
    """Lens over all layers for B prompts, batched.

    Args:
        arch: The model's final norm, unembedding and soft-cap (:func:`ic_core.arch.layout_of`).
        hidden: (B, L + 1, d) residual stream at the read-out position, per hidden_states index.
        final_logits: (B, V) the model's own logits at that position.
        k: Top tokens kept per layer.

    """
    import torch

    b, n_states, d = hidden.shape
    n_layers = n_states - 1
    with torch.inference_mode():
        mid = hidden[:, 1:n_layers, :].reshape(-1, d)  # layers 1..L-1, un-normed residuals
        lens_logits = arch.lens_logits(mid).reshape(b, n_layers - 1, -1)
        all_logits = torch.cat([lens_logits, final_logits.float()[:, None, :]], dim=1)  # (B, L, V)
        logp = torch.log_softmax(all_logits, dim=-1)
        p = logp.exp()
        entropy = (-(p * logp).sum(-1)).clamp_min(0.0) / LN2
        final_logp = logp[:, -1:, :]
        kl = (final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0.0) / LN2
        top_p, top_i = p.topk(k, dim=-1)
    return LensResult(
        layers=np.arange(1, n_layers + 1),
        entropy_bits=entropy.cpu().numpy().astype(np.float64),
        kl_to_final_bits=kl.cpu().numpy().astype(np.float64),
        top_ids=top_i.cpu().numpy(),
        top_probs=top_p.cpu().numpy().astype(np.float64),
    )
