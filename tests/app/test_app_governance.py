"""AppTest of the Governance page on a saved tiny run (tiny model injected; runs and audit log in tmp)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import open_page

from ic_core.datasets import PromptItem
from ic_core.governance.audit import read_audit
from ic_core.governance.policy import Policy

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
PAGE = "pages/5_Governance.py"


def _items(n: int = 60) -> list[PromptItem]:
    items = []
    for i in range(n):
        a, b = i % 13, (i * 7) % 11
        right = i % 5 in (0, 2, 4) if i < 30 else i % 5 in (1, 3)  # about half right
        items.append(PromptItem(
            id=f"ops-{i:03d}", question=f"what is {a} plus {b} ?", answer=str(a + b), kind="numeric",
            output=str(a + b if right else a + b + 1), answer_prefix="the answer is",
        ))
    return items


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny):
    from ic_core.study.runner import run_study

    root = tmp_path_factory.mktemp("runs")
    run_study(tiny, _items(), ["direct"], root / "governance_ops-tiny", generate=False, dataset_name="governance_ops")
    return root


@pytest.fixture()
def env(monkeypatch, tmp_path, runs_dir):
    monkeypatch.setenv("IC_RUNS_DIR", str(runs_dir))
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("IC_AUDIT_LOG", str(log))
    return log


def start(tiny):
    return open_page(tiny, PAGE)


def values(data) -> np.ndarray:
    """A trace array: plotly stores numpy arrays as base64 typed arrays in JSON."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(data)


