"""The app's one model loader under the administrator settings (issue 11 case 7): checks and cache size."""

from __future__ import annotations

import importlib

import pytest

from ic_core.errors import DataError
from ic_core.models import ModelSpec

pytestmark = pytest.mark.app

A = ModelSpec(source="hub", name="org/model-a")
B = ModelSpec(source="hub", name="org/model-b")


@pytest.fixture
def common_with(monkeypatch):
    """ui.common re-imported under the given environment (the cache size is fixed at import), then restored."""
    import ui.common

    def reload(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        module = importlib.reload(ui.common)
        loads: list[ModelSpec] = []

        def fake_load(spec: ModelSpec) -> object:
            loads.append(spec)
            return object()

        monkeypatch.setattr(module, "load_model", fake_load)
        return module, loads

    yield reload
    monkeypatch.undo()
    importlib.reload(ui.common)


def test_two_allowed_models_alternating_load_once_each(common_with):
    """Two sessions alternating between two allow-listed models do not evict each other (2 loads, not 6)."""
    common, loads = common_with(IC_ALLOW_MODEL_SWITCH="1", IC_MODEL_ALLOWLIST="hub:org/model-a,hub:org/model-b")
    first = {spec: common.load_app_model(spec) for spec in (A, B)}
    for spec in (A, B, A, B):
        assert common.load_app_model(spec) is first[spec]
    assert loads == [A, B]


def test_with_switching_off_the_cache_holds_one_model_and_others_are_refused(common_with):
    common, loads = common_with()
    assert common._model_cache_entries() == 1
    with pytest.raises(DataError, match="model switching is turned off"):
        common.load_app_model(A)
    with pytest.raises(DataError, match="model switching is turned off"):
        common._load_cached(A)  # the cached function checks too
    assert loads == []
    loaded = common.load_app_model(ModelSpec())
    assert common.load_app_model(ModelSpec()) is loaded and loads == [ModelSpec()]


def test_a_model_off_the_allow_list_is_never_loaded(common_with):
    common, loads = common_with(IC_ALLOW_MODEL_SWITCH="1", IC_MODEL_ALLOWLIST="hub:org/model-a")
    with pytest.raises(DataError, match="hub:org/model-b is not on this app's model allow-list"):
        common.load_app_model(B)
    with pytest.raises(DataError, match="trust_remote_code is turned off"):
        common.load_app_model(ModelSpec(source="hub", name="org/model-a", trust_remote_code=True))
    assert loads == []
