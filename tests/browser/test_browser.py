"""End to end in headless Chromium: the served app on the real default model (loopback only).

Screenshots of every step go to artifacts/screenshots/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from helpers import streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
START_TIMEOUT_S = 90  # server up; the first-ever model conversion takes ~16 s on an idle laptop
STEP_TIMEOUT_MS = 120_000  # one read-out or one short generation on a busy 2-core CPU
QUESTION = "What is the capital of France?"


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (`make browser` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``streamlit run app.py`` on a free loopback port; always terminated."""
    chromium_path()  # skip/fail before starting anything
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with streamlit_server(log, start_timeout_s=START_TIMEOUT_S) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Tall viewport: Streamlit scrolls inside its own container, so a full-page shot would be cut.
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    try:
        yield context.new_page()
    finally:
        context.close()


def shot(page, name: str) -> None:
    page.mouse.move(5, 5)  # no tooltip from the last click over the shot
    page.wait_for_timeout(800)  # let charts finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def no_exceptions(page) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    metric.wait_for(timeout=STEP_TIMEOUT_MS)
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_learn_by_url_on_a_fresh_server_then_example(server, page):
    # First in this file on purpose: the server's very first session opens a page's own URL,
    # which Streamlit would run without app.py (no sidebar) were it not for require_router.
    page.goto(server + "/Learn", timeout=60_000)
    page.get_by_text("Learn: intention collapse").first.wait_for(timeout=START_TIMEOUT_S * 1000)
    page.get_by_role("button", name="Apply").wait_for(timeout=30_000)  # the router's sidebar is there
    nav = [a.inner_text().strip() for a in page.locator('[data-testid="stSidebarNav"] a').all()]
    assert nav[:2] == ["Explore", "Compare regimes"] and "Learn" in nav and "app" not in nav
    page.locator('a[href="https://arxiv.org/abs/2601.01011"]').first.wait_for(timeout=30_000)
    shot(page, "01_learn_by_url")
    page.get_by_role("button", name="Open in Explore").first.click()
    prompt = page.locator('textarea[aria-label="Prompt"]')
    prompt.wait_for(timeout=60_000)
    assert prompt.input_value() == QUESTION
    assert page.locator('input[aria-label^="Forced answer prefix"]').input_value() == "The capital of France is"
    page.get_by_role("button", name="Read the state").click()
    h_slot = float(metric_value(page, "H_slot (bits)"))
    assert 0.0 <= h_slot <= math.log2(49152)
    no_exceptions(page)
    shot(page, "02_learn_example_in_explore")


def test_explore_read_then_generate(server, page):
    page.goto(server, timeout=60_000)
    prompt = page.locator('textarea[aria-label="Prompt"]')
    prompt.wait_for(timeout=START_TIMEOUT_S * 1000)  # drawn once the model is loaded
    shot(page, "03_explore_start")
    prompt.fill(QUESTION)
    prompt.press("Control+Enter")  # commit the text before clicking
    page.get_by_role("button", name="Read the state").click()
    h_int = float(metric_value(page, "H_int (bits)"))
    assert 0.0 <= h_int <= math.log2(49152)
    page.get_by_text("No gate policy loaded").first.wait_for(timeout=30_000)
    no_exceptions(page)
    shot(page, "04_risk_card")

    page.get_by_role("tab", name="Entropy by layer").click()
    lens = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="entropy by layer").first
    lens.wait_for(timeout=30_000)
    shot(page, "05_lens_by_layer")

    page.get_by_role("button", name="Generate", exact=True).click()
    output = page.locator(".ic-tokens").first
    output.wait_for(timeout=STEP_TIMEOUT_MS)
    assert "Paris" in output.inner_text()
    chart = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Uncertainty at each generated token")
    chart.first.wait_for(timeout=30_000)
    no_exceptions(page)
    shot(page, "06_generation")
