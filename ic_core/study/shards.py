"""Sharded studies: one run folder per share of the items, merged into the run an unsharded study makes.

``study --shard I/N`` runs the items whose id hashes to share ``I`` (1-based, of ``N``): the
split depends only on the item ids, so every machine of a job array picks its share alone. A
share is an ordinary run folder plus :data:`SHARD_FILE`, which records where its items sit in
the full (limited) set. :func:`merge_runs` checks that the shares are the same study — model
spec and weights digest, templates, settings, the same full item set, each share once — and
writes one run folder whose rows (renumbered to the unsharded plan), states and manifest are
those of the unsharded run of the same items (timings and run name aside; ``merged_from``
names the shares).

Sampling seeds row ``r`` with ``seed + r`` by its place in the unsharded plan, which the
runner does not take as an argument yet, so sharding refuses sampled decoding.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.datasets import PromptItem, items_jsonl, items_sha256, load_items
from ic_core.errors import DataError
from ic_core.io import atomic_write_bytes, atomic_write_json
from ic_core.runs.store import (
    DATASET_FILE,
    MANIFEST_FILE,
    STATES_DIR,
    StudyRun,
    load_run,
    read_manifest,
    read_rows,
    rewrite_rows,
    shard_path,
    write_shard,
)

if TYPE_CHECKING:
    from ic_core.models import LoadedModel

SHARD_FILE = "study_shard.json"
SHARD_KIND = "ic_core.study_shard"
SAME_KEYS: tuple[str, ...] = (
    "model", "model_weights_sha256", "n_layers", "d_model", "vocab_size", "chat_template_used", "regimes",
    "use_item_prefix", "answer_prefix", "generation", "generate", "seed", "second_digit_slot",
    "batch_size", "state_dtype",
)
"""Manifest fields every share must agree on (the model's identity and the study's settings); the
templates too, for the task kinds two shares both hold (:func:`merged_templates`)."""
SUMMED_KEYS = ("n_rows_planned", "n_rows_done", "elapsed_s", "n_state_values_clipped")


@dataclass(frozen=True)
class ShardSpec:
    """Share ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardSpec:
    """``I/N`` with 1 ≤ I ≤ N → :class:`ShardSpec`.

    Raises:
        DataError: anything else, in one line.

    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise DataError(f"--shard {text!r}: give I/N with 1 <= I <= N, e.g. --shard 2/4 (the second of four shares).")
    return ShardSpec(int(match.group(1)), int(match.group(2)))


def share_of(item_id: str, count: int) -> int:
    """The 0-based share of an item: SHA-256 of its id, mod ``count`` (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % count


def select(items: Sequence[PromptItem], shard: ShardSpec) -> list[int]:
    """Positions (in ``items``) of the items of ``shard``, in order."""
    return [i for i, item in enumerate(items) if share_of(item.id, shard.count) == shard.index - 1]


def run_shard(
    loaded: LoadedModel, items: Sequence[PromptItem], regimes: Sequence[str], out_dir: Path | str, shard: ShardSpec,
    limit: int | None = None, dataset_name: str = "custom", dataset_sha256: str | None = None, **run_kwargs: Any,
) -> StudyRun:
    """Run one share of a study (:func:`ic_core.study.runner.run_study` on its items) and record it as a share.

    Args:
        loaded: The model.
        items: The whole prompt set (the share is taken after ``limit``).
        regimes: As for ``run_study``.
        out_dir: This share's run folder (resumed when it holds the same share).
        shard: Which share.
        limit: Use only the first ``limit`` items of the set, then split.
        dataset_name: Recorded in the manifest.
        dataset_sha256: Recorded in the manifest.
        **run_kwargs: Other ``run_study`` arguments (the same for every share).

    Raises:
        DataError: sampled decoding, a share with no items, or what ``run_study`` raises.

    """
    from ic_core.study.runner import run_study

    config = run_kwargs.get("gen_config")
    if config is not None and config.do_sample and run_kwargs.get("generate", True):
        raise DataError("--shard runs greedy studies only: a sampled row's seed is its place in the whole plan, "
                        "which a share does not know; drop --sample (or run unsharded).")
    if limit is not None and limit < 1:
        raise DataError(f"The item limit must be at least 1 (got {limit}).")
    chosen = list(items)[:limit] if limit is not None else list(items)
    positions = select(chosen, shard)
    if not positions:
        raise DataError(f"Share {shard} of {len(chosen)} items is empty (item ids hash elsewhere): use fewer shares.")
    folder = Path(out_dir)
    info = {
        "kind": SHARD_KIND, "index": shard.index, "count": shard.count, "n_items_in_set": len(items), "limit": limit,
        "dataset_name": dataset_name, "dataset_sha256": dataset_sha256, "items_sha256": items_sha256(chosen),
        "n_items": len(chosen), "positions": positions,
    }
    if (folder / SHARD_FILE).is_file() and _read_info(folder) != info:
        raise DataError(f"Run folder {folder.name!r} holds another share or study; choose another --out.")
    run = run_study(loaded, [chosen[i] for i in positions], regimes, folder, dataset_name=dataset_name,
                    dataset_sha256=dataset_sha256, **run_kwargs)
    atomic_write_json(folder / SHARD_FILE, info)
    return run


def _read_info(folder: Path) -> dict[str, Any]:
    file = folder / SHARD_FILE
    if not file.is_file():
        raise DataError(f"{folder.name!r} is not a study share (no {SHARD_FILE}): run it with study --shard I/N.")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{SHARD_FILE} of {folder.name!r} is not valid JSON ({exc}).") from exc
    if not isinstance(info, dict) or info.get("kind") != SHARD_KIND:
        raise DataError(f"{SHARD_FILE} of {folder.name!r} is not a study share record.")
    return info


@dataclass(frozen=True)
class _Share:
    folder: Path
    info: dict[str, Any]
    manifest: dict[str, Any]
    run: StudyRun


def _open_share(path: Path | str) -> _Share:
    folder = Path(path)
    manifest = read_manifest(folder)
    info = _read_info(folder)
    if manifest.get("status") != "complete":
        raise DataError(f"Share {folder.name!r} is {manifest.get('status')!r}, not complete: run it again to finish it.")
    return _Share(folder, info, manifest, load_run(folder))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "…"


def check_same_study(shares: Sequence[_Share]) -> None:
    """Refuse shares that are not all of one study, or a missing / repeated share.

    Raises:
        DataError: one line naming the first field that differs and the two shares.

    """
    first = shares[0]
    for other in shares[1:]:
        for key in SAME_KEYS:
            if first.manifest.get(key) != other.manifest.get(key):
                raise DataError(
                    f"Shares {first.folder.name!r} and {other.folder.name!r} differ in {key} "
                    f"({_short(first.manifest.get(key))} vs {_short(other.manifest.get(key))}): they are not one study."
                )
        for key in ("count", "items_sha256", "n_items", "n_items_in_set", "limit", "dataset_sha256"):
            if first.info.get(key) != other.info.get(key):
                raise DataError(f"Shares {first.folder.name!r} and {other.folder.name!r} split different item sets "
                                f"(their {key} differs): they are not one study.")
    merged_templates(shares)
    count = int(first.info["count"])
    indices = sorted(int(s.info["index"]) for s in shares)
    if indices != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(indices))
        twice = sorted({i for i in indices if indices.count(i) > 1})
        what = f"missing share(s) {', '.join(f'{i}/{count}' for i in missing)}" if missing else \
            f"share(s) {', '.join(f'{i}/{count}' for i in twice)} given twice"
        raise DataError(f"Cannot merge: {what}; give every share of the {count} exactly once.")


