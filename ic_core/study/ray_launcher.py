"""``study --ray --shards N``: one Ray task per share of a study, then one merged run folder.

Each task loads the model from its :class:`~ic_core.models.ModelSpec` (a hub id, folder or
bundled model every node can reach), runs its share with :func:`ic_core.study.shards.run_shard`
into ``<out>.shards/share-I-of-N``, and returns the folder; the driver merges the folders with
:func:`ic_core.study.shards.merge_runs`. A task asks for one GPU when the cluster has GPUs, else
one CPU. Ray is started on this machine (``num_cpus`` workers) unless ``address`` names a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ic_core.errors import DataError

if TYPE_CHECKING:
    from ic_core.datasets import PromptItem
    from ic_core.models import ModelSpec
    from ic_core.runs.store import StudyRun


def shares_folder(out: Path) -> Path:
    """Where the shares of ``out`` are written: ``<out>.shards`` beside it."""
    return out.with_name(out.name + ".shards")


def _run_share(spec_dict: dict[str, Any], backend: str, items: list[PromptItem], regimes: list[str], out: str,
               index: int, count: int, kwargs: dict[str, Any]) -> str:
    """The body of one Ray task (runs in a worker process): load the model, run one share."""
    from ic_core.backends import get_backend, using
    from ic_core.models import ModelSpec, get_model
    from ic_core.study.shards import ShardSpec, run_shard

    loaded = get_model(ModelSpec.from_dict(spec_dict))
    chosen = get_backend(backend)
    with using(None if backend == "hf" else chosen):
        run_shard(loaded, items, regimes, out, ShardSpec(index, count), **kwargs)
    return out


def run_with_ray(
    spec: ModelSpec, items: Sequence[PromptItem], regimes: Sequence[str], out_dir: Path | str, n_shards: int,
    backend: str = "hf", address: str | None = None, num_cpus: int | None = None, **kwargs: Any,
) -> StudyRun:
    """Run a study as ``n_shards`` Ray tasks and merge them into ``out_dir``.

    Args:
        spec: The model every task loads.
        items: The prompt set.
        regimes: As for :func:`ic_core.study.runner.run_study`.
        out_dir: The merged run folder (must not hold files); shares go to :func:`shares_folder`.
        n_shards: Number of shares (tasks).
        backend: Capture backend of the tasks (``hf`` or local ``nnsight``).
        address: A running Ray cluster (``ray start --head`` prints it); None starts Ray here.
        num_cpus: CPUs of a Ray started here (default: all).
        **kwargs: :func:`ic_core.study.shards.run_shard` arguments (``limit``, ``gen_config``, …).

    Raises:
        DataError: fewer than 1 share, ray missing, or what a share or the merge raises.

    """
    from ic_core.study.shards import merge_runs

    if n_shards < 1:
        raise DataError(f"--shards must be at least 1 (got {n_shards}).")
    try:
        import ray
    except ImportError as exc:
        raise DataError(f"--ray needs the ray package ({exc}): pip install ray==2.60.0.") from None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{str(out)!r} already exists and is not empty; choose a new --out folder.")
    started = not ray.is_initialized()
    if started:
        import ic_core

        root = str(Path(ic_core.__file__).resolve().parent.parent)  # so workers import this ic_core
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": root}}, log_to_driver=False)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_run_share)
        folder = shares_folder(out)
        folder.mkdir(parents=True, exist_ok=True)
        refs = [task.remote(spec.to_dict(), backend, list(items), list(regimes),
                            str(folder / f"share-{i}-of-{n_shards}"), i, n_shards, kwargs)
                for i in range(1, n_shards + 1)]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
            raise DataError(f"A Ray share failed: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from None
    finally:
        if started:
            ray.shutdown()
    return merge_runs(parts, out)
