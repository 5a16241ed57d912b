"""App tier: Streamlit AppTest runs of the pages on a tiny random model."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Every test in this folder carries the ``app`` marker."""
    for item in items:
        if "/tests/app/" in str(item.path):
            item.add_marker(pytest.mark.app)
