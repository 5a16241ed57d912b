"""The operator key: one secret that signs policies and audit checkpoints and keys prompt hashes.

The key comes from ``IC_POLICY_KEY`` (the key itself, at least 32 characters), else from the file
named by ``IC_POLICY_KEY_FILE`` (its bytes, surrounding whitespace stripped), else from the
operator's own key file :data:`DEFAULT_KEY_FILE` (``~/.config/ic-dashboard/operator.key``),
which ``python -m ic_core policy keygen`` writes, and signing creates on first use with mode
0600, so a first-time user's policies are signed without any set-up. It never comes from a
policy, a run folder or anything a user uploads. HMAC-SHA256 is used throughout: the
standard library has it, one shared secret fits a single-operator deployment, and comparing
tags with :func:`hmac.compare_digest` takes constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ic_core.errors import DataError

ENV_KEY = "IC_POLICY_KEY"
ENV_KEY_FILE = "IC_POLICY_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/ic-dashboard/operator.key")
"""The operator's key file when neither variable is set (created by :func:`create_key_file`)."""
MIN_KEY_BYTES = 32
"""Shorter keys are refused: an HMAC is only as strong as its key."""


class KeyMissingError(DataError):
    """No operator key is configured, so nothing can be signed or verified."""


def key_file() -> Path:
    """The key file in use: ``IC_POLICY_KEY_FILE`` if set, else :data:`DEFAULT_KEY_FILE`."""
    return Path(os.environ.get(ENV_KEY_FILE) or DEFAULT_KEY_FILE).expanduser()


def operator_key() -> bytes:
    """The operator key from the environment or the key file.

    Raises:
        KeyMissingError: no variable is set and the key file does not exist.
        DataError: the key file cannot be read, or the key is shorter than :data:`MIN_KEY_BYTES`.

    """
    raw: bytes | None = None
    if os.environ.get(ENV_KEY):
        raw = os.environ[ENV_KEY].strip().encode("utf-8")
    else:
        path = key_file()
        if os.environ.get(ENV_KEY_FILE) or path.exists():
            try:
                raw = path.read_bytes().strip()
            except OSError as exc:
                raise DataError(f"Cannot read the operator key file {str(path)!r}: {exc}.") from exc
    if raw is None:
        raise KeyMissingError(
            f"No operator key: set {ENV_KEY} (at least {MIN_KEY_BYTES} characters) or {ENV_KEY_FILE}, "
            f"or create {DEFAULT_KEY_FILE} with `python -m ic_core policy keygen`."
        )
    if len(raw) < MIN_KEY_BYTES:
        raise DataError(f"The operator key is {len(raw)} bytes; use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`).")
    return raw


def has_operator_key() -> bool:
    """Whether an operator key is configured (it may still be refused as too short)."""
    return bool(os.environ.get(ENV_KEY) or os.environ.get(ENV_KEY_FILE) or key_file().exists())


def create_key_file(path: Path | None = None) -> Path:
    """Write a new random 256-bit key (hex) to ``path`` (default :func:`key_file`), mode 0600.

    Raises:
        DataError: the file exists already (a key is never overwritten: policies signed with it
            would stop verifying) or cannot be written.

    """
    target = (path or key_file()).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise DataError(f"The operator key file {str(target)!r} exists already; it is never overwritten.") from exc
    except OSError as exc:
        raise DataError(f"Cannot create the operator key file {str(target)!r}: {exc}.") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    return target


def signing_key() -> bytes:
    """The operator key for signing, creating the default key file on first use.

    Only :data:`DEFAULT_KEY_FILE` is ever created; a named ``IC_POLICY_KEY_FILE`` that is
    missing stays an error (a typo must not silently start a second key).
    """
    if not os.environ.get(ENV_KEY) and not os.environ.get(ENV_KEY_FILE) and not key_file().exists():
        create_key_file()
    return operator_key()


def tag(key: bytes, message: bytes, purpose: str) -> str:
    """HMAC-SHA256 of ``message`` under ``key``, hex, domain-separated by ``purpose``.

    The purpose (e.g. ``"policy"``, ``"audit-checkpoint"``, ``"prompt"``) is mixed in so a tag made
    for one use can never be replayed as another.
    """
    return hmac.new(key, purpose.encode("ascii") + b"\x00" + message, hashlib.sha256).hexdigest()


def tag_matches(key: bytes, message: bytes, purpose: str, expected: str) -> bool:
    """Constant-time check of a tag made by :func:`tag`."""
    return hmac.compare_digest(tag(key, message, purpose), str(expected))
