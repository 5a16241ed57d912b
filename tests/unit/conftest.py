"""Unit tier: numpy, pandas and pure functions only (no model is built)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Every test in this folder carries the ``unit`` marker."""
    for item in items:
        if "/tests/unit/" in str(item.path):
            item.add_marker(pytest.mark.unit)
