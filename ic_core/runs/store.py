"""The run-folder format: its files, writing and reading them, loading and listing runs.

A run folder (format version :data:`FORMAT_VERSION`) holds::

    manifest.json        what was run: model spec, regimes, templates, dataset hash,
                         generation config, seed, library versions, status
    dataset.jsonl        the items used (after the limit), so the run can be resumed or audited
    items.jsonl          one JSON object per finished (item, regime) row, appended per batch
    states/shard-KKKKK.npz   per batch k: rows (B,) int64, hidden (B, L+1, d) float16,
                             lens_entropy_bits (B, L) float32
    run.lock             only while a process writes the run (pid, host): a second writer is refused

Rows are planned up front: row ``r`` is item ``r // len(regimes)`` in regime
``regimes[r % len(regimes)]``, and batch ``k`` is rows ``[k·B, (k+1)·B)`` with the batch size
``B`` stored in the manifest. A batch's shard is written atomically (temporary file, then
``os.replace``) *before* its rows are appended to ``items.jsonl``, so a row counts as
finished only when both exist. Calling :func:`ic_core.study.runner.run_study` again on the same folder with the
same settings redoes only unfinished batches, with the same batch composition, so the result
equals an uninterrupted run. Only the last prompt token's state is kept (float16), never
whole sequences. Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ic_core.errors import DataError
from ic_core.io import atomic_write_bytes, atomic_write_npz
from ic_core.runs.lock import run_in_progress
from ic_core.runs.schema import RunRow, table_from_rows

FORMAT_VERSION = 1
RUN_KIND = "ic_core.study_run"
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.jsonl"
DATASET_FILE = "dataset.jsonl"
STATES_DIR = "states"
F16_MAX = float(np.finfo(np.float16).max)
"""States are stored as float16; larger magnitudes are clipped and counted in the manifest."""
RUNS_ENV = "IC_RUNS_DIR"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------- run folders and names


def runs_root() -> Path:
    """Where saved runs live: ``$IC_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def sanitize_name(name: str) -> str:
    """A safe single folder name: letters, digits, ``.``, ``_``, ``-`` (no separators, no ``..``).

    Raises:
        DataError: nothing usable is left.

    """
    cleaned = _SAFE_NAME.sub("-", (name or "").strip()).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:80]
    if not cleaned:
        raise DataError(f"Run name {name!r} has no usable characters; use letters, digits, '-', '_' or '.'.")
    return cleaned


def run_path(name: str, root: Path | None = None) -> Path:
    """The folder of run ``name`` under ``root`` (default :func:`runs_root`), name sanitised."""
    return (root or runs_root()) / sanitize_name(name)


