"""Model identity by content: the SHA-256 of a model's weights file(s), computed once per file.

A model's name and size say nothing about what is in it: a zero-filled file with the default
model's name and size is the same "model" to a name-and-size check. So the converted-model
cache key and a policy's model identity use the SHA-256 of the weights instead.

Hashing 100 MB takes a fraction of a second, a 10 GB model a minute, so each file's digest is
kept in ``weights-sha256.json`` beside the converted-model cache, keyed by the file's absolute
path and its size, mtime, ctime and inode. Any of those changing means the file may have
changed and the digest is computed again; ``ctime`` and the inode also change when a file is
rewritten and its mtime put back (``touch -d``), which an attacker can do but not undo.

A weights digest of several files (a sharded checkpoint) is the SHA-256 of ``sha256sum``'s
output for them, sorted by name, so ``sha256sum *.safetensors | sha256sum`` reproduces it; a
single file's digest is that file's own SHA-256 (``sha256sum model.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ic_core.io import atomic_write_text

STORE_FILE = "weights-sha256.json"
"""The digest store's file name inside the model cache folder."""
_CHUNK = 1 << 20
_STORE_LOCK = threading.Lock()


def _hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (the expensive step the store avoids)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    """What identifies one version of a file without reading it: size, mtime, ctime, inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_store(store: Path) -> dict[str, dict[str, Any]]:
    """The stored digests; an unreadable or damaged store is empty (it is a cache: digests are recomputed)."""
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and _is_sha256(v.get("sha256"))}


def _write_store(store: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write the store atomically, dropping entries whose file is gone; a read-only cache is left as it is."""
    kept = {k: v for k, v in entries.items() if Path(k).is_file()}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(kept, indent=1, sort_keys=True) + "\n")
    except OSError:  # a read-only cache folder: the digest is still right, only not remembered
        return


def file_sha256(path: str | os.PathLike[str], store_dir: Path) -> str:
    """SHA-256 of one file, read from the store in ``store_dir`` when the file is unchanged.

    Args:
        path: The weights file (symlinks are followed: a hub cache links snapshots to blobs).
        store_dir: The folder holding :data:`STORE_FILE` (the converted-model cache).

    Returns:
        64 lowercase hex digits.

    Raises:
        OSError: the file cannot be read.

    """
    file = Path(path).resolve()
    key = str(file)
    stamp = _stat_key(file)
    store = store_dir / STORE_FILE
    with _STORE_LOCK:
        entry = _read_store(store).get(key)
    if entry is not None and all(entry.get(k) == v for k, v in stamp.items()):
        return str(entry["sha256"])
    digest = _hash_file(file)
    if _stat_key(file) != stamp:  # written to while we read it: this digest belongs to no one version
        raise OSError(f"{file} changed while its SHA-256 was computed; load the model again once it is complete.")
    with _STORE_LOCK:
        entries = _read_store(store)
        entries[key] = {**stamp, "sha256": digest}
        _write_store(store, entries)
    return digest


def combined_sha256(files: Sequence[Path], store_dir: Path) -> str:
    """The weights digest of one or more files (see the module docstring for how shards combine).

    Raises:
        ValueError: no files.
        OSError: a file cannot be read.

    """
    if not files:
        raise ValueError("no weights files to hash")
    ordered = sorted(files, key=lambda f: f.name)
    digests = [file_sha256(f, store_dir) for f in ordered]
    if len(digests) == 1:
        return digests[0]
    listing = "".join(f"{d}  {f.name}\n" for d, f in zip(digests, ordered, strict=True))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The files transformers reads weights from in a model folder: ``*.safetensors``, else ``*.bin``."""
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(f for f in folder.glob(pattern) if f.is_file())
        if found:
            return found
    return []


def folder_weights_sha256(folder: Path, store_dir: Path) -> str | None:
    """The weights digest of a model folder (None when it holds no weights file)."""
    files = weight_files(folder)
    return combined_sha256(files, store_dir) if files else None


def hub_snapshot_folder(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model in the Hugging Face cache (None if it is not cached)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def pinned_weights_label(model: dict[str, Any]) -> str:
    """For display (``policy show``): ``weights sha256 b179c952…`` or ``weights not pinned``."""
    digest = model.get("weights_sha256")
    return f"weights sha256 {digest[:16]}…" if _is_sha256(digest) else "weights not pinned"
