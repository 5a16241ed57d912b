"""Headless Chromium: Explore with a second model, SmolLM2-135M-Instruct and Gemma 3 270M (base) side by side."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from helpers import streamlit_server
from test_browser import CHROMIUM_ARGS, QUESTION, SHOTS, chromium_path, no_exceptions

pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

STEP_TIMEOUT_MS = 400_000  # the second model's first load, then both read-outs, on a busy 2-core CPU


def test_explore_shows_both_models_cards_and_answers(tmp_path):
    chromium_path()
    from playwright.sync_api import sync_playwright

    env = {"IC_ALLOW_MODEL_SWITCH": "1", "IC_MODEL_ALLOWLIST": "gemma3-270m"}
    with streamlit_server(tmp_path / "streamlit.log", env_extra=env, start_timeout_s=120) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1500, "height": 2600}).new_page()
        SHOTS.mkdir(parents=True, exist_ok=True)
        try:
            page.goto(url, timeout=120_000)
            prompt = page.locator('textarea[aria-label="Prompt"]')
            prompt.wait_for(timeout=STEP_TIMEOUT_MS)
            prompt.fill(QUESTION)
            prompt.press("Control+Enter")
            picker = page.get_by_role("combobox", name=re.compile("Compare with a second model"))
            picker.click(timeout=STEP_TIMEOUT_MS)
            page.get_by_role("option", name="Gemma-3-270M").click(timeout=STEP_TIMEOUT_MS)
            page.get_by_text("Gemma Terms of Use").first.wait_for(timeout=60_000)
            page.get_by_role("button", name="Read the state").wait_for(timeout=STEP_TIMEOUT_MS)
            page.get_by_role("button", name="Read the state").click()
            page.get_by_role("heading", name="Gemma-3-270M").wait_for(timeout=STEP_TIMEOUT_MS)
            cards = page.get_by_role("heading", name="Risk card (before generation)")
            assert cards.count() == 2
            metrics = page.locator('[data-testid="stMetric"]').filter(has_text="H_int (bits)")
            metrics.nth(1).wait_for(timeout=STEP_TIMEOUT_MS)  # elements stream in: the heading comes first
            values = [float(m.locator('[data-testid="stMetricValue"]').inner_text()) for m in metrics.all()]
            assert len(values) == 2 and 0 < values[0] < math.log2(49152) and 0 < values[1] < math.log2(262144)
            assert page.get_by_role("heading", name="SmolLM2-135M-Instruct").count() == 1
            no_exceptions(page)
            page.get_by_role("button", name="Generate both answers").click()
            outputs = page.locator(".ic-tokens")
            page.wait_for_function("document.querySelectorAll('.ic-tokens').length >= 2", timeout=STEP_TIMEOUT_MS)
            texts = [o.inner_text() for o in outputs.all()]
            assert len(texts) == 2 and all("Paris" in t for t in texts)
            assert "Q:" not in texts[1]  # the base model's answer ends before its next question
            no_exceptions(page)
            page.mouse.move(5, 5)
            page.wait_for_timeout(800)
            page.screenshot(path=str(Path(SHOTS) / "07_two_models_explore.png"))
        except Exception:
            page.screenshot(path=str(Path(SHOTS) / "07_two_models_explore_failed.png"))
            raise
        finally:
            browser.close()
