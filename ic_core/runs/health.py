"""Run folders that cannot be opened, named with the reason, so a run list can show them as broken entries.

:func:`ic_core.runs.store.list_runs` skips a folder whose manifest is unreadable; a page that
lists runs also needs to say *which* folders it skipped and why, without letting one bad folder
(a 1 KB garbage manifest, a damaged shard) break the list for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ic_core.errors import ICError
from ic_core.runs.store import MANIFEST_FILE, read_manifest, runs_root

MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class BrokenRun:
    """A run folder that cannot be opened."""

    name: str
    """The folder's name."""
    path: Path
    """The folder."""
    reason: str
    """One line (at most :data:`MAX_REASON_CHARS` characters): what is wrong with it."""

    @property
    def label(self) -> str:
        """One line for run pickers: ``⚠ name · broken: reason``."""
        return f"⚠ {self.name} · broken: {self.reason}"


def reason_of(exc: BaseException) -> str:
    """An error as one short line (its first line, cut to :data:`MAX_REASON_CHARS`)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0]
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def broken_runs(root: Path | str | None = None) -> list[BrokenRun]:
    """Folders under ``root`` (default :func:`runs_root`) that carry a manifest the store refuses, by name.

    Folders without a manifest are not runs and are not listed. A run whose manifest is fine
    but whose states are damaged is listed by ``list_runs``; opening it raises the reason (see
    :func:`broken_from_error`).
    """
    base = Path(root) if root is not None else runs_root()
    if not base.is_dir():
        return []
    out = []
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or not (folder / MANIFEST_FILE).exists():
            continue
        try:
            read_manifest(folder)
        except (ICError, OSError) as exc:
            out.append(BrokenRun(folder.name, folder, reason_of(exc)))
    return out


def broken_from_error(path: Path | str, exc: BaseException) -> BrokenRun:
    """The broken entry for a listed run that failed to open with ``exc``."""
    folder = Path(path)
    return BrokenRun(folder.name, folder, reason_of(exc))
