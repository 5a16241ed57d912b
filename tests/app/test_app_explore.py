"""AppTest of the router, the sidebar and the Explore / Compare regimes / Learn pages (tiny model)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from ic_core.analysis import analyze
from ic_core.errors import PromptError
from ic_core.generate import GenerationConfig, generate
from ic_core.grading import grade
from ic_core.models import ModelSpec
from ic_core.prompts import REGIMES
from ui.common import EXPLORE_KEYS, SPEC_KEY, UPLOAD_LIMIT_BYTES, md_text, page_title, read_text_upload

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
EXPLORE, COMPARE, LEARN = "pages/1_Explore.py", "pages/2_Compare_regimes.py", "pages/6_Learn.py"
QUESTION = "what is the capital of france ?"
K = EXPLORE_KEYS


def start(tiny, page: str | None = None, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if tiny is not None:
        at.session_state["_injected_model"] = tiny
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def read_state(at, question: str = QUESTION, **inputs):
    at.text_area(key=K["question"]).input(question)
    if "regime" in inputs:  # the custom template box appears only once "custom" is picked
        at.radio(key=K["regime"]).set_value(inputs.pop("regime")).run()
    for name, value in inputs.items():
        if name == "kind":
            at.selectbox(key=K[name]).set_value(value)
        elif name in ("template", "choices"):
            at.text_area(key=K[name]).input(value)
        else:
            at.text_input(key=K[name]).input(value)
    at.button(key="explore_read_btn").click().run()
    assert not at.exception, at.exception
    return at


def values(data) -> list[float]:
    """A trace's x/y as a list: plotly stores numpy arrays as base64 typed arrays in JSON."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


class TestRouterAndSidebar:
    def test_app_runs_with_sidebar_and_explore_as_default(self, tiny):
        at = start(tiny)
        assert [t.value for t in at.title] == ["Explore a prompt"]
        assert not at.error
        labels = [b.label for b in at.sidebar.button]
        assert "Apply" in labels
        assert "trust_remote_code" not in [c.label for c in at.sidebar.checkbox]  # an administrator setting
        assert any("Switching models is turned off" in c.value for c in at.sidebar.caption)
        assert at.session_state["max_new_tokens"] == 64 and at.session_state["do_sample"] is False
        assert any("tiny-llama" in c.value and "CPU" in c.value for c in at.caption)  # footer

    def test_every_page_file_is_registered(self, tiny):
        at = start(tiny)
        files = sorted((ROOT / "pages").glob("*.py"))
        assert len(files) >= 3
        for f in files:  # raises ValueError when st.navigation did not register the file
            at.switch_page(f"pages/{f.name}")

    def test_page_titles_come_from_file_names(self):
        assert page_title("1_Explore.py") == "Explore"
        assert page_title("2_Compare_regimes.py") == "Compare regimes"
        assert page_title("6_Learn.py") == "Learn"

    def test_trust_remote_code_warns_and_changes_nothing_until_apply(self, tiny, monkeypatch):
        monkeypatch.setenv("IC_ALLOW_TRUST_REMOTE_CODE", "1")
        at = start(tiny)
        at.sidebar.checkbox[0].check().run()
        assert any("trust_remote_code runs code" in w.value for w in at.sidebar.warning)
        assert SPEC_KEY not in at.session_state or at.session_state[SPEC_KEY].trust_remote_code is False
        assert any("not applied yet" in c.value for c in at.sidebar.caption)
        at.sidebar.button[0].click().run()
        assert at.session_state[SPEC_KEY] == ModelSpec(trust_remote_code=True)

    def test_apply_offers_only_allow_listed_models_and_shows_load_errors(self, tiny, monkeypatch):
        monkeypatch.setenv("IC_ALLOW_MODEL_SWITCH", "1")
        monkeypatch.setenv("IC_MODEL_ALLOWLIST", "hub:no-such-org/no-such-model-xyz")
        at = start(tiny)
        picker = at.sidebar.selectbox(key="sb_model")
        assert picker.options == ["Offline default (SmolLM2-135M-Instruct)", "hub:no-such-org/no-such-model-xyz"]
        assert not at.sidebar.text_input  # no free-text model field: only the allow-list
        picker.set_value("hub:no-such-org/no-such-model-xyz").run()
        at.sidebar.button[0].click().run()
        assert at.session_state[SPEC_KEY] == ModelSpec(source="hub", name="no-such-org/no-such-model-xyz")
        del at.session_state["_injected_model"]
        at.run()
        assert not at.exception
        assert "Model not loaded" in errors(at) and "no-such-org/no-such-model-xyz" in errors(at)
        assert at.button(key="explore_read_btn").disabled

    def test_a_session_cannot_load_a_model_the_administrator_did_not_allow(self):
        """Every page's loader refuses it (the sidebar is not the only guard)."""
        spec = ModelSpec(source="hub", name="no-such-org/no-such-model-xyz")
        at = start(None, **{SPEC_KEY: spec})
        assert "Model not loaded" in errors(at) and "model switching is turned off" in errors(at)
        assert at.button(key="explore_read_btn").disabled
        at = start(None, **{SPEC_KEY: ModelSpec(trust_remote_code=True)})
        assert "trust\\_remote\\_code is turned off" in errors(at)

    @pytest.mark.parametrize("page", [COMPARE, LEARN])
    def test_fresh_server_page_url_still_gets_the_router(self, tiny, page):
        # Without the fixture's patch every AppTest run looks like a fresh server: a page
        # requested directly runs alone; require_router hands it to app.py and back.
        at = start(tiny, page)
        assert "Apply" in [b.label for b in at.sidebar.button]
        assert at.title[0].value.startswith(("Compare regimes", "Learn"))
        assert at.title[0].value.startswith("Compare" if page == COMPARE else "Learn")

    def test_widgets_keep_values_across_pages(self, tiny):
        at = start(tiny)
        at.text_area(key=K["question"]).input(QUESTION)
        at.radio(key=K["regime"]).set_value("cot").run()
        at.switch_page(LEARN).run()
        at.switch_page(EXPLORE).run()
        assert at.text_area(key=K["question"]).value == QUESTION
        assert at.radio(key=K["regime"]).value == "cot"


