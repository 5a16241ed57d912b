"""Running a study: a prompt set × regimes → states, outputs and grades, written row by row and resumable."""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ic_core.analysis import check_grading_texts
from ic_core.datasets import PromptItem, items_jsonl, items_sha256, load_items
from ic_core.errors import DataError, ICError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT, GenerationConfig, check_fits_context, check_seed
from ic_core.io import atomic_write_bytes, atomic_write_json
from ic_core.progress_text import left_text
from ic_core.prompts import REGIMES, PromptTemplate, RenderedPrompt, render, template_for
from ic_core.runs.lock import acquire_lock, release_lock
from ic_core.runs.schema import CONTROL_REGIME, RunRow, finite_or_none
from ic_core.runs.store import (
    DATASET_FILE,
    F16_MAX,
    FORMAT_VERSION,
    MANIFEST_FILE,
    RUN_KIND,
    STATES_DIR,
    StudyRun,
    append_rows,
    load_run,
    read_manifest,
    read_rows,
    read_shard,
    rewrite_rows,
    shard_files,
    shard_index,
    shard_path,
    shard_rows,
    write_shard,
)
from ic_core.study.readouts import ExtraReads, extra_reads

if TYPE_CHECKING:
    from ic_core.capture import IntentionState
    from ic_core.compliance import Compliance
    from ic_core.generate import Generation
    from ic_core.grading import Grade
    from ic_core.models import LoadedModel

COT_MIN_NEW_TOKENS = 192
"""Chain of thought needs room to reason before its ``####`` line."""
MAX_LIMIT = 1000
"""Most items per study in the app (the engine accepts more)."""
IDENTITY_KEYS: tuple[str, ...] = (
    "model", "regimes", "templates", "use_item_prefix", "answer_prefix", "dataset_items_sha256",
    "n_items", "generation", "generate", "seed", "second_digit_slot",
)
"""Manifest fields that must match for :func:`run_study` to resume a folder."""
IDENTITY_DEFAULTS: dict[str, Any] = {"second_digit_slot": False}
"""What an identity field means in a manifest written before it existed."""

ProgressFn = Callable[[int, int, float | None, str], None]
"""Called as ``progress(done_rows, total_rows, eta_s, message)``; ``eta_s`` is None until a row is timed."""
CancelFn = Callable[[], bool]


def eta_text(eta_s: float | None) -> str:
    """A remaining time in the app's one wording: ``about 42 s left``, ``about 6 min left`` (:mod:`ic_core.progress_text`)."""
    return left_text(eta_s)


# ---------------------------------------------------------------- running a study


@dataclass(frozen=True)
class _Planned:
    row: int
    item: PromptItem
    regime: str
    rendered: RenderedPrompt
    item_prefix_used: bool
    last_token: RenderedPrompt | None = None
    """The same prompt without its answer prefix, read for H_int when ``rendered`` is read after one."""


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
    loaded: LoadedModel, items: Sequence[PromptItem], regimes: Sequence[str], use_item_prefix: bool,
    answer_prefix: str | None, config: GenerationConfig, generate: bool, seed: int,
) -> list[_Planned]:
    """Every row's rendered prompt, checked before any work starts.

    Each prompt must render, hold valid texts, and (when it is to be generated) leave room in
    the context for its regime's ``max_new_tokens``; every row's seed ``seed + row`` must be
    one torch takes. So a study that would fail half-way fails at once, with one line.

    Raises:
        DataError: naming the first few rows that cannot run, or the seed range.

    """
    max_ctx, max_new = loaded.max_context, _gen_by_regime(config, regimes)
    plan, problems = [], []
    for item in items:
        for regime in regimes:
            prefix, used = _prefix_for(item, regime, use_item_prefix, answer_prefix)
            template: PromptTemplate = template_for(regime, item.kind, prefix)
            try:
                check_grading_texts(item.answer, item.aliases)
                rendered = render(loaded.tokenizer, item.question, template, item.choices, "last", max_ctx)
                if generate and item.output is None:
                    check_fits_context(loaded, rendered, replace(config, max_new_tokens=max_new[regime]))
            except ICError as exc:
                problems.append(f"{item.id} ({regime}): {exc}")
                continue
            last = render(loaded.tokenizer, item.question, template_for(regime, item.kind), item.choices, "last", max_ctx) \
                if rendered.signal == "H_slot" else None
            plan.append(_Planned(len(plan), item, regime, rendered, used, last))
    if problems:
        raise DataError(f"{len(problems)} prompt(s) cannot be run; fix or remove them: " + "; ".join(problems[:5]))
    _check_seeds(seed, len(plan))
    return plan


