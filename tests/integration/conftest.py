"""Integration tier: engine code on tiny random models (milliseconds each, no network)."""

from __future__ import annotations

import pytest
from helpers import TINY_FAMILIES, make_tiny_model, make_tiny_tokenizer


def pytest_collection_modifyitems(config, items):
    """Every test in this folder carries the ``integration`` marker."""
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_family(request, tiny):
    """The tiny model over each of :data:`TINY_FAMILIES` (the Llama is ``tiny`` itself)."""
    if request.param == "llama":
        return tiny
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer), family=request.param), tokenizer, name=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny):
    """The tiny model saved as a local folder (for CLI and ModelSpec tests)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path
