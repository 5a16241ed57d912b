"""Hostile inputs give one clear line (exit 2 / ``DataError`` / ``PromptError``), never a traceback (issue 11, case 8).

Case 8 input → test:

- ``--temperature 1e-300`` → ``TestDecodingOptions.test_tiny_temperature_is_refused``
- ``--seed 2**70`` → ``TestDecodingOptions.test_huge_seed_is_refused``
- lone surrogates / NUL in ``--answer-prefix`` / ``--expected`` → ``TestTextOptions``
- 30 ``--choices`` (lettered past Z) → ``TestTextOptions.test_thirty_choices_are_refused``
- prompt + ``--max-new-tokens`` past the context → ``TestContext``
- a shard with 0-d ``rows`` → ``TestRunFolders.test_zero_d_rows_shard``
- an npz header declaring 305 GiB → ``TestRunFolders.test_npz_header_declaring_305_gib``
- manifest ``n_layers: "abc"`` / ``regimes: 5`` → ``TestRunFolders.test_bad_manifest_fields``
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ic_core.cli import main
from ic_core.datasets import PromptItem
from ic_core.errors import DataError, PromptError
from ic_core.generate import GenerationConfig, generate
from ic_core.prompts import render, template_for
from ic_core.runs.store import list_runs, load_run, shard_files, shard_rows
from ic_core.study.runner import run_study

ROOT = Path(__file__).resolve().parents[2]
ITEMS = tuple(PromptItem(f"i{i}", f"what is {i} plus 1", str(i + 1), kind="numeric") for i in range(4))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``python -m ic_core ARGV`` in-process: (exit code, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    err = capsys.readouterr().err
    return code, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


class TestDecodingOptions:
    def test_tiny_temperature_is_refused(self, tiny_dir, capsys):
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", "what is 2 plus 2", "--generate",
                          "--sample", "--temperature", "1e-300", "--max-new-tokens", "3"], capsys)
        _one_line_error(code, err, "temperature must be between 0.01 and 100", "1e-300")

    def test_huge_seed_is_refused(self, tiny_dir, capsys):
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", "what is 2 plus 2", "--generate",
                          "--sample", "--seed", str(2**70), "--max-new-tokens", "3"], capsys)
        _one_line_error(code, err, "--seed", "between 0 and 2**63 - 1", str(2**70))

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"do_sample": True, "temperature": 1e-300}, "temperature must be between 0.01 and 100"),
        ({"temperature": float("nan")}, "finite numbers"),
        ({"do_sample": True, "top_p": float("inf")}, "finite numbers"),
        ({"seed": 2**70}, "between 0 and 2**63 - 1"),
        ({"seed": -1}, "between 0 and 2**63 - 1"),
        ({"seed": 1.5}, "must be an integer"),
        ({"max_new_tokens": True}, "max_new_tokens must be between 1"),
    ])
    def test_the_engine_config_refuses_them_too(self, kwargs, message):
        with pytest.raises(PromptError, match=message.replace("*", r"\*")):
            GenerationConfig(**kwargs)

    def test_valid_sampling_still_works(self):
        config = GenerationConfig(do_sample=True, temperature=0.01, seed=2**63 - 1)
        assert (config.temperature, config.seed) == (0.01, 2**63 - 1)


class TestTextOptions:
    @pytest.mark.parametrize("option", ["--answer-prefix", "--expected"])
    @pytest.mark.parametrize(("text", "message"), [("the \udc80 answer", "not valid UTF-8"),
                                                   ("par\ud800is", "not valid UTF-8"),
                                                   ("the \x00 answer", "NUL character")])
    def test_surrogates_and_nul_are_refused(self, tiny_dir, capsys, option, text, message):
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", "what is 2 plus 2", "--generate",
                          "--max-new-tokens", "2", option, text], capsys)
        _one_line_error(code, err, option, message)

    def test_study_answer_prefix_is_checked(self, tiny_dir, tmp_path, capsys):
        code, err = _cli(["study", "--model", str(tiny_dir), "--data", "capitals", "--limit", "1", "--no-generate",
                          "--out", str(tmp_path / "run"), "--answer-prefix", "x\x00"], capsys)
        _one_line_error(code, err, "--answer-prefix", "NUL character")
        assert not (tmp_path / "run").exists()

    def test_undecodable_command_line_bytes(self, tiny_dir):
        """Invalid UTF-8 in argv arrives as lone surrogates (surrogateescape): one line, exit 2."""
        proc = subprocess.run([sys.executable, "-m", "ic_core", "analyze", "--model", str(tiny_dir), "--prompt",
                               "what is 2 plus 2", "--answer-prefix", os.fsdecode(b"the \xff answer")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        _one_line_error(proc.returncode, proc.stderr, "--answer-prefix", "not valid UTF-8")

    def test_thirty_choices_are_refused(self, tiny_dir, capsys):
        choices = "|".join(f"option {i}" for i in range(30))
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", "which one", "--kind", "multiple_choice",
                          "--choices", choices], capsys)
        _one_line_error(code, err, "--choices", "30 options given", "at most 26")

    def test_twenty_six_choices_are_fine(self, tiny_dir, capsys):
        choices = "|".join(str(i) for i in range(26))
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", "which one", "--kind", "multiple_choice",
                          "--choices", choices], capsys)
        assert code == 0, err


class TestContext:
    PROMPT = " ".join(str(i) for i in range(200))  # 200 tokens of the tiny word-level vocabulary; context is 256

    def test_prompt_plus_new_tokens_past_the_context_cli(self, tiny_dir, capsys):
        code, err = _cli(["analyze", "--model", str(tiny_dir), "--prompt", self.PROMPT, "--generate",
                          "--max-new-tokens", "100"], capsys)
        _one_line_error(code, err, "asks for up to 100 new ones", "the model reads at most 256", "lower max_new_tokens to")

    def test_generate_refuses_before_running(self, tiny):
        rendered = render(tiny.tokenizer, self.PROMPT, template_for("direct"), max_tokens=tiny.max_context)
        room = 256 - len(rendered.input_ids)
        with pytest.raises(PromptError, match=f"lower max_new_tokens to {room}"):
            generate(tiny, rendered, GenerationConfig(max_new_tokens=room + 1))
        assert len(generate(tiny, rendered, GenerationConfig(max_new_tokens=room)).token_ids) <= room


@pytest.fixture(scope="module")
def small_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    return run_study(tiny, ITEMS, ["direct"], out, generate=False, batch_size=2, dataset_name="hostile")


def _copy(run, tmp_path, name: str = "bad") -> Path:
    out = tmp_path / name
    shutil.copytree(run.path, out)
    return out


def _rewrite_shard(file: Path, **replace: bytes | np.ndarray) -> None:
    """Rewrite one shard, replacing some arrays (an ndarray, or raw ``.npy`` bytes)."""
    with np.load(file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    with zipfile.ZipFile(file, "w") as zf:
        for name, array in arrays.items():
            value = replace.get(name, array)
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, value)
                value = buf.getvalue()
            zf.writestr(f"{name}.npy", value)


class TestRunFolders:
    def test_zero_d_rows_shard(self, small_run, tmp_path):
        out = _copy(small_run, tmp_path)
        first = shard_files(out)[0]
        _rewrite_shard(first, rows=np.array(5, dtype=np.int64))
        with pytest.raises(DataError, match=r"has rows of shape \(\) \(int64\); expected \(B,\) integers"):
            load_run(out)
        assert shard_rows(first).shape == (0,)  # a resume treats it as unreadable and redoes the batch

    def test_npz_header_declaring_305_gib(self, small_run, tmp_path):
        out = _copy(small_run, tmp_path)
        n = 305 * 2**30 // 8  # int64 elements: 305 GiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
        _rewrite_shard(shard_files(out)[0], rows=buf.getvalue() + b"\0" * 64)
        tracemalloc.start()
        try:
            with pytest.raises(DataError, match=rf"array 'rows' declares shape \({n},\) int64 \(327,491,256,320 bytes\)"):
                load_run(out)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * 2**20  # nothing near the declared size was allocated

    @pytest.mark.parametrize(("key", "value", "message"), [
        ("n_layers", "abc", "has n_layers = 'abc'; expected an integer ≥ 1"),
        ("regimes", 5, "has regimes = 5; expected a non-empty list of regime names"),
        ("d_model", -3, "has d_model = -3; expected an integer ≥ 1"),
        ("n_rows_done", "many", "has n_rows_done = 'many'"),
        ("dataset", "x", "has dataset = 'x'; expected an object"),
    ])
    def test_bad_manifest_fields(self, small_run, tmp_path, key, value, message):
        out = _copy(small_run, tmp_path / "runs")
        manifest = json.loads((out / "manifest.json").read_text())
        manifest[key] = value
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataError, match=message):
            load_run(out)
        _copy(small_run, tmp_path / "runs", "good")
        assert [r.name for r in list_runs(tmp_path / "runs")] == ["good"]  # the bad one is skipped, not fatal

    def test_the_untouched_run_still_loads(self, small_run):
        assert len(load_run(small_run.path).table) == len(ITEMS)
