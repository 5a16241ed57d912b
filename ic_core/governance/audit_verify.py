"""Checking the audit log's hash chain: a streaming pass that names the first bad record and why.

Each record must be in canonical form, hash to its ``record_sha256``, carry the next ``seq`` and
link to the previous record's hash; unparseable text between records must be declared by the
next record as a torn write (crash debris), and, with the operator key, every checkpoint's tag
must match. One record of look-ahead tells an inserted record from a deleted one and an adjacent
swap. What the file alone cannot show: a truncated tail, and (without the key) a rewrite of
everything after some point; the report's head (seq, hash) is what to compare with a copy kept
elsewhere, and the key holder catches a rewrite at the first checkpoint after it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ic_core.errors import DataError
from ic_core.governance import keys
from ic_core.governance.audit import (
    CHECKPOINT_EVERY,
    CHECKPOINT_PURPOSE,
    GENESIS_SHA256,
    AuditLine,
    canonical_json,
    iter_audit,
    record_hash,
)

ProblemKind = Literal["edited", "deleted", "inserted", "reordered", "corrupt", "unchained", "bad-checkpoint",
                      "missing-checkpoint"]


@dataclass(frozen=True)
class AuditProblem:
    """The first place where the chain does not hold."""

    line: int
    """1-based line number in the file."""
    seq: int | None
    """The ``seq`` written on that line (None when the line has none)."""
    expected_seq: int
    """The ``seq`` the chain expected at that line."""
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_audit` found."""

    path: str
    status: Literal["intact", "broken", "not-chained", "empty"]
    n_records: int
    """Chained records (checkpoints included) verified in order before the first problem."""
    n_checkpoints: int
    checkpoints_verified: bool
    """Whether checkpoint tags were checked (an operator key was given)."""
    head_seq: int | None
    head_sha256: str | None
    last_checkpoint_seq: int | None
    problem: AuditProblem | None = None
    torn_line: int | None = None
    """First line of a torn write at the end of the file (a crash), skipped."""
    torn_bytes: int = 0
    repaired_lines: tuple[int, ...] = ()
    """Lines of earlier torn writes that a later record declares."""
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The chain holds (torn tails and notes allowed)."""
        return self.status in ("intact", "empty")

    @property
    def clean(self) -> bool:
        """The chain holds and nothing at all was skipped or noted."""
        return self.ok and self.torn_line is None and not self.repaired_lines and not self.notes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["repaired_lines"] = list(self.repaired_lines)
        out["notes"] = list(self.notes)
        return out

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the CLI."""
        out = [f"audit log: {self.path}"]
        if self.status == "not-chained":
            out.append(f"not chained: {self.n_records} record(s) carry no seq/prev_sha256/record_sha256 "
                       "(written before records were hash-chained); their integrity cannot be checked.")
        elif self.status == "empty":
            out.append("empty: no records.")
        elif self.problem is not None:
            p = self.problem
            out.append(f"BROKEN at line {p.line} (seq {p.seq if p.seq is not None else '-'}, expected seq "
                       f"{p.expected_seq}): {p.kind}: {p.message}")
            out.append(f"{self.n_records} record(s) verified before it.")
        else:
            cps = f"{self.n_checkpoints} checkpoint(s), " + ("tags verified" if self.checkpoints_verified
                                                             else "tags NOT checked (no operator key)")
            out.append(f"intact: {self.n_records} record(s), seq 0..{self.head_seq}; {cps}; "
                       f"head sha256 {self.head_sha256}.")
        if self.torn_line is not None:
            out.append(f"torn last line {self.torn_line} ({self.torn_bytes} bytes): skipped, a writer stopped mid-record.")
        if self.repaired_lines:
            out.append(f"earlier torn writes at line(s) {', '.join(map(str, self.repaired_lines))}: declared, skipped.")
        out.extend(f"note: {n}" for n in self.notes)
        return out


@dataclass(frozen=True)
class _Rec:
    line: int
    obj: dict[str, Any]
    seq: int | None
    prev: str | None
    hash: str | None
    fault: str | None
    """Why the record is not valid by itself (None when it is)."""


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check(entry: AuditLine) -> _Rec | None:
    """The line as a record (None for a line that is not a JSON object)."""
    obj = entry.record
    if obj is None:
        return None
    if not ({"seq", "prev_sha256", "record_sha256"} & obj.keys()):
        return _Rec(entry.line, obj, None, None, None, "unchained")
    seq = obj.get("seq") if _is_int(obj.get("seq")) else None
    prev = obj.get("prev_sha256") if _is_sha(obj.get("prev_sha256")) else None
    if seq is None or prev is None or not _is_sha(obj.get("record_sha256")):
        return _Rec(entry.line, obj, seq, prev, None, "its seq/prev_sha256/record_sha256 fields are damaged (edited)")
    if ("torn_bytes" in obj or "torn_sha256" in obj) and not (_is_int(obj.get("torn_bytes"))
                                                             and _is_sha(obj.get("torn_sha256"))):
        return _Rec(entry.line, obj, seq, prev, None, "its torn_bytes/torn_sha256 fields are damaged (edited)")
    try:
        canonical = canonical_json(obj)
        digest = record_hash(obj)
    except DataError:
        return _Rec(entry.line, obj, seq, prev, None, "it holds a value the log never writes (edited)")
    if canonical != entry.raw:
        return _Rec(entry.line, obj, seq, prev, None, "its bytes are not in the form the log writes (edited)")
    if digest != obj["record_sha256"]:
        return _Rec(entry.line, obj, seq, prev, None, "record_sha256 does not match its content (edited)")
    return _Rec(entry.line, obj, seq, prev, digest, None)