class TestExplore:
    def test_empty_state_says_what_to_do(self, tiny):
        at = start(tiny)
        assert any("Read the state" in i.value for i in at.info)
        assert not at.metric

    def test_risk_card_matches_the_engine(self, tiny):
        at = read_state(start(tiny), kind="short_answer")
        expected = analyze(tiny, QUESTION, regime="direct", kind="short_answer")
        shown = metrics(at)
        assert shown["H_int (bits)"] == f"{expected.state.readout_entropy_bits:.2f}"
        assert shown["Top-1 probability"] == f"{expected.state.top1_prob:.1%}"
        assert shown["Prompt tokens"] == str(expected.rendered.n_tokens)
        figs = charts(at)
        assert len(figs) == 2  # top tokens, lens; nothing generated yet
        assert [round(p, 6) for p in values(figs[0]["data"][0]["x"])] == [round(p, 6) for _, p in expected.top_tokens]
        assert values(figs[1]["data"][0]["y"]) == pytest.approx(list(expected.state.lens.entropy_bits[0]), abs=1e-5)
        assert any("No gate policy loaded" in i.value for i in at.info)
        assert any("read-out token" in m.value for m in at.markdown)
        assert at.get("download_button")[0].proto.label == "Download JSON"

    def test_generation_after_the_card(self, tiny):
        at = read_state(start(tiny, max_new_tokens=6), kind="short_answer")
        assert at.button(key="explore_generate_btn") is not None
        at.button(key="explore_generate_btn").click().run()
        assert not at.exception and not at.error
        rendered = analyze(tiny, QUESTION, regime="direct", kind="short_answer").rendered
        reference = generate(tiny, rendered, GenerationConfig(max_new_tokens=6))
        assert at.text[-1].value == reference.answer_text  # "Output as plain text"
        spans = [m.value for m in at.markdown if "ic-tokens" in m.value]
        assert len(spans) == 1 and spans[0].count("background:rgb(") == len(reference.tokens)
        figs = charts(at)
        assert len(figs) == 3
        assert figs[2]["layout"]["yaxis"]["title"]["text"] == "entropy (bits)"
        assert values(figs[2]["data"][0]["y"]) == pytest.approx(list(reference.entropy_bits), abs=1e-5)
        assert any("no expected answer to compare with" in i.value for i in at.info)

    def test_babble_output_is_checked_for_compliance_not_graded(self, tiny):
        from ic_core.analysis import verdict_of
        from ic_core.narrative import compliance_line

        at = read_state(start(tiny, max_new_tokens=6), regime="babble", kind="short_answer", expected="paris")
        at.button(key="explore_generate_btn").click().run()
        assert not at.exception and not at.error
        analysis = analyze(tiny, QUESTION, regime="babble", kind="short_answer", expected="paris")
        text = generate(tiny, analysis.rendered, GenerationConfig(max_new_tokens=6)).answer_text
        graded, compliance = verdict_of(analysis, text)
        assert graded is None and compliance is not None
        assert compliance_line(compliance.complied, compliance.reason) in [i.value for i in at.info]
        assert not any(s.value.startswith("**Correct.") for s in at.success)
        assert not any(w.value.startswith("**Wrong.") for w in at.warning)

    def test_generation_is_graded_when_an_answer_is_given(self, tiny):
        at = read_state(start(tiny, max_new_tokens=8), kind="short_answer", expected="paris")
        at.button(key="explore_generate_btn").click().run()
        analysis = analyze(tiny, QUESTION, regime="direct", kind="short_answer")
        text = generate(tiny, analysis.rendered, GenerationConfig(max_new_tokens=8)).answer_text
        verdict = grade(text, "paris", "short_answer", (), (), QUESTION)
        boxes = [s.value for s in at.success] + [w.value for w in at.warning]
        word = "Correct" if verdict.correct else "Wrong"
        assert any(word in b and verdict.rule in b for b in boxes), boxes

    def test_answer_prefix_reads_h_slot(self, tiny):
        at = read_state(start(tiny), kind="short_answer", answer_prefix="the capital of france is")
        expected = analyze(tiny, QUESTION, kind="short_answer", answer_prefix="the capital of france is")
        assert metrics(at)["H_slot (bits)"] == f"{expected.state.readout_entropy_bits:.2f}"

    def test_custom_template(self, tiny):
        at = read_state(start(tiny), regime="custom", template="{question} answer in words")
        assert "H_int (bits)" in metrics(at)
        bad = read_state(start(tiny), regime="custom", template="no placeholder here")
        assert "{question}" in errors(bad) and not bad.metric

    def test_changed_inputs_are_flagged(self, tiny):
        at = read_state(start(tiny))
        at.text_area(key=K["question"]).input("what is the capital of italy ?").run()
        assert any("inputs changed" in i.value for i in at.info)

    def test_sidebar_token_limit_reaches_generation(self, tiny):
        at = read_state(start(tiny, max_new_tokens=3))
        at.button(key="explore_generate_btn").click().run()
        assert any(c.value.startswith("3 tokens") for c in at.caption)