def _check_seeds(seed: int, n_rows: int) -> None:
    """Refuse a seed whose rows' seeds (``seed`` … ``seed + n_rows - 1``) torch cannot take.

    Raises:
        DataError: one line naming the seed and the number of rows.

    """
    try:
        check_seed(seed)
        check_seed(seed + max(0, n_rows - 1))
    except ICError as exc:
        raise DataError(f"Row r samples with seed + r for {n_rows:,} rows: {exc}") from exc


def _new_manifest(
    loaded: LoadedModel, items: Sequence[PromptItem], regimes: Sequence[str], config: GenerationConfig, *, folder: Path,
    dataset_name: str, dataset_sha256: str | None, n_items_in_set: int, limit: int | None, use_item_prefix: bool,
    answer_prefix: str | None, batch_size: int, generate: bool, seed: int, n_rows: int, second_digit_slot: bool,
) -> dict[str, Any]:
    manifest = {
        "kind": RUN_KIND,
        "format_version": FORMAT_VERSION,
        "name": folder.name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": loaded.spec.to_dict(),
        "model_label": loaded.spec.label,
        "model_weights_sha256": getattr(loaded, "weights_sha256", None),
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
        "second_digit_slot": second_digit_slot,
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
        diff = [k for k in IDENTITY_KEYS if old.get(k, IDENTITY_DEFAULTS.get(k)) != manifest.get(k)]
        if diff:
            raise DataError(
                f"Run folder {folder.name!r} holds a different study (differs in: {', '.join(diff)}). "
                "Choose another run name, or repeat the original settings to resume it."
            )
        _check_same_weights(folder, old, manifest.get("model_weights_sha256"))
        return old
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{str(folder)!r} exists and is not a study run folder; choose another name.")
    (folder / STATES_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / DATASET_FILE, items_jsonl(items).encode("utf-8"))
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def _check_same_weights(folder: Path, manifest: dict[str, Any], have: str | None) -> None:
    """Refuse to add rows from other weights to a run that pinned its model's digest.

    Runs made before digests were recorded (no ``model_weights_sha256``) resume as before.
    """
    want = manifest.get("model_weights_sha256")
    if want and want != have:
        raise DataError(
            f"Run {folder.name!r} was made with weights SHA-256 {want[:16]}…, but the loaded model's weights are "
            f"{(have or 'unknown')[:16]}…: load the run's model files to resume it."
        )


def _finished_rows(folder: Path, manifest: dict[str, Any], n_rows: int) -> set[int]:
    """Plan rows whose record and states are both on disk; every leftover of an unfinished row is removed.

    A row counts only when its states sit in its own batch's shard. Records without states (a
    crash between the two writes) are dropped, and each shard is cut down to its finished rows
    (deleted when none is left), so the resumed rows are appended cleanly.
    """
    batch_size = int(manifest["batch_size"])
    records, truncated = read_rows(folder)
    in_shards: dict[int, set[int]] = {}
    for file in shard_files(folder):
        k = shard_index(file)
        in_shards[k] = {int(r) for r in shard_rows(file) if int(r) // batch_size == k}
    done = {r for r in records if r < n_rows and r in in_shards.get(r // batch_size, set())}
    if truncated or len(done) != len(records):
        rewrite_rows(folder, [records[r] for r in sorted(done)])
    for file in shard_files(folder):
        k = shard_index(file)
        stored = shard_rows(file)
        good = [int(r) for r in stored if int(r) in done and int(r) // batch_size == k]
        if not good:
            file.unlink()
        elif len(good) != len(stored):
            rows, hidden, lens = read_shard(file, int(manifest["n_layers"]), int(manifest["d_model"]))
            keep = np.isin(rows, good)
            write_shard(file, rows[keep], hidden[keep], lens[keep])
    return done


class _BatchShard:
    """The states of one batch's finished rows, rewritten to its shard after every row."""

    def __init__(self, folder: Path, manifest: dict[str, Any], k: int) -> None:
        self.path, self.manifest = shard_path(folder, k), manifest
        self.rows: list[int] = []
        self.hidden: list[np.ndarray] = []
        self.lens: list[np.ndarray] = []
        if self.path.exists():  # rows of this batch finished before an interruption (kept by _finished_rows)
            rows, hidden, lens = read_shard(self.path, int(manifest["n_layers"]), int(manifest["d_model"]))
            self.rows, self.hidden, self.lens = [int(r) for r in rows], list(hidden), list(lens)

    def add(self, row: int, state: IntentionState) -> None:
        """Add one finished row's states and rewrite the shard (atomically)."""
        hidden32 = state.hidden
        clipped = int((np.abs(hidden32) > F16_MAX).sum())
        if clipped:  # some models have activations beyond float16's range: clip them, and say so
            self.manifest["n_state_values_clipped"] = int(self.manifest.get("n_state_values_clipped", 0)) + clipped
        self.rows.append(row)
        self.hidden.append(np.clip(hidden32, -F16_MAX, F16_MAX).astype(np.float16))
        self.lens.append(np.asarray(state.lens.entropy_bits[0], dtype=np.float32))
        order = np.argsort(self.rows, kind="stable")
        write_shard(self.path, np.array(self.rows, dtype=np.int64)[order], np.stack(self.hidden)[order],
                    np.stack(self.lens)[order])


def _record(p: _Planned, state: IntentionState, tokenizer: Any, gen: Generation | None, output: str | None,
            source: str | None, grade_result: Grade | None, max_new: int | None, extra: ExtraReads,
            compliance: Compliance | None = None) -> RunRow:
    """The row of one planned prompt; ``tokenizer`` (a Hugging Face tokenizer) decodes token ids to text."""
    item = p.item
    top = tuple((tokenizer.decode([int(i)]), float(q)) for i, q in zip(state.top_ids[:5], state.top_probs[:5]))
    return RunRow(
        row=p.row,
        item_id=item.id,
        regime=p.regime,
        question=item.question,
        kind=item.kind,
        expected=item.answer,
        aliases=tuple(item.aliases),
        choices=tuple(item.choices),
        tags=tuple(item.tags),
        output_text=output,
        output_source=source,
        extracted_answer=grade_result.extracted if grade_result else None,
        correct=grade_result.correct if grade_result else None,
        grade_rule=grade_result.rule if grade_result else None,
        readout_entropy_bits=finite_or_none(state.readout_entropy_bits),
        readout_entropy_top100_bits=finite_or_none(state.readout_entropy_top100_bits),
        top1_prob=finite_or_none(state.top1_prob),
        top_tokens=top,
        mean_token_entropy_bits=finite_or_none(gen.mean_entropy_bits) if gen is not None else None,
        generated_tokens=tuple(gen.tokens) if gen is not None else None,
        token_entropies_bits=tuple(round(float(h), 4) for h in gen.entropy_bits) if gen is not None else None,
        n_generated_tokens=len(gen.token_ids) if gen is not None else None,
        stop_reason=gen.stop_reason if gen is not None else None,
        max_new_tokens=max_new,
        generate_s=gen.elapsed_s if gen is not None else None,
        n_prompt_tokens=p.rendered.n_tokens,
        readout_index=p.rendered.readout_index,
        readout_token=p.rendered.readout_token,
        readout_is_formatting=p.rendered.readout_is_formatting,
        skipped_tokens=tuple(tokenizer.decode([i]) for i in state.skipped_ids),
        signal=p.rendered.signal,
        answer_prefix=p.rendered.answer_prefix,
        item_prefix_used=p.item_prefix_used,
        user_text=p.rendered.user_text,
        complied=compliance.complied if compliance else None,
        compliance_reason=compliance.reason if compliance else None,
        last_token_entropy_bits=finite_or_none(extra.last_token_entropy_bits),
        second_digit_entropy_bits=finite_or_none(extra.second_digit_entropy_bits),
    )


def run_study(
    loaded: LoadedModel,
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
    second_digit_slot: bool = False,
) -> StudyRun:
    """Run (or resume) a study and return it loaded from its folder.

    For every item (the first ``limit``) and regime: render the prompt, read the state with
    one batched forward pass, then generate (greedy unless configured; CoT gets at least
    :data:`COT_MIN_NEW_TOKENS` new tokens) and grade. Items that carry an ``output`` are
    graded from it, without generating. Every row is written as soon as it is done.

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
        second_digit_slot: Also read the entropy after the answer prefix and the gold answer's
            first digit (teacher-forced) for direct rows of numeric items whose answer has
            at least 2 digits (``second_digit_entropy_bits``).

    Direct rows read after a prefix also get one plain read at the last prompt token of the
    same prompt without the prefix (``last_token_entropy_bits``), so regimes can be compared
    at the same position; babble rows are checked for compliance instead of graded.

    Raises:
        DataError: unknown regimes, no items, unrenderable prompts, a prompt + max_new_tokens past the
            context, a seed range torch cannot take, or a folder holding another study.

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
    plan = _plan(loaded, items, regimes, use_item_prefix, answer_prefix, config, generate, seed)
    manifest = _open_folder(folder, _new_manifest(
        loaded, items, regimes, config, folder=folder, dataset_name=dataset_name, dataset_sha256=dataset_sha256,
        n_items_in_set=n_in_set, limit=limit, use_item_prefix=use_item_prefix, answer_prefix=answer_prefix,
        batch_size=batch_size, generate=generate, seed=seed, n_rows=len(plan), second_digit_slot=second_digit_slot,
    ), items)
    acquire_lock(folder)
    try:
        return _run_batches(loaded, folder, manifest, plan, config, progress, cancel, generate, seed)
    finally:
        release_lock(folder)


def _run_batches(
    loaded: LoadedModel, folder: Path, manifest: dict[str, Any], plan: list[_Planned], config: GenerationConfig,
    progress: ProgressFn | None, cancel: CancelFn | None, generate: bool, seed: int,
) -> StudyRun:
    """The batch loop of :func:`run_study` (the folder is open and locked).

    Each batch is read with one forward pass; each row is then generated, graded and written
    (its states to the batch's shard, its record to ``items.jsonl``, the manifest's count) as
    soon as it is done. A resumed batch is read again whole, so its states are those of an
    uninterrupted run, and only its unfinished rows are generated.
    """
    from ic_core.capture import capture_batch

    batch_size = int(manifest["batch_size"])
    max_new = {r: int(n) for r, n in manifest["generation"]["max_new_tokens_by_regime"].items()}
    total = len(plan)
    done = _finished_rows(folder, manifest, total)
    done_rows = len(done)
    manifest.update(status="running", n_rows_done=done_rows)
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    start, processed, cancelled = time.perf_counter(), 0, False
    prior_s = float(manifest.get("elapsed_s", 0.0))

    def report(message: str) -> None:
        if progress is not None:
            rate = (time.perf_counter() - start) / processed if processed else None
            progress(done_rows, total, None if rate is None else rate * (total - done_rows), message)

    report("resuming" if done_rows else "starting")
    for k in range(math.ceil(total / batch_size)):
        batch = plan[k * batch_size:(k + 1) * batch_size]
        if all(p.row in done for p in batch):
            continue
        if cancel is not None and cancel():
            cancelled = True
            break
        states = capture_batch(loaded, [p.rendered for p in batch], batch_size=batch_size)
        extras = extra_reads(loaded, batch, states, bool(manifest.get("second_digit_slot", False)), batch_size)
        shard, first = _BatchShard(folder, manifest, k), True
        for p, state, extra in zip(batch, states, extras):
            if p.row in done:
                continue
            if not first and cancel is not None and cancel():
                cancelled = True
                break
            first = False
            record = _run_row(loaded, p, state, extra, config, max_new[p.regime], generate, seed)
            shard.add(p.row, state)  # states first: a record never points at missing states
            append_rows(folder, [record])
            processed += 1
            done_rows += 1
            manifest.update(n_rows_done=done_rows, elapsed_s=round(prior_s + time.perf_counter() - start, 3))
            atomic_write_json(folder / MANIFEST_FILE, manifest)
            report(f"{p.item.id} · {p.regime}")
        if cancelled:
            break
    manifest.update(
        status="cancelled" if cancelled else "complete", n_rows_done=done_rows,
        elapsed_s=round(prior_s + time.perf_counter() - start, 3),
        finished=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    report("cancelled" if cancelled else "complete")
    return load_run(folder)


def resume_run(loaded: LoadedModel, path: Path | str, progress: ProgressFn | None = None,
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
    _check_same_weights(folder, m, getattr(loaded, "weights_sha256", None))
    if not (folder / DATASET_FILE).is_file():
        raise DataError(f"Run {folder.name!r} has no {DATASET_FILE}: run the study again from its prompt set.")
    items = load_items(folder / DATASET_FILE).items
    config = GenerationConfig(**m["generation"]["config"])
    return run_study(
        loaded, items, m["regimes"], folder, gen_config=config, use_item_prefix=m["use_item_prefix"],
        answer_prefix=m["answer_prefix"], batch_size=int(m["batch_size"]), progress=progress, cancel=cancel,
        generate=m["generate"], seed=int(m["seed"]), dataset_name=m["dataset"]["name"], dataset_sha256=m["dataset"]["sha256"],
        second_digit_slot=bool(m.get("second_digit_slot", False)),
    )


def _run_row(loaded: LoadedModel, p: _Planned, state: IntentionState, extra: ExtraReads, config: GenerationConfig,
             max_new: int, generate: bool, seed: int) -> RunRow:
    from ic_core.compliance import check_compliance
    from ic_core.generate import generate as generate_fn
    from ic_core.grading import grade

    item, gen, source, output = p.item, None, None, None
    if item.output is not None:
        output, source = item.output, "dataset"
    elif generate:
        row_config = replace(config, max_new_tokens=max_new, seed=seed + p.row)
        gen = generate_fn(loaded, p.rendered, row_config)
        output, source = gen.answer_text, "generated"
    result, compliance = None, None
    if output is not None and p.regime == CONTROL_REGIME:
        compliance = check_compliance(output, item.answer, item.kind, item.aliases, item.choices)
    elif output is not None:
        result = grade(output, item.answer, item.kind, item.aliases, item.choices, item.question)
    return _record(p, state, loaded.tokenizer, gen, output, source, result, max_new if gen is not None else None,
                   extra, compliance)