def metric(at, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def texts(elements) -> str:
    return " | ".join(e.value for e in elements)


def test_without_runs_the_page_says_how_to_make_one(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("IC_RUNS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "a.jsonl"))
    at = start(tiny)
    assert [t.value for t in at.title] == ["Governance gate"]
    codes = [c.value for c in at.code]
    assert any("--data governance_ops" in c and "--answer-prefix" in c for c in codes)
    assert any("python -m ic_core study --data capitals" in c for c in codes)
    assert at.button(key="gov_demo_make").label == "Make a governance_ops run now"
    assert "No gate decisions logged yet." in texts(at.info)


def test_threshold_updates_live_and_fit_sets_it(tiny, env):
    at = start(tiny)
    assert at.session_state["gov_signal"] == "h_slot"  # the run read after the answer prefix
    slider = at.slider(key="gov_t_entropy")
    at.radio(key="gov_view").set_value("all").run()
    slider.set_value(slider.min).run()  # below every entropy: everything escalated
    assert metric(at, "Escalation rate") == "100%" and metric(at, "Error among auto-approved") == "n/a"
    at.slider(key="gov_t_entropy").set_value(at.slider(key="gov_t_entropy").max).run()
    assert metric(at, "Escalation rate") == "0%"
    assert "set by hand" in texts(at.caption)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = next(c for c in charts if c["data"][0]["type"] == "heatmap")
    np.testing.assert_array_equal(values(heat["data"][0]["z"]), [[30, 0], [30, 0]])  # all 60 approved
    at.slider(key="gov_target").set_value(0.6).run()
    at.button(key="gov_fit_btn").click().run()
    assert not at.exception, at.exception
    assert at.success or at.warning
    assert "fitted on the training items only" in texts(at.caption)
    assert metric(at, "Held-out items") == "24"
    assert re.search(r"95 % CI (\[\d+%, \d+%\]|n/a)", texts(at.caption))  # each rate has its CI beneath it
    # Another split makes the fitted threshold stale: the page says it is now set by hand.
    at.slider(key="gov_holdout").set_value(0.5).run()
    assert metric(at, "Held-out items") == "30"
    assert "set by hand" in texts(at.caption) and "fitted on the training items only" not in texts(at.caption)


def test_probe_signal_policy_in_explore_gate_and_audit(tiny, env):
    at = start(tiny)
    at.radio(key="gov_signal").set_value("probe").run()
    assert not at.exception, at.exception
    assert "no item is scored by a probe that saw it" in texts(at.caption)
    at.button(key="gov_fit_btn").click().run()
    at.button(key="gov_use_btn").click().run()
    policy = at.session_state["gate_policy"]
    assert isinstance(policy, Policy) and policy.signal == "probe"
    assert Path(policy.probe["path"]).is_file() and at.session_state["probe"].probe_id == policy.probe["id"]
    at.text_area(key="gov_prompt").input("what is 3 plus 4 ?").run()
    at.button(key="gov_check_btn").click().run()
    assert not at.exception, at.exception
    verdict = texts(at.success) + texts(at.warning)
    assert "probe P(correct)" in verdict and ("APPROVE" in verdict or "ESCALATE" in verdict)
    records, skipped = read_audit(env)
    assert len(records) == 1 and skipped == 0 and records[0]["policy_id"] == policy.policy_id
    assert "prompt" not in records[0]
    at.run()
    assert any("1 record(s) shown" in c.value for c in at.caption)


def test_demo_compares_three_signals_on_held_out_items(tiny, env):
    at = start(tiny)
    at.button(key="gov_demo_run").click().run()
    assert not at.exception, at.exception
    # The demo's two summaries are static tables (they wrap at 1400 px); its data grids in page order are the
    # caught and slipped lists, then the Tune tab's.
    table = at.table[0].value.reset_index()
    assert list(table["signal"]) == ["H_int (raw, last prompt token)", "H_slot (after the answer prefix)",
                                     "probe P(correct)"]
    assert all(v.startswith(("0.", "1.")) for v in table["held-out AUROC [95 % CI]"])
    assert "Fitted on 36 training items, judged on 24 held-out items" in texts(at.markdown)
    quality = at.table[1].value.reset_index()  # AUROC beside the selective-prediction statistics, same items
    assert list(quality["signal"]) == list(table["signal"])
    assert [v.split(" ")[0] for v in quality["held-out AUROC [95 % CI]"]] == \
        [v.split(" ")[0] for v in table["held-out AUROC [95 % CI]"]]
    for col in ("AURC [95 % CI]", "E-AURC [95 % CI]", "AUGRC [95 % CI]"):
        assert all(0.0 <= float(v.split(" ")[0]) <= 1.0 for v in quality[col]), quality[col]
    caught, slipped = at.dataframe[0].value, at.dataframe[1].value
    assert (caught["correct"] == False).all() and (slipped["correct"] == False).all()  # noqa: E712
    row = table[table["signal"] == "H_slot (after the answer prefix)"].iloc[0]
    assert int(row["caught"]) == len(caught) and int(row["slipped through"]) == len(slipped)


def test_make_demo_run_button_runs_a_study_then_the_demo(tiny, monkeypatch, tmp_path):
    from ic_core.study.runner import run_study

    runs = tmp_path / "runs"
    monkeypatch.setenv("IC_RUNS_DIR", str(runs))
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "a.jsonl"))
    # another set's run already there: the box must still move to the demo run once it is listed
    run_study(tiny, _items(12), ["direct"], runs / "capitals-other", generate=False, dataset_name="capitals")
    at = start(tiny)
    at.button(key="gov_demo_make").click().run()
    assert not at.exception, at.exception
    from ic_core.jobs import job_queue  # the run is a background job (issue 17 item 9): wait for it, then look

    for job in job_queue().jobs():
        assert job_queue().wait(job.job_id, timeout=600).finished
    at.run()
    assert not at.exception, at.exception
    made = [p for p in runs.iterdir() if p.name.startswith("governance_ops-direct-n60")]
    assert len(made) == 1 and (made[0] / "manifest.json").is_file()
    assert at.selectbox(key="gov_demo_run_name").value == made[0].name  # not the capitals run listed first
    from ic_core.runs.store import load_run

    run = load_run(made[0])
    assert len(run.table) == 60 and set(run.table["answer_prefix"]) == {"The answer is"}
    # The demo ran on the new run at once: either its table, or a clear reason it cannot run
    # (a random tiny model rarely answers right, so one class or n too small is expected).
    shown = texts(at.error) + " ".join(m.value for m in at.markdown)
    assert "Fitted on" in shown or "Only one class" in shown or "n too small" in shown


def test_a_probe_from_another_run_can_be_used(tiny, env, tmp_path):
    from ic_core.probes.saved import fit_saved_probe_for_run
    from ic_core.study.runner import run_study

    # A related task (times instead of plus) whose wrong answers follow the gate run's first pattern, so the
    # probe ranks this run's items the right way round (a probe that does not carry over is refused).
    other_items = [PromptItem(id=f"o{i}", question=f"what is {i % 13} times {(i * 7) % 11} ?",
                              answer=str(i % 13 * ((i * 7) % 11)), kind="numeric",
                              output=str(i % 13 * ((i * 7) % 11) + (i % 5 in (1, 3))), answer_prefix="the answer is")
                   for i in range(40)]
    other = run_study(tiny, other_items, ["direct"], tmp_path / "elsewhere" / "o", generate=False)
    probe = fit_saved_probe_for_run(other)
    at = start(tiny)
    at.session_state["probe"] = probe
    at.radio(key="gov_signal").set_value("probe").run()
    at.radio(key="gov_probe_source").set_value("session").run()
    assert not at.exception, at.exception
    assert "It never saw this run's items" in texts(at.caption)
    at.button(key="gov_fit_btn").click().run()
    at.button(key="gov_use_btn").click().run()
    assert at.session_state["gate_policy"].probe["id"] == probe.probe_id


def test_a_policy_whose_probe_lies_outside_the_runs_folder_is_refused(tiny, env, monkeypatch, tmp_path):
    at = start(tiny)
    at.radio(key="gov_signal").set_value("probe").run()
    at.button(key="gov_fit_btn").click().run()
    at.button(key="gov_use_btn").click().run()
    policy = at.session_state["gate_policy"]
    assert Path(policy.probe["path"]).is_file()
    # The same policy arriving from elsewhere: its probe is no longer under the runs root, and no probe is loaded.
    elsewhere = tmp_path / "other-runs"
    elsewhere.mkdir()
    monkeypatch.setenv("IC_RUNS_DIR", str(elsewhere))
    del at.session_state["probe"]
    at.run()
    assert not at.exception, at.exception
    assert "outside the runs folder" in texts(at.error)


def test_demo_flags_a_rule_that_escalates_everything(tiny, env):
    at = start(tiny)
    at.slider(key="gov_demo_target").set_value(0.0).run()  # no threshold approves anything with 0 % error
    at.button(key="gov_demo_run").click().run()
    assert not at.exception, at.exception
    escalated_all = [w.value for w in at.warning if "every held-out item is escalated" in w.value]
    slipped = at.dataframe[1].value
    assert escalated_all and len(slipped) == 0