def _plausible_fragment(raw: bytes) -> bool:
    """A torn write is the start of a record line: '{' and no complete JSON object."""
    if not raw.strip():
        return True
    if not raw.startswith(b"{"):
        return False
    try:
        json.JSONDecoder().raw_decode(raw.decode("utf-8", "ignore"))
    except (ValueError, RecursionError):
        return True
    return False


class _Lines:
    """The log's lines with look-ahead to the next record."""

    def __init__(self, lines: Iterator[AuditLine]) -> None:
        self._it, self._buf = lines, deque[AuditLine]()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> AuditLine:
        return self._buf.popleft() if self._buf else next(self._it)

    def peek_record(self) -> _Rec | None:
        for entry in self._buf:
            if (rec := _check(entry)) is not None:
                return rec
        for entry in self._it:
            self._buf.append(entry)
            if (rec := _check(entry)) is not None:
                return rec
        return None


def _classify(rec: _Rec, accepted: _Rec | None, exp: int, prev: str, lines: _Lines) -> AuditProblem:
    """Why a valid record does not continue the chain: inserted, deleted, reordered or rewritten."""
    nxt = lines.peek_record()
    good_next = nxt is not None and nxt.fault is None
    fits_next = good_next and nxt.seq == exp and nxt.prev == prev
    at, seq = rec.line, rec.seq
    if rec.seq > exp and fits_next and rec.prev == nxt.hash:
        return AuditProblem(at, seq, exp, "reordered", f"seq {rec.seq} comes before seq {exp} (line {nxt.line}): "
                                                      "records were swapped.")
    if fits_next:
        return AuditProblem(at, seq, exp, "inserted", f"line {at} (seq {rec.seq}) does not continue the chain but "
                                                     f"line {nxt.line} does: line {at} was inserted.")
    if accepted is not None and rec.seq == accepted.seq and rec.prev == accepted.prev:
        if good_next and nxt.prev == rec.hash:
            return AuditProblem(accepted.line, accepted.seq, accepted.seq, "inserted",
                                f"line {accepted.line} (seq {accepted.seq}) was inserted: line {at} holds another "
                                f"seq {rec.seq} and the chain continues from it.")
        return AuditProblem(at, seq, exp, "inserted", f"line {at} repeats seq {rec.seq} of line {accepted.line}: "
                                                     "one of them was inserted.")
    if rec.seq == exp:
        if accepted is None:
            return AuditProblem(at, seq, exp, "edited", "the first record does not start from the genesis hash.")
        return AuditProblem(accepted.line, accepted.seq, accepted.seq, "edited",
                            f"line {accepted.line} (seq {accepted.seq}) was rewritten: its hash was recomputed, "
                            f"but line {at} links to the original.")
    if rec.seq > exp:
        gap = f"{exp}" if rec.seq == exp + 1 else f"{exp}..{rec.seq - 1}"
        return AuditProblem(at, seq, exp, "deleted", f"seq {gap} missing before line {at} (which holds seq "
                                                    f"{rec.seq}): deleted.")
    return AuditProblem(at, seq, exp, "inserted", f"line {at} repeats seq {rec.seq} (expected {exp}): inserted or "
                                                 "replayed.")


def _checkpoint_problem(rec: _Rec, key: bytes | None, last_cp: int | None) -> AuditProblem | None:
    obj = rec.obj
    assert rec.seq is not None
    if obj.get("head_seq") != rec.seq - 1 or obj.get("head_sha256") != rec.prev or not isinstance(obj.get("tag"), str):
        return AuditProblem(rec.line, rec.seq, rec.seq, "bad-checkpoint",
                            "the checkpoint's head_seq/head_sha256/tag do not describe the record before it.")
    if key is not None and not keys.tag_matches(key, f"{rec.seq - 1}:{rec.prev}".encode("ascii"),
                                                CHECKPOINT_PURPOSE, obj["tag"]):
        since = f"the checkpoint at seq {last_cp}" if last_cp is not None else "the start"
        return AuditProblem(rec.line, rec.seq, rec.seq, "bad-checkpoint",
                            f"its tag does not match under the operator key: forged, or records between {since} "
                            f"and seq {rec.seq - 1} were rewritten.")
    return None


