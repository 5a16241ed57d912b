"""GPU, dtype and 4-bit loading on the ``hf`` backend: checks that fail early, and a memory estimate.

``--device cuda`` and ``--dtype bfloat16`` go through :class:`ic_core.models.ModelSpec`;
``--load-in-4bit`` (bitsandbytes NF4, as the paper ran Mistral-7B) loads the transformer
blocks' linear layers in 4 bits with the rest in ``dtype``. Each is refused with one line where
it cannot run (no GPU, no bitsandbytes). The memory estimate counts what the weights take in
the chosen dtype and quantization, on the device they load to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ic_core.backends import BackendError

if TYPE_CHECKING:
    from ic_core.models import LoadedModel, ModelSpec

NF4_BYTES_PER_PARAM = 0.5 + 4 / 64
"""4 bits per weight plus one float32 absmax per 64-weight block (bitsandbytes NF4 without double quantization)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU."""
    import torch

    return bool(torch.cuda.is_available())


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes can be imported (looked up without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def check_hardware(device: str, dtype: str, load_in_4bit: bool) -> None:
    """Refuse, before loading, a device, dtype or quantization this machine cannot run.

    Raises:
        BackendError: ``cuda`` without a GPU; 4-bit without a GPU or without bitsandbytes;
            4-bit in float32 (bitsandbytes computes in 16 bits).

    """
    if device == "cuda" and not cuda_available():
        raise BackendError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto).")
    if not load_in_4bit:
        return
    if not cuda_available():
        raise BackendError("--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none, "
                           "so load in float32 or bfloat16 on the CPU.")
    if not bitsandbytes_installed():
        raise BackendError("--load-in-4bit needs bitsandbytes: pip install bitsandbytes==0.50.2 (on a CUDA machine).")
    if dtype == "float32":
        raise BackendError("--load-in-4bit computes in 16 bits: add --dtype bfloat16 (or float16).")


def _quantized_names(model: Any) -> set[str]:
    """Parameter names bitsandbytes would quantize: the weights of linear layers inside the blocks."""
    import torch

    from ic_core.arch import layout_of

    blocks = {id(m) for m in layout_of(model).blocks.modules()}
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and id(m) in blocks}


def estimate_load_bytes(config: Any, dtype: str, load_in_4bit: bool = False) -> int:
    """Bytes the weights take in ``dtype`` (4-bit block linears at :data:`NF4_BYTES_PER_PARAM`), counted on meta.

    Tied weights count once (as ``model.parameters()`` yields them).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    quantized = _quantized_names(model) if load_in_4bit else set()
    total = 0.0
    for name, p in model.named_parameters():
        total += p.numel() * (NF4_BYTES_PER_PARAM if name in quantized else DTYPE_BYTES[dtype])
    return int(round(total))


def device_memory_bytes(device: str) -> int | None:
    """Free memory where the weights go: the GPU's free memory for ``cuda``, else the CPU's available memory."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    from ic_core.models import available_memory_bytes

    return available_memory_bytes()


def check_fits(config: Any, spec: ModelSpec, load_in_4bit: bool = False, fraction: float = 0.8) -> int:
    """The estimated bytes, after checking they fit in ``fraction`` of the target device's free memory.

    Raises:
        BackendError: with the sizes, the device and what would make it fit.

    """
    need = estimate_load_bytes(config, spec.dtype, load_in_4bit)
    device = "cuda" if spec.device == "cuda" or (spec.device == "auto" and cuda_available()) else "cpu"
    have = device_memory_bytes(device)
    if have is not None and need > fraction * have:
        how = "4-bit" if load_in_4bit else spec.dtype
        hint = "" if load_in_4bit else " (--dtype bfloat16 halves float32; --load-in-4bit on a GPU takes about a seventh)"
        raise BackendError(
            f"{spec.label} needs about {need / 2**30:.1f} GiB for its weights in {how}, but only "
            f"{have / 2**30:.1f} GiB is free on the {device.upper()}; pick a smaller model or dtype{hint}."
        )
    return need


def load_4bit(spec: ModelSpec) -> LoadedModel:
    """Load a hub id or folder with its block linears in 4 bits (bitsandbytes NF4) on the GPU.

    Raises:
        BackendError: no GPU or no bitsandbytes (:func:`check_hardware`), a bundled or GGUF model
            (already quantized files: load them as they are), or weights that do not fit.

    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from ic_core.models import TransformersModel, default_cache_dir
    from ic_core.weights import folder_weights_sha256, hub_snapshot_folder

    check_hardware("cuda", spec.dtype, True)
    if spec.source not in ("hub", "local"):
        raise BackendError("--load-in-4bit applies to a hub id or a model folder, not a bundled or .gguf model.")
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    check_fits(AutoConfig.from_pretrained(spec.name, **kwargs), spec, load_in_4bit=True)
    compute = {"bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(spec.name, quantization_config=quant, device_map="cuda", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec.name, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    root = Path(spec.name) if spec.source == "local" else hub_snapshot_folder(spec.name)
    digest = folder_weights_sha256(root, default_cache_dir()) if root is not None else None
    return TransformersModel(spec, model.eval(), tokenizer, 0.0, spec.name, weights_sha256=digest)
