"""Model tier: the bundled SmolLM2-135M-Instruct (a few seconds per test)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Every test in this folder carries the ``model`` marker."""
    for item in items:
        if "/tests/model/" in str(item.path):
            item.add_marker(pytest.mark.model)
