"""AppTest of the Study page on the tiny model: reopening a saved run, running a new one, placing a prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import finish_jobs

from ic_core.analysis import analyze
from ic_core.datasets import PromptItem
from ic_core.generate import GenerationConfig
from ic_core.runs.store import list_runs, load_run
from ic_core.study.runner import run_study
from ui.common import md_text

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
STUDY = "pages/3_Study.py"
ITEMS = [
    PromptItem("a", "what is the capital of france", "paris", answer_prefix="the capital of france is"),
    PromptItem("b", "what is the capital of germany", "berlin"),
    PromptItem("c", "what is 12 plus 7", "19", kind="numeric"),
    PromptItem("d", "what is the capital of italy", "rome"),
    PromptItem("e", "what is 3 times 4", "12", kind="numeric"),
]



@pytest.fixture
def saved_run(tiny, runs_dir):
    return run_study(tiny, ITEMS, ["direct", "babble"], runs_dir / "saved", gen_config=GenerationConfig(max_new_tokens=3),
                     batch_size=4, dataset_name="tiny-set")


def open_study(tiny, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["_injected_model"] = tiny
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    at.switch_page(STUDY).run()
    assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def chart_titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_saved_run_is_reopened_with_tables_and_figures(tiny, saved_run):
    at = open_study(tiny)
    assert [t.value for t in at.title] == ["Study a prompt set"]
    assert not at.error
    select = at.selectbox(key="study_run_select")
    assert select.value == str(saved_run.path) and "saved" in select.format_func(select.value)
    m = metrics(at)
    assert m["Rows"] == "10 / 10" and m["Status"] == "complete"
    assert any("**Prompt set** tiny-set (n=5)" in md.value and "direct 3" in md.value for md in at.markdown)
    titles = chart_titles(at)
    for expected in ("Accuracy by regime", "by regime", "Logit-lens entropy by layer", "Effective dimensionality",
                     "PCA of the read-out state I at layer 3"):
        assert any(expected in t for t in titles), (expected, titles)
    frames = [df.value for df in at.dataframe]
    paper = next(f for f in frames if "Accuracy [95 % CI]" in f.index)
    assert list(paper.columns) == ["direct", "babble"]
    # babble never reads after a prefix; direct mixes items with and without one: the label says which
    assert paper.loc["Read-out", "babble"] == "H_int (last prompt token)"
    assert paper.loc["Read-out", "direct"] == "mixed (H_int and H_slot rows)"
    items = next(f for f in frames if "item_id" in f.columns)
    assert len(items) == 10 and set(items["correct"]) <= {"✔", "✘", "—"}
    assert [b.label for b in at.get("download_button")][:2] == ["Per-item CSV", "Metrics JSON"]


def test_picking_a_row_shows_its_generation(tiny, saved_run):
    at = open_study(tiny)
    pick = at.selectbox(key=f"study_item_pick:{saved_run.path}")
    pick.set_value(4).run()  # item c, direct
    assert not at.exception
    row = saved_run.table.iloc[4]
    texts = [t.value for t in at.text]
    assert row["output_text"] in texts
    assert any(f"{row['readout_entropy_bits']:.2f} bits" in m.value for m in at.markdown)
    assert "Entropy of each generated token" in chart_titles(at)


def test_pca_colour_and_constant_layer_message(tiny, saved_run):
    at = open_study(tiny)
    options = at.radio(key="study_pca_colour").options
    assert options == ["regime", "correctness", "read-out entropy (bits)"]  # direct rows H_slot, the rest H_int
    at.radio(key="study_pca_colour").set_value(options[2]).run()
    assert not at.exception
    pca = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "PCA" in json.loads(c.proto.spec)["layout"]["title"]["text"]]
    assert pca and pca[0]["data"][0]["marker"]["showscale"] is True
    # babble rows all end on the same chat-template token, so their layer 0 (embeddings) is constant
    at.multiselect(key="study_pca_regimes").set_value(["babble"])
    at.slider(key="study_pca_layer").set_value(0).run()
    assert any("identical for every item" in i.value for i in at.info)


def test_prompt_from_explore_is_placed_on_the_pca(tiny, saved_run):
    analysis = analyze(tiny, "what is the capital of germany", kind="short_answer")
    at = open_study(tiny, last_analysis=analysis)
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "The prompt from Explore lies inside what this study covered" in text  # item b, direct, is the same prompt
    pca = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if "PCA" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    assert pca["data"][-1]["name"] == "prompt from Explore"


def test_run_a_new_study_from_the_page(tiny, runs_dir):
    at = open_study(tiny)
    assert any("No saved runs" in i.value for i in at.info)
    at.selectbox(key="keep:study.bundled").set_value("examples").run()
    at.number_input(key="keep:study.limit").set_value(2).run()
    at.number_input(key="keep:study.max_new").set_value(2).run()
    at.text_input(key="keep:study.run_name").input("../my run").run()
    assert any(md_text(runs_dir / "my-run") in c.value for c in at.caption)  # a path, shown as text
    at.button(key="study_run_btn").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]
    runs = list_runs(runs_dir)
    assert [r.name for r in runs] == ["my-run"] and runs[0].status == "complete"
    run = load_run(runs_dir / "my-run")
    assert len(run.table) == 2 and run.manifest["dataset"]["name"] == "examples"
    assert run.manifest["generation"]["max_new_tokens_by_regime"] == {"direct": 2}
    assert at.selectbox(key="study_run_select").value == str(runs_dir / "my-run")
    assert metrics(at)["Rows"] == "2 / 2"


def test_cancelled_run_can_be_resumed_from_the_page(tiny, runs_dir):
    calls = []
    run_study(tiny, ITEMS, ["direct"], runs_dir / "part", gen_config=GenerationConfig(max_new_tokens=2), batch_size=2,
              cancel=lambda: bool(calls.append(1)) or len(calls) > 2)
    assert load_run(runs_dir / "part").status == "cancelled"
    at = open_study(tiny)
    assert metrics(at)["Rows"] == "2 / 5"
    at.button(key="study_resume_btn").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    assert load_run(runs_dir / "part").status == "complete"
    assert metrics(at)["Rows"] == "5 / 5"


def test_upload_csv_shows_mapping_and_bad_rows_then_runs(tiny, runs_dir):
    at = open_study(tiny)
    at.radio(key="keep:study.source").set_value("Upload CSV / JSONL").run()
    csv_bytes = (b"qid,prompt,target\n"
                 b"1,what is the capital of france,paris\n"
                 b"2,,x\n"
                 b"3,what is 12 plus 7,19\n"
                 b"1,duplicate,y\n")
    at.file_uploader(key="study_upload").upload("my set.csv", csv_bytes, "text/csv").run()
    assert not at.exception, at.exception
    mapped = {s.label: s.value for s in at.selectbox if s.key and s.key.startswith("study_map_")}
    assert mapped["question *"] == "prompt" and mapped["answer"] == "target" and mapped["id"] == "qid"
    assert any("2 good item(s) of 4 row(s). 2 row(s) rejected" in w.value for w in at.warning)
    bad = next(df.value for df in at.dataframe if "problem" in df.value.columns)
    assert bad["line"].tolist() == [3, 5] and "Duplicate id '1'" in bad["problem"].iloc[1]
    at.number_input(key="keep:study.max_new").set_value(2).run()
    at.button(key="study_run_btn").click().run()
    finish_jobs(at)
    assert not at.exception, at.exception
    runs = list_runs(runs_dir)
    assert len(runs) == 1 and runs[0].dataset_name == "my set" and runs[0].n_rows_done == 2
    assert load_run(runs[0].path).table["item_id"].tolist() == ["1", "3"]


def test_upload_without_a_question_column_says_so(tiny, runs_dir):
    at = open_study(tiny)
    at.radio(key="keep:study.source").set_value("Upload CSV / JSONL").run()
    at.file_uploader(key="study_upload").upload("x.jsonl", b'{"words": "hi"}\n', "application/json").run()
    assert not at.exception
    assert any("Missing required column(s): question" in e.value for e in at.error)
    # a recognised key is mapped as in a CSV (issue 17 item 2): "prompt" holds the question
    at.file_uploader(key="study_upload").upload("y.jsonl", b'{"prompt": "hi"}\n', "application/json").run()
    assert not at.exception and not at.error
    assert any("1 good item(s)" in s.value for s in at.success)


def test_probe_column_says_n_too_small_instead_of_a_number(tiny, saved_run):
    at = open_study(tiny)
    at.button(key="study_probe_col_btn").click().run()
    assert not at.exception, at.exception
    paper = next(df.value for df in at.dataframe if "Accuracy [95 % CI]" in df.value.index)
    row = next(label for label in paper.index if label.startswith("Probe AUROC"))
    assert set(paper.loc[row]) <= {"n too small", "only one class"}


def test_switching_runs_after_picking_a_row_does_not_crash(tiny, saved_run, runs_dir):
    other = run_study(tiny, ITEMS[:2], ["direct"], runs_dir / "other", gen_config=GenerationConfig(max_new_tokens=2),
                      batch_size=2, dataset_name="two")
    at = open_study(tiny)
    at.selectbox(key="study_run_select").set_value(str(saved_run.path)).run()
    at.selectbox(key=f"study_item_pick:{saved_run.path}").set_value(7).run()
    at.selectbox(key="study_run_select").set_value(str(other.path)).run()
    assert not at.exception, at.exception
    at.run()  # any later rerun (e.g. another widget) must not trip over the old run's row
    assert not at.exception, at.exception
    assert at.selectbox(key=f"study_item_pick:{other.path}").value == 0


def test_items_table_shows_the_expected_answer(tiny, saved_run):
    """Issue 17 cosmetic list: the items table has an expected-answer column beside the output."""
    at = open_study(tiny)
    items = next(df.value for df in at.dataframe if "output_text" in df.value.columns)
    assert list(items.columns[:4]) == ["item_id", "regime", "question", "expected"]
    assert set(items["expected"]) == {"paris", "berlin", "19", "rome", "12"}
