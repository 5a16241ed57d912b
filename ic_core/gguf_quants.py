"""GGUF tensor types transformers cannot dequantise yet, added to its GGUF loader.

transformers 5.23 dequantises GGUF blocks itself (``transformers.integrations.gguf.dequant``)
and knows no Q5_0 (ggml type 6). Gemma 3 270M's Q4_K_M file keeps 81 of its 236 tensors in
Q5_0 (the projections whose width, 640, is not a multiple of the 256-value K-quant block),
so without it the file is refused. :func:`register_extra_types` adds Q5_0 to the loader's
tables; the dequantiser below is ours, checked against the ``gguf`` package's reference
decoder in the tests.

Q5_0 block (22 bytes, 32 values): an fp16 scale ``d``, a little-endian 32-bit word ``qh``
whose bit i is the fifth (high) bit of value i, and 16 bytes ``qs`` whose low nibbles are
values 0–15 and high nibbles values 16–31. Value i is ``d · (q_i − 16)``, q_i in 0..31.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GGML_Q5_0 = 6
Q5_0_BLOCK = (32, 22)
"""(values per block, bytes per block)."""


def dequant_q5_0(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(nb, 22) uint8 Q5_0 blocks → (nb, 32) values of ``dtype``."""
    import torch

    scale = blocks[:, 0:2].contiguous().view(torch.float16).to(dtype)  # (nb, 1)
    qh = blocks[:, 2:6].to(torch.int64)
    high_word = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)  # (nb,)
    bit = torch.arange(32, device=blocks.device, dtype=torch.int64)
    high = ((high_word[:, None] >> bit) & 1) << 4  # (nb, 32): the fifth bit of each value
    qs = blocks[:, 6:22].to(torch.int64)
    low = torch.cat([qs & 0x0F, qs >> 4], dim=1)  # (nb, 32): values 0–15, then 16–31
    return ((low | high) - 16).to(dtype) * scale


def register_extra_types() -> None:
    """Teach transformers' GGUF reader and dequantiser Q5_0 (idempotent; leaves known types alone)."""
    from transformers.integrations.gguf import dequant

    dequant.GGML_BLOCK.setdefault(GGML_Q5_0, Q5_0_BLOCK)
    dequant.GGML_NAME.setdefault(GGML_Q5_0, "Q5_0")
    dequant._DEQUANT.setdefault(GGML_Q5_0, dequant_q5_0)
