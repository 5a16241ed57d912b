"""AppTest: the governance demo's first figures from its first items while the rest are answered (issue 17 item 9)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ic_core.datasets import PromptItem, load_bundled
from ic_core.governance.demo import DEMO_FIRST, demo_order, demo_view, first_rows
from ic_core.jobs import JobContext, job_queue
from ic_core.runs.store import load_run
from ic_core.study.runner import resume_run, run_study
from tests.helpers import open_page

pytestmark = pytest.mark.app

PAGE = "pages/5_Governance.py"
WAIT = 300


def items(n: int = 60) -> list[PromptItem]:
    """Graded from their own outputs (about half right), read after a prefix: no generation, fast."""
    out = []
    for i in range(n):
        a, b = i % 13, (i * 7) % 11
        right = i % 5 in (0, 2, 4) if i < 30 else i % 5 in (1, 3)
        out.append(PromptItem(id=f"ops-{i:03d}", question=f"what is {a} plus {b} ?", answer=str(a + b), kind="numeric",
                              output=str(a + b if right else a + b + 1), answer_prefix="the answer is"))
    return out


@pytest.fixture
def growing_run(tiny, tmp_path, monkeypatch):
    """A governance_ops run with its first 24 of 60 rows saved, and a job that finishes it when released."""
    monkeypatch.setenv("IC_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    folder = tmp_path / "runs" / "governance_ops-growing"
    saved = []
    run_study(tiny, items(), ["direct"], folder, generate=False, dataset_name="governance_ops", batch_size=6,
              progress=lambda d, t, e, m: saved.append(d), cancel=lambda: saved[-1] >= DEMO_FIRST)
    assert len(load_run(folder).table) == DEMO_FIRST
    release = threading.Event()

    def finish(ctx: JobContext) -> str:
        assert release.wait(WAIT)
        return str(resume_run(tiny, folder, progress=ctx.progress, cancel=ctx.cancelled).path)

    job = job_queue().submit("governance_demo", folder.name, finish, result_path=str(folder))
    yield folder, job, release
    release.set()
    job_queue().wait(job, WAIT)


def shown(at) -> str:
    return " | ".join(m.value for m in at.markdown)


def test_first_figures_from_the_first_items_then_the_whole_set(tiny, growing_run):
    folder, job, release = growing_run
    at = open_page(tiny, PAGE)
    assert "showing 24 of 60 governance\\_ops items; the rest are being answered in the background" in shown(at)
    # the picker gives no count of its own while the job writes the run (it would lag the live bar beside it)
    picked = at.selectbox(key="gov_demo_run_name")
    assert picked.options[picked.index] == "governance_ops-growing · tiny-llama · direct · being written (progress above)"
    at.button(key="gov_demo_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.table[0].value.reset_index()
    assert list(table["signal"])[:2] == ["H_int (raw, last prompt token)", "H_slot (after the answer prefix)"]
    assert "Fitted on 14 training items, judged on 10 held-out items" in shown(at)
    release.set()
    assert job_queue().wait(job, WAIT).state == "complete"
    at.run()
    assert not at.exception, at.exception
    assert "showing 60 of 60 governance\\_ops items." in shown(at)
    picked = at.selectbox(key="gov_demo_run_name")
    assert picked.options[picked.index].endswith(" · 60 rows · complete")
    assert "Fitted on 36 training items, judged on 24 held-out items" in shown(at)


class TestDemoRows:
    def test_demo_order_spans_topics_and_difficulties_in_every_prefix(self):
        ordered = demo_order(load_bundled("governance_ops").items)
        assert len(ordered) == 60 and len({it.id for it in ordered}) == 60
        first = ordered[:DEMO_FIRST]
        topics = [next(t for t in it.tags if t not in ("easy", "hard")) for it in first]
        assert {t: topics.count(t) for t in set(topics)} == {t: 4 for t in set(topics)} and len(set(topics)) == 6
        assert sum("hard" in it.tags for it in first) == 12

    def test_demo_view_stages(self):
        assert demo_view(5, 60, growing=True).n_shown == 0
        growing = demo_view(40, 60, growing=True)
        assert growing.n_shown == DEMO_FIRST and growing.text("governance_ops") == (
            "showing 24 of 60 governance_ops items; the rest are being answered in the background")
        stopped = demo_view(40, 60, growing=False)
        assert stopped.n_shown == 40 and "stopped before the rest" in stopped.text("governance_ops")
        assert demo_view(60, 60, growing=False).text("x") == "showing 60 of 60 x items"

    def test_first_rows_is_the_run_cut_at_a_plan_row(self, tiny, tmp_path):
        run = run_study(tiny, items(10), ["direct"], Path(tmp_path) / "r", generate=False, batch_size=4)
        cut = first_rows(run, 6)
        assert cut.table["plan_row"].tolist() == list(range(6)) and cut.table["row"].tolist() == list(range(6))
        np.testing.assert_array_equal(cut.hidden, run.hidden[:6])
        np.testing.assert_array_equal(cut.lens_entropy_bits, run.lens_entropy_bits[:6])


def test_raw_h_int_comes_from_the_run_when_it_recorded_it(tiny, tmp_path):
    """A prefixed study records H_int of every row: the demo uses it (no re-read, no model); older runs re-read."""
    import dataclasses

    from ic_core.governance.compare import compare_signals, entropy_without_prefix_bits
    from ic_core.governance.signals import run_signals

    run = run_study(tiny, items(24), ["direct"], Path(tmp_path) / "r", generate=False, batch_size=6)
    recorded = run.table["last_token_entropy_bits"].to_numpy(float)
    comp = compare_signals(run, None, 0.5, n_boot=50)
    h_int = next(r for r in comp.results if r.key == "h_int")
    np.testing.assert_array_equal(h_int.risk, recorded)
    assert "read by the study" in h_int.description and not any("model loaded" in n for n in comp.notes)
    # the re-read the demo did before (10 s for 24 items) gives the same bits
    np.testing.assert_allclose(entropy_without_prefix_bits(tiny, run_signals(run, None, 0.4, 0)), recorded, atol=1e-4)
    older = dataclasses.replace(run, table=run.table.drop(columns=["last_token_entropy_bits"]))
    assert not [r for r in compare_signals(older, None, 0.5, n_boot=50).results if r.key == "h_int"]
    reread = next(r for r in compare_signals(older, tiny, 0.5, n_boot=50).results if r.key == "h_int")
    assert "re-read" in reread.description
    np.testing.assert_allclose(reread.risk, recorded, atol=1e-4)
