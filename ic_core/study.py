"""Study runs: a prompt set × regimes → states, outputs and grades, saved to a run folder.

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
finished only when both exist. Calling :func:`run_study` again on the same folder with the
same settings redoes only unfinished batches, with the same batch composition, so the result
equals an uninterrupted run. Only the last prompt token's state is kept (float16), never
whole sequences. Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ic_core.datasets import PromptItem, items_jsonl, items_sha256, load_items
from ic_core.errors import DataError, ICError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT, GenerationConfig
from ic_core.prompts import REGIMES, PromptTemplate, RenderedPrompt, render, template_for

FORMAT_VERSION = 1
RUN_KIND = "ic_core.study_run"
MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.jsonl"
DATASET_FILE = "dataset.jsonl"
LOCK_FILE = "run.lock"
"""Present while a process writes the run: {pid, host, started}. A lock of a dead process is ignored."""
STATES_DIR = "states"
COT_MIN_NEW_TOKENS = 192
"""Chain of thought needs room to reason before its ``####`` line."""
READOUT_NAMES = {"H_int": "H_int (last prompt token)", "H_slot": "H_slot (after the answer prefix)"}
MAX_LIMIT = 1000
"""Most items per study in the app (the engine accepts more)."""
F16_MAX = float(np.finfo(np.float16).max)
"""States are stored as float16; larger magnitudes are clipped and counted in the manifest."""
RUNS_ENV = "IC_RUNS_DIR"
IDENTITY_KEYS: tuple[str, ...] = (
    "model", "regimes", "templates", "use_item_prefix", "answer_prefix", "dataset_items_sha256",
    "n_items", "generation", "generate", "seed",
)
"""Manifest fields that must match for :func:`run_study` to resume a folder."""

TABLE_COLUMNS: tuple[str, ...] = (
    "row", "item_id", "regime", "question", "kind", "expected", "output_text", "extracted_answer", "correct",
    "grade_rule", "h_int_bits", "h_int_top100_bits", "top1_prob", "mean_token_entropy_bits", "n_prompt_tokens",
    "readout_token", "signal", "answer_prefix", "tags",
)
"""Columns every :attr:`StudyRun.table` has (more follow them)."""

ProgressFn = Callable[[int, int, float | None, str], None]
CancelFn = Callable[[], bool]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_ACTIVE: set[str] = set()
"""Run folders this process is writing (the app runs studies in several threads)."""
_ACTIVE_LOCK = threading.RLock()


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run folders are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))


def _write_shard(path: Path, rows: np.ndarray, hidden: np.ndarray, lens: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, rows=rows.astype(np.int64), hidden=hidden.astype(np.float16), lens_entropy_bits=lens.astype(np.float32))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return manifest


