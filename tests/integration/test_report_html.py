"""The HTML study report (tiny random Llama): plotly.js once, every figure, its size, its facts and statistics."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from ic_core.probes.report import recoverability
from ic_core.stats.selective import selective_summary
from ic_core.study.judged import judged_signals
from ic_core.study.report import build_report, item_prefix_text, summary_markdown

CONTENT_BOUND = 400_000
"""Bytes of a 40-item, two-regime report besides plotly.js (measured ~120 kB with the probe section)."""


def items(n=40, seed=0, all_wrong=False, prefix=None):
    """Arithmetic items carrying their own output (graded without generating), ~45 % right."""
    from ic_core.datasets import PromptItem

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = int(rng.integers(0, 90)), int(rng.integers(0, 90))
        right = (not all_wrong) and rng.random() < 0.45
        out.append(PromptItem(f"q{i}", f"what is {a} plus {b} ?", str(a + b), kind="numeric",
                              output=str(a + b if right else a + b + 1), answer_prefix=prefix))
    return out


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    from ic_core.study.runner import run_study

    return run_study(tiny, items(), ["direct", "babble"], tmp_path_factory.mktemp("rep") / "r40", generate=False,
                     batch_size=20, dataset_name="plus")


@pytest.fixture(scope="module")
def rep(run):
    return recoverability(run, regime="direct", n_boot=100, n_shuffles=2, n_shuffles_per_layer=0)


@pytest.fixture(scope="module")
def page(run, rep):
    return build_report(run, recoverability=rep)


def figures(page: str) -> dict[str, tuple[list, dict]]:
    """``{div id: (data, layout)}`` of every ``Plotly.newPlot`` call, parsed as JSON."""
    decoder, out = json.JSONDecoder(), {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = decoder.raw_decode(page, m.end())
        layout, _ = decoder.raw_decode(page, end + len(page[end:]) - len(page[end:].lstrip(" ,\n")))
        out[m.group(1)] = (data, layout)
    return out


def title(axis: dict) -> str:
    return (axis.get("title") or {}).get("text", "")


class TestOnePlotly:
    def test_plotly_js_inline_once_in_the_head_before_every_figure(self, page):
        head, body = page.split("</head>", 1)
        assert page.count("* plotly.js v") == 1 and "* plotly.js v" in head
        assert get_plotlyjs()[:200] in head and "<script src=" not in page and "<link " not in page
        assert body.count('class="plotly-graph-div"') == 7  # 5 study figures + by-layer AUROC + reliability

    def test_every_figure_is_a_div_with_its_data(self, page):
        figs = figures(page)
        assert list(figs) == [f"fig-{i}" for i in range(1, 8)]
        assert all(f'id="{k}"' in page for k in figs)
        titles = [layout["title"]["text"] for _, layout in figs.values()]
        assert titles[0].startswith("Accuracy by regime") and titles[-1].startswith("Reliability of P(correct)")

    def test_size_is_plotly_plus_a_bounded_rest(self, page):
        """One copy of plotly.js (~4.8 MB) and a small remainder; two copies would double it."""
        size, js = len(page.encode()), len(get_plotlyjs().encode())
        assert js < size < js + CONTENT_BOUND


class TestAxisTitles:
    def test_titles_are_one_clean_label_each(self, page):
        figs = figures(page)
        _, acc = figs["fig-1"]
        assert title(acc["yaxis"]) == "accuracy (%)" and acc["yaxis"]["dtick"] == 20
        _, readout = figs["fig-2"]
        assert title(readout["yaxis"]) == "H_int (bits)"
        for _, layout in figs.values():
            for key, axis in layout.items():
                if key.startswith(("xaxis", "yaxis")) and title(axis):
                    assert title(axis).count("(") <= 2 and "H_slot (H_slot" not in title(axis)
        _, lens = figs["fig-3"]
        assert lens["yaxis"]["automargin"] is True and lens["yaxis"]["title"]["standoff"] > 0
        assert lens["margin"]["l"] >= 60 and lens["margin"]["b"] >= 50

    def test_reliability_axes_agree_with_their_ticks(self, page):
        """The reliability diagram's axes are probabilities whose ticks are the same unit as the title says."""
        _, layout = figures(page)["fig-7"]
        for axis in (layout["xaxis"], layout["yaxis"]):
            assert title(axis)
            if axis.get("tickformat", "").endswith("%"):
                assert "0–1" not in title(axis)