class TestExploreBadInput:
    def test_empty_prompt(self, tiny):
        at = read_state(start(tiny), question="   ")
        assert "empty" in errors(at) and not at.metric

    def test_multiple_choice_without_options(self, tiny):
        at = read_state(start(tiny), kind="multiple_choice")
        assert "two options" in errors(at)

    def test_upload_fills_the_prompt(self, tiny):
        at = start(tiny)
        at.file_uploader(key="explore_upload").set_value(("q.txt", b"what is the capital of italy ?", "text/plain"))
        at.run()
        assert at.text_area(key=K["question"]).value == "what is the capital of italy ?"
        at.button(key="explore_read_btn").click().run()
        assert "H_int (bits)" in metrics(at)

    @pytest.mark.parametrize(("data", "message"), [
        (b"a" * (UPLOAD_LIMIT_BYTES + 1), "the limit is 1,000 kB"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("café".encode("latin-1"), "not UTF-8"),
        (b"   \n ", "empty"),
    ])
    def test_bad_upload_is_refused_and_the_prompt_kept(self, tiny, data, message):
        at = start(tiny)
        at.text_area(key=K["question"]).input(QUESTION).run()
        at.file_uploader(key="explore_upload").set_value(("bad.txt", data, "text/plain"))
        at.run()
        assert not at.exception
        assert "Upload refused" in errors(at) and message in errors(at)
        assert at.text_area(key=K["question"]).value == QUESTION


    def test_unexpected_engine_failure_is_one_message(self, tiny, monkeypatch):
        import ic_core.analysis

        def broken(*args, **kwargs):
            raise RuntimeError("simulated failure")

        monkeypatch.setattr(ic_core.analysis, "analyze", broken)
        at = read_state(start(tiny))
        assert not at.exception
        assert "Unexpected error (RuntimeError): simulated failure" in errors(at)


class TestReadTextUpload:
    def test_utf8_with_bom_and_crlf(self):
        assert read_text_upload("q.txt", "\ufeffWhat is 2 + 2?\r\n".encode()) == "What is 2 + 2?"

    def test_limit_is_exact(self):
        assert read_text_upload("q.txt", b"x" * 10, limit_bytes=10) == "x" * 10
        with pytest.raises(PromptError, match="limit"):
            read_text_upload("q.txt", b"x" * 11, limit_bytes=10)

    def test_control_characters_are_binary(self):
        with pytest.raises(PromptError, match="control character"):
            read_text_upload("q.txt", b"abc\x07def")


class TestGateVerdict:
    @staticmethod
    def policy(tiny, threshold_bits: float, **overrides):
        from ic_core.governance.policy import Policy

        fields = dict(signal="h_int", model=tiny.spec.to_dict(), regime="direct", kind="short_answer",
                      t_entropy_bits=threshold_bits)
        return Policy(**{**fields, **overrides}).sign()  # the test operator key (root conftest)

    @pytest.mark.parametrize(("margin", "box", "word"), [(+0.5, "success", "approve"), (-0.5, "warning", "escalate")])
    def test_active_policy_decides_on_the_card(self, tiny, margin, box, word):
        h = analyze(tiny, QUESTION, kind="short_answer").state.readout_entropy_bits
        at = read_state(start(tiny, gate_policy=self.policy(tiny, round(h + margin, 2))), kind="short_answer")
        shown = " ".join(e.value for e in getattr(at, box))
        assert f"Gate: {word}" in shown and f"H_int {h:.2f} bits" in shown

    def test_verdict_is_audited_once_per_read(self, tiny, tmp_path, monkeypatch):
        from ic_core.governance.audit import read_audit

        log = tmp_path / "explore_audit.jsonl"
        monkeypatch.setenv("IC_AUDIT_LOG", str(log))
        policy = self.policy(tiny, 3.0)
        at = read_state(start(tiny, gate_policy=policy), kind="short_answer")
        at.run()  # a rerun (any widget) must not log the same verdict again
        records, torn = read_audit(log)
        assert torn == 0 and len(records) == 1
        assert records[0]["policy_id"] == policy.policy_id and "prompt" not in records[0]
        read_state(at, kind="short_answer")  # a new read is a new decision
        assert len(read_audit(log)[0]) == 2

    def test_policy_of_another_model_gives_no_verdict(self, tiny):
        other = self.policy(tiny, 3.0, model={**tiny.spec.to_dict(), "name": "some-other-model"})
        at = read_state(start(tiny, gate_policy=other), kind="short_answer")
        assert not at.exception
        text = " ".join(w.value for w in at.warning)
        assert "no verdict" in text and "some-other-model" in text

    def test_h_slot_policy_without_prefix_says_what_to_do(self, tiny):
        slot = self.policy(tiny, 3.0, signal="h_slot", prefix_mode="fixed", answer_prefix="the answer is")
        at = read_state(start(tiny, gate_policy=slot), kind="short_answer")
        assert "answer prefix" in " ".join(w.value for w in at.warning)


class TestCompareRegimes:
    def test_three_regimes_side_by_side_then_generated(self, tiny):
        at = start(tiny, COMPARE, max_new_tokens=4)
        assert any("Read all regimes" in i.value for i in at.info)
        at.text_area(key="keep:compare.question").input(QUESTION)
        at.number_input(key="keep:compare.cot_tokens").set_value(16)
        at.button(key="compare_read_btn").click().run()
        assert not at.exception and not at.error
        shown = metrics(at)
        for regime, title in zip(REGIMES, ("Direct", "Chain of thought", "Babble (control)")):
            h = analyze(tiny, QUESTION, regime=regime, kind="short_answer").state.readout_entropy_bits
            assert shown[f"{title}: H_int (bits)"] == f"{h:.2f}"
        (overlay,) = charts(at)
        assert [t["name"] for t in overlay["data"]] == list(REGIMES)
        at.button(key="compare_generate_btn").click().run()
        assert not at.exception and not at.error
        counts = [c.value.split(" tokens")[0] for c in at.caption if " tokens · stop" in c.value]
        assert len(counts) == 3
        assert int(counts[0]) <= 4 and int(counts[2]) <= 4 and int(counts[1]) <= 16
        assert sum("ic-tokens" in m.value for m in at.markdown) == 3

    def test_babble_output_gets_the_compliance_line_the_answers_get_grades(self, tiny):
        from ic_core.analysis import verdict_of
        from ic_core.narrative import compliance_line

        at = start(tiny, COMPARE, max_new_tokens=4)
        at.text_area(key="keep:compare.question").input(QUESTION)
        at.number_input(key="keep:compare.cot_tokens").set_value(4)
        at.text_input(key="keep:compare.expected").input("paris")
        at.button(key="compare_read_btn").click().run()
        at.button(key="compare_generate_btn").click().run()
        assert not at.exception and not at.error
        babble = analyze(tiny, QUESTION, regime="babble", kind="short_answer", expected="paris")
        text = generate(tiny, babble.rendered, GenerationConfig(max_new_tokens=4)).answer_text
        _, compliance = verdict_of(babble, text)
        lines = [i.value for i in at.info if i.value.startswith("**Control")]
        assert lines == [compliance_line(compliance.complied, compliance.reason)]
        graded = [m.value for m in [*at.success, *at.warning] if m.value.startswith(("**Correct:", "**Wrong:"))]
        assert len(graded) == 2  # direct and chain of thought are graded, babble is not

    def test_custom_template_adds_a_fourth_regime(self, tiny):
        at = start(tiny, COMPARE)
        at.text_area(key="keep:compare.question").input(QUESTION)
        at.checkbox(key="keep:compare.use_custom").check().run()
        at.text_area(key="keep:compare.template").input("{question} answer in words")
        at.button(key="compare_read_btn").click().run()
        assert len(at.metric) == 4 and len(charts(at)[0]["data"]) == 4

    def test_empty_question(self, tiny):
        at = start(tiny, COMPARE)
        at.button(key="compare_read_btn").click().run()
        assert "empty" in errors(at) and not at.metric


class TestOnePrefill:
    """Read, then generate: the app continues from the check's KV cache (one forward over the prompt)."""

    def test_explore_reads_the_prompt_once(self, tiny):
        from helpers import forward_lengths

        n = analyze(tiny, QUESTION, regime="direct", kind="short_answer").rendered.n_tokens
        at = start(tiny, max_new_tokens=4)
        with forward_lengths(tiny.model) as lengths:
            read_state(at, kind="short_answer")
            at.button(key="explore_generate_btn").click().run()
        assert not at.exception and not at.error
        assert any(" tokens in " in c.value for c in at.caption)  # something was generated
        assert lengths.count(n) == 1, lengths
        assert all(t == 1 for t in lengths if t != n), lengths  # the rest are decoding steps

    def test_compare_reads_each_regime_once(self, tiny):
        from helpers import forward_lengths

        n = sorted(analyze(tiny, QUESTION, regime=r, kind="short_answer").rendered.n_tokens for r in REGIMES)
        at = start(tiny, COMPARE, max_new_tokens=4)
        at.text_area(key="keep:compare.question").input(QUESTION)
        at.number_input(key="keep:compare.cot_tokens").set_value(16)
        with forward_lengths(tiny.model) as lengths:
            at.button(key="compare_read_btn").click().run()
            at.button(key="compare_generate_btn").click().run()
        assert not at.exception and not at.error
        assert sum("ic-tokens" in m.value for m in at.markdown) == 3
        assert sorted(t for t in lengths if t > 1) == n, lengths


class TestLearn:
    def test_renders_the_tour_and_every_example_note(self, tiny):
        at = start(tiny, LEARN)
        text = " ".join(m.value for m in at.markdown)
        assert "2601.01011" in text and "H_slot" in text and "dim_eff" in text and "Recov" in text
        notes = [json.loads(line)["note"] for line in (ROOT / "sample_prompts/examples.jsonl").read_text().splitlines()]
        assert notes and all(note in text for note in notes)
        assert any("tiny-llama" in c.value for c in at.caption)

    def test_example_opens_in_explore_filled(self, tiny):
        first = json.loads((ROOT / "sample_prompts/examples.jsonl").read_text().splitlines()[0])
        at = start(tiny, LEARN)
        at.button(key="learn_explore_0").click().run()
        assert not at.exception
        assert [t.value for t in at.title] == ["Explore a prompt"]
        assert at.text_area(key=K["question"]).value == first["question"]
        assert at.text_input(key=K["answer_prefix"]).value == (first["answer_prefix"] or "")
        assert at.text_input(key=K["expected"]).value == first["answer"]
        assert any(md_text(first["note"]) in i.value for i in at.info)  # shown as text, escaped for Markdown
        at.switch_page(EXPLORE).run()  # AppTest keeps requesting Learn after a switch_page otherwise
        at.button(key="explore_read_btn").click().run()
        label = "H_slot (bits)" if first["answer_prefix"] else "H_int (bits)"
        assert label in metrics(at)

    def test_example_opens_in_compare_filled(self, tiny):
        at = start(tiny, LEARN)
        at.button(key="learn_compare_2").click().run()
        item = json.loads((ROOT / "sample_prompts/examples.jsonl").read_text().splitlines()[2])
        assert [t.value for t in at.title] == ["Compare regimes"]
        assert at.text_area(key="keep:compare.question").value == item["question"]
        assert at.selectbox(key="keep:compare.kind").value == item["kind"]


class TestProbeOnRiskCard:
    def test_saved_probe_probability_is_shown(self, tiny):
        import numpy as np

        from ic_core.probes.saved import fit_saved_probe

        rng = np.random.default_rng(0)
        hidden = rng.normal(size=(40, tiny.n_layers + 1, tiny.d_model)).astype(np.float32)
        y = (hidden[:, -1, 0] > 0).astype(int)
        probe = fit_saved_probe(hidden, y, model_spec=tiny.spec.to_dict())
        at = read_state(start(tiny, probe=probe))
        expected = probe.predict_proba_correct(analyze(tiny, QUESTION, kind="short_answer").state)
        assert metrics(at)["Probe P(correct)"] == f"{expected:.0%}"


class TestFormattingTokenCaveat:
    def test_warns_when_read_out_is_formatting_and_not_after_a_prefix(self):
        from helpers import make_tiny_model, make_tiny_tokenizer

        from ic_core.models import from_objects

        plain = make_tiny_tokenizer(chat_template=None)
        model = from_objects(make_tiny_model(len(plain)), plain, name="tiny-plain")
        # a custom template's read-out falls on its final "."
        at = read_state(start(model), regime="custom", template="{question}\nanswer in one word .")
        assert any("formatting token" in w.value for w in at.warning)
        at = read_state(start(model), answer_prefix="the capital of france is")
        assert not any("formatting token" in w.value for w in at.warning)

    def test_a_plain_q_a_prompt_read_on_its_answer_cue_is_not_flagged(self):
        from helpers import make_tiny_model, make_tiny_tokenizer

        from ic_core.models import from_objects

        plain = make_tiny_tokenizer(chat_template=None)
        model = from_objects(make_tiny_model(len(plain)), plain, name="tiny-plain")
        at = read_state(start(model))
        assert not any("formatting token" in w.value for w in at.warning)
        assert any("read on the answer cue" in c.value for c in at.caption)


class TestProbePolicyOnRiskCard:
    """A probe policy without a probe in the session loads its probe through the engine, confined to the runs folder."""

    @staticmethod
    def probe_policy(tiny, folder):
        import numpy as np

        from ic_core.governance.policy import Policy, probe_entry
        from ic_core.probes.saved import fit_saved_probe
        from ic_core.stats.gating import PlattCalibration

        rng = np.random.default_rng(1)
        hidden = rng.normal(size=(40, tiny.n_layers + 1, tiny.d_model)).astype(np.float32)
        probe = fit_saved_probe(hidden, (hidden[:, -1, 0] > 0).astype(int), model_spec=tiny.spec.to_dict())
        path = probe.save(folder / "probes" / "gate-probe")
        entry = probe_entry(str(path), probe.probe_id, PlattCalibration(1.0, 0.0))
        policy = Policy(signal="probe", model=tiny.spec.to_dict(), regime="direct", kind="short_answer",
                        t_probe=0.5, probe=entry).sign()
        return policy, probe

    def test_probe_inside_the_runs_folder_gives_a_verdict(self, tiny, runs_dir):
        policy, probe = self.probe_policy(tiny, runs_dir / "some-run")
        at = read_state(start(tiny, gate_policy=policy), kind="short_answer")
        expected = probe.predict_proba_correct(analyze(tiny, QUESTION, kind="short_answer").state)
        shown = " ".join(e.value for e in (*at.success, *at.warning))
        assert "Gate: " in shown and f"probe P(correct) {expected:.2f}" in shown

    def test_probe_outside_the_runs_folder_is_refused(self, tiny, runs_dir, tmp_path):
        policy, _ = self.probe_policy(tiny, tmp_path / "elsewhere")
        at = read_state(start(tiny, gate_policy=policy), kind="short_answer")
        text = " ".join(w.value for w in at.warning)
        assert "no verdict" in text and "outside the runs folder" in text
        assert not any("Gate: approve" in s.value for s in at.success)
