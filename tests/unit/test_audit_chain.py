"""Tamper-evident audit log (issue 11, case 5): the hash chain, checkpoints, the verifier and `audit verify`.

| threat (issue 11 case 5)                        | test                                                   |
| ----------------------------------------------- | ------------------------------------------------------ |
| single-byte edit anywhere in a record           | TestThousandRecords::test_single_byte_edit_named       |
| deleted record                                  | TestThousandRecords::test_deletion_named               |
| inserted record (forged, replayed, old, text)   | TestThousandRecords::test_insertion_named              |
| reordered records                               | TestThousandRecords::test_swap_named                   |
| chain rewritten after an edit (hashes redone)   | TestCheckpoints::test_rewrite_caught_by_next_checkpoint |
| forged checkpoint tag                           | TestCheckpoints::test_forged_checkpoint_tag            |
| checkpoints removed                             | TestCheckpoints::test_removed_checkpoint               |
| torn last line: reported, not fatal             | TestCrash::test_torn_last_line_reported_not_fatal      |
| garbage passed off as a torn line mid-file      | TestCrash::test_undeclared_fragment_mid_file_is_corrupt |
| unsalted prompt hash                            | TestRecordFields::test_prompt_hmac_with_key            |
| no actor/source in records                      | TestRecordFields::test_actor_and_source                |
| whole-file read on append                       | TestStreaming::test_append_reads_only_the_tail         |
| symlinked log path followed                     | TestSymlinks                                           |
| old unchained logs                              | TestOldLogs                                            |
| random edits (Hypothesis)                       | TestFuzz                                               |
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ic_core.cli import main
from ic_core.errors import DataError
from ic_core.governance import keys
from ic_core.governance.audit import (
    CHECKPOINT_EVERY,
    GENESIS_SHA256,
    append_record,
    canonical_json,
    make_record,
    prompt_hmac,
    prompt_sha256,
    read_audit,
    record_hash,
    resolve_audit_path,
    write_checkpoint,
)
from ic_core.governance.audit_verify import verify_audit

KEY = b"k" * 40
POSITIONS = (0, 1, 57, 499, 998)


def _no_env_key(mp: pytest.MonkeyPatch) -> None:
    mp.delenv(keys.ENV_KEY, raising=False)
    mp.delenv(keys.ENV_KEY_FILE, raising=False)


def _build(path: Path, n: int, key: bytes | None = None) -> bytes:
    for i in range(n):
        append_record(path, {"i": i, "decision": "approve" if i % 3 else "escalate", "reason": f"r{i}"}, key=key)
    return path.read_bytes()


@pytest.fixture(scope="module")
def log1000(tmp_path_factory) -> bytes:
    with pytest.MonkeyPatch.context() as mp:
        _no_env_key(mp)
        return _build(tmp_path_factory.mktemp("chain") / "a.jsonl", 1000)


@pytest.fixture(scope="module")
def keyed250(tmp_path_factory) -> bytes:
    return _build(tmp_path_factory.mktemp("keyed") / "a.jsonl", 250, key=KEY)


def _lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _verify(tmp_path: Path, data: bytes, key: bytes | None = None):
    p = tmp_path / "m.jsonl"
    p.write_bytes(data)
    return verify_audit(p, key=key)


def _reseal(records: list[dict]) -> list[bytes]:
    """What an attacker without the key can do: renumber and recompute every hash."""
    out, prev = [], GENESIS_SHA256
    for seq, rec in enumerate(records):
        rec = {k: v for k, v in rec.items() if k not in ("record_sha256",)}
        rec.update(seq=seq, prev_sha256=prev)
        if rec.get("kind") == "checkpoint":  # the head it names, but the tag cannot be redone without the key
            rec.update(head_seq=seq - 1, head_sha256=prev)
        rec["record_sha256"] = prev = record_hash(rec)
        out.append(canonical_json(rec))
    return out


class TestThousandRecords:
    def test_intact(self, tmp_path, log1000):
        r = _verify(tmp_path, log1000)
        assert r.status == "intact" and r.clean and r.n_records == 1000 and r.head_seq == 999
        assert r.head_sha256 == json.loads(_lines(log1000)[-1])["record_sha256"]
        assert r.n_checkpoints == 0 and not r.checkpoints_verified

    @pytest.mark.parametrize("k", POSITIONS)
    def test_single_byte_edit_named(self, tmp_path, log1000, k):
        lines = _lines(log1000)
        line = lines[k]
        offsets = {0, 1, len(line) // 3, len(line) // 2, line.index(b'"seq":') + 6, line.index(b"approve")
                   if b"approve" in line else line.index(b"escalate"), len(line) - 1, len(line)}
        start = sum(len(x) + 1 for x in lines[:k])
        for off in sorted(offsets):
            for new in {b"x"[0], b"0"[0], b"{"[0], log1000[start + off] ^ 1} - {log1000[start + off]}:
                data = bytearray(log1000)
                data[start + off] = new
                r = _verify(tmp_path, bytes(data))
                assert r.status == "broken", (k, off, new)
                assert (r.problem.line, r.problem.expected_seq) == (k + 1, k), (off, new, r.problem)
                assert r.problem.kind in ("edited", "corrupt") and r.n_records == k

    def test_edit_that_keeps_the_parsed_value(self, tmp_path, monkeypatch):
        """1e-05 -> 1E-05 or an added space parse to the same record: the byte form still gives it away."""
        _no_env_key(monkeypatch)
        log = tmp_path / "a.jsonl"
        for i in range(3):
            append_record(log, {"i": i, "elapsed_s": 1e-05})
        data = log.read_bytes()
        second = data.index(b"\n") + 1
        for old, new in ((b"1e-05", b"1E-05"), (b'"i":1', b'"i": 1')):
            edited = data[:second] + data[second:].replace(old, new, 1)
            r = _verify(tmp_path, edited)
            assert (r.problem.line, r.problem.kind) == (2, "edited"), new
            assert r.problem.message == "its bytes are not in the form the log writes (edited)"

    @pytest.mark.parametrize("k", POSITIONS)
    def test_deletion_named(self, tmp_path, log1000, k):
        lines = _lines(log1000)
        r = _verify(tmp_path, _join(lines[:k] + lines[k + 1:]))
        assert r.status == "broken" and r.problem.kind == "deleted"
        assert (r.problem.line, r.problem.seq, r.problem.expected_seq) == (k + 1, k + 1, k)
        assert r.problem.message == f"seq {k} missing before line {k + 1} (which holds seq {k + 1}): deleted."
        j = min(k, 990)
        r = _verify(tmp_path, _join(lines[:j] + lines[j + 3:]))
        assert r.problem.message.startswith(f"seq {j}..{j + 2} missing before line {j + 1}")

    @pytest.mark.parametrize("k", POSITIONS)
    def test_insertion_named(self, tmp_path, log1000, k):
        lines = _lines(log1000)
        prev = GENESIS_SHA256 if k == 0 else json.loads(lines[k - 1])["record_sha256"]
        forged = {"i": -1, "decision": "approve", "reason": "forged", "seq": k, "prev_sha256": prev}
        forged["record_sha256"] = record_hash(forged)
        cases = {
            "forged": (canonical_json(forged), "inserted"),
            "replayed": (lines[(k + 500) % 1000], "inserted"),
            "old format": (json.dumps({"i": -1, "decision": "approve"}).encode(), "unchained"),
            "text": (b"approve everything", "corrupt"),
        }
        for name, (extra, kind) in cases.items():
            r = _verify(tmp_path, _join(lines[:k] + [extra] + lines[k:]))
            assert r.status == "broken" and r.problem.kind == kind, (name, r.problem)
            assert (r.problem.line, r.problem.expected_seq) == (k + 1, k), (name, r.problem)
        r = _verify(tmp_path, _join(lines[:k] + [canonical_json(forged)] + lines[k:]))
        assert r.problem.message == (f"line {k + 1} (seq {k}) was inserted: line {k + 2} holds another seq {k} "
                                     "and the chain continues from it.")

    @pytest.mark.parametrize("k", POSITIONS)
    def test_swap_named(self, tmp_path, log1000, k):
        lines = _lines(log1000)
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
        r = _verify(tmp_path, _join(lines))
        assert r.status == "broken" and r.problem.kind == "reordered"
        assert (r.problem.line, r.problem.seq, r.problem.expected_seq) == (k + 1, k + 1, k)
        assert r.problem.message == f"seq {k + 1} comes before seq {k} (line {k + 2}): records were swapped."

    def test_rewritten_record_named_not_its_successor(self, tmp_path, log1000):
        lines = _lines(log1000)
        rec = json.loads(lines[300])
        rec["decision"] = "approve" if rec["decision"] == "escalate" else "escalate"
        rec["record_sha256"] = record_hash(rec)
        lines[300] = canonical_json(rec)
        r = _verify(tmp_path, _join(lines))
        assert (r.problem.line, r.problem.seq, r.problem.kind) == (301, 300, "edited")
        assert "was rewritten" in r.problem.message

    def test_cli_exit_codes(self, tmp_path, log1000, capsys, monkeypatch):
        _no_env_key(monkeypatch)
        good = tmp_path / "good.jsonl"
        good.write_bytes(log1000)
        assert main(["audit", "verify", str(good)]) == 0
        assert "intact: 1000 record(s), seq 0..999" in capsys.readouterr().out
        lines = _lines(log1000)
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(_join(lines[:57] + lines[58:]))
        assert main(["audit", "verify", str(bad)]) == 1
        assert "BROKEN at line 58 (seq 58, expected seq 57): deleted: seq 57 missing" in capsys.readouterr().out
        assert main(["audit", "verify", str(bad), "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] is False and out["problem"]["line"] == 58 and out["problem"]["kind"] == "deleted"
        assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
        assert main(["audit", "verify", str(tmp_path)]) == 2
        assert "is not a regular file" in capsys.readouterr().err


class TestCheckpoints:
    def test_checkpoints_every_100_and_verified(self, tmp_path, keyed250):
        recs = [json.loads(x) for x in _lines(keyed250)]
        cps = [r for r in recs if r.get("kind") == "checkpoint"]
        assert [c["seq"] for c in cps] == [100, 200] and cps[0]["head_seq"] == 99
        assert keys.tag_matches(KEY, f"99:{cps[0]['head_sha256']}".encode(), "audit-checkpoint", cps[0]["tag"])
        r = _verify(tmp_path, keyed250, key=KEY)
        assert r.clean and r.n_records == 252 and r.n_checkpoints == 2 and r.checkpoints_verified
        assert r.last_checkpoint_seq == 200
        assert not _verify(tmp_path, keyed250, key=b"w" * 40).ok  # another key
        assert [x["i"] for x in read_audit(tmp_path / "m.jsonl")[0]] == list(range(250))  # checkpoints left out

    def test_rewrite_caught_by_next_checkpoint(self, tmp_path, keyed250):
        recs = [json.loads(x) for x in _lines(keyed250)]
        recs[150]["decision"] = "approve" if recs[150]["decision"] == "escalate" else "escalate"
        data = _join(_reseal(recs))
        assert _verify(tmp_path, data).status == "intact"  # without the key a full reseal passes: the limit
        r = _verify(tmp_path, data, key=KEY)
        assert (r.problem.line, r.problem.seq, r.problem.kind) == (201, 200, "bad-checkpoint")
        assert "records between the checkpoint at seq 100 and seq 199 were rewritten" in r.problem.message

    def test_forged_checkpoint_tag(self, tmp_path, keyed250):
        recs = [json.loads(x) for x in _lines(keyed250)]
        recs[100]["tag"] = keys.tag(b"attacker-key-" * 3, f"99:{recs[100]['head_sha256']}".encode(), "audit-checkpoint")
        r = _verify(tmp_path, _join(_reseal(recs)), key=KEY)
        assert (r.problem.line, r.problem.seq, r.problem.kind) == (101, 100, "bad-checkpoint")
        assert "forged" in r.problem.message and r.n_records == 100
        lines = _lines(keyed250)  # tag edited in place: the record's own hash catches it, key or not
        lines[100] = lines[100].replace(b'"tag":"', b'"tag":"0', 1)[:-2] + b'"}'
        for key in (None, KEY):
            r = _verify(tmp_path, _join(lines), key=key)
            assert (r.problem.line, r.problem.kind) == (101, "edited")

    def test_removed_checkpoint(self, tmp_path, keyed250):
        recs = [json.loads(x) for x in _lines(keyed250)]
        del recs[200]
        r = _verify(tmp_path, _join(_reseal(recs)), key=KEY)
        assert (r.problem.line, r.problem.kind) == (201, "missing-checkpoint")
        assert r.problem.message.startswith("no checkpoint after seq 199")

    def test_on_demand_checkpoint(self, tmp_path, monkeypatch):
        _no_env_key(monkeypatch)
        log = tmp_path / "a.jsonl"
        with pytest.raises(keys.KeyMissingError):
            write_checkpoint(log)
        append_record(log, {"i": 0})
        cp = write_checkpoint(log, key=KEY)
        assert (cp["seq"], cp["head_seq"], cp["kind"]) == (1, 0, "checkpoint")
        with pytest.raises(DataError, match="already ends with a checkpoint"):
            write_checkpoint(log, key=KEY)
        monkeypatch.setenv(keys.ENV_KEY, KEY.decode())
        append_record(log, {"i": 1})
        assert main(["audit", "checkpoint", str(log)]) == 0
        assert verify_audit(log, key=KEY).n_checkpoints == 2


class TestCrash:
    def test_torn_last_line_reported_not_fatal(self, tmp_path, capsys, monkeypatch):
        _no_env_key(monkeypatch)
        log = tmp_path / "a.jsonl"
        full = _build(log, 5)
        torn = canonical_json({"i": 5, "pad": "x" * 50})[:30]
        log.write_bytes(full + torn)
        r = verify_audit(log)
        assert r.status == "intact" and r.ok and not r.clean
        assert (r.torn_line, r.torn_bytes, r.n_records) == (6, 30, 5)
        assert main(["audit", "verify", str(log)]) == 0
        assert "torn last line 6 (30 bytes): skipped" in capsys.readouterr().out
        rec = append_record(log, {"i": 6})  # the next writer ends the torn line and declares it
        assert rec["seq"] == 5 and rec["torn_bytes"] == 31 and rec["torn_sha256"] == hashlib.sha256(torn + b"\n").hexdigest()
        r = verify_audit(log)
        assert r.status == "intact" and r.repaired_lines == (6,) and r.torn_line is None and r.n_records == 6

    def test_undeclared_fragment_mid_file_is_corrupt(self, tmp_path, log1000):
        lines = _lines(log1000)
        r = _verify(tmp_path, _join(lines[:10] + [lines[10][:40]] + lines[10:]))
        assert (r.problem.line, r.problem.kind, r.problem.expected_seq) == (11, "corrupt", 10)

    def test_complete_last_record_without_newline(self, tmp_path, log1000):
        r = _verify(tmp_path, log1000[:-1])
        assert r.ok and r.n_records == 1000 and not r.clean and "no newline" in r.notes[0]
        append_record(tmp_path / "m.jsonl", {"i": "next"})
        assert verify_audit(tmp_path / "m.jsonl").clean

    def test_torn_checkpoint_is_written_again(self, tmp_path):
        log = tmp_path / "a.jsonl"
        data = _build(log, CHECKPOINT_EVERY, key=KEY)
        lines = _lines(data)
        assert json.loads(lines[-1])["kind"] == "checkpoint"
        log.write_bytes(_join(lines[:-1]) + lines[-1][:20])  # the crash tore the checkpoint
        append_record(log, {"i": "after"}, key=KEY)
        recs = [json.loads(x) for x in _lines(log.read_bytes())[-2:]]
        assert [(r.get("kind"), r["seq"]) for r in recs] == [("checkpoint", 100), (None, 101)]
        assert verify_audit(log, key=KEY).ok


class TestRecordFields:
    def _rec(self, **kw):
        return make_record(prompt="What is the capital of Chad?", model="m", policy_id="p", signals={"h": 1.0},
                           decision="approve", reason="r", elapsed_s=0.1, store_prompt_text=False, **kw)

    def test_prompt_hmac_with_key(self, monkeypatch):
        _no_env_key(monkeypatch)
        plain = self._rec()
        assert plain["prompt_hash"] == "sha256-unkeyed" and plain["prompt_sha256"] == prompt_sha256(
            "What is the capital of Chad?") and "prompt_hmac" not in plain
        monkeypatch.setenv(keys.ENV_KEY, KEY.decode())
        keyed = self._rec()
        assert keyed["prompt_hash"] == "hmac-sha256" and "prompt_sha256" not in keyed
        assert keyed["prompt_hmac"] == prompt_hmac(KEY, "What is the capital of Chad?") != plain["prompt_sha256"]
        assert "Chad" not in json.dumps(keyed)

    def test_actor_and_source(self, monkeypatch):
        _no_env_key(monkeypatch)
        r = self._rec(actor="alice", source="cli", probe_sha256="a" * 64, weights_sha256="b" * 64)
        assert (r["actor"], r["source"], r["kind"]) == ("alice", "cli", "decision")
        assert (r["probe_sha256"], r["weights_sha256"]) == ("a" * 64, "b" * 64)
        d = self._rec()
        assert d["source"] == "api" and d["actor"]
        with pytest.raises(DataError, match="source 'web' is not one of cli, app, api, demo"):
            self._rec(source="web")
        with pytest.raises(DataError, match="actor"):
            self._rec(actor="bob\nseq:0")

    def test_chain_fields_cannot_be_supplied(self, tmp_path):
        with pytest.raises(DataError, match="written by the log itself"):
            append_record(tmp_path / "a.jsonl", {"i": 0, "seq": 7})
        with pytest.raises(DataError, match="written by the log itself"):
            append_record(tmp_path / "a.jsonl", {"kind": "checkpoint", "tag": "00"})
        assert not (tmp_path / "a.jsonl").exists()


class TestStreaming:
    def test_append_reads_only_the_tail(self, tmp_path, log1000, monkeypatch):
        log = tmp_path / "a.jsonl"
        log.write_bytes(log1000)
        real, read = os.pread, []
        monkeypatch.setattr(os, "pread", lambda fd, n, off: read.append(n) or real(fd, n, off))
        _no_env_key(monkeypatch)
        rec = append_record(log, {"i": 1000})
        assert rec["seq"] == 1000 and sum(read) <= 65536 + 1 < len(log1000) // 2
        assert verify_audit(log).n_records == 1001

    def test_read_audit_last_n_streams(self, tmp_path, log1000):
        log = tmp_path / "a.jsonl"
        log.write_bytes(log1000 + b"{torn")
        recs, skipped = read_audit(log, last_n=3)
        assert [r["i"] for r in recs] == [997, 998, 999] and skipped == 1


class TestSymlinks:
    def test_symlinked_log_refused_everywhere(self, tmp_path, monkeypatch):
        _no_env_key(monkeypatch)
        real = tmp_path / "real.jsonl"
        append_record(real, {"i": 0})
        link = tmp_path / "link.jsonl"
        link.symlink_to(real)
        with pytest.raises(DataError, match="symbolic link"):
            resolve_audit_path(link)
        with pytest.raises(DataError, match="symbolic link"):
            append_record(link, {"i": 1})
        with pytest.raises(DataError, match="symbolic link"):
            read_audit(link)
        with pytest.raises(DataError, match="symbolic link"):
            verify_audit(link)
        assert main(["audit", "verify", str(link)]) == 2
        assert verify_audit(real).n_records == 1


class TestOldLogs:
    def test_not_chained_reported(self, tmp_path, capsys):
        log = tmp_path / "old.jsonl"
        log.write_text("".join(json.dumps({"time": "t", "decision": "approve", "i": i}) + "\n" for i in range(4)))
        r = verify_audit(log)
        assert r.status == "not-chained" and not r.ok and r.n_records == 4
        assert main(["audit", "verify", str(log)]) == 1
        assert "not chained: 4 record(s) carry no seq/prev_sha256/record_sha256" in capsys.readouterr().out
        with pytest.raises(DataError, match="written before records were hash-chained; move it aside"):
            append_record(log, {"i": 4})
        assert read_audit(log)[0][3]["i"] == 3


_OPS = st.sampled_from(["sub", "del_byte", "ins_byte", "del_line", "dup_line", "swap", "ins_line"])


def _mutate(data: bytes, op: str, a: int, b: int, byte: int) -> bytes:
    lines = _lines(data)
    if op == "sub":
        i = a % len(data)
        byte = byte if byte != data[i] else (byte + 1) % 256
        return data[:i] + bytes([byte]) + data[i + 1:]
    if op == "del_byte":
        return data[: a % len(data)] + data[a % len(data) + 1:]
    if op == "ins_byte":
        return data[: a % (len(data) + 1)] + bytes([byte]) + data[a % (len(data) + 1):]
    if op == "del_line":  # not the last line: truncating the tail is the documented limit
        i = a % (len(lines) - 1)
        return _join(lines[:i] + lines[i + 1:])
    if op == "dup_line":
        i, j = a % len(lines), b % (len(lines) + 1)
        return _join(lines[:j] + [lines[i]] + lines[j:])
    if op == "swap":
        i, j = a % len(lines), b % len(lines)
        j = j if j != i else (i + 1) % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
        return _join(lines)
    i = a % (len(lines) + 1)
    return _join(lines[:i] + [bytes([byte]) * (b % 40)] + lines[i:])


class TestFuzz:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(op=_OPS, a=st.integers(0, 10**9), b=st.integers(0, 10**9), byte=st.integers(0, 255))
    def test_verifier_never_crashes_and_never_passes_an_edit(self, tmp_path, keyed250, op, a, b, byte):
        edited = _mutate(keyed250, op, a, b, byte)
        if edited == keyed250:
            return
        for key in (None, KEY):
            r = _verify(tmp_path, edited, key=key)
            assert not r.clean, (op, a, b, byte)