class TestItemPrefixes:
    def test_a_set_without_prefixes_never_says_used(self, run, page):
        assert item_prefix_text(run) == "none in this prompt set"
        assert "none in this prompt set" in summary_markdown(run) and "used" not in summary_markdown(run).split(
            "prefixes (direct)")[1].split("·")[0]
        assert "<th>Item answer prefixes (direct)</th><td>none in this prompt set</td>" in page

    def test_prefixes_used_and_turned_off(self, tiny, tmp_path, run):
        from ic_core.study.runner import run_study

        with_prefix = run_study(tiny, items(12, prefix="the sum is"), ["direct"], tmp_path / "p", generate=False,
                                dataset_name="plus")
        assert item_prefix_text(with_prefix) == "used on 12 of 12 direct rows"
        off = replace(run, manifest={**run.manifest, "use_item_prefix": False, "answer_prefix": "The answer is"})
        assert item_prefix_text(off) == "not used (turned off); “The answer is” for the items without one"


class TestSelectiveStatistics:
    def test_fixed_scores_beside_their_auroc_equal_stats_selective(self, run, page):
        direct = run.table[run.table["regime"] == "direct"]
        y = direct["correct"].astype(bool).to_numpy()
        want = selective_summary(-direct["readout_entropy_bits"].to_numpy(float), y, n_boot=1000, seed=0)
        (row,) = [j.row() for j in judged_signals(run) if j.regime == "direct" and j.auroc.name == "−H_int"]
        assert row["AURC [95 % CI]"] == want.aurc.ci_text() and row["AUGRC [95 % CI]"] == want.augrc.ci_text()
        assert row["E-AURC [95 % CI]"] == want.eaurc.ci_text() and re.match(r"0\.\d\d \[", row["AUROC [95 % CI]"])
        for text in (want.aurc.ci_text(), want.eaurc.ci_text(), want.augrc.ci_text(), row["AUROC [95 % CI]"]):
            assert text in page
        assert "babble" not in {j.regime for j in judged_signals(run)}  # the control is never graded

    def test_probe_section_has_selective_and_calibration(self, rep, page):
        sel = rep.selective_of(rep.last_layers.name)
        for text in (rep.last_layers.ci_text(), sel.aurc.ci_text(), sel.eaurc.ci_text(), sel.augrc.ci_text()):
            assert text in page
        assert rep.calibration.ece_text() in page and "ECE (10 equal-width bins) = " in page
        assert f"Brier {rep.calibration.brier:.3f}" in page

    def test_one_class_and_too_few_say_so_instead_of_a_number(self, tiny, tmp_path):
        from ic_core.study.runner import run_study

        wrong = run_study(tiny, items(12, all_wrong=True), ["direct"], tmp_path / "w", generate=False,
                          dataset_name="plus")
        page = build_report(wrong)
        rows = [j.row() for j in judged_signals(wrong)]
        judged = [r for r in rows if not r["signal"].endswith("(post-generation)")]
        assert judged and all(r["AUROC [95 % CI]"] == "only one class" == r["AURC [95 % CI]"] for r in judged)
        assert {r["AUROC [95 % CI]"] for r in rows if r not in judged} == {"not recorded in this run"}  # no generation
        assert "<td>only one class</td>" in page and "0 right / 12 wrong" in page
        few = run_study(tiny, items(12), ["direct"], tmp_path / "f", generate=False, dataset_name="plus")
        assert all(r["AUGRC [95 % CI]"] in ("too few to judge", "not recorded in this run") for r in
                   (j.row() for j in judged_signals(few)))


class TestTables:
    def test_babble_rows_show_their_compliance_and_pairs_read_well(self, run, page):
        """The control's verdict in the items table, never True/False; paired-test numbers rounded."""
        babble = run.table[run.table["regime"] == "babble"]
        n_not = int((~babble["complied"].astype(bool)).sum())
        assert page.count("<td>control: did not comply (contains the answer)</td>") == n_not > 0
        assert page.count("<td>control: complied</td>") == len(babble) - n_not
        assert "<h2>H_int (last prompt token) by regime</h2>" in page
        assert not re.search(r"<td>-?\d+\.\d{4,}</td>", page.split("<h2>Items</h2>")[0].split("Paired test")[-1])
