"""AppTest of issue 12 on the pages: Learn then Test on the Governance page, the guarantee line in Explore's verdict.

The run's correctness is made to follow its own H_slot (the tiny model's entropies are read first,
then the low-entropy half is graded right, with a few flips), so a threshold must certify at
α = 0.2 and cannot at α = 0.04 with 48 calibration items (80 items: 32 held out; 24 of the
training states set the OOD threshold). Every figure shown is checked against
:mod:`ic_core.stats.risk_control` and :mod:`ic_core.stats.selective` computed directly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import open_page

from ic_core.analysis import analyze
from ic_core.datasets import PromptItem
from ic_core.governance.fit_ltt import simulate_in_chunks, start_coverage
from ic_core.governance.policy import Policy
from ic_core.stats.risk_control import default_grid, held_out_risk, learn_then_test
from ui.common import EXPLORE_KEYS

pytestmark = pytest.mark.app

PAGE, EXPLORE = "pages/5_Governance.py", "pages/1_Explore.py"
RUN = "sep-tiny"
FLIP_RANKS = (48, 60, 72)
"""Entropy ranks (of 80) of high-entropy items graded right anyway: the signal is strong, not perfect."""


def _items(right: np.ndarray | None, n: int = 80) -> list[PromptItem]:
    items = []
    for i in range(n):
        a, b = i % 13, (i * 7) % 11
        ok = True if right is None else bool(right[i])
        items.append(PromptItem(id=f"sep-item-{i:03d}", question=f"what is {a} plus {b} ?", answer=str(a + b),
                                kind="numeric", output=str(a + b if ok else a + b + 1), answer_prefix="the answer is"))
    return items


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny):
    from ic_core.study.runner import run_study

    root = tmp_path_factory.mktemp("ltt-runs")
    first = run_study(tiny, _items(None), ["direct"], tmp_path_factory.mktemp("read") / "h", generate=False)
    h = first.table["readout_entropy_bits"].to_numpy(float)
    right = h <= np.median(h)
    right[np.argsort(h, kind="stable")[list(FLIP_RANKS)]] = True
    run_study(tiny, _items(right), ["direct"], root / RUN, generate=False, dataset_name="sep")
    return root


@pytest.fixture()
def env(monkeypatch, tmp_path, runs_dir):
    monkeypatch.setenv("IC_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("IC_POLICIES_DIR", str(tmp_path / "policies"))
    return runs_dir


def _signals(runs_dir):
    from ic_core.governance.signals import run_signals
    from ic_core.runs.store import load_run

    run = load_run(runs_dir / RUN)
    return run, run_signals(run, None, 0.4, 0)


def _direct_ltt(sig, alpha, delta, scores=None, direction="le"):
    s = sig.entropy_bits if scores is None else scores
    start = start_coverage(sig.train_idx.size, alpha, delta, "clopper_pearson")
    grid = default_grid(s[sig.train_idx], direction, min_coverage=start)
    return learn_then_test(s[sig.train_idx], sig.correct[sig.train_idx], alpha=alpha, delta=delta,
                           direction=direction, thresholds=grid), start


def _texts(elements) -> str:
    return " | ".join(e.value for e in elements)


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _markdown(at) -> str:
    """Every Markdown text, with md_text's escapes removed."""
    return " ".join(m.value for m in at.markdown).replace("\\", "")


def _quality_table(at):
    return next(d.value for d in at.dataframe if "AURC [95 % CI]" in d.value.columns)


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _ltt_page(tiny, alpha, delta=0.1, splits=20, signal=None):
    at = open_page(tiny, PAGE)
    at.radio(key="gov_method").set_value("ltt").run()
    if signal:
        at.radio(key="gov_signal").set_value(signal).run()
    at.number_input(key="gov_alpha").set_value(alpha)
    at.number_input(key="gov_delta").set_value(delta)
    at.number_input(key="gov_splits").set_value(splits).run()
    at.button(key="gov_ltt_btn").click().run()
    assert not at.exception, at.exception
    return at


