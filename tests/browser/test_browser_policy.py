"""In headless Chromium: an uploaded policy whose probe lies outside the runs folder is refused (issue 11 case 1).

The served app gets its own runs folder, audit log and the tests' operator key, so the policy
is validly signed and refused only for where its probe is. The screenshot goes to /tmp/shots/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import streamlit_server
from test_browser import CHROMIUM_ARGS, START_TIMEOUT_S, chromium_path

pytestmark = [pytest.mark.browser, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path("/tmp/shots")
SMOLLM2_LAYERS, SMOLLM2_WIDTH = 30, 576


@pytest.fixture
def runs_and_server(tmp_path):
    """A served app on a loopback port with its own runs folder; always terminated."""
    chromium_path()
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {"IC_RUNS_DIR": str(runs)}
    with streamlit_server(tmp_path / "streamlit.log", env, start_timeout_s=START_TIMEOUT_S) as url:
        yield runs, url


def probe_policy_outside(folder: Path) -> Path:
    """A signed probe policy for the default model whose probe is saved in ``folder`` (not the runs folder)."""
    from ic_core.governance.policy import Policy, probe_entry
    from ic_core.models import ModelSpec
    from ic_core.probes.saved import fit_saved_probe
    from ic_core.stats.gating import PlattCalibration

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(40, SMOLLM2_LAYERS + 1, SMOLLM2_WIDTH)).astype(np.float32)
    probe = fit_saved_probe(hidden, (hidden[:, -1, 0] > 0).astype(int), model_spec=ModelSpec().to_dict())
    path = probe.save(folder / "probes" / "swapped")
    entry = probe_entry(str(path), probe.probe_id, PlattCalibration(1.0, 0.0))
    policy = Policy(signal="probe", model=ModelSpec().to_dict(), regime="direct", kind="short_answer", t_probe=0.01,
                    probe=entry)
    return policy.save(folder / "policy.json")  # signed with the tests' operator key, as the server's


def test_policy_with_a_probe_outside_the_runs_folder_is_refused(runs_and_server, tmp_path):
    from playwright.sync_api import sync_playwright

    runs, url = runs_and_server
    policy_file = probe_policy_outside(tmp_path / "attacker")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1300}).new_page()
            page.goto(url, timeout=60_000)
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Governance").click()
            page.get_by_role("heading", name="Governance gate").wait_for(timeout=START_TIMEOUT_S * 1000)
            page.get_by_role("tab", name="Policy file & live gate").click()
            page.locator('input[type="file"]').set_input_files(str(policy_file))
            refused = page.locator('[data-testid="stAlertContentError"]').filter(has_text="Policy refused")
            refused.wait_for(timeout=60_000)
            message = refused.inner_text()
            assert "outside the runs folder" in message, message
            page.get_by_text("No policy active").first.wait_for(timeout=10_000)
            assert page.get_by_role("button", name="Use the uploaded policy").count() == 0
            assert page.locator('[data-testid="stException"]').count() == 0
            page.mouse.move(5, 5)
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / "policy_probe_outside_refused.png"))
        finally:
            browser.close()
    assert not any(runs.iterdir())  # nothing was written into the runs folder
