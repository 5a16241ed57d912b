"""The governance demo: its bundled data set, the study run it needs, and which saved runs it offers first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.models import LoadedModel
    from ic_core.runs.store import RunInfo, StudyRun
    from ic_core.study.runner import ProgressFn

DEMO_SET = "governance_ops"
"""Bundled data set of the demo: shell, git, kubectl, SQL, Docker and deployment-safety questions."""
DEMO_PREFIX = "The answer is"
"""Forced answer prefix of the demo run, so it reads H_slot."""
DEMO_LIMIT = 60
DEMO_REGIMES = ("direct",)
DEMO_MAX_NEW_TOKENS = 24
DEMO_COMMAND = (f"python -m ic_core study --data {DEMO_SET} --regimes {' '.join(DEMO_REGIMES)} --limit {DEMO_LIMIT} "
                f"--answer-prefix \"{DEMO_PREFIX}\" --max-new-tokens {DEMO_MAX_NEW_TOKENS}")
"""The terminal command that makes the same run as :func:`make_demo_run`."""


def runs_with_rows(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The runs that have at least one finished row (the others have nothing to gate)."""
    return [r for r in runs if r.n_rows_done > 0]


def demo_candidates(runs: Sequence[RunInfo]) -> tuple[list[RunInfo], list[RunInfo]]:
    """``(demo_runs, candidates)``: the runs of :data:`DEMO_SET`, and every run with those first.

    Order within each group is kept (:func:`ic_core.runs.store.list_runs` lists newest first).
    """
    demo = [r for r in runs if r.dataset_name == DEMO_SET]
    return demo, demo + [r for r in runs if r.dataset_name != DEMO_SET]


def make_demo_run(loaded: LoadedModel, progress: ProgressFn | None = None) -> StudyRun:
    """Run the demo's study (:data:`DEMO_COMMAND`) into a new folder under the runs root.

    Args:
        loaded: The model to study.
        progress: Called as ``progress(done, total, eta_s, message)``.

    Raises:
        ICError: the data set cannot be loaded, or the study fails.

    """
    from ic_core.datasets import load_bundled
    from ic_core.generate import GenerationConfig
    from ic_core.runs.store import default_run_name, run_path
    from ic_core.study.runner import run_study

    result = load_bundled(DEMO_SET)
    out = run_path(default_run_name(DEMO_SET, list(DEMO_REGIMES), DEMO_LIMIT))
    return run_study(loaded, result.items, list(DEMO_REGIMES), out, limit=DEMO_LIMIT, answer_prefix=DEMO_PREFIX,
                     gen_config=GenerationConfig(max_new_tokens=DEMO_MAX_NEW_TOKENS), progress=progress,
                     dataset_name=DEMO_SET, dataset_sha256=result.sha256)
