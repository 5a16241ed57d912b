"""Where each architecture family keeps its blocks, final norm, embedding and unembedding.

One table (:data:`FAMILIES`) and one lookup (:func:`layout_of`), in the style of
tuned-lens' ``model_surgery.py``: the logit lens and the last-position recorder both read
a model through the :class:`ArchLayout` this returns, so no other module guesses
attribute names. Transformers has no accessor for the blocks or the final norm, so the
table says where each family keeps them; the embedding and unembedding come from the
model's own ``get_input_embeddings()`` / ``get_output_embeddings()``; soft-capping (Gemma 2/3)
and embedding scaling (Gemma) are read from the config and the embedding module. A model whose
``config.model_type`` is not in the table, or whose modules are not where its family keeps
them, is refused with a :class:`ModelLoadError` that names the class and what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ic_core.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its parts (dotted paths from the ``…ForCausalLM``)."""

    name: str
    """Short family name shown in messages."""
    model_types: frozenset[str]
    """``config.model_type`` values that use this layout."""
    base: str
    """Path to the decoder stack (e.g. ``model``, ``transformer``, ``gpt_neox``)."""
    blocks: str = "layers"
    """Attribute of the stack holding the transformer blocks (a ``ModuleList``)."""
    final_norm: str = "norm"
    """Attribute of the stack: the norm applied after the last block, before the unembedding."""
    last_hidden_is_normed: bool = True
    """Whether ``hidden_states[L]`` is the final norm's output (else the last block's)."""
    softcapped: bool = False
    """Whether the model soft-caps its logits with ``config.final_logit_softcapping``."""
    embed_scaled: bool = False
    """Whether the embedding module multiplies token embeddings by a constant (√d for Gemma)."""


FAMILIES: tuple[Family, ...] = (
    Family("llama", frozenset({
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "smollm3", "olmo", "olmo2",
        "olmo3", "phi3", "starcoder2", "stablelm", "helium", "nemotron",
    }), base="model"),
    Family("gemma", frozenset({"gemma"}), base="model", embed_scaled=True),
    Family("gemma2/3", frozenset({"gemma2", "gemma3_text"}), base="model", softcapped=True, embed_scaled=True),
    Family("phi", frozenset({"phi"}), base="model", final_norm="final_layernorm"),
    Family("gpt2", frozenset({"gpt2", "gptj"}), base="transformer", blocks="h", final_norm="ln_f"),
    Family("gpt_neox", frozenset({"gpt_neox"}), base="gpt_neox", final_norm="final_layer_norm"),
)
"""Every supported family. Each entry is checked on a tiny random model in ``tests/integration/test_arch.py``."""


@dataclass(frozen=True, eq=False)
class ArchLayout:
    """The parts of one loaded model that the lens and the recorder need.

    Shapes: N rows, d residual width, V vocabulary, L blocks.
    """

    family: str
    """The :class:`Family` name."""
    blocks: torch.nn.ModuleList
    """The L transformer blocks; block i maps (B, T, d) → (B, T, d)."""
    final_norm: torch.nn.Module
    """(…, d) → (…, d): the norm before the unembedding."""
    embed: torch.nn.Module
    """(B, T) token ids → (B, T, d) token embeddings."""
    unembed: torch.nn.Module
    """(…, d) → (…, V) raw logits (before any soft-capping)."""
    last_hidden_is_normed: bool
    """Whether ``hidden_states[L]`` is the final norm's output."""
    logit_softcap: float | None = None
    """``c`` in ``logits = c · tanh(raw / c)`` (Gemma 2/3), or None when the family does not cap."""
    embed_scale: float = 1.0
    """The factor ``embed`` multiplies token embeddings by (√d for Gemma, else 1): the lens's layer-0
    row (``hidden_states[0]``) is the scaled embedding, so a lens that re-embeds must scale too."""

    @property
    def n_layers(self) -> int:
        """L, the number of blocks."""
        return len(self.blocks)

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """(N, d) normed residuals → (N, V) float32 logits, soft-capped as the model caps its own."""
        import torch

        raw = self.unembed(normed).float()
        if self.logit_softcap is None:
            return raw
        return torch.tanh(raw / self.logit_softcap) * self.logit_softcap

    def lens_logits(self, residual: torch.Tensor) -> torch.Tensor:
        """(N, d) un-normed residuals → (N, V) float32 logits: final norm, unembedding, soft-cap."""
        return self.logits(self.final_norm(residual))


def family_of(model_type: str) -> Family | None:
    """The family whose table entry lists ``model_type``, or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def _resolve(root: object, path: str, cls_name: str, family: Family, what: str) -> object:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelLoadError(
                f"{cls_name} (family {family.name}) has no `{path}` ({what}) where its family keeps it; "
                "the logit lens needs it. Its layout differs from the table in ic_core/arch.py."
            )
    return obj


def _accessor(model: PreTrainedModel, method: str, cls_name: str, what: str) -> object:
    module = getattr(model, method)()
    if module is None:
        raise ModelLoadError(f"{cls_name}.{method}() returned None: it has no {what}, which the logit lens needs.")
    return module


def _embed_scale(embed: object, cls_name: str, family: Family) -> float:
    """The constant the embedding module multiplies by; refused when a scaling family hides it."""
    value = getattr(embed, "scalar_embed_scale", None)
    if value is None:
        if family.embed_scaled:
            raise ModelLoadError(f"{cls_name} (family {family.name}) scales its token embeddings, but its embedding "
                                 f"{type(embed).__name__} has no `scalar_embed_scale`; the lens cannot tell by how much.")
        return 1.0
    return float(value)


def layout_of(model: PreTrainedModel) -> ArchLayout:
    """Find the blocks, final norm, embedding and unembedding of a transformers causal LM.

    Raises:
        ModelLoadError: the architecture is not in :data:`FAMILIES`, or a part is not where
            its family keeps it (the message names the class and the missing part).

    """
    import torch

    cls_name = type(model).__name__
    config = model.config
    model_type = str(getattr(config, "model_type", "") or "")
    family = family_of(model_type)
    if family is None:
        known = ", ".join(sorted(t for f in FAMILIES for t in f.model_types))
        raise ModelLoadError(
            f"{cls_name} (model_type {model_type!r}) is not a known architecture, so its blocks, final norm and "
            f"unembedding cannot be found for the logit lens. Known model types: {known}. "
            "Add its layout to FAMILIES in ic_core/arch.py."
        )
    _resolve(model, family.base, cls_name, family, "the decoder stack")
    blocks = _resolve(model, f"{family.base}.{family.blocks}", cls_name, family, "the transformer blocks")
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ModelLoadError(f"{cls_name}: `{family.base}.{family.blocks}` is a {type(blocks).__name__}, "
                             "not the ModuleList of transformer blocks its family keeps there.")
    softcap = None
    if family.softcapped:
        value = getattr(config.get_text_config(), "final_logit_softcapping", None)
        softcap = float(value) if value else None
    embed = _accessor(model, "get_input_embeddings", cls_name, "the token embedding")
    return ArchLayout(
        family=family.name,
        blocks=blocks,
        final_norm=_resolve(model, f"{family.base}.{family.final_norm}", cls_name, family, "the final norm"),
        embed=embed,
        unembed=_accessor(model, "get_output_embeddings", cls_name, "the unembedding"),
        last_hidden_is_normed=family.last_hidden_is_normed,
        logit_softcap=softcap,
        embed_scale=_embed_scale(embed, cls_name, family),
    )
