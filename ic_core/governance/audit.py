"""The gate's audit log: hash-chained JSON Lines, append-only, safe against crashes, concurrent writers and edits.

Each record is one line of canonical JSON (sorted keys, no spaces) carrying ``seq`` (0, 1, 2, ...),
``prev_sha256`` (the previous record's hash; :data:`GENESIS_SHA256` for the first) and
``record_sha256`` (SHA-256 of the record's canonical JSON without that field), so an edited
byte, a deleted, inserted or reordered record breaks the chain, as Certificate Transparency and
Rekor chain their entries. Every :data:`CHECKPOINT_EVERY` records, and on demand, a ``checkpoint``
record carries an HMAC tag of (seq, head hash) under the operator key, so even a rewrite that
recomputes every hash is caught at the next checkpoint by whoever holds the key.

Writes: one ``os.write`` of whole lines to a file opened with ``O_APPEND`` (never through a
symlink) under an exclusive ``fcntl.flock``, then ``fsync``; the writer reads the previous hash
by seeking back from the end under the same lock. A crash can only leave a *torn last line*: it
is skipped and counted, and the next writer ends it with a newline and declares its bytes
(``torn_bytes``/``torn_sha256``) so a verifier tells crash debris from inserted text.

Prompts are stored as ``prompt_hmac`` (HMAC-SHA256 under the operator key) or, with no key
configured, ``prompt_sha256`` labelled ``"prompt_hash": "sha256-unkeyed"`` (reversible for a
guessable prompt); the text itself only when the policy allows it. Records carry ``actor`` and
``source``. :func:`ic_core.governance.audit_verify.verify_audit` checks a log and names the first bad record.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ic_core.errors import DataError
from ic_core.governance import keys

try:  # POSIX only; elsewhere records are still written in one call, just without the lock.
    import fcntl
except ImportError:  # pragma: no cover - not reached on Linux/macOS
    fcntl = None  # type: ignore[assignment]

DEFAULT_AUDIT_PATH = Path("audit") / "gate_audit.jsonl"
ENV_AUDIT_LOG = "IC_AUDIT_LOG"
RECORD_KEYS = (
    "kind", "time", "actor", "source", "prompt_hash", "prompt_hmac", "prompt_sha256", "model", "weights_sha256",
    "policy_id", "probe_sha256", "signals", "decision", "reason", "elapsed_s",
)
CHAIN_KEYS = frozenset({"seq", "prev_sha256", "record_sha256", "torn_bytes", "torn_sha256"})
GENESIS_SHA256 = "0" * 64
"""The ``prev_sha256`` of record 0."""
CHECKPOINT_EVERY = 100
"""A checkpoint follows every record whose ``seq + 1`` is a multiple of this (when a key is configured)."""
CHECKPOINT_PURPOSE = "audit-checkpoint"
SOURCES = ("cli", "app", "api", "demo")
"""Where a record came from: the command line, the web app, a Python caller, the bundled demo."""
_BLOCK = 65536
_HEX = frozenset("0123456789abcdef")


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the prompt text (UTF-8; lone surrogates kept as their code points)."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_hmac(key: bytes, prompt: str) -> str:
    """Hex HMAC-SHA256 of the prompt under the operator key (purpose ``"prompt"``)."""
    return keys.tag(key, prompt.encode("utf-8", "surrogatepass"), "prompt")


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a record: UTF-8 JSON with sorted keys and no spaces.

    Raises:
        DataError: not JSON-serialisable (NaN, a set, a lone surrogate, ...).

    """
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise DataError(f"Audit record cannot be written as JSON: {exc}.") from exc


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON without its ``record_sha256`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "record_sha256"})).hexdigest()


def configured_key() -> bytes | None:
    """The operator key when one is configured, else None.

    Raises:
        DataError: a key is configured but unusable (too short, unreadable file).

    """
    return keys.operator_key() if keys.has_operator_key() else None


def default_actor() -> str:
    """The operating-system user running this process (``uid:N`` when it has no name)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def resolve_audit_path(path: str | os.PathLike[str] | None = None, base: str | os.PathLike[str] | None = None) -> Path:
    """Where the audit log lives: ``path``, else ``$IC_AUDIT_LOG``, else ``audit/gate_audit.jsonl``.

    Args:
        path: An explicit location (relative paths are taken from ``base``, or the working folder).
        base: If given, the log must stay inside this folder.

    Raises:
        DataError: a ``..`` component, a path escaping ``base``, a symlink, or a folder instead of a file.

    """
    raw = path if path is not None else os.environ.get(ENV_AUDIT_LOG) or DEFAULT_AUDIT_PATH
    try:
        candidate = Path(raw).expanduser()
    except RuntimeError as exc:  # '~user' of an unknown user
        raise DataError(f"The audit log path {str(raw)!r} names a home folder that does not exist ({exc}).") from exc
    if ".." in candidate.parts:
        raise DataError(f"The audit log path {str(raw)!r} contains '..'; give a plain path inside the audit folder.")
    root = Path(base).expanduser().resolve() if base is not None else Path.cwd()
    absolute = candidate if candidate.is_absolute() else root / candidate
    if absolute.is_symlink():
        raise DataError(f"The audit log path {str(absolute)!r} is a symbolic link; give the real file, not a link.")
    resolved = absolute.resolve()
    if base is not None and not resolved.is_relative_to(root):
        raise DataError(f"The audit log path {str(raw)!r} is outside the allowed folder {str(root)!r}.")
    if resolved.is_dir():
        raise DataError(f"The audit log path {str(resolved)!r} is a folder; give a file name such as gate_audit.jsonl.")
    return resolved


def make_record(
    *,
    prompt: str,
    model: str,
    policy_id: str,
    signals: Mapping[str, Any],
    decision: str,
    reason: str,
    elapsed_s: float,
    store_prompt_text: bool,
    extra: Mapping[str, Any] | None = None,
    actor: str | None = None,
    source: str = "api",
    probe_sha256: str | None = None,
    weights_sha256: str | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """One decision record (chain fields are added by :func:`append_record`).

    Args:
        prompt: The prompt; kept as text only when ``store_prompt_text``.
        model: The model label.
        policy_id: The policy's id.
        signals: The signals the rule read.
        decision: ``"approve"`` or ``"escalate"``.
        reason: The rule's one-line reason.
        elapsed_s: Time the check took.
        store_prompt_text: Whether the policy allows keeping the prompt text.
        extra: More fields (must not use the chain's names).
        actor: Who asked (default: the operating-system user).
        source: One of :data:`SOURCES`.
        probe_sha256: Digest of the probe the decision used, when the policy pins one.
        weights_sha256: Digest of the model weights, when known.
        key: Operator key for the prompt HMAC (default: the configured one; none → unkeyed SHA-256).

    Raises:
        DataError: unknown source, bad actor, or a configured key that cannot be used.

    """
    if source not in SOURCES:
        raise DataError(f"Audit source {source!r} is not one of {', '.join(SOURCES)}.")
    who = default_actor() if actor is None else actor
    if not isinstance(who, str) or not who.strip() or len(who) > 200 or not who.isprintable():
        raise DataError(f"Audit actor {str(who)[:40]!r} must be 1-200 printable characters.")
    key = configured_key() if key is None else key
    record: dict[str, Any] = {"kind": "decision", "time": utc_now_iso(), "actor": who, "source": source}
    if key:
        record.update(prompt_hash="hmac-sha256", prompt_hmac=prompt_hmac(key, prompt))
    else:
        record.update(prompt_hash="sha256-unkeyed", prompt_sha256=prompt_sha256(prompt))
    record.update(model=model, policy_id=policy_id, signals=dict(signals), decision=decision, reason=reason,
                  elapsed_s=float(elapsed_s))
    if probe_sha256:
        record["probe_sha256"] = probe_sha256
    if weights_sha256:
        record["weights_sha256"] = weights_sha256
    if store_prompt_text:
        record["prompt"] = prompt
    if extra:
        record.update(extra)
    return record


# ------------------------------------------------------------------------------------------ writing


def _open_log(path: Path, flags: int) -> int:
    """Open the log without following a symlink; refuse anything but a regular file."""
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o640)
    except OSError as exc:
        if path.is_symlink():
            raise DataError(f"The audit log {str(path)!r} is a symbolic link; refusing to follow it.") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"The audit log {str(path)!r} is not a regular file.")
    return fd


@contextmanager
def _locked_fd(path: Path) -> Iterator[int]:
    fd = _open_log(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _reverse_lines(fd: int, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line, terminated)`` from the last line back, reading blocks from the end."""
    pos, buf, terminated = size, b"", False
    while True:
        nl = buf.rfind(b"\n")
        while nl < 0 and pos > 0:
            n = min(_BLOCK, pos)
            pos -= n
            buf = os.pread(fd, n, pos) + buf
            nl = buf.rfind(b"\n")
        if nl < 0:
            yield pos, buf, terminated
            return
        yield pos + nl + 1, buf[nl + 1:], terminated
        buf, terminated = buf[:nl], True


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tail(fd: int, size: int, path: Path) -> tuple[dict[str, Any] | None, int]:
    """The last complete record and the offset where the bytes after it (crash debris) start."""
    for offset, line, terminated in _reverse_lines(fd, size):
        obj = _parse(line) if line.strip() else None
        if obj is None:
            continue
        if not (CHAIN_KEYS & obj.keys()):
            raise DataError(f"The audit log {str(path)!r} was written before records were hash-chained; "
                            "move it aside (read_audit still reads it) and start a new log.")
        if not (_is_seq(obj.get("seq")) and _is_sha(obj.get("record_sha256"))):
            raise DataError(f"The last record of the audit log {str(path)!r} is damaged; "
                            f"run `python -m ic_core audit verify {path}`.")
        return obj, offset + len(line) + (1 if terminated else 0)
    return None, 0


def _checkpoint_body(key: bytes, seq: int, head: str) -> dict[str, Any]:
    return {"kind": "checkpoint", "time": utc_now_iso(), "head_seq": seq - 1, "head_sha256": head,
            "tag": keys.tag(key, f"{seq - 1}:{head}".encode("ascii"), CHECKPOINT_PURPOSE)}


def _due(record: Mapping[str, Any]) -> bool:
    return record.get("kind") != "checkpoint" and (int(record["seq"]) + 1) % CHECKPOINT_EVERY == 0


def _append_locked(fd: int, path: Path, bodies: Sequence[Mapping[str, Any]], key: bytes | None,
                   checkpoint: bool) -> list[dict[str, Any]]:
    size = os.fstat(fd).st_size
    last, debris_start = _tail(fd, size, path)
    seq, prev = (0, GENESIS_SHA256) if last is None else (int(last["seq"]) + 1, str(last["record_sha256"]))
    prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
    torn = (os.pread(fd, size - debris_start, debris_start) + prefix) if debris_start < size else b""
    lines: list[bytes] = []
    written: list[dict[str, Any]] = []

    def emit(body: Mapping[str, Any]) -> None:
        nonlocal seq, prev, torn
        rec = {**body, "seq": seq, "prev_sha256": prev}
        if torn:
            rec.update(torn_bytes=len(torn), torn_sha256=hashlib.sha256(torn).hexdigest())
            torn = b""
        rec["record_sha256"] = record_hash(rec)
        lines.append(canonical_json(rec) + b"\n")
        written.append(rec)
        seq, prev = seq + 1, rec["record_sha256"]

    if key and last is not None and _due(last):  # a crash tore the checkpoint that was due
        emit(_checkpoint_body(key, seq, prev))
    for body in bodies:
        emit(body)
        if key and _due(written[-1]):
            emit(_checkpoint_body(key, seq, prev))
    head_kind = written[-1].get("kind") if written else (last or {}).get("kind")
    if checkpoint and key and head_kind != "checkpoint" and seq > 0:
        emit(_checkpoint_body(key, seq, prev))
    if lines:
        data = prefix + b"".join(lines)
        n = os.write(fd, data)  # one call for the whole batch; a regular file takes it at once
        while n < len(data):  # only on a short write (e.g. disk full mid-way)
            n += os.write(fd, data[n:])
        os.fsync(fd)
    return written


def _write(path: str | os.PathLike[str], bodies: Sequence[Mapping[str, Any]], key: bytes | None,
           checkpoint: bool = False) -> list[dict[str, Any]]:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked_fd(target) as fd:
            return _append_locked(fd, target, bodies, key, checkpoint)
    except OSError as exc:
        raise DataError(f"Cannot write the audit log {str(target)!r}: {exc}.") from exc


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any], *, key: bytes | None = None) -> dict[str, Any]:
    """Append one record, chained to the last one: locked, single write, fsync-ed.

    Args:
        path: The log (created if missing; never a symlink).
        record: The record's fields (e.g. from :func:`make_record`), without chain fields.
        key: Operator key for checkpoints (default: the configured one; none → no checkpoints).

    Returns:
        The record as written, with ``seq``, ``prev_sha256`` and ``record_sha256``.

    Raises:
        DataError: not JSON-serialisable (e.g. NaN), chain fields given, a symlink, an unchained
            or damaged log, or the file cannot be written.

    """
    body = dict(record)
    taken = sorted(CHAIN_KEYS & body.keys())
    if taken or body.get("kind") == "checkpoint":
        raise DataError(f"Audit record fields {taken or ['kind=checkpoint']} are written by the log itself.")
    canonical_json(body)  # refuse before touching the file
    return _write(path, [body], configured_key() if key is None else key)[0]


def write_checkpoint(path: str | os.PathLike[str], key: bytes | None = None) -> dict[str, Any]:
    """Append a signed checkpoint of the current head now (on demand).

    Raises:
        KeyMissingError: no operator key.
        DataError: an empty, unchained or damaged log, or the head is already a checkpoint.

    """
    key = key or keys.operator_key()
    written = _write(path, [], key, checkpoint=True)
    if not written:
        raise DataError(f"Nothing to checkpoint in {str(path)!r}: the log is empty or already ends with a checkpoint.")
    return written[-1]


# ------------------------------------------------------------------------------------------ reading


class AuditLine(NamedTuple):
    """One line of the log: its 1-based number, bytes (no newline), whether a newline ended it, and the record."""

    line: int
    raw: bytes
    terminated: bool
    record: dict[str, Any] | None


def iter_audit(path: str | os.PathLike[str]) -> Iterator[AuditLine]:
    """Stream the log line by line (``record`` is None for a line that is not a JSON object).

    A missing file yields nothing. Raises DataError for a symlink, a non-regular file or a read error.
    """
    p = Path(path)
    try:
        fd = _open_log(p, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataError(f"Cannot read the audit log {str(p)!r}: {exc}.") from exc
    with os.fdopen(fd, "rb") as fh:
        try:
            for n, raw in enumerate(fh, start=1):
                body = raw[:-1] if raw.endswith(b"\n") else raw
                yield AuditLine(n, body, raw.endswith(b"\n"), _parse(body) if body.strip() else None)
        except OSError as exc:
            raise DataError(f"Cannot read the audit log {str(p)!r}: {exc}.") from exc


def read_audit(path: str | os.PathLike[str], last_n: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Read the decision records (checkpoints left out), streaming.

    Args:
        path: The JSON Lines file (a missing file is an empty log).
        last_n: Keep only the last ``last_n`` records.

    Returns:
        ``(records, n_skipped)``: the records in file order, and how many non-empty lines are
        not JSON objects (torn by a crash, or edited by hand; :func:`verify_audit` says which).

    """
    kept: deque[dict[str, Any]] = deque(maxlen=max(last_n, 0) if last_n is not None else None)
    skipped = 0
    for entry in iter_audit(path):
        if entry.record is None:
            skipped += bool(entry.raw.strip())
        elif entry.record.get("kind") != "checkpoint":
            kept.append(entry.record)
    return list(kept), skipped


def audit_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The audit records as display rows, newest first.

    Each row has ``seq``, ``time``, ``actor``, ``source``, ``decision``, ``reason``, ``policy_id``,
    ``model``, ``elapsed_s``, the first 16 hex digits of ``prompt_sha256`` (unkeyed) and of
    ``prompt_hmac`` (keyed), ``prompt`` (``"(not stored)"`` when the policy kept only the hash)
    and ``signals`` as compact JSON text.
    """
    return [{
        "seq": r.get("seq"), "time": r.get("time"), "actor": r.get("actor"), "source": r.get("source"),
        "decision": r.get("decision"), "reason": r.get("reason"),
        "policy_id": r.get("policy_id"), "model": r.get("model"), "elapsed_s": r.get("elapsed_s"),
        "prompt_sha256": str(r.get("prompt_sha256", ""))[:16], "prompt_hmac": str(r.get("prompt_hmac", ""))[:16],
        "prompt": r.get("prompt", "(not stored)"), "signals": json.dumps(r.get("signals", {}), ensure_ascii=False),
    } for r in reversed(records)]
