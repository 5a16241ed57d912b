"""The writer's lock of a run folder: one live process (or thread) writes a run at a time."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import threading
from pathlib import Path
from typing import Any

from ic_core.errors import DataError
from ic_core.io import atomic_write_bytes

LOCK_FILE = "run.lock"
"""Present while a process writes the run: {pid, host, started}. A lock of a dead process is ignored."""
_ACTIVE: set[str] = set()
"""Run folders this process is writing (the app runs studies in several threads)."""
_ACTIVE_LOCK = threading.RLock()


def _lock_owner(folder: Path) -> dict[str, Any] | None:
    """The live process holding the run's lock, or None (no lock, unreadable, or its process is gone)."""
    try:
        owner = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("host") != platform.node():
        return owner  # another machine sharing the folder: assume it is alive
    if pid == os.getpid():  # this process: locked only while one of its threads is writing it
        with _ACTIVE_LOCK:
            return owner if str(folder.resolve()) in _ACTIVE else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return owner
    return owner


def run_in_progress(path: Path | str) -> bool:
    """True when another live process is writing this run folder."""
    return _lock_owner(Path(path)) is not None


def acquire_lock(folder: Path) -> None:
    """Take the writer's lock of a run folder for this process and thread.

    Raises:
        DataError: another live process (or a thread of this one) holds it; the message names it.

    """
    with _ACTIVE_LOCK:
        owner = _lock_owner(folder)
        if owner is not None:
            raise DataError(
                f"Run {folder.name!r} is being written by process {owner.get('pid')} on {owner.get('host')} "
                f"(started {owner.get('started')}). Wait for it to finish, or stop that process first."
            )
        info = {"pid": os.getpid(), "host": platform.node(),
                "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        atomic_write_bytes(folder / LOCK_FILE, json.dumps(info).encode("utf-8"))
        _ACTIVE.add(str(folder.resolve()))


def release_lock(folder: Path) -> None:
    """Give the lock back (remove ``run.lock``); safe to call when it is already gone."""
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(folder.resolve()))
        (folder / LOCK_FILE).unlink(missing_ok=True)
