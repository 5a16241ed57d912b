"""The gate's audit log: one JSON object per line, append-only, safe against crashes and concurrent writers.

Each record is written with a single ``os.write`` of the whole line to a file opened with
``O_APPEND``, under an exclusive advisory lock (``fcntl.flock``), then ``fsync``-ed. A crash
can therefore only leave a *torn last line*; :func:`read_audit` skips and counts it, and the
next writer first ends it with a newline so its own record stays intact.

Records hold the prompt's SHA-256 and, only when the policy allows it, the prompt text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ic_core.errors import DataError

try:  # POSIX only; elsewhere records are still written in one call, just without the lock.
    import fcntl
except ImportError:  # pragma: no cover - not reached on Linux/macOS
    fcntl = None  # type: ignore[assignment]

DEFAULT_AUDIT_PATH = Path("audit") / "gate_audit.jsonl"
ENV_AUDIT_LOG = "IC_AUDIT_LOG"
RECORD_KEYS = ("time", "prompt_sha256", "model", "policy_id", "signals", "decision", "reason", "elapsed_s")


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the prompt text (UTF-8)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def utc_now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def resolve_audit_path(path: str | os.PathLike[str] | None = None, base: str | os.PathLike[str] | None = None) -> Path:
    """Where the audit log lives: ``path``, else ``$IC_AUDIT_LOG``, else ``audit/gate_audit.jsonl``.

    Args:
        path: An explicit location (relative paths are taken from ``base``, or the working folder).
        base: If given, the log must stay inside this folder.

    Raises:
        DataError: a ``..`` component, a path escaping ``base``, or a folder instead of a file.

    """
    raw = path if path is not None else os.environ.get(ENV_AUDIT_LOG) or DEFAULT_AUDIT_PATH
    try:
        candidate = Path(raw).expanduser()
    except RuntimeError as exc:  # '~user' of an unknown user
        raise DataError(f"The audit log path {str(raw)!r} names a home folder that does not exist ({exc}).") from exc
    if ".." in candidate.parts:
        raise DataError(f"The audit log path {str(raw)!r} contains '..'; give a plain path inside the audit folder.")
    root = Path(base).expanduser().resolve() if base is not None else Path.cwd()
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
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
) -> dict[str, Any]:
    """One audit record (the prompt text only when ``store_prompt_text``)."""
    record: dict[str, Any] = {
        "time": utc_now_iso(),
        "prompt_sha256": prompt_sha256(prompt),
        "model": model,
        "policy_id": policy_id,
        "signals": dict(signals),
        "decision": decision,
        "reason": reason,
        "elapsed_s": float(elapsed_s),
    }
    if store_prompt_text:
        record["prompt"] = prompt
    if extra:
        record.update(extra)
    return record


@contextmanager
def _locked_append_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
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


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)  # one call for the whole line; a regular file takes it at once
    while written < len(data):  # only on a short write (e.g. disk full mid-way)
        written += os.write(fd, data[written:])


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line: locked, single write, flushed and fsync-ed.

    Raises:
        DataError: the record is not JSON-serialisable (e.g. NaN) or the file cannot be written.

    """
    try:
        line = json.dumps(dict(record), ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
    except (TypeError, ValueError) as exc:
        raise DataError(f"Audit record cannot be written as JSON: {exc}.") from exc
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked_append_fd(target) as fd:
            size = os.fstat(fd).st_size
            data = line.encode("utf-8")
            if size and not _ends_with_newline(target, size):
                data = b"\n" + data  # end a torn line left by a crashed writer; ours stays whole
            _write_all(fd, data)
            os.fsync(fd)
    except OSError as exc:
        raise DataError(f"Cannot write the audit log {str(target)!r}: {exc}.") from exc


def read_audit(path: str | os.PathLike[str], last_n: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Read the audit log.

    Args:
        path: The JSON Lines file (a missing file is an empty log).
        last_n: Keep only the last ``last_n`` valid records.

    Returns:
        ``(records, n_skipped)``: the parsed records in file order, and how many non-empty
        lines could not be parsed as a JSON object (torn by a crash, or edited by hand).

    Raises:
        DataError: the file exists but cannot be read.

    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise DataError(f"Cannot read the audit log {str(p)!r}: {exc}.") from exc
    records: list[dict[str, Any]] = []
    skipped = 0
    for chunk in raw.split(b"\n"):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            skipped += 1
    if last_n is not None:
        records = records[-last_n:] if last_n > 0 else []
    return records, skipped


def audit_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The audit records as display rows, newest first.

    Each row has ``time``, ``decision``, ``reason``, ``policy_id``, ``model``, ``elapsed_s``, the
    first 16 hex digits of ``prompt_sha256``, ``prompt`` (``"(not stored)"`` when the policy kept
    only the hash) and ``signals`` as compact JSON text.
    """
    return [{
        "time": r.get("time"), "decision": r.get("decision"), "reason": r.get("reason"),
        "policy_id": r.get("policy_id"), "model": r.get("model"), "elapsed_s": r.get("elapsed_s"),
        "prompt_sha256": str(r.get("prompt_sha256", ""))[:16], "prompt": r.get("prompt", "(not stored)"),
        "signals": json.dumps(r.get("signals", {}), ensure_ascii=False),
    } for r in reversed(records)]