def verify_audit(path: str | os.PathLike[str], key: bytes | None = None) -> AuditReport:
    """Check the log's chain in one streaming pass and name the first bad record.

    Args:
        path: The JSON Lines audit log.
        key: The operator key; with it checkpoint tags are checked and checkpoints are required
            after every :data:`CHECKPOINT_EVERY` records.

    Raises:
        DataError: the file is missing, a symlink, not a regular file, or unreadable.

    """
    if not os.path.lexists(path):
        raise DataError(f"No audit log at {str(path)!r}.")
    lines = _Lines(iter_audit(path))
    exp, prev, accepted = 0, GENESIS_SHA256, None
    debris: list[AuditLine] = []
    n_cp, last_cp, due, n_unchained, first_unchained = 0, None, None, 0, None
    repaired: list[int] = []

    def report(status: str, problem: AuditProblem | None = None, **kw: Any) -> AuditReport:
        return AuditReport(str(path), status, exp, n_cp, key is not None, accepted.seq if accepted else None,
                           accepted.hash if accepted else None, last_cp, problem, repaired_lines=tuple(repaired), **kw)

    for entry in lines:
        rec = _check(entry)
        if rec is None:
            debris.append(entry)
            continue
        if rec.fault == "unchained":
            if accepted is None:
                n_unchained, first_unchained = n_unchained + 1, first_unchained or entry.line
                continue
            return report("broken", AuditProblem(entry.line, None, exp, "unchained", "a record without chain fields "
                                                 "inside a chained log: inserted, or its chain fields removed."))
        if first_unchained is not None:
            return report("broken", AuditProblem(first_unchained, None, 0, "unchained",
                                                 f"unchained record(s) before the chain starts at line {entry.line}: "
                                                 "inserted."))
        if debris:
            blob = b"".join(d.raw + b"\n" for d in debris)
            if rec.fault is not None or rec.obj.get("torn_sha256") != hashlib.sha256(blob).hexdigest() \
                    or rec.obj.get("torn_bytes") != len(blob):
                return report("broken", AuditProblem(debris[0].line, None, exp, "corrupt",
                                                     f"line {debris[0].line} is not a valid record and no later record "
                                                     "declares it as a torn write: edited or inserted text."))
            repaired.extend(d.line for d in debris)
            debris = []
        elif rec.fault is None and "torn_sha256" in rec.obj:
            return report("broken", AuditProblem(entry.line, rec.seq, exp, "deleted",
                                                 f"it declares {rec.obj['torn_bytes']} torn bytes before it that "
                                                 "are no longer there: removed."))
        if rec.fault is not None:
            return report("broken", AuditProblem(entry.line, rec.seq, exp, "edited", rec.fault))
        if rec.seq != exp or rec.prev != prev:
            return report("broken", _classify(rec, accepted, exp, prev, lines))
        is_cp = rec.obj.get("kind") == "checkpoint"
        if due is not None and key is not None and not is_cp:
            return report("broken", AuditProblem(entry.line, rec.seq, exp, "missing-checkpoint",
                                                 f"no checkpoint after seq {due} (one follows every "
                                                 f"{CHECKPOINT_EVERY} records): removed, or written without the key."))
        if is_cp:
            if (bad := _checkpoint_problem(rec, key, last_cp)) is not None:
                return report("broken", bad)
            n_cp, last_cp = n_cp + 1, rec.seq
        due = rec.seq if not is_cp and (rec.seq + 1) % CHECKPOINT_EVERY == 0 else None
        accepted, exp, prev = rec, exp + 1, rec.hash
        last_entry = entry
    if accepted is None and first_unchained is not None:
        return AuditReport(str(path), "not-chained", n_unchained, 0, key is not None, None, None, None)
    notes: list[str] = []
    if debris:
        torn = not debris[-1].terminated and all(_plausible_fragment(d.raw) for d in debris)
        if not torn:
            return report("broken", AuditProblem(debris[0].line, None, exp, "corrupt",
                                                 f"line {debris[0].line} is not a valid record and not a torn write "
                                                 "(a crash leaves only an unterminated start of a record): edited."))
        return report("intact" if accepted else "empty", torn_line=debris[0].line,
                      torn_bytes=sum(len(d.raw) + d.terminated for d in debris))
    if accepted is not None and not last_entry.terminated:
        notes.append("the last record has no newline (a writer stopped right before it); the next writer adds it.")
    return report("intact" if accepted else "empty", notes=tuple(notes))
