"""Numpy metrics of the pre-collapse state: entropies, participation ratio, PCA.

Entropies are in bits. Shapes are stated in each docstring.
"""

from __future__ import annotations

import numpy as np

LN2 = float(np.log(2.0))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def entropy_bits(logits: np.ndarray) -> np.ndarray | float:
    """Shannon entropy in bits of softmax(logits) over the last axis.

    Args:
        logits: (..., V) raw scores at temperature 1.

    Returns:
        (...) entropies; a float for a 1-D input.

    """
    logp = log_softmax(logits)
    h = -(np.exp(logp) * logp).sum(axis=-1) / LN2
    h = np.maximum(h, 0.0)
    return float(h) if h.ndim == 0 else h


def entropy_top_k_bits(logits: np.ndarray, k: int = 100) -> np.ndarray | float:
    """Entropy in bits of the softmax renormalised over the top-``k`` logits (the paper code's variant)."""
    z = np.asarray(logits, dtype=np.float64)
    k = min(k, z.shape[-1])
    top = np.partition(z, z.shape[-1] - k, axis=-1)[..., -k:]
    return entropy_bits(top)


def kl_bits(logits_p: np.ndarray, logits_q: np.ndarray) -> np.ndarray | float:
    """KL(p || q) in bits between softmax(logits_p) and softmax(logits_q) over the last axis."""
    lp, lq = log_softmax(logits_p), log_softmax(logits_q)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1) / LN2
    kl = np.maximum(kl, 0.0)
    return float(kl) if kl.ndim == 0 else kl
