"""Extra read-outs of a study on the tiny model: the last prompt token of prefixed direct rows (for like-for-like
regime comparison) and the optional slot after the gold answer's first digit (issue 15 parts 4-5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ic_core.capture import capture
from ic_core.datasets import PromptItem
from ic_core.generate import GenerationConfig
from ic_core.prompts import render, template_for
from ic_core.study.compare import regime_comparison
from ic_core.study.readouts import first_digit_of
from ic_core.study.runner import resume_run, run_study

ITEMS = (
    PromptItem("p1", "what is the capital of france", "paris", kind="short_answer", answer_prefix="the capital of france is"),
    PromptItem("p2", "what is 12 plus 7", "19", kind="numeric", answer_prefix="the answer is"),
    PromptItem("p3", "what is 3 plus 4", "7", kind="numeric", answer_prefix="the answer is"),
    PromptItem("p4", "what is 100 plus 48", "148", kind="numeric"),
)
FAST = GenerationConfig(max_new_tokens=2)


def _entropy_after(tiny, ids: list[int]) -> float:
    """Entropy (bits) of the next token after ``ids``, from one plain forward pass of the model."""
    import torch

    with torch.inference_mode():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    logp = torch.log_softmax(logits, -1)
    return float(-(logp.exp() * logp).sum() / np.log(2))


@pytest.fixture(scope="module")
def digit_run(tiny, tmp_path_factory):
    """4 items × direct, cot; the second-digit slot on; batches of 3 (so the extra reads cross batches)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    return run_study(tiny, ITEMS, ["direct", "cot"], out, gen_config=FAST, batch_size=3, second_digit_slot=True)


class TestLastTokenRead:
    def test_prefixed_direct_rows_are_read_again_at_the_last_prompt_token(self, tiny, digit_run):
        """H_slot rows: the prompt without its prefix, read at its last token; H_int rows: the read-out itself."""
        t = digit_run.table.set_index(["item_id", "regime"])
        for item in ITEMS:
            direct = t.loc[(item.id, "direct")]
            bare = render(tiny.tokenizer, item.question, template_for("direct", item.kind))
            want = capture(tiny, bare)[0].readout_entropy_bits
            assert direct["last_token_entropy_bits"] == pytest.approx(want, abs=1e-4)
            cot = t.loc[(item.id, "cot")]
            assert cot["last_token_entropy_bits"] == cot["readout_entropy_bits"]
        assert t.loc[("p1", "direct"), "signal"] == "H_slot" and t.loc[("p4", "direct"), "signal"] == "H_int"
        assert t.loc[("p1", "direct"), "last_token_entropy_bits"] != pytest.approx(t.loc[("p1", "direct"), "readout_entropy_bits"])

    def test_regime_table_compares_direct_and_cot_at_the_last_prompt_token(self, digit_run):
        pair = regime_comparison(digit_run).pairs.iloc[0]
        t = digit_run.table.set_index(["item_id", "regime"])
        diff = [t.loc[(i.id, "cot"), "last_token_entropy_bits"] - t.loc[(i.id, "direct"), "last_token_entropy_bits"]
                for i in ITEMS]
        assert pair["position"] == "both at the last prompt token (direct read again without its prefix)"
        assert pair["n_pairs"] == 4 and pair["mean_diff_bits"] == pytest.approx(np.mean(diff))


class TestSecondDigitSlot:
    def test_first_digit_of(self):
        assert [first_digit_of(a) for a in ("148", "19", "7", "-12", "3.5", "12.5", "x1", None)] == \
            ["1", "1", None, None, None, "1", None, None]

    def test_read_after_prefix_and_first_digit_teacher_forced(self, tiny, digit_run):
        """Numeric direct rows with a prefix and ≥ 2 digits get it; one-digit answers, no prefix and CoT do not."""
        t = digit_run.table.set_index(["item_id", "regime"])
        rendered = render(tiny.tokenizer, ITEMS[1].question, template_for("direct", "numeric", "the answer is"))
        ids = list(rendered.input_ids[: rendered.readout_index + 1]) + tiny.tokenizer(" 1", add_special_tokens=False)["input_ids"]
        assert t.loc[("p2", "direct"), "second_digit_entropy_bits"] == pytest.approx(_entropy_after(tiny, ids), abs=1e-4)
        for key in (("p1", "direct"), ("p3", "direct"), ("p4", "direct"), ("p2", "cot")):
            assert t.loc[key, "second_digit_entropy_bits"] is None or np.isnan(t.loc[key, "second_digit_entropy_bits"])
        assert digit_run.manifest["second_digit_slot"] is True

    def test_off_by_default(self, tiny, tmp_path):
        run = run_study(tiny, ITEMS[1:2], ["direct"], tmp_path / "off", gen_config=FAST)
        assert run.manifest["second_digit_slot"] is False and np.isnan(run.table["second_digit_entropy_bits"]).all()

    def test_runs_from_before_the_setting_resume_as_off(self, tiny, tmp_path):
        """A manifest without ``second_digit_slot`` is the same study as one with it off."""
        folder = tmp_path / "old"
        run_study(tiny, ITEMS[:2], ["direct"], folder, gen_config=FAST, batch_size=1,
                  cancel=iter([False, True, True]).__next__)
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["second_digit_slot"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        run = resume_run(tiny, folder)
        assert run.status == "complete" and len(run.table) == 2

    def test_cli_flag(self, tiny_dir, tmp_path, capsys):
        from ic_core.cli import main
        from ic_core.runs.store import load_run

        data = tmp_path / "set.jsonl"
        data.write_text("\n".join(json.dumps(it.to_json()) for it in ITEMS) + "\n")
        out = tmp_path / "cli"
        code = main(["study", "--data", str(data), "--out", str(out), "--model", str(tiny_dir), "--max-new-tokens", "1",
                     "--second-digit-slot", "--quiet"])
        assert code == 0, capsys.readouterr().err
        run = load_run(out)
        assert run.manifest["second_digit_slot"] is True
        assert run.table["second_digit_entropy_bits"].notna().tolist() == [False, True, False, False]