class TestLearnThenTestOnThePage:
    def test_agent_ready_read_outs_are_offered_first(self, tiny, env):
        at = open_page(tiny, PAGE)
        radio = at.radio(key="gov_readout")
        # The run read after one generic prefix and kept the last-token entropy: both are agent-ready, the run's
        # own read-out first; no per-item (research-only) read-out exists for it.
        assert radio.value == "kind-prefix"
        assert radio.options == ["H_slot after one generic prefix ('the answer is') — agent-ready · what this run read",
                                 "H_int at the last prompt token — agent-ready (the prompt needs nothing)"]
        assert at.radio(key="gov_method").value == "empirical"
        assert at.radio(key="gov_signal").options[-1] == "combined: H_slot or probe"
        at.radio(key="gov_method").set_value("ltt").run()
        assert at.radio(key="gov_signal").options == ["H_slot (after the answer prefix)",  # LTT certifies one score
                                                      "probe P(correct) (fitted on the training items)"]
        assert "press **Certify**" in _texts(at.info)

    def test_a_strong_signal_is_certified_with_the_numbers_of_the_engine(self, tiny, env):
        run, sig = _signals(env)
        ltt, start = _direct_ltt(sig, 0.2, 0.1)
        assert ltt.certified  # the data are built so that it must certify
        at = _ltt_page(tiny, 0.2)
        assert (f"**Certified:** approve when H_slot ≤ {ltt.threshold:.4g} bits. On items like these 48 calibration "
                f"items, the error among auto-approved answers is at most 0.2 with probability at least 0.9 (exact "
                f"Clopper–Pearson bound).") in _texts(at.success)
        assert _metric(at, "Certified threshold") == f"{ltt.threshold:.4g} bits"
        assert _metric(at, "Certified coverage") == f"{ltt.coverage:.1%}"
        assert _metric(at, "Calibration items") == "48"
        assert _metric(at, "Errors among approved (calibration)") == f"{ltt.errors_approved} of {ltt.n_approved}"
        ho = held_out_risk(sig.entropy_bits[sig.test_idx], sig.correct[sig.test_idx], ltt.threshold, "le")
        assert _metric(at, "Held-out coverage") == f"{ho.coverage:.0%}"
        err = "n/a" if ho.error_rate is None else f"{ho.error_rate:.0%}"
        assert _metric(at, "Held-out error among approved") == err
        assert f"{ho.errors_approved} of {ho.n_approved} approved were wrong" in _texts(at.caption)
        # The simulation: same seeded chunks as the engine, its exceedance rate against δ in the title and caption.
        sim = simulate_in_chunks(sig.entropy_bits, sig.correct, alpha=0.2, delta=0.1, direction="le",
                                 bound="clopper_pearson", n_splits=20, n_calibration=48, seed=0, min_coverage=start)
        hist = next(c for c in _charts(at) if c["layout"]["title"]["text"].startswith("20 splits"))
        assert f"error > α in {sim.exceedance_rate:.1%} (δ = 0.1)" in hist["layout"]["title"]["text"]
        assert f"Exceedance rate {sim.exceedance_rate:.1%} ± {sim.exceedance_se:.1%}" in _texts(at.caption)
        # The OOD share of the held-out items is stated; the run has no per-item prefixes to compare with.
        assert re.search(r"\d+ of 32 held-out items \(\d+\.\d%\) lie outside the calibration states", _markdown(at))
        assert "cannot be shown for this run: it read no per-item prefixes" in _texts(at.caption)
        # The policy to save carries the guarantee.
        assert "**Guarantee:** error among approved ≤ 0.2 with probability ≥ 0.9" in _markdown(at)
        at.button(key="gov_use_btn").click().run()
        policy = at.session_state["gate_policy"]
        assert policy.risk_control["certified"] and policy.t_entropy_bits == pytest.approx(ltt.threshold)
        assert policy.risk_control["n_calibration"] == 48 and policy.ood is not None

    def test_too_few_items_give_the_plain_refusal(self, tiny, env):
        _, sig = _signals(env)
        ltt, _ = _direct_ltt(sig, 0.04, 0.1)
        assert not ltt.certified and ltt.reason.startswith("cannot certify α = 0.04 with 48 items; need ≈ ")
        at = _ltt_page(tiny, 0.04)
        warning = _texts(at.warning)
        assert f"No threshold certified:** {ltt.reason}. The policy escalates every prompt." in warning
        assert not at.success or "Certified" not in _texts(at.success)
        assert "Repeated-split check not run: n too small" in _texts(at.info)
        assert "**Guarantee:** none (not certified: cannot certify α = 0.04 with 48 items" in _markdown(at)

    def test_probe_signal_shows_reliability_and_selective_statistics(self, tiny, env):
        from ic_core.governance.fit import probe_scores
        from ic_core.stats.selective import brier_score, reliability_bins, selective_summary

        run, sig = _signals(env)
        ps = probe_scores(run, sig)
        at = _ltt_page(tiny, 0.5, delta=0.2, signal="probe")
        p, c = ps.p_correct[sig.test_idx], sig.correct[sig.test_idx]
        bins = reliability_bins(p, c, n_bins=10, binning="equal_width")
        caption = _texts(at.caption)
        assert f"ECE (10 equal-width bins) = **{bins.ece:.3f}**" in caption
        assert f"Brier score **{brier_score(p, c):.3f}**" in caption
        rel = next(ch for ch in _charts(at) if ch["layout"]["title"]["text"].startswith("Probe calibration"))
        assert rel["layout"]["xaxis"]["tickformat"] == ".0%"
        table = _quality_table(at)
        row = table[table["signal"] == "probe P(correct)"].iloc[0]
        summ = selective_summary(p, c, name="probe P(correct)", seed=0)
        assert row["AURC [95 % CI]"] == summ.aurc.ci_text() and row["AUGRC [95 % CI]"] == summ.augrc.ci_text()
        assert row["E-AURC [95 % CI]"] == summ.eaurc.ci_text()
        assert row["held-out AUROC [95 % CI]"].startswith(("0.", "1.", "too few", "n too small"))

    def test_empirical_method_also_shows_auroc_beside_aurc(self, tiny, env):
        from ic_core.stats.selective import selective_summary

        _, sig = _signals(env)
        at = open_page(tiny, PAGE)
        table = _quality_table(at)
        assert list(table.columns)[:6] == ["signal", "held-out AUROC [95 % CI]", "shuffled labels",
                                           "AURC [95 % CI]", "E-AURC [95 % CI]", "AUGRC [95 % CI]"]
        summ = selective_summary(-sig.entropy_bits[sig.test_idx], sig.correct[sig.test_idx], seed=0)
        assert table.iloc[0]["signal"] == "H_slot (low = trusted)" and table.iloc[0]["AURC [95 % CI]"] == summ.aurc.ci_text()