def merged_templates(shares: Sequence[_Share]) -> dict[str, Any]:
    """The templates by regime and task kind over every share (a run records those of the kinds it holds).

    Raises:
        DataError: two shares used different templates for the same regime and kind.

    """
    merged: dict[str, dict[str, Any]] = {}
    for share in shares:
        for regime, by_kind in share.manifest.get("templates", {}).items():
            for kind, template in by_kind.items():
                seen = merged.setdefault(regime, {}).setdefault(kind, template)
                if seen != template:
                    raise DataError(f"Shares differ in templates ({regime}, {kind}: {_short(seen)} vs "
                                    f"{_short(template)}): they are not one study.")
    return {regime: {kind: merged[regime][kind] for kind in sorted(merged[regime])} for regime in merged}


def merge_runs(parts: Sequence[Path | str], out_dir: Path | str) -> StudyRun:
    """Merge the run folders of every share of one study into ``out_dir`` (which must not hold files).

    Raises:
        DataError: no shares, an incomplete or foreign folder, shares of different studies
            (:func:`check_same_study`), or an ``out_dir`` that is not empty.

    """
    if not parts:
        raise DataError("study merge needs the run folders of every share.")
    shares = [_open_share(p) for p in parts]
    check_same_study(shares)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{str(out)!r} already exists and is not empty; choose a new --out folder.")
    n_regimes = len(shares[0].manifest["regimes"])
    items: dict[int, PromptItem] = {}
    rows, hidden, lens = [], [], []
    for share in shares:
        positions = [int(p) for p in share.info["positions"]]
        share_items = load_items(share.folder / DATASET_FILE).items
        if len(share_items) != len(positions):
            raise DataError(f"Share {share.folder.name!r} lists {len(positions)} items but holds {len(share_items)}.")
        items.update(zip(positions, share_items))
        records, _ = read_rows(share.folder)
        table_rows = share.run.table["row"].to_numpy()
        for j, local in enumerate(share.run.table["plan_row"].to_numpy()):
            local = int(local)
            global_row = positions[local // n_regimes] * n_regimes + local % n_regimes
            rows.append(replace(records[local], row=global_row))
            hidden.append(share.run.hidden[table_rows[j]])
            lens.append(share.run.lens_entropy_bits[table_rows[j]])
    ordered = [items[i] for i in sorted(items)]
    if sorted(items) != list(range(int(shares[0].info["n_items"]))) or \
            items_sha256(ordered) != shares[0].info["items_sha256"]:
        raise DataError("The shares' items do not make up the split set again; a share folder was changed.")
    order = np.argsort([r.row for r in rows], kind="stable")
    _write_merged(out, shares, ordered, [rows[i] for i in order], np.stack(hidden)[order], np.stack(lens)[order])
    return load_run(out)


def _merged_manifest(out: Path, shares: Sequence[_Share], items: Sequence[PromptItem], n_rows: int) -> dict[str, Any]:
    """The manifest the unsharded run would have written (times: earliest start, latest finish, summed work)."""
    info, manifest = shares[0].info, dict(shares[0].manifest)
    manifest.update(
        name=out.name,
        created=min(str(s.manifest.get("created", "")) for s in shares),
        dataset={"name": info["dataset_name"], "sha256": info["dataset_sha256"],
                 "n_items_in_set": info["n_items_in_set"], "limit": info["limit"]},
        dataset_items_sha256=items_sha256(items),
        templates=merged_templates(shares),
        n_items=len(items),
        status="complete",
        merged_from=[s.folder.name for s in sorted(shares, key=lambda s: int(s.info["index"]))],
    )
    for key in SUMMED_KEYS:
        values = [s.manifest[key] for s in shares if key in s.manifest]
        if values:
            manifest[key] = round(sum(values), 3) if key == "elapsed_s" else int(sum(values))
    finished = [str(s.manifest["finished"]) for s in shares if "finished" in s.manifest]
    if finished:
        manifest["finished"] = max(finished)
    assert manifest["n_rows_done"] == n_rows, (manifest["n_rows_done"], n_rows)
    return manifest


def _write_merged(out: Path, shares: Sequence[_Share], items: Sequence[PromptItem], rows: list[Any],
                  hidden: np.ndarray, lens: np.ndarray) -> None:
    """Write the merged folder in the runner's layout: batch ``k`` holds plan rows ``[k·B, (k+1)·B)``."""
    (out / STATES_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / DATASET_FILE, items_jsonl(items).encode("utf-8"))
    batch = int(shares[0].manifest["batch_size"])
    plan_rows = np.array([r.row for r in rows], dtype=np.int64)
    for k in range(math.ceil(len(rows) / batch)):
        sel = (plan_rows >= k * batch) & (plan_rows < (k + 1) * batch)
        if sel.any():
            write_shard(shard_path(out, k), plan_rows[sel], hidden[sel], lens[sel])
    rewrite_rows(out, rows)
    atomic_write_json(out / MANIFEST_FILE, _merged_manifest(out, shares, items, len(rows)))
