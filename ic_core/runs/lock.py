"""The writer's lock of a run folder: one live process (or thread) writes a run at a time.

Acquisition is atomic. The lock file is created with ``O_CREAT | O_EXCL`` (two processes cannot
both create it), and the whole check-then-take step runs under an ``fcntl.flock`` of the run
folder itself, so taking over a dead writer's lock (unlink + create) cannot interleave with
another process doing the same. The folder flock is held only for that step, not for the run:
the kernel drops it when its process dies, so a crash never wedges the folder, and readers
(:func:`run_in_progress`, the Study page) never touch it, so listing runs cannot make a writer
fail. The file stays the visible record (``{pid, host, started}``) that names the owner.
Known limit: a dead writer's pid reused by an unrelated live process makes its lock look live;
the message says which process to check.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ic_core.errors import DataError
from ic_core.io import FILE_MODE

try:
    import fcntl
except ImportError:  # Windows: O_EXCL alone still makes a fresh lock atomic
    fcntl = None  # type: ignore[assignment]

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


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` of the run folder (blocking; released on exit or when the process dies)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise DataError(f"Cannot open run folder {str(folder)!r} to lock it: {exc.strerror}.") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # some network mounts refuse flock: O_EXCL still guards a fresh lock
            pass
        yield
    finally:
        os.close(fd)  # closing the last descriptor drops the flock


def _create_lock_file(path: Path) -> bool:
    """Create ``run.lock`` with this process's record; False when it already exists (``O_EXCL``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    info = {"pid": os.getpid(), "host": platform.node(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    try:
        os.write(fd, json.dumps(info).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _busy(folder: Path, owner: dict[str, Any]) -> DataError:
    return DataError(
        f"Run {folder.name!r} is being written by process {owner.get('pid')} on {owner.get('host')} "
        f"(started {owner.get('started')}). Wait for it to finish, or stop that process first."
    )


def acquire_lock(folder: Path) -> None:
    """Take the writer's lock of a run folder for this process and thread, atomically.

    A lock left by a dead process on this host (or by an interrupted thread of this one) is taken
    over; under the folder's flock only one of several racing processes can do so.

    Raises:
        DataError: another live process (or a thread of this one) holds it; the message names it.

    """
    path = folder / LOCK_FILE
    with _ACTIVE_LOCK, _folder_guard(folder):
        if not _create_lock_file(path):
            owner = _lock_owner(folder)
            if owner is not None:
                raise _busy(folder, owner)
            path.unlink(missing_ok=True)  # stale: its writer is gone; nobody else is in this step
            if not _create_lock_file(path):
                raise _busy(folder, _lock_owner(folder) or {})
        _ACTIVE.add(str(folder.resolve()))


def release_lock(folder: Path) -> None:
    """Give the lock back (remove ``run.lock`` if it is this process's); safe when it is already gone."""
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(folder.resolve()))
        if not folder.is_dir():
            return
        with _folder_guard(folder):
            try:
                owner = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                owner = None
            mine = isinstance(owner, dict) and owner.get("pid") == os.getpid() and owner.get("host") == platform.node()
            if mine or owner is None:
                (folder / LOCK_FILE).unlink(missing_ok=True)
