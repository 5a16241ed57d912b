"""In headless Chromium: a study keeps running while the browser is on another page (issue 17 item 3).

The navigation-away test: start a small study on the default model, go to Explore (the sidebar
shows the job), come back to Study, and see the same run continue and finish, with no Stop
button left; after a reload (a new session, the same browser) the job is still listed as this person's.
Screenshots go to /tmp/shots/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import streamlit_server
from test_browser import CHROMIUM_ARGS, START_TIMEOUT_S, chromium_path

pytestmark = [pytest.mark.browser, pytest.mark.model]

SHOTS = Path("/tmp/shots")
RUN = "nav-away"
N_ITEMS = 4
STUDY_TIMEOUT_MS = 900_000  # 4 short answers; a 2-core CPU shared with other test runs can take 60 s per row


@pytest.fixture
def runs_and_server(tmp_path):
    chromium_path()
    runs = tmp_path / "runs"
    runs.mkdir()
    with streamlit_server(tmp_path / "streamlit.log", {"IC_RUNS_DIR": str(runs)},
                          start_timeout_s=START_TIMEOUT_S) as url:
        yield runs, url


def sidebar_link(page, title: str):
    return page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first


def test_study_survives_navigating_away_and_back(runs_and_server):
    from playwright.sync_api import sync_playwright

    runs, url = runs_and_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
            page.goto(url + "/Study", timeout=60_000)
            run_button = page.get_by_role("button", name="Run study")
            run_button.wait_for(timeout=START_TIMEOUT_S * 1000)  # drawn once the model is loaded
            limit = page.locator('input[aria-label="Items (limit)"]')
            limit.fill(str(N_ITEMS))
            limit.press("Enter")
            page.wait_for_function(
                f"document.querySelector('input[aria-label=\"Items (limit)\"]').value == '{N_ITEMS}'")
            max_new = page.locator('[data-testid="stExpander"] input[aria-label="Max new tokens"]')
            max_new.fill("12")
            max_new.press("Enter")
            page.wait_for_function("[...document.querySelectorAll('[data-testid=\"stExpander\"] "
                                   "input[aria-label=\"Max new tokens\"]')].every(e => e.value == '12')")
            name = page.locator('input[aria-label="Run name (optional)"]')
            name.fill(RUN)
            name.press("Enter")
            page.get_by_text(f"{N_ITEMS} rows (items × regimes)").first.wait_for(timeout=30_000)
            run_button.click()
            page.get_by_role("button", name="Stop").first.wait_for(timeout=60_000)  # the live view
            page.screenshot(path=str(SHOTS / "jobs_1_study_running.png"))

            sidebar_link(page, "Explore").click()
            page.locator('textarea[aria-label="Prompt"]').wait_for(timeout=60_000)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text(f"Study: {RUN}").first.wait_for(timeout=180_000)  # the job, seen from Explore (busy CPU)
            page.screenshot(path=str(SHOTS / "jobs_2_explore_sidebar.png"))
            away = json.loads((runs / RUN / "manifest.json").read_text())
            # the old page-owned run died here (issue 17 item 3); now it goes on and finishes below
            assert away["status"] in ("running", "complete") and away["n_rows_done"] < N_ITEMS or \
                away["status"] == "complete"

            sidebar_link(page, "Study").click()
            page.get_by_text(re.compile(rf"Saved {RUN} \({N_ITEMS} rows\)")).first.wait_for(timeout=STUDY_TIMEOUT_MS)
            rows = page.locator('[data-testid="stMetric"]').filter(has_text="Rows").first
            rows.wait_for(timeout=60_000)
            assert rows.locator('[data-testid="stMetricValue"]').inner_text().strip() == f"{N_ITEMS} / {N_ITEMS}"
            assert page.get_by_role("button", name="Stop").count() == 0  # gone once the study is complete
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(SHOTS / "jobs_3_study_finished.png"))

            # a reload is a new Streamlit session but the same browser: the job is still this person's
            page.reload()
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text(f"Study: {RUN}").first.wait_for(timeout=120_000)  # own jobs are listed by title
            assert sidebar.get_by_text("of another browser session").count() == 0
        finally:
            browser.close()
    m = json.loads((runs / RUN / "manifest.json").read_text())
    assert m["status"] == "complete" and m["n_rows_done"] == N_ITEMS
    assert len((runs / RUN / "items.jsonl").read_text().splitlines()) == N_ITEMS