def default_run_name(dataset_name: str, regimes: Sequence[str], n_items: int) -> str:
    """``capitals-direct-cot-n20-20260101-120000`` (UTC time), already sanitised."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return sanitize_name(f"{dataset_name}-{'-'.join(regimes)}-n{n_items}-{stamp}")


# ---------------------------------------------------------------- the loaded run


@dataclass(frozen=True, eq=False)
class StudyRun:
    """A study run folder, loaded.

    ``table`` has one row per finished (item, regime) pair, in plan order; its ``row`` column
    indexes ``hidden`` and ``lens_entropy_bits`` (``plan_row`` is the row's place in the plan).
    """

    path: Path
    manifest: dict[str, Any]
    table: pd.DataFrame
    """Columns :data:`TABLE_COLUMNS` first, then ``plan_row``, ``output_source``, ``choices``, …"""
    hidden: np.ndarray
    """(N, L + 1, d) float16 read-out state per layer (index 0 = embeddings)."""
    lens_entropy_bits: np.ndarray
    """(N, L) float32 logit-lens entropy per layer 1..L (the last column is H_int)."""

    def __post_init__(self) -> None:
        n = len(self.table)
        assert self.hidden.dtype == np.float16 and self.hidden.ndim == 3 and self.hidden.shape[0] == n
        assert self.lens_entropy_bits.dtype == np.float32 and self.lens_entropy_bits.shape == (n, self.hidden.shape[1] - 1)

    @property
    def name(self) -> str:
        """The folder name."""
        return self.path.name

    @property
    def status(self) -> str:
        """``running``, ``complete`` or ``cancelled``."""
        return str(self.manifest.get("status", "unknown"))

    @property
    def regimes(self) -> tuple[str, ...]:
        """Regimes in the order they were run."""
        return tuple(self.manifest["regimes"])

    @property
    def n_layers(self) -> int:
        """L (``hidden`` has L + 1 layers)."""
        return int(self.manifest["n_layers"])

    @property
    def n_planned(self) -> int:
        """Rows planned (items × regimes)."""
        return int(self.manifest.get("n_rows_planned", len(self.table)))

    def states(self, layer: int, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, d) float32 states of one layer for the given table rows (all rows by default)."""
        idx = self.table["row"].to_numpy() if rows is None else np.asarray(rows, dtype=np.int64)
        return self.hidden[idx, layer, :].astype(np.float32)


@dataclass(frozen=True)
class RunInfo:
    """A saved run, as listed without loading its states."""

    name: str
    path: Path
    status: str
    created: str
    model_label: str
    dataset_name: str
    regimes: tuple[str, ...]
    n_rows_done: int
    n_rows_planned: int
    mtime: float
    """Modification time of ``items.jsonl`` (or the manifest): a cache key that changes as the run grows."""
    in_progress: bool = False
    """A live process on this machine is writing the run right now."""

    @property
    def label(self) -> str:
        """One line for run pickers (:meth:`picker_label` of a run no job is writing)."""
        return self.picker_label()

    def picker_label(self, writing: bool = False) -> str:
        """One short line for every run picker: name · model · rows · state.

        The regimes are added only when the folder name does not already spell them. A run a
        background job is writing shows no count (``being written (progress above)``): a picker
        is drawn once per page run, so its count would lag the job's live bar beside it.
        """
        parts = [self.name, self.model_label.split("/")[-1]]
        if not all(r in self.name for r in self.regimes):
            parts.append(",".join(self.regimes))
        if writing:
            parts.append("being written (progress above)")
        else:
            done = self.n_rows_done
            parts.append(f"{done} rows" if done == self.n_rows_planned else f"{done}/{self.n_rows_planned} rows")
            parts.append(status_label(self.status, self.in_progress))
        return " · ".join(parts)


def write_shard(path: Path, rows: np.ndarray, hidden: np.ndarray, lens: np.ndarray) -> None:
    """Write one batch's shard atomically.

    Args:
        path: The shard file (:func:`shard_path`).
        rows: (B,) plan rows of the batch.
        hidden: (B, L + 1, d) states, stored as float16.
        lens: (B, L) logit-lens entropy per layer, bits, stored as float32.

    """
    atomic_write_npz(path, rows=rows.astype(np.int64), hidden=hidden.astype(np.float16),
                     lens_entropy_bits=lens.astype(np.float32))


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a run folder, checked for kind and format version.

    Raises:
        DataError: no manifest, unreadable, another kind of folder or another format version.

    """
    folder = Path(path)
    file = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataError(f"Run folder {str(folder)!r} does not exist.")
    if not file.is_file():
        raise DataError(f"{str(folder)!r} is not a study run folder: it has no {MANIFEST_FILE}.")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"The manifest of {folder.name!r} is not valid JSON ({exc}); the run folder is damaged.") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != RUN_KIND:
        raise DataError(f"{folder.name!r} is not a study run folder (its manifest is not a {RUN_KIND} manifest).")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"Run {folder.name!r} has format version {version!r}; this version of the app reads version "
            f"{FORMAT_VERSION}. Re-run the study (or open it with the version that wrote it)."
        )
    for key in ("regimes", "n_layers", "d_model"):
        if key not in manifest:
            raise DataError(f"The manifest of {folder.name!r} lacks {key!r}; the run folder is damaged.")
    _check_manifest_fields(folder, manifest)
    return manifest


def _check_manifest_fields(folder: Path, m: dict[str, Any]) -> None:
    """Refuse manifest fields of the wrong type or range (they are read with ``int()``/``tuple()`` later)."""
    def bad(key: str, want: str) -> DataError:
        return DataError(f"The manifest of {folder.name!r} has {key} = {m[key]!r:.60}; expected {want}. The run folder is damaged.")

    regimes = m["regimes"]
    if not isinstance(regimes, list) or not regimes or not all(isinstance(r, str) and r for r in regimes):
        raise bad("regimes", "a non-empty list of regime names")
    for key, low in (("n_layers", 1), ("d_model", 1), ("n_rows_planned", 0), ("n_rows_done", 0), ("batch_size", 1)):
        if key in m and not (isinstance(m[key], int) and not isinstance(m[key], bool) and low <= m[key] <= 2**31):
            raise bad(key, f"an integer ≥ {low}")
    for key in ("status", "model_label", "created"):
        if key in m and not isinstance(m[key], str):
            raise bad(key, "text")
    if "dataset" in m and not (isinstance(m["dataset"], dict) and isinstance(m["dataset"].get("name", ""), str)):
        raise bad("dataset", "an object with a 'name'")
    digest = m.get("model_weights_sha256")  # written by the runner; a policy fitted on the run pins it
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
        raise bad("model_weights_sha256", "null or a SHA-256 (64 lowercase hex digits)")


def read_rows(folder: Path) -> tuple[dict[int, RunRow], bool]:
    """The rows of a folder's ``items.jsonl`` by plan row, and whether its last line was cut off.

    A bad last line is an append interrupted half-way (a crash mid-write): it is skipped and
    flagged, so that batch is redone. A bad line anywhere else is damage.

    Raises:
        DataError: a line before the last is not JSON or not a valid :class:`RunRow` (named with its number).

    """
    file = folder / ITEMS_FILE
    rows: dict[int, RunRow] = {}
    if not file.is_file():
        return rows, False
    lines = file.read_text(encoding="utf-8", errors="replace").split("\n")
    truncated = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = RunRow.from_json(json.loads(line))
        except (json.JSONDecodeError, DataError) as exc:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip()):
                truncated = True  # an append interrupted half-way: that batch is redone
                continue
            raise DataError(f"{ITEMS_FILE} of {folder.name!r} is damaged at line {number} ({exc}).") from exc
        rows[record.row] = record
    return rows, truncated


def _jsonl(rows: Sequence[RunRow]) -> bytes:
    return "".join(json.dumps(r.to_json(), ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode("utf-8")


def append_rows(folder: Path, rows: Sequence[RunRow]) -> None:
    """Append rows to ``items.jsonl`` as one write, flushed and fsynced before returning."""
    with open(folder / ITEMS_FILE, "ab") as fh:
        fh.write(_jsonl(rows))
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_rows(folder: Path, rows: Sequence[RunRow]) -> None:
    """Replace ``items.jsonl`` atomically with exactly these rows (in the given order)."""
    atomic_write_bytes(folder / ITEMS_FILE, _jsonl(rows))


def shard_files(folder: Path) -> list[Path]:
    """The folder's shard files, in index order."""
    return sorted((folder / STATES_DIR).glob("shard-*.npz"))


_SHARD_ARRAYS = ("rows", "hidden", "lens_entropy_bits")


def _shard_headers(file: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype each array of a shard declares, read from the ``.npy`` headers without loading data.

    Raises:
        DataError: not a zip of ``.npy`` files, an array missing, or an array declaring more bytes than its
            zip member holds (a forged header would otherwise make ``np.load`` allocate that much).

    """
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(file) as zf:
            for name in _SHARD_ARRAYS:
                info = zf.getinfo(f"{name}.npy")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    if dtype.hasobject:
                        raise ValueError(f"array {name!r} holds Python objects (pickles), which are never loaded")
                    size = math.prod(shape) * dtype.itemsize
                    if size > info.file_size - fh.tell():
                        raise DataError(
                            f"State file {file.name}: array {name!r} declares shape {shape} {dtype} ({size:,} bytes) "
                            f"but holds {info.file_size:,} bytes; the run folder is damaged."
                        )
                out[name] = (tuple(shape), dtype)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"State file {file.name} is damaged or not a study shard ({exc}).") from exc
    return out


def _check_shard_shapes(file: Path, n_layers: int, d_model: int) -> None:
    """Refuse a shard whose declared shapes/dtypes do not match the manifest, before anything is loaded."""
    h = _shard_headers(file)
    (rows_shape, rows_dtype), (hidden_shape, hidden_dtype), (lens_shape, lens_dtype) = (h[n] for n in _SHARD_ARRAYS)
    if len(rows_shape) != 1 or rows_dtype.kind not in "iu":
        raise DataError(f"State file {file.name} has rows of shape {rows_shape} ({rows_dtype}); expected (B,) integers. "
                        "The run folder is damaged.")
    b = rows_shape[0]
    if hidden_shape != (b, n_layers + 1, d_model) or lens_shape != (b, n_layers) or hidden_dtype != np.float16 \
            or lens_dtype.kind != "f":
        raise DataError(
            f"State file {file.name} has shapes {hidden_shape}/{lens_shape} ({hidden_dtype}); the manifest says "
            f"L={n_layers}, d={d_model}, float16. The run folder is damaged."
        )


def read_shard(file: Path, n_layers: int, d_model: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One states shard: ``(rows, hidden, lens)``, shapes checked against the manifest's (DataError if not)."""
    _check_shard_shapes(file, n_layers, d_model)
    try:
        with np.load(file, allow_pickle=False) as data:
            rows, hidden, lens = data["rows"], data["hidden"], data["lens_entropy_bits"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"State file {file.name} is damaged or not a study shard ({exc}).") from exc
    return rows.astype(np.int64), hidden, lens.astype(np.float32)


def shard_rows(file: Path) -> np.ndarray:
    """(B,) int64 plan rows a shard holds; empty when the shard is unreadable or malformed (it is then redone)."""
    try:
        shape, dtype = _shard_headers(file)["rows"]
        if len(shape) != 1 or dtype.kind not in "iu":
            return np.zeros(0, dtype=np.int64)
        with np.load(file, allow_pickle=False) as data:
            return data["rows"].astype(np.int64)
    except (DataError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return np.zeros(0, dtype=np.int64)


def load_run(path: Path | str) -> StudyRun:
    """Open a run folder (complete, cancelled or still running) without recomputing anything.

    Only rows whose states and record both exist are included.

    Raises:
        DataError: not a run folder, another format version, or damaged files.

    """
    folder = Path(path)
    manifest = read_manifest(folder)
    n_layers, d_model = int(manifest["n_layers"]), int(manifest["d_model"])
    records, _ = read_rows(folder)
    hidden_parts, lens_parts, row_parts = [], [], []
    for file in shard_files(folder):
        rows, hidden, lens = read_shard(file, n_layers, d_model)
        keep = np.array([int(r) in records for r in rows], dtype=bool)
        row_parts.append(rows[keep])
        hidden_parts.append(hidden[keep])
        lens_parts.append(lens[keep])
    if row_parts:
        plan_rows = np.concatenate(row_parts)
        hidden = np.concatenate(hidden_parts)
        lens = np.concatenate(lens_parts)
    else:
        plan_rows = np.zeros(0, dtype=np.int64)
        hidden = np.zeros((0, n_layers + 1, d_model), dtype=np.float16)
        lens = np.zeros((0, n_layers), dtype=np.float32)
    missing = sorted(set(records) - set(plan_rows.tolist()))
    if missing:
        raise DataError(
            f"{ITEMS_FILE} of {folder.name!r} lists {len(missing)} row(s) whose states are missing "
            f"(first: row {missing[0]}); a state file was deleted. Re-run the study to restore them."
        )
    if len(np.unique(plan_rows)) != len(plan_rows):
        raise DataError(f"Run {folder.name!r} stores some rows twice; the run folder is damaged.")
    order = np.argsort(plan_rows, kind="stable")
    plan_rows, hidden, lens = plan_rows[order], hidden[order], lens[order]
    table = table_from_rows([records[int(r)] for r in plan_rows])
    return StudyRun(folder, manifest, table, np.ascontiguousarray(hidden), np.ascontiguousarray(lens))


def list_runs(root: Path | str | None = None) -> list[RunInfo]:
    """Run folders under ``root`` (default :func:`runs_root`), newest first; damaged ones are skipped."""
    base = Path(root) if root is not None else runs_root()
    if not base.is_dir():
        return []
    out = []
    for folder in base.iterdir():
        if not folder.is_dir():
            continue
        try:
            m = read_manifest(folder)
        except DataError:
            continue
        stamp = run_mtime(folder)
        out.append(RunInfo(
            name=folder.name, path=folder, status=str(m.get("status", "unknown")), created=str(m.get("created", "")),
            model_label=str(m.get("model_label", "")), dataset_name=str(m.get("dataset", {}).get("name", "")),
            regimes=tuple(m["regimes"]), n_rows_done=int(m.get("n_rows_done", 0)),
            n_rows_planned=int(m.get("n_rows_planned", 0)), mtime=stamp, in_progress=run_in_progress(folder),
        ))
    return sorted(out, key=lambda r: r.mtime, reverse=True)


def status_label(status: str, in_progress: bool) -> str:
    """What to call a run's state in lists and headers.

    ``in progress`` while a live process writes it, ``interrupted`` when its manifest says
    ``running`` but no process does, else its manifest status.
    """
    if in_progress:
        return "in progress"
    return "interrupted" if status == "running" else status


def run_mtime(path: Path | str) -> float:
    """Latest modification time of a run's ``items.jsonl`` and manifest (0.0 if neither exists).

    It changes as a run grows, so it is the cache key of a loaded run (:attr:`RunInfo.mtime`).
    """
    folder = Path(path)
    files = (folder / MANIFEST_FILE, folder / ITEMS_FILE)
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def shard_index(file: Path) -> int:
    """The batch index ``k`` of ``shard-KKKKK.npz`` (−1 for a file not named so)."""
    try:
        return int(file.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def shard_path(folder: Path, k: int) -> Path:
    """The shard file of batch ``k``."""
    return folder / STATES_DIR / f"shard-{k:05d}.npz"
