"""Browser tier: headless Chromium against a served app on the default model."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Every test in this folder carries the ``browser`` marker."""
    for item in items:
        if "/tests/browser/" in str(item.path):
            item.add_marker(pytest.mark.browser)
