"""Audit log: record contents, path safety, torn lines, concurrent writers, killed writers (chain: test_audit_chain.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ic_core.errors import DataError
from ic_core.governance.audit import (
    CHAIN_KEYS,
    ENV_AUDIT_LOG,
    append_record,
    iter_audit,
    make_record,
    prompt_hmac,
    prompt_sha256,
    read_audit,
    resolve_audit_path,
)
from ic_core.governance.audit_verify import verify_audit
from ic_core.governance.keys import operator_key


def _record(i: int, writer: str = "w", store: bool = False) -> dict:
    return make_record(
        prompt=f"question {i} from {writer}", model="tiny", policy_id="abc", signals={"h_int_bits": 1.0 + i},
        decision="approve", reason="H_int 1.00 bits <= threshold 2.00 bits.", elapsed_s=0.01,
        store_prompt_text=store, extra={"writer": writer, "i": i},
    )


def _write_many(path: str, writer: str, n: int) -> None:
    for i in range(n):
        append_record(path, _record(i, writer))


class TestRecords:
    def test_prompt_text_only_when_allowed(self, tmp_path):
        log = tmp_path / "a.jsonl"
        append_record(log, _record(1, store=False))
        append_record(log, _record(2, store=True))
        recs, skipped = read_audit(log)
        assert skipped == 0 and len(recs) == 2
        # With an operator key (the test key), the prompt is kept only as a keyed hash.
        assert "prompt" not in recs[0] and recs[0]["prompt_hmac"] == prompt_hmac(operator_key(), "question 1 from w")
        assert "prompt_sha256" not in recs[0] and recs[0]["prompt_hash"] == "hmac-sha256"
        assert recs[1]["prompt"] == "question 2 from w"
        assert recs[0]["time"].endswith("+00:00") and recs[0]["signals"] == {"h_int_bits": 2.0}
        assert [r["seq"] for r in recs] == [0, 1]
        assert recs[1]["prev_sha256"] == recs[0]["record_sha256"]
        assert log.read_bytes().count(b"\n") == 2

    def test_unkeyed_prompt_hash_labelled(self, tmp_path, monkeypatch):
        monkeypatch.delenv("IC_POLICY_KEY")
        log = tmp_path / "a.jsonl"
        append_record(log, _record(1))
        (rec,), _ = read_audit(log)
        assert rec["prompt_sha256"] == prompt_sha256("question 1 from w") and rec["prompt_hash"] == "sha256-unkeyed"

    def test_last_n_and_missing_file(self, tmp_path):
        log = tmp_path / "a.jsonl"
        assert read_audit(log) == ([], 0)
        for i in range(5):
            append_record(log, _record(i))
        recs, _ = read_audit(log, last_n=2)
        assert [r["i"] for r in recs] == [3, 4]
        assert read_audit(log, last_n=0)[0] == []

    def test_nan_is_refused_and_nothing_written(self, tmp_path):
        log = tmp_path / "a.jsonl"
        with pytest.raises(DataError, match="JSON"):
            append_record(log, {"x": float("nan")})
        assert not log.exists()


class TestPaths:
    def test_default_and_env(self, tmp_path, monkeypatch):
        monkeypatch.delenv(ENV_AUDIT_LOG, raising=False)
        monkeypatch.chdir(tmp_path)
        assert resolve_audit_path() == tmp_path / "audit" / "gate_audit.jsonl"
        monkeypatch.setenv(ENV_AUDIT_LOG, str(tmp_path / "x.jsonl"))
        assert resolve_audit_path() == tmp_path / "x.jsonl"

    def test_no_escape(self, tmp_path):
        with pytest.raises(DataError, match="'..'"):
            resolve_audit_path("../../etc/passwd", base=tmp_path)
        with pytest.raises(DataError, match="outside the allowed folder"):
            resolve_audit_path("/etc/passwd", base=tmp_path)
        assert resolve_audit_path("logs/a.jsonl", base=tmp_path) == tmp_path.resolve() / "logs" / "a.jsonl"
        with pytest.raises(DataError, match="is a folder"):
            resolve_audit_path(tmp_path)

    def test_symlink_refused(self, tmp_path):
        (tmp_path / "real.jsonl").write_text("")
        (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
        with pytest.raises(DataError, match="is a symbolic link"):
            resolve_audit_path("link.jsonl", base=tmp_path)
        with pytest.raises(DataError, match="symbolic link"):
            append_record(tmp_path / "link.jsonl", _record(0))
        assert (tmp_path / "real.jsonl").read_text() == ""


class TestDurability:
    def test_torn_last_line_is_skipped_and_earlier_records_kept(self, tmp_path):
        log = tmp_path / "a.jsonl"
        for i in range(3):
            append_record(log, _record(i))
        full = log.read_bytes()
        log.write_bytes(full + json.dumps(_record(3)).encode()[:25])  # crash mid-write
        recs, skipped = read_audit(log)
        assert [r["i"] for r in recs] == [0, 1, 2] and skipped == 1
        # The next writer ends the torn line first: its own record stays whole.
        append_record(log, _record(4))
        recs, skipped = read_audit(log)
        assert [r["i"] for r in recs] == [0, 1, 2, 4] and skipped == 1
        assert log.read_bytes().endswith(b"\n")
        report = verify_audit(log)
        assert report.status == "intact" and report.repaired_lines == (4,) and report.n_records == 4

    def test_two_writers_at_once_never_interleave(self, tmp_path):
        log = str(tmp_path / "a.jsonl")
        n = 300
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_write_many, args=(log, name, n)) for name in ("A", "B")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        recs, skipped = read_audit(log)
        assert skipped == 0 and len(recs) == 2 * n
        for name in ("A", "B"):
            assert [r["i"] for r in recs if r["writer"] == name] == list(range(n))
        lines = Path(log).read_bytes().split(b"\n")
        assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
        # One chain across both writers; with the operator key a checkpoint follows every 100th record.
        n_checkpoints = (2 * n) // 100
        seqs = [r["seq"] for r in recs]
        assert seqs == sorted(set(seqs)) and len(lines) - 1 == 2 * n + n_checkpoints
        report = verify_audit(log)
        assert report.clean and report.n_records == 2 * n + n_checkpoints and report.head_seq == 2 * n + n_checkpoints - 1

    def test_killed_writer_leaves_a_readable_log(self, tmp_path):
        log = tmp_path / "a.jsonl"
        code = (
            "import sys\n"
            "from ic_core.governance.audit import append_record\n"
            "i = 0\n"
            "while True:\n"
            "    append_record(sys.argv[1], {'i': i, 'pad': 'x' * 2000})\n"
            "    i += 1\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.Popen([sys.executable, "-c", code, str(log)], env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not log.exists() or log.stat().st_size < 240_000):  # past 100 records: a checkpoint
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        recs, skipped = read_audit(log)
        assert len(recs) >= 20 and skipped <= 1
        assert [r["i"] for r in recs] == list(range(len(recs)))  # nothing lost before the kill
        append_record(log, {"i": "after"})
        recs2, skipped2 = read_audit(log)
        after = {k: v for k, v in recs2[-1].items() if k not in CHAIN_KEYS}
        assert after == {"i": "after"} and len(recs2) == len(recs) + 1 and skipped2 == skipped
        # seq counts checkpoints too: one follows every CHECKPOINT_EVERY records when a key is set
        n_checkpoints = sum(1 for e in iter_audit(log) if e.record and e.record.get("kind") == "checkpoint"
                            and e.record["seq"] < recs2[-1]["seq"])
        assert n_checkpoints >= 1 and recs2[-1]["seq"] == len(recs) + n_checkpoints
        assert ("torn_sha256" in recs2[-1]) == (skipped == 1)
        report = verify_audit(log)
        assert report.ok and report.torn_line is None and report.n_checkpoints == n_checkpoints
        assert report.n_records == len(recs2) + n_checkpoints  # the verifier counts every chained line
