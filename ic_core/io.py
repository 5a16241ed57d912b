"""The one atomic file write: temporary file in the target's folder, fsync, rename, fsync the folder.

Every file the engine writes whole (manifests, state shards, policies, saved probes, locks)
goes through :func:`atomic_write`, so a crash leaves either the old file or the new one,
never half of either, and a finished write survives a power cut. Temporary files start with
a dot and never match the names readers look for. Appends (``items.jsonl``, the audit log)
are not whole-file writes and live with their formats.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FILE_MODE = 0o644
"""Run folders and policies are meant to be read by others (``mkstemp`` makes files private)."""


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        _fsync_path(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # folders cannot be opened or synced on every platform (Windows, some network mounts)
        return


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, mode: int = FILE_MODE) -> Path:
    """Write a file atomically and durably.

    Args:
        path: The file to create or replace.
        write: Called with a temporary path in the same folder; fills it (e.g. ``np.savez``).
        mode: Permission bits of the finished file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = FILE_MODE) -> Path:
    """:func:`atomic_write` of raw bytes."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = FILE_MODE) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, mode: int = FILE_MODE) -> Path:
    """:func:`atomic_write` of pretty-printed JSON (no NaN, non-ASCII kept) with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", mode=mode)


def atomic_write_npz(path: str | os.PathLike[str], *, mode: int = FILE_MODE, **arrays: np.ndarray) -> Path:
    """:func:`atomic_write` of an uncompressed ``.npz`` (read back with ``allow_pickle=False``)."""
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), mode=mode)
