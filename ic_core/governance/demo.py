"""The governance demo: its bundled data set, the study run it needs, and which saved runs it offers first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.datasets import PromptItem
    from ic_core.models import LoadedModel
    from ic_core.runs.store import RunInfo, StudyRun
    from ic_core.study.runner import CancelFn, ProgressFn

DEMO_SET = "governance_ops"
"""Bundled data set of the demo: shell, git, kubectl, SQL, Docker and deployment-safety questions."""
DEMO_PREFIX = "The answer is"
"""Forced answer prefix of the demo run, so it reads H_slot."""
DEMO_LIMIT = 60
DEMO_FIRST = 24
"""Items the demo's first figures are shown on, while the rest are answered in the background.

Four of each of the six topics (two easy, two hard), so the default held-out share of 40 % gives
14 items to fit on and 10 to judge: the fewest :func:`ic_core.stats.gating.split_items` accepts
(10 per share). Fewer items could not be judged at all."""
DEMO_REGIMES = ("direct",)
DEMO_MAX_NEW_TOKENS = 8
"""The answer's letter follows the prefix at once ("The answer is D."): on the first 24 items, 8 new
tokens grade exactly as 24 did and the rows came in 36 s instead of 48 s on a 2-core machine."""
DEMO_COMMAND = (f"python -m ic_core study --data {DEMO_SET} --regimes {' '.join(DEMO_REGIMES)} --limit {DEMO_LIMIT} "
                f"--answer-prefix \"{DEMO_PREFIX}\" --max-new-tokens {DEMO_MAX_NEW_TOKENS}")
"""The terminal command that runs the same 60 items as :func:`make_demo_run` (in the file's order)."""


def runs_with_rows(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The runs that have at least one finished row (the others have nothing to gate)."""
    return [r for r in runs if r.n_rows_done > 0]


def demo_candidates(runs: Sequence[RunInfo]) -> tuple[list[RunInfo], list[RunInfo]]:
    """``(demo_runs, candidates)``: the runs of :data:`DEMO_SET`, and every run with those first.

    Order within each group is kept (:func:`ic_core.runs.store.list_runs` lists newest first).
    """
    demo = [r for r in runs if r.dataset_name == DEMO_SET]
    return demo, demo + [r for r in runs if r.dataset_name != DEMO_SET]


def demo_order(items: Sequence[PromptItem]) -> list[PromptItem]:
    """The set's items interleaved so that every prefix spans the topics and both difficulties.

    Items are grouped by topic (their tag other than ``easy``/``hard``, in first-seen order); each
    group alternates easy and hard; then the groups are taken round-robin. The first
    :data:`DEMO_FIRST` items are then four of each of the six governance_ops topics, two easy and two hard.
    """
    groups: dict[str, dict[str, list[PromptItem]]] = {}
    for it in items:
        topic = next((t for t in it.tags if t not in ("easy", "hard")), "")
        level = "hard" if "hard" in it.tags else "easy"
        groups.setdefault(topic, {"easy": [], "hard": []})[level].append(it)
    lanes = []
    for g in groups.values():
        lane: list[PromptItem] = []
        for i in range(max(len(g["easy"]), len(g["hard"]))):
            lane += g["easy"][i:i + 1] + g["hard"][i:i + 1]
        lanes.append(lane)
    return [lane[i] for i in range(max(map(len, lanes), default=0)) for lane in lanes if i < len(lane)]


@dataclass(frozen=True)
class DemoView:
    """Which rows of a run the demo shows now.

    Attributes:
        n_shown: Rows the figures use (the first ones of the plan).
        n_planned: Rows the run will have.
        n_done: Rows finished on disk now.
        growing: The rest is still being answered (a job writes the run).

    """

    n_shown: int
    n_planned: int
    n_done: int
    growing: bool

    @property
    def ready(self) -> bool:
        """There is something to show."""
        return self.n_shown > 0

    def text(self, dataset_name: str) -> str:
        """``showing 18 of 60 governance_ops items; the rest are being answered in the background``."""
        head = f"showing {self.n_shown} of {self.n_planned} {dataset_name or 'custom'} items"
        if self.growing:
            return head + "; the rest are being answered in the background"
        if self.n_shown < self.n_planned:
            return head + " (the run was stopped before the rest; resume it on the Study page)"
        return head


def demo_view(n_done: int, n_planned: int, growing: bool, first: int = DEMO_FIRST) -> DemoView:
    """The demo's rows: the first ``first`` while a job still answers the rest, else every finished row.

    Figures therefore change twice (the subset, then the whole set) rather than after every row.
    """
    if growing:
        return DemoView(first if n_done >= first else 0, n_planned, n_done, True)
    return DemoView(n_done, n_planned, n_done, False)


def first_rows(run: StudyRun, n: int) -> StudyRun:
    """The run restricted to its first ``n`` plan rows (states and table), as if it had stopped there."""
    from ic_core.runs.store import StudyRun

    keep = (run.table["plan_row"] < n).to_numpy()
    idx = run.table.loc[keep, "row"].to_numpy()
    table = run.table.loc[keep].reset_index(drop=True)
    table["row"] = np.arange(len(table), dtype=np.int64)
    return StudyRun(run.path, dict(run.manifest), table, np.ascontiguousarray(run.hidden[idx]),
                    np.ascontiguousarray(run.lens_entropy_bits[idx]))


def demo_run_path() -> str:
    """The folder :func:`make_demo_run` writes."""
    from ic_core.runs.store import default_run_name, run_path

    return str(run_path(default_run_name(DEMO_SET, list(DEMO_REGIMES), DEMO_LIMIT)))


def make_demo_run(loaded: LoadedModel, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                  out: str | None = None) -> StudyRun:
    """Run the demo's study into a new folder under the runs root, topics interleaved (:func:`demo_order`).

    Rows reach the disk one by one, so the first :data:`DEMO_FIRST` can be shown while the rest
    are answered.

    Args:
        loaded: The model to study.
        progress: Called as ``progress(done, total, eta_s, message)``.
        cancel: Polled between rows; True stops the run (finished rows stay).
        out: The run folder (default :func:`demo_run_path`).

    Raises:
        ICError: the data set cannot be loaded, or the study fails.

    """
    from ic_core.datasets import load_bundled
    from ic_core.generate import GenerationConfig
    from ic_core.study.runner import run_study

    result = load_bundled(DEMO_SET)
    items = demo_order(result.items)
    return run_study(loaded, items, list(DEMO_REGIMES), out or demo_run_path(), limit=DEMO_LIMIT,
                     answer_prefix=DEMO_PREFIX, gen_config=GenerationConfig(max_new_tokens=DEMO_MAX_NEW_TOKENS),
                     progress=progress, cancel=cancel, dataset_name=DEMO_SET, dataset_sha256=result.sha256)
