"""AppTest of the Recoverability page on a saved tiny study (no model is loaded by the page)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import finish_jobs

from ic_core.datasets import PromptItem
from ic_core.probes.saved import SavedProbe
from ic_core.study.runner import run_study

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
PAGE = "pages/4_Recoverability.py"


def items(n=40, seed=0):
    """Arithmetic items with their own outputs (graded without generating), ~45 % right."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = int(rng.integers(0, 90)), int(rng.integers(0, 90))
        right = rng.random() < 0.45
        out.append(PromptItem(f"q{i}", f"what is {a} plus {b} ?", str(a + b), kind="numeric",
                              output=str(a + b if right else a + b + 1)))
    return out


@pytest.fixture
def saved_run(tiny, runs_dir):
    return run_study(tiny, items(), ["direct"], runs_dir / "tiny40", generate=False, batch_size=20, dataset_name="t")


def open_page(tiny, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["_injected_model"] = tiny
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at



def fast_settings(at):
    at.number_input(key="recov_boot").set_value(100)
    at.number_input(key="recov_shuffles").set_value(2)
    at.number_input(key="recov_layer_shuffles").set_value(1)
    return at


def test_empty_state_says_how_to_make_a_run(tiny, runs_dir):
    at = open_page(tiny)
    assert [t.value for t in at.title] == ["Recoverability"]
    assert not any("look for a loaded probe" in m.value for m in at.markdown)  # no stray magic strings
    text = " ".join(i.value for i in at.info)
    assert "No saved study runs" in text and "python -m ic_core study" in text and "Study" in text
    assert not at.get("plotly_chart")


def test_compute_shows_curves_baselines_and_saves_the_probe(tiny, saved_run):
    at = open_page(tiny)
    assert "Press **Compute**" in " ".join(i.value for i in at.info)
    assert at.selectbox(key="recov_regime").options == ["direct"]
    # the shared short picker line (the page's own longer one was cut at 1400 px: "48 rows · runn")
    assert at.selectbox(key="recov_run").options == ["tiny40 · tiny-llama · direct · 40 rows · complete"]
    fast_settings(at).button(key="recov_compute").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles[:3] == ["Which layer knows?", "ROC: predicting a correct answer", "Probe and baselines on the same items"]
    selective = next(df.value for df in at.dataframe if "AURC [95 % CI]" in df.value.columns)
    assert selective["signal"].iloc[0] == "last 4 layers"
    n_wrong = 40 - int(saved_run.table["correct"].sum())
    assert set(selective["items / errors"]) == {f"40 / {n_wrong}"}
    for col in ("AURC [95 % CI]", "E-AURC [95 % CI]", "AUGRC [95 % CI]"):
        value, ci = selective[col].iloc[0].split(" [")
        low, high = (float(v) for v in ci.rstrip("]").split(", "))
        assert low <= float(value) <= high
    probe_cal = selective["calibration of P(correct)"].iloc[0]
    assert set(selective["calibration of P(correct)"].iloc[1:]) == {"—"}
    if probe_cal.startswith("ECE (10 equal-width bins) = "):  # the probe's out-of-fold P(correct)
        assert "Brier" in probe_cal and titles[3] == "Reliability of the last 4 layers probe's P(correct)"
        assert charts[3]["data"][1]["name"].startswith("ECE (10 equal-width bins) = ")
    else:
        assert len(titles) == 3 and any("Probe calibration:" in c.value for c in at.caption)
    by_layer = charts[0]
    assert any(a["text"] == "constant state" for a in by_layer["layout"]["annotations"])
    assert any(a["text"] == "chance (0.5)" for a in by_layer["layout"]["annotations"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["graded answers"] == "40"
    low, high = (float(v) for v in metrics["95 % CI"].split("–"))
    assert 0.0 <= low <= float(metrics["probe AUROC"]) <= high <= 1.0
    table = at.dataframe[0].value
    assert table["signal"].iloc[0] == "last 4 layers" and "−H_int" in set(table["signal"])
    post = table[table["signal"] == "−mean token entropy (post-generation)"]
    assert post["AUROC [95 % CI]"].iloc[0] == "not recorded in this run"  # a reason, not a number
    reading = " ".join(m.value for m in at.markdown)
    assert "AUROC" in reading and "shuffled labels" in reading and "not probed" in reading

    at.button(key="recov_save").click().run()
    assert not at.exception, at.exception
    assert any("Saved probe" in s.value for s in at.success)
    saved = sorted((saved_run.path / "probes").glob("*.json"))
    assert [p.name for p in saved] == ["direct_last4.json"]  # the tiny model has 4 layers
    probe = at.session_state["probe"]
    assert isinstance(probe, SavedProbe) and probe.layers == (1, 2, 3, 4)
    assert SavedProbe.load(saved[0], saved_run.path).probe_id == probe.probe_id
    assert 0.0 < probe.predict_proba_correct(saved_run.hidden[0]) < 1.0
    # the saved probe is offered by the picker (another session would find it there too)
    picker = at.selectbox(key="recov_saved_probe")
    assert picker.options == ["tiny40/probes/direct_last4"]
    at.session_state["probe"] = None
    at.button(key="recov_load_probe").click().run()
    assert not at.exception, at.exception
    assert at.session_state["probe"].probe_id == probe.probe_id
    assert any("Loaded probe" in s.value for s in at.success)


def test_the_page_opens_runs_through_the_shared_loader(tiny, saved_run, monkeypatch):
    """One cached run loader for every page (``ui.common.cached_run``): compute and save read the folder once."""
    import ui.common

    source = (ROOT / PAGE).read_text()
    assert "def cached_run" not in source and "from ui.common import cached_run" in source
    calls = []
    real = ui.common.load_run
    monkeypatch.setattr(ui.common, "load_run", lambda path: calls.append(str(path)) or real(path))
    at = open_page(tiny)
    fast_settings(at).button(key="recov_compute").click().run()
    finish_jobs(at)
    at.button(key="recov_save").click().run()
    assert not at.exception, at.exception
    assert any("Saved probe" in s.value for s in at.success)
    assert calls == [str(saved_run.path)]


def test_one_class_run_shows_reasons_not_numbers(tiny, runs_dir):
    wrong = [PromptItem(i.id, i.question, i.answer, kind="numeric", output="999") for i in items()]
    run_study(tiny, wrong, ["direct"], runs_dir / "allwrong", generate=False, batch_size=20, dataset_name="t")
    at = open_page(tiny)
    fast_settings(at).button(key="recov_compute").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["probe AUROC"] == "only one class" and metrics["95 % CI"] == "—"
    assert "only one class" in " ".join(m.value for m in at.markdown)
    assert any("No probe to save" in i.value for i in at.info)
    assert "0.50" not in " ".join(at.dataframe[0].value["AUROC [95 % CI]"])


def test_transfer_tab_shows_the_matrix_with_counts_and_downloads(tiny, saved_run, runs_dir):
    rng = np.random.default_rng(7)
    minus = []
    for i in range(50):
        a, b = int(rng.integers(50, 99)), int(rng.integers(0, 50))
        minus.append(PromptItem(f"m{i}", f"what is {a} minus {b} ?", str(a - b), kind="numeric",
                                output=str(a - b + (0 if rng.random() < 0.45 else 1))))
    other = run_study(tiny, minus, ["direct"], runs_dir / "minus50", generate=False, batch_size=25, dataset_name="m")
    at = open_page(tiny)
    assert any("Pick two or more runs" in i.value for i in at.info)
    at.multiselect(key="recov_transfer_runs").set_value([str(saved_run.path), str(other.path)]).run()
    at.number_input(key="recov_transfer_boot").set_value(100)
    at.number_input(key="recov_transfer_shuffles").set_value(1)
    at.button(key="recov_transfer_btn").click().run()
    assert not at.exception, at.exception
    finish_jobs(at)
    matrices = [f.value for f in at.dataframe if list(f.value.columns) == ["tiny40:direct", "minus50:direct"]]
    assert len(matrices) == 3  # state probe, difference-of-means direction, scalar read-out probe
    n_right = int(sum(bool(c) for c in other.table["correct"]))
    for m in matrices:
        assert list(m.index) == ["tiny40:direct", "minus50:direct"]
        cell = m.loc["tiny40:direct", "minus50:direct"]
        assert cell.endswith(f"· {n_right}/{50 - n_right}") and ("[" in cell or "too few" in cell)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the matrix (CSV)" in labels and "Download the matrix (JSON)" in labels


def test_tagged_items_get_a_tag_baseline_and_a_within_strata_table(tiny, runs_dir):
    rng = np.random.default_rng(3)
    tagged = []
    for i in range(60):
        a, b = int(rng.integers(0, 90)), int(rng.integers(0, 90))
        easy = i % 2 == 0
        right = rng.random() < (0.7 if easy else 0.25)
        tagged.append(PromptItem(f"t{i}", f"what is {a} plus {b} ?", str(a + b), kind="numeric",
                                 tags=("easy",) if easy else ("hard",), output=str(a + b if right else a + b + 1)))
    run_study(tiny, tagged, ["direct"], runs_dir / "tagged60", generate=False, batch_size=30, dataset_name="t")
    at = open_page(tiny)
    fast_settings(at).button(key="recov_compute").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    baselines = at.dataframe[0].value
    tag_row = baselines[baselines["signal"] == "item tags (one-hot)"]
    assert len(tag_row) == 1 and tag_row["right / wrong"].iloc[0] == baselines["right / wrong"].iloc[0]
    strata = next(f.value for f in at.dataframe if "within-strata AUROC [95 % CI]" in f.value.columns)
    assert set(strata["shortcut (strata)"]) == {"tags"}
    assert {"last 4 layers", "difference-of-means direction", "scalar read-out probe", "−H_int"} <= set(strata["signal"])
    assert all(s == "2 of 2" for s in strata["strata with both classes"])
    assert "Within tags strata" in " ".join(m.value for m in at.markdown)