def _read_rows(folder: Path) -> tuple[dict[int, dict[str, Any]], bool]:
    """Rows of items.jsonl by plan row; the flag says the last line was cut off (crash mid-write)."""
    file = folder / ITEMS_FILE
    rows: dict[int, dict[str, Any]] = {}
    if not file.is_file():
        return rows, False
    lines = file.read_text(encoding="utf-8", errors="replace").split("\n")
    truncated = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            plan_row = int(record["row"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip()):
                truncated = True  # an append interrupted half-way: that batch is redone
                continue
            raise DataError(f"{ITEMS_FILE} of {folder.name!r} is damaged at line {number} ({exc}).") from exc
        rows[plan_row] = record
    return rows, truncated


def _shard_files(folder: Path) -> list[Path]:
    return sorted((folder / STATES_DIR).glob("shard-*.npz"))


def _read_shard(file: Path, n_layers: int, d_model: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as data:
            rows, hidden, lens = data["rows"], data["hidden"], data["lens_entropy_bits"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"State file {file.name} is damaged or not a study shard ({exc}).") from exc
    b = rows.shape[0]
    if hidden.shape != (b, n_layers + 1, d_model) or lens.shape != (b, n_layers) or hidden.dtype != np.float16:
        raise DataError(
            f"State file {file.name} has shapes {hidden.shape}/{lens.shape} ({hidden.dtype}); the manifest says "
            f"L={n_layers}, d={d_model}, float16. The run folder is damaged."
        )
    return rows.astype(np.int64), hidden, lens.astype(np.float32)


def _shard_rows(file: Path) -> np.ndarray:
    try:
        with np.load(file, allow_pickle=False) as data:
            return data["rows"].astype(np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
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
    records, _ = _read_rows(folder)
    hidden_parts, lens_parts, row_parts = [], [], []
    for file in _shard_files(folder):
        rows, hidden, lens = _read_shard(file, n_layers, d_model)
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
    table = _table([records[int(r)] for r in plan_rows])
    return StudyRun(folder, manifest, table, np.ascontiguousarray(hidden), np.ascontiguousarray(lens))


def _table(records: list[dict[str, Any]]) -> pd.DataFrame:
    extra = ("plan_row", "output_source", "stop_reason", "n_generated_tokens", "max_new_tokens", "generate_s",
             "readout_index", "readout_is_formatting", "skipped_tokens", "top_tokens", "choices", "aliases",
             "user_text", "item_prefix_used", "generated_tokens", "token_entropies_bits")
    columns = list(TABLE_COLUMNS) + list(extra)
    data = {c: [] for c in columns}
    for i, rec in enumerate(records):
        for c in columns:
            if c == "row":
                data[c].append(i)
            elif c == "plan_row":
                data[c].append(int(rec["row"]))
            else:
                data[c].append(rec.get(c))
    # object columns keep None as None (pandas 3 would turn missing text into NaN)
    table = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
    for c in ("h_int_bits", "h_int_top100_bits", "top1_prob", "mean_token_entropy_bits", "generate_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    for c in ("row", "plan_row", "n_prompt_tokens"):
        table[c] = table[c].astype(np.int64)
    return table


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
        items = folder / ITEMS_FILE
        stamp = max((items.stat().st_mtime if items.exists() else 0.0), (folder / MANIFEST_FILE).stat().st_mtime)
        out.append(RunInfo(
            name=folder.name, path=folder, status=str(m.get("status", "unknown")), created=str(m.get("created", "")),
            model_label=str(m.get("model_label", "")), dataset_name=str(m.get("dataset", {}).get("name", "")),
            regimes=tuple(m["regimes"]), n_rows_done=int(m.get("n_rows_done", 0)),
            n_rows_planned=int(m.get("n_rows_planned", 0)), mtime=stamp, in_progress=run_in_progress(folder),
        ))
    return sorted(out, key=lambda r: r.mtime, reverse=True)


# ---------------------------------------------------------------- running a study


@dataclass(frozen=True)
class _Planned:
    row: int
    item: PromptItem
    regime: str
    rendered: RenderedPrompt
    item_prefix_used: bool


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import ic_core

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "ic_core": ic_core.__version__,
    }


def _prefix_for(item: PromptItem, regime: str, use_item_prefix: bool, answer_prefix: str | None) -> tuple[str | None, bool]:
    """Forced prefixes apply to the direct regime only (CoT must reason first; babble must not answer)."""
    if regime != "direct":
        return None, False
    if use_item_prefix and item.answer_prefix:
        return item.answer_prefix, True
    return (answer_prefix or "").strip() or None, False


def _templates(items: Sequence[PromptItem], regimes: Sequence[str], answer_prefix: str | None) -> dict[str, Any]:
    kinds = sorted({it.kind for it in items})
    out: dict[str, Any] = {}
    for regime in regimes:
        out[regime] = {}
        for kind in kinds:
            t = template_for(regime, kind, answer_prefix if regime == "direct" else None)
            out[regime][kind] = {"user": t.user, "system": t.system, "answer_prefix": t.answer_prefix}
    return out


def _gen_by_regime(config: GenerationConfig, regimes: Sequence[str]) -> dict[str, int]:
    cot = min(MAX_NEW_TOKENS_LIMIT, max(config.max_new_tokens, COT_MIN_NEW_TOKENS))
    return {r: (cot if r == "cot" else config.max_new_tokens) for r in regimes}


def _plan(
    loaded: Any, items: Sequence[PromptItem], regimes: Sequence[str], use_item_prefix: bool, answer_prefix: str | None
) -> list[_Planned]:
    max_ctx = getattr(loaded.model.config, "max_position_embeddings", None)
    plan, problems = [], []
    for item in items:
        for regime in regimes:
            prefix, used = _prefix_for(item, regime, use_item_prefix, answer_prefix)
            template: PromptTemplate = template_for(regime, item.kind, prefix)
            try:
                rendered = render(loaded.tokenizer, item.question, template, item.choices, "last", max_ctx)
            except ICError as exc:
                problems.append(f"{item.id} ({regime}): {exc}")
                continue
            plan.append(_Planned(len(plan), item, regime, rendered, used))
    if problems:
        raise DataError(f"{len(problems)} prompt(s) cannot be rendered; fix or remove them: " + "; ".join(problems[:5]))
    return plan


def _new_manifest(
    loaded: Any, items: Sequence[PromptItem], regimes: Sequence[str], config: GenerationConfig, *, folder: Path,
    dataset_name: str, dataset_sha256: str | None, n_items_in_set: int, limit: int | None, use_item_prefix: bool,
    answer_prefix: str | None, batch_size: int, generate: bool, seed: int, n_rows: int,
) -> dict[str, Any]:
    manifest = {
        "kind": RUN_KIND,
        "format_version": FORMAT_VERSION,
        "name": folder.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": loaded.spec.to_dict(),
        "model_label": loaded.spec.label,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "vocab_size": loaded.vocab_size,
        "chat_template_used": loaded.has_chat_template,
        "regimes": list(regimes),
        "templates": _templates(items, regimes, answer_prefix),
        "use_item_prefix": use_item_prefix,
        "answer_prefix": (answer_prefix or "").strip() or None,
        "dataset": {"name": dataset_name, "sha256": dataset_sha256, "n_items_in_set": n_items_in_set, "limit": limit},
        "dataset_items_sha256": items_sha256(items),
        "n_items": len(items),
        "generation": {"config": asdict(config), "max_new_tokens_by_regime": _gen_by_regime(config, regimes)},
        "generate": generate,
        "seed": seed,
        "batch_size": batch_size,
        "state_dtype": "float16",
        "versions": _versions(),
        "n_rows_planned": n_rows,
        "n_rows_done": 0,
        "elapsed_s": 0.0,
        "status": "running",
    }
    return json.loads(json.dumps(manifest))  # the same types a re-read manifest has


def _open_folder(folder: Path, manifest: dict[str, Any], items: Sequence[PromptItem]) -> dict[str, Any]:
    """Start a new run folder, or check that an existing one is the same study and return its manifest."""
    if (folder / MANIFEST_FILE).exists():
        old = read_manifest(folder)
        diff = [k for k in IDENTITY_KEYS if old.get(k) != manifest.get(k)]
        if diff:
            raise DataError(
                f"Run folder {folder.name!r} holds a different study (differs in: {', '.join(diff)}). "
                "Choose another run name, or repeat the original settings to resume it."
            )
        return old
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{str(folder)!r} exists and is not a study run folder; choose another name.")
    (folder / STATES_DIR).mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(folder / DATASET_FILE, items_jsonl(items).encode("utf-8"))
    _write_json(folder / MANIFEST_FILE, manifest)
    return manifest


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


def _acquire_lock(folder: Path) -> None:
    with _ACTIVE_LOCK:
        owner = _lock_owner(folder)
        if owner is not None:
            raise DataError(
                f"Run {folder.name!r} is being written by process {owner.get('pid')} on {owner.get('host')} "
                f"(started {owner.get('started')}). Wait for it to finish, or stop that process first."
            )
        info = {"pid": os.getpid(), "host": platform.node(),
                "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        _atomic_write_bytes(folder / LOCK_FILE, json.dumps(info).encode("utf-8"))
        _ACTIVE.add(str(folder.resolve()))


def _release_lock(folder: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(folder.resolve()))
        (folder / LOCK_FILE).unlink(missing_ok=True)


def _finished_batches(folder: Path, n_rows: int, batch_size: int) -> set[int]:
    """Batches whose every row has its record and states; unfinished leftovers are removed."""
    records, truncated = _read_rows(folder)
    in_shards: set[int] = set()
    for file in _shard_files(folder):
        in_shards.update(int(r) for r in _shard_rows(file))
    done_rows = set(records) & in_shards
    n_batches = math.ceil(n_rows / batch_size)
    done = {k for k in range(n_batches) if all(r in done_rows for r in range(k * batch_size, min(n_rows, (k + 1) * batch_size)))}
    keep = {r: rec for r, rec in records.items() if r // batch_size in done}
    if truncated or len(keep) != len(records):
        lines = "".join(json.dumps(keep[r], ensure_ascii=False, allow_nan=False) + "\n" for r in sorted(keep))
        _atomic_write_bytes(folder / ITEMS_FILE, lines.encode("utf-8"))
    for file in _shard_files(folder):
        if _shard_index(file) not in done:
            file.unlink()
    return done


def _shard_index(file: Path) -> int:
    try:
        return int(file.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _shard_path(folder: Path, k: int) -> Path:
    return folder / STATES_DIR / f"shard-{k:05d}.npz"


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _record(p: _Planned, state: Any, tokenizer: Any, gen: Any, output: str | None, source: str | None,
            grade_result: Any, max_new: int | None) -> dict[str, Any]:
    item = p.item
    top = [[tokenizer.decode([int(i)]), float(q)] for i, q in zip(state.top_ids[:5], state.top_probs[:5])]
    return {
        "row": p.row,
        "item_id": item.id,
        "regime": p.regime,
        "question": item.question,
        "kind": item.kind,
        "expected": item.answer,
        "aliases": list(item.aliases),
        "choices": list(item.choices),
        "tags": list(item.tags),
        "output_text": output,
        "output_source": source,
        "extracted_answer": grade_result.extracted if grade_result else None,
        "correct": grade_result.correct if grade_result else None,
        "grade_rule": grade_result.rule if grade_result else None,
        "h_int_bits": _finite(state.h_int_bits),
        "h_int_top100_bits": _finite(state.h_int_top100_bits),
        "top1_prob": _finite(state.top1_prob),
        "top_tokens": top,
        "mean_token_entropy_bits": _finite(gen.mean_entropy_bits) if gen is not None else None,
        "generated_tokens": list(gen.tokens) if gen is not None else None,
        "token_entropies_bits": [round(float(h), 4) for h in gen.entropy_bits] if gen is not None else None,
        "n_generated_tokens": len(gen.token_ids) if gen is not None else None,
        "stop_reason": gen.stop_reason if gen is not None else None,
        "max_new_tokens": max_new,
        "generate_s": gen.elapsed_s if gen is not None else None,
        "n_prompt_tokens": p.rendered.n_tokens,
        "readout_index": p.rendered.readout_index,
        "readout_token": p.rendered.readout_token,
        "readout_is_formatting": p.rendered.readout_is_formatting,
        "skipped_tokens": [tokenizer.decode([i]) for i in state.skipped_ids],
        "signal": "H_slot" if p.rendered.answer_prefix else "H_int",
        "answer_prefix": p.rendered.answer_prefix,
        "item_prefix_used": p.item_prefix_used,
        "user_text": p.rendered.user_text,
    }


def run_study(
    loaded: Any,
    items: Sequence[PromptItem],
    regimes: Sequence[str],
    out_dir: Path | str,
    limit: int | None = None,
    gen_config: GenerationConfig | None = None,
    use_item_prefix: bool = True,
    answer_prefix: str | None = None,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    generate: bool = True,
    seed: int = 0,
    dataset_name: str = "custom",
    dataset_sha256: str | None = None,
) -> StudyRun:
    """Run (or resume) a study and return it loaded from its folder.

    For every item (the first ``limit``) and regime: render the prompt, read the state with
    one batched forward pass, then generate (greedy unless configured; CoT gets at least
    :data:`COT_MIN_NEW_TOKENS` new tokens) and grade. Items that carry an ``output`` are
    graded from it, without generating. Results are written after every batch.

    Args:
        loaded: The model (a :class:`ic_core.models.LoadedModel`).
        items: The prompt set.
        regimes: Subset of :data:`ic_core.prompts.REGIMES`, in the order to run them.
        out_dir: The run folder (created; or resumed when it holds the same study).
        limit: Use only the first ``limit`` items.
        gen_config: Decoding settings (default: greedy, 64 new tokens).
        use_item_prefix: In the direct regime, read the state after each item's
            ``answer_prefix`` (H_slot) instead of at the end of the prompt.
        answer_prefix: A forced prefix for direct-regime items without their own.
        batch_size: Rows per batch (one forward pass and one shard each). A resumed run keeps
            the batch size it was started with, so the batches are the same.
        progress: Called as ``progress(done_rows, total_rows, eta_s, message)``.
        cancel: Polled between generations; when it returns True the run stops, keeping
            every finished row (status ``cancelled``).
        generate: False reads states (and grades dataset outputs) without generating.
        seed: Seed of sampling (row ``r`` uses ``seed + r``); recorded in the manifest.
        dataset_name: Name recorded in the manifest.
        dataset_sha256: Hash of the source file, recorded in the manifest.

    Raises:
        DataError: unknown regimes, no items, unrenderable prompts, or a folder holding another study.

    """
    regimes = list(dict.fromkeys(regimes))
    bad = [r for r in regimes if r not in REGIMES]
    if not regimes or bad:
        raise DataError(f"Choose regimes among {', '.join(REGIMES)} (got {', '.join(regimes) or 'none'}).")
    if limit is not None and limit < 1:
        raise DataError(f"The item limit must be at least 1 (got {limit}).")
    if batch_size < 1:
        raise DataError(f"The batch size must be at least 1 (got {batch_size}).")
    n_in_set = len(items)
    items = list(items)[: limit] if limit is not None else list(items)
    if not items:
        raise DataError("The prompt set has no items to run.")
    config = gen_config or GenerationConfig()
    folder = Path(out_dir)
    plan = _plan(loaded, items, regimes, use_item_prefix, answer_prefix)
    manifest = _open_folder(folder, _new_manifest(
        loaded, items, regimes, config, folder=folder, dataset_name=dataset_name, dataset_sha256=dataset_sha256,
        n_items_in_set=n_in_set, limit=limit, use_item_prefix=use_item_prefix, answer_prefix=answer_prefix,
        batch_size=batch_size, generate=generate, seed=seed, n_rows=len(plan),
    ), items)
    _acquire_lock(folder)
    try:
        return _run_batches(loaded, folder, manifest, plan, config, progress, cancel, generate, seed)
    finally:
        _release_lock(folder)


def _run_batches(
    loaded: Any, folder: Path, manifest: dict[str, Any], plan: list[_Planned], config: GenerationConfig,
    progress: ProgressFn | None, cancel: CancelFn | None, generate: bool, seed: int,
) -> StudyRun:
    """The batch loop of :func:`run_study` (the folder is open and locked)."""
    from ic_core.capture import capture_batch

    batch_size = int(manifest["batch_size"])
    max_new = {r: int(n) for r, n in manifest["generation"]["max_new_tokens_by_regime"].items()}
    done_batches = _finished_batches(folder, len(plan), batch_size)
    total = len(plan)
    done_rows = sum(min(total, (k + 1) * batch_size) - k * batch_size for k in done_batches)
    manifest.update(status="running", n_rows_done=done_rows)
    _write_json(folder / MANIFEST_FILE, manifest)
    start, processed, cancelled = time.perf_counter(), 0, False
    prior_s = float(manifest.get("elapsed_s", 0.0))

    def report(message: str) -> None:
        if progress is not None:
            rate = (time.perf_counter() - start) / processed if processed else None
            progress(done_rows, total, None if rate is None else rate * (total - done_rows), message)

    report("resuming" if done_rows else "starting")
    for k in range(math.ceil(total / batch_size)):
        if k in done_batches:
            continue
        if cancel is not None and cancel():
            cancelled = True
            break
        batch = plan[k * batch_size:(k + 1) * batch_size]
        states = capture_batch(loaded, [p.rendered for p in batch], batch_size=batch_size)
        records, finished = [], []
        for p, state in zip(batch, states):
            if records and cancel is not None and cancel():
                cancelled = True
                break
            records.append(_run_row(loaded, p, state, config, max_new[p.regime], generate, seed))
            finished.append(state)
            processed += 1
            done_rows += 1
            report(f"{p.item.id} · {p.regime}")
        rows = np.array([p.row for p in batch[: len(finished)]], dtype=np.int64)
        hidden32 = np.stack([s.hidden for s in finished])
        clipped = int((np.abs(hidden32) > F16_MAX).sum())
        if clipped:  # some models have activations beyond float16's range: clip them, and say so
            manifest["n_state_values_clipped"] = int(manifest.get("n_state_values_clipped", 0)) + clipped
        hidden = np.clip(hidden32, -F16_MAX, F16_MAX).astype(np.float16)
        lens = np.stack([s.lens.entropy_bits[0] for s in finished]).astype(np.float32)
        _write_shard(_shard_path(folder, k), rows, hidden, lens)
        with open(folder / ITEMS_FILE, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        manifest.update(n_rows_done=done_rows, elapsed_s=round(prior_s + time.perf_counter() - start, 3))
        _write_json(folder / MANIFEST_FILE, manifest)
        if cancelled:
            break
    manifest.update(
        status="cancelled" if cancelled else "complete", n_rows_done=done_rows,
        elapsed_s=round(prior_s + time.perf_counter() - start, 3),
        finished=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    _write_json(folder / MANIFEST_FILE, manifest)
    report("cancelled" if cancelled else "complete")
    return load_run(folder)


def resume_run(loaded: Any, path: Path | str, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None) -> StudyRun:
    """Finish an interrupted or cancelled run with its own items and settings (from its folder).

    Raises:
        DataError: not a run folder, its item file is missing, or ``loaded`` is not the run's model.

    """
    folder = Path(path)
    m = read_manifest(folder)
    if loaded.spec.to_dict() != m["model"]:
        raise DataError(
            f"Run {folder.name!r} was made with {m.get('model_label')}; load that model (sidebar or --model) to resume it."
        )
    if not (folder / DATASET_FILE).is_file():
        raise DataError(f"Run {folder.name!r} has no {DATASET_FILE}: run the study again from its prompt set.")
    items = load_items(folder / DATASET_FILE).items
    config = GenerationConfig(**m["generation"]["config"])
    return run_study(
        loaded, items, m["regimes"], folder, gen_config=config, use_item_prefix=m["use_item_prefix"],
        answer_prefix=m["answer_prefix"], batch_size=int(m["batch_size"]), progress=progress, cancel=cancel,
        generate=m["generate"], seed=int(m["seed"]), dataset_name=m["dataset"]["name"], dataset_sha256=m["dataset"]["sha256"],
    )


def _run_row(loaded: Any, p: _Planned, state: Any, config: GenerationConfig, max_new: int, generate: bool,
             seed: int) -> dict[str, Any]:
    from ic_core.generate import generate as generate_fn
    from ic_core.grading import grade

    item, gen, source, output = p.item, None, None, None
    if item.output is not None:
        output, source = item.output, "dataset"
    elif generate:
        row_config = replace(config, max_new_tokens=max_new, seed=seed + p.row)
        gen = generate_fn(loaded, p.rendered, row_config)
        output, source = gen.answer_text, "generated"
    result = None
    if output is not None:
        result = grade(output, item.answer, item.kind, item.aliases, item.choices, item.question)
    return _record(p, state, loaded.tokenizer, gen, output, source, result, max_new if gen is not None else None)


# ---------------------------------------------------------------- summaries and comparisons


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score 95 % interval of a proportion k/n; None when n = 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _graded(frame: pd.DataFrame) -> pd.Series:
    return frame["correct"][frame["correct"].map(lambda v: isinstance(v, (bool, np.bool_)))].astype(bool)


def summarize(run: StudyRun) -> pd.DataFrame:
    """Per regime: n, n_graded, accuracy, mean/median H_int, mean top-100 H_int, mean token entropy.

    Accuracy is NaN when no row of the regime was graded.
    """
    out = []
    for regime in run.regimes:
        frame = run.table[run.table["regime"] == regime]
        graded = _graded(frame)
        out.append({
            "regime": regime,
            "n": len(frame),
            "n_graded": len(graded),
            "accuracy": float(graded.mean()) if len(graded) else math.nan,
            "mean_h_int_bits": float(frame["h_int_bits"].mean()) if len(frame) else math.nan,
            "median_h_int_bits": float(frame["h_int_bits"].median()) if len(frame) else math.nan,
            "mean_h_int_top100_bits": float(frame["h_int_top100_bits"].mean()) if len(frame) else math.nan,
            "mean_token_entropy_bits": float(frame["mean_token_entropy_bits"].mean()) if frame["mean_token_entropy_bits"].notna().any() else math.nan,
        })
    return pd.DataFrame(out, columns=["regime", "n", "n_graded", "accuracy", "mean_h_int_bits", "median_h_int_bits",
                                      "mean_h_int_top100_bits", "mean_token_entropy_bits"])


MIN_PAIRS = 6
"""Fewer paired items than this: the Wilcoxon test is not reported (its smallest p is ≥ 0.03)."""


@dataclass(frozen=True, eq=False)
class RegimeComparison:
    """The paper-form comparison of regimes on one study."""

    per_regime: pd.DataFrame
    """One row per regime: n, n_graded, accuracy, accuracy_ci_low/high (Wilson 95 %), mean_h_int_bits,
    mean_h_int_top100_bits, dim_eff_weighted_pr, dim_eff_rank_cap, plus any extra columns."""
    pairs: pd.DataFrame
    """One row per pair of regimes: regime_a, regime_b, n_pairs, mean_diff_bits (b − a), median_diff_bits,
    wilcoxon_statistic, p_value (NaN with a ``note`` when not computable)."""

    def paper_table(self) -> pd.DataFrame:
        """Formatted strings, one column per regime (accuracy [CI], H_int, dim_eff, extras)."""
        rows: dict[str, dict[str, str]] = {}
        base = {"regime", "signal", "n", "n_graded", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_h_int_bits",
                "mean_h_int_top100_bits", "dim_eff_weighted_pr", "dim_eff_rank_cap"}
        for _, r in self.per_regime.iterrows():
            acc = ("n/a (not graded)" if math.isnan(r["accuracy"])
                   else f"{100 * r['accuracy']:.1f} % [{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]")
            col = {
                "n": str(int(r["n"])),
                "Accuracy [95 % CI]": acc,
                "Read-out": READOUT_NAMES.get(r.get("signal"), "mixed (H_int and H_slot rows)"),
                "Mean entropy at the read-out (bits)": _fmt(r["mean_h_int_bits"], 2),
                "Same, top-100 variant (bits)": _fmt(r["mean_h_int_top100_bits"], 2),
                "dim_eff (weighted PR)": _fmt(r["dim_eff_weighted_pr"], 1)
                + ("" if math.isnan(r["dim_eff_weighted_pr"]) else f" (cap {int(r['dim_eff_rank_cap'])})"),
            }
            for c in self.per_regime.columns:
                if c not in base:
                    col[c] = "n/a" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c])) else str(r[c])
            rows[str(r["regime"])] = col
        return pd.DataFrame(rows)


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def regime_comparison(
    run: StudyRun, extra_columns: Mapping[str, Mapping[str, Any]] | None = None,
    dim_effs: Mapping[str, Any] | None = None,
) -> RegimeComparison:
    """Accuracy, H_int and dim_eff per regime, and paired Wilcoxon tests of H_int between regimes.

    Args:
        run: A loaded study.
        extra_columns: ``{column: {regime: value}}`` merged into ``per_regime`` (e.g. the
            probes page's ``{"Probe AUROC [95 % CI]": {"direct": "0.78 [0.72, 0.83]"}}``).
        dim_effs: :func:`dim_eff_by_regime` of this run, if already computed.

    """
    from scipy.stats import wilcoxon

    dims = dim_effs if dim_effs is not None else dim_eff_by_regime(run)
    per = []
    for regime in run.regimes:
        frame = run.table[run.table["regime"] == regime]
        graded = _graded(frame)
        ci = wilson_interval(int(graded.sum()), len(graded))
        d = dims.get(regime)
        pr = d.weighted_participation_ratio if d is not None else None
        cap = d.rank_cap if d is not None else max(0, len(frame) - 1)
        signals = set(frame["signal"].dropna()) if "signal" in frame else set()
        row: dict[str, Any] = {
            "regime": regime, "signal": signals.pop() if len(signals) == 1 else "mixed",
            "n": len(frame), "n_graded": len(graded),
            "accuracy": float(graded.mean()) if len(graded) else math.nan,
            "accuracy_ci_low": ci[0] if ci else math.nan, "accuracy_ci_high": ci[1] if ci else math.nan,
            "mean_h_int_bits": float(frame["h_int_bits"].mean()) if len(frame) else math.nan,
            "mean_h_int_top100_bits": float(frame["h_int_top100_bits"].mean()) if len(frame) else math.nan,
            "dim_eff_weighted_pr": math.nan if pr is None else pr, "dim_eff_rank_cap": cap,
        }
        for column, values in (extra_columns or {}).items():
            row[column] = values.get(regime)
        per.append(row)
    wide = run.table.pivot_table(index="item_id", columns="regime", values="h_int_bits", aggfunc="first")
    pairs = []
    for i, a in enumerate(run.regimes):
        for b in run.regimes[i + 1:]:
            both = wide[[a, b]].dropna() if a in wide and b in wide else pd.DataFrame(columns=[a, b])
            diff = (both[b] - both[a]).to_numpy(dtype=float)
            entry: dict[str, Any] = {
                "regime_a": a, "regime_b": b, "n_pairs": len(diff),
                "mean_diff_bits": float(diff.mean()) if len(diff) else math.nan,
                "median_diff_bits": float(np.median(diff)) if len(diff) else math.nan,
                "wilcoxon_statistic": math.nan, "p_value": math.nan, "note": "",
            }
            if len(diff) < MIN_PAIRS:
                entry["note"] = f"n too small ({len(diff)} paired items; need ≥ {MIN_PAIRS})"
            elif np.all(diff == 0):
                entry["note"] = "all differences are zero"
            else:
                res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
                entry.update(wilcoxon_statistic=float(res.statistic), p_value=float(res.pvalue))
            pairs.append(entry)
    pair_cols = ["regime_a", "regime_b", "n_pairs", "mean_diff_bits", "median_diff_bits", "wilcoxon_statistic",
                 "p_value", "note"]
    return RegimeComparison(pd.DataFrame(per), pd.DataFrame(pairs, columns=pair_cols))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (NaN → null)."""
    return [_json_safe(r) for r in frame.to_dict(orient="records")]


def metrics_json(run: StudyRun, comparison: RegimeComparison | None = None) -> dict[str, Any]:
    """The run's headline numbers as one JSON-ready dict (CLI output, metrics download)."""
    comparison = comparison or regime_comparison(run)
    m = run.manifest
    return _json_safe({
        "run": run.name,
        "status": run.status,
        "model": m.get("model_label"),
        "dataset": m.get("dataset", {}).get("name"),
        "regimes": list(run.regimes),
        "n_rows_done": len(run.table),
        "n_rows_planned": run.n_planned,
        "elapsed_s": m.get("elapsed_s"),
        "per_regime": frame_records(comparison.per_regime),
        "pairs": frame_records(comparison.pairs),
        "summary": frame_records(summarize(run)),
    })


def items_csv(run: StudyRun) -> str:
    """The per-item table as CSV text (list columns joined with ``|``)."""
    cols = [c for c in run.table.columns if c not in ("top_tokens",)]
    frame = run.table[cols].copy()
    for c in ("tags", "choices", "aliases", "skipped_tokens"):
        frame[c] = frame[c].map(lambda v: "|".join(v) if isinstance(v, list) else "")
    return frame.to_csv(index=False)


# ---------------------------------------------------------------- placing a new prompt on the study


@dataclass(frozen=True)
class Placement:
    """Where one new state falls relative to a study's states at one layer (PCA of the study)."""

    layer: int
    scores: np.ndarray
    """(N, 2) the study rows' first two principal-component scores."""
    point: np.ndarray
    """(2,) the new state's scores."""
    explained_ratio: np.ndarray
    """(2,) variance fraction of the two components."""
    n_components: int
    """Components k used for distances (≤ N − 1, ≤ 10)."""
    nearest_distance: float
    """Euclidean distance, in the k-component PCA space, from the new state to its nearest study row."""
    nearest_row: int
    """Table row of that nearest study item."""
    study_nn_distances: np.ndarray
    """(N,) each study row's distance to its own nearest other row (same space)."""
    mahalanobis: float
    """sqrt(Σ score_j² / var_j) over the k components: how many 'standard deviations' away."""
    nn_percentile: float
    """Share (0–100) of study rows whose own nearest-neighbour distance is below ``nearest_distance``."""

    @property
    def outside(self) -> bool:
        """True when the new state is farther from the study than 95 % of study items are from each other."""
        return self.nn_percentile > 95.0


def place_state(run: StudyRun, hidden: np.ndarray, layer: int, rows: Sequence[int] | None = None) -> Placement:
    """Project one (L + 1, d) state onto the study's PCA at ``layer`` and say how far it lies.

    Raises:
        DataError: the state's shape does not match the study's model, fewer than 3 rows, or the layer is constant.

    """
    hidden = np.asarray(hidden)
    if hidden.shape != run.hidden.shape[1:]:
        raise DataError(
            f"This state has shape {hidden.shape} but the study's model gives {run.hidden.shape[1:]}: "
            "analyse the prompt with the model the study used."
        )
    idx = run.table["row"].to_numpy() if rows is None else np.asarray(rows, dtype=np.int64)
    if len(idx) < 3:
        raise DataError(f"n too small: placing a prompt needs at least 3 study rows (have {len(idx)}).")
    x = run.hidden[idx, layer, :].astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / (len(idx) - 1)
    k = int(min(10, len(idx) - 1, int((var > var[0] * 1e-9).sum()) if var.size and var[0] > 0 else 0))
    if k < 1:
        raise DataError(f"Layer {layer} is constant across the study's items: there is no spread to place a prompt in.")
    scores = centred @ vt[:k].T
    point = (hidden[layer].astype(np.float16).astype(np.float64) - mean) @ vt[:k].T
    d_all = np.sqrt(((scores[:, None, :] - scores[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d_all, np.inf)
    study_nn = d_all.min(axis=1)
    d_new = np.sqrt(((scores - point) ** 2).sum(-1))
    nearest = int(np.argmin(d_new))
    total = float(var.sum())
    ratio = var[:2] / total if total > 0 else np.zeros(2)
    two = np.zeros((len(idx), 2))
    two[:, : min(2, k)] = scores[:, : min(2, k)]
    p2 = np.zeros(2)
    p2[: min(2, k)] = point[: min(2, k)]
    return Placement(
        layer=layer, scores=two, point=p2, explained_ratio=np.pad(ratio, (0, 2 - len(ratio))),
        n_components=k, nearest_distance=float(d_new[nearest]), nearest_row=int(idx[nearest]),
        study_nn_distances=study_nn, mahalanobis=float(np.sqrt((point**2 / var[:k]).sum())),
        nn_percentile=float(100.0 * (study_nn < d_new[nearest]).mean()),
    )


# ---------------------------------------------------------------- per-layer views of the states


def dim_eff_by_regime(run: StudyRun) -> dict[str, Any]:
    """``{regime: DimEff}`` over each regime's rows (regimes with fewer than 2 rows are left out)."""
    from ic_core.metrics import dim_eff

    out = {}
    for regime in run.regimes:
        rows = run.table.loc[run.table["regime"] == regime, "row"].to_numpy()
        if len(rows) >= 2:
            out[regime] = dim_eff(run.hidden[rows].astype(np.float32))
    return out


def default_pca_layer(n_layers: int) -> int:
    """A late-middle layer (about two thirds of the depth), where states separate items best."""
    return max(1, round(2 * n_layers / 3))


@dataclass(frozen=True)
class StudyPCA:
    """First two principal components of one layer's states over some study rows."""

    layer: int
    rows: np.ndarray
    """(n,) table rows, in the order of ``scores``."""
    scores: np.ndarray
    """(n, 2) PC1/PC2 scores."""
    explained_ratio: np.ndarray
    """(2,) variance fraction of PC1 and PC2."""


def pca_of_layer(run: StudyRun, layer: int, rows: Sequence[int] | np.ndarray | None = None) -> StudyPCA:
    """PCA of the states at ``layer`` (all rows by default).

    Raises:
        DataError: fewer than 3 rows, a layer out of range, or a constant layer (PCA undefined).

    """
    from ic_core.metrics import constant_layers, pca

    if not 0 <= layer <= run.n_layers:
        raise DataError(f"Layer {layer} is out of range: the model has layers 0..{run.n_layers}.")
    idx = run.table["row"].to_numpy() if rows is None else np.asarray(rows, dtype=np.int64)
    if len(idx) < 3:
        raise DataError(f"n too small: a PCA needs at least 3 rows (have {len(idx)}).")
    x = run.hidden[idx, layer, :].astype(np.float32)
    if constant_layers(x[:, None, :]):
        raise DataError(
            f"Layer {layer} is identical for every item (e.g. the embedding of the same last token): "
            "its PCA is undefined. Pick a later layer."
        )
    scores, _, _, ratio = pca(x, 2)
    two = np.zeros((len(idx), 2))
    two[:, : scores.shape[1]] = scores
    return StudyPCA(layer, idx, two, np.pad(ratio, (0, 2 - len(ratio))))
