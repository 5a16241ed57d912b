"""The Ray launcher on a local Ray cluster started by the test (CPU workers, the tiny model saved to a folder)."""

from __future__ import annotations

import pytest

from ic_core.generate import GenerationConfig
from ic_core.models import ModelSpec
from ic_core.study.runner import run_study

pytest.importorskip("ray")


@pytest.mark.slow
def test_four_ray_shares_merge_to_the_unsharded_run(tiny, tiny_dir, tmp_path):
    """study --ray --shards 4 (library call): four tasks, merged = the unsharded run of the same items (same table)."""
    import ray
    from test_shards import ITEMS, assert_same_run

    from ic_core.study.ray_launcher import run_with_ray, shares_folder

    spec = ModelSpec.parse(str(tiny_dir))
    kwargs = dict(gen_config=GenerationConfig(max_new_tokens=2), batch_size=1, dataset_name="tiny-set")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])}})
    try:
        merged = run_with_ray(spec, ITEMS, ["direct"], tmp_path / "merged", 4, **kwargs)
    finally:
        ray.shutdown()
    assert merged.manifest["merged_from"] == [f"share-{i}-of-4" for i in range(1, 5)]
    assert sorted(p.name for p in shares_folder(tmp_path / "merged").iterdir()) == merged.manifest["merged_from"]
    from ic_core.models import load_model

    plain = run_study(load_model(spec), ITEMS, ["direct"], tmp_path / "plain", **kwargs)
    assert len(merged.table) == len(ITEMS)
    # Same table; states within float noise: a Ray worker runs torch with one thread (num_cpus=1), which
    # sums in another order than this process, so a few float16 values differ in the last bit.
    assert_same_run(merged, plain, exact=False)