class TestExploreGuaranteeLine:
    Q = "what is the capital of france ?"
    FAR = "please list seven prime numbers and explain"

    @staticmethod
    def _read(tiny, policy, question):
        at = open_page(tiny, EXPLORE, gate_policy=policy)
        at.text_area(key=EXPLORE_KEYS["question"]).input(question)
        at.selectbox(key=EXPLORE_KEYS["kind"]).set_value("short_answer")
        at.button(key="explore_read_btn").click().run()
        assert not at.exception, at.exception
        return " ".join(m.value for m in at.markdown)

    @staticmethod
    def _policy(tiny, **extra):
        fields = dict(signal="h_int", model=tiny.spec.to_dict(), regime="direct", kind="short_answer",
                      t_entropy_bits=64.0, model_n_layers=tiny.n_layers, model_d_model=tiny.d_model)
        return Policy(**{**fields, **extra}).sign()

    def test_empirical_and_certified_policies_say_which_guarantee_applies(self, tiny):
        shown = self._read(tiny, self._policy(tiny), self.Q)
        assert "**Guarantee for this prompt: none (empirical threshold)**." in shown
        rc = {"method": "ltt", "bound": "clopper_pearson", "alpha": 0.2, "delta": 0.1, "n_calibration": 114,
              "coverage": 0.4, "certified": True, "direction": "le"}
        shown = self._read(tiny, self._policy(tiny, risk_control=rc), self.Q)
        assert ("**Guarantee for this prompt: certified (Learn then Test)** — error among approved ≤ 0.2 with "
                "probability ≥ 0.9 (LTT, Clopper-Pearson, n=114)") in shown

    def test_a_prompt_outside_the_calibration_states_is_out_of_distribution(self, tiny, tmp_path, monkeypatch):
        from ic_core.stats.ood import fit_ood

        monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "a.jsonl"))
        base = analyze(tiny, self.Q, kind="short_answer")
        rng = np.random.default_rng(0)
        cluster = base.state.hidden[tiny.n_layers][None, :] + rng.normal(scale=1e-3, size=(60, tiny.d_model))
        policy = self._policy(tiny, ood=fit_ood(cluster, n_components=3).to_json(), ood_layer=tiny.n_layers)
        inside = self._read(tiny, policy, self.Q)
        assert "**Guarantee for this prompt: none (empirical threshold)**." in inside
        assert "The prompt lies inside the calibration states (distance" in inside
        far = analyze(tiny, self.FAR, kind="short_answer")
        distance = policy_distance(policy, far.state.hidden[tiny.n_layers])
        shown = self._read(tiny, policy, self.FAR)
        assert "**Guarantee for this prompt: none — out of distribution** (distance " in shown
        assert f"(distance {distance:.2f} > threshold {policy.ood['threshold']:.2f})" in shown


def policy_distance(policy: Policy, state: np.ndarray) -> float:
    from ic_core.stats.ood import OODModel

    return round(OODModel.from_json(policy.ood).distance(state), 4)
