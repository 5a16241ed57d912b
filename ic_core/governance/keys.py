"""The operator key: one secret that signs policies and audit checkpoints and keys prompt hashes.

The key comes from ``IC_POLICY_KEY`` (the key itself, at least 32 characters) or from the file
named by ``IC_POLICY_KEY_FILE`` (its bytes, surrounding whitespace stripped). It never comes
from a policy, a run folder or anything a user uploads. HMAC-SHA256 is used throughout: the
standard library has it, one shared secret fits a single-operator deployment, and comparing
tags with :func:`hmac.compare_digest` takes constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from ic_core.errors import DataError

ENV_KEY = "IC_POLICY_KEY"
ENV_KEY_FILE = "IC_POLICY_KEY_FILE"
MIN_KEY_BYTES = 32
"""Shorter keys are refused: an HMAC is only as strong as its key."""


class KeyMissingError(DataError):
    """No operator key is configured, so nothing can be signed or verified."""


def operator_key() -> bytes:
    """The operator key from the environment.

    Raises:
        KeyMissingError: neither variable is set.
        DataError: the key file cannot be read, or the key is shorter than :data:`MIN_KEY_BYTES`.

    """
    raw: bytes | None = None
    if os.environ.get(ENV_KEY):
        raw = os.environ[ENV_KEY].strip().encode("utf-8")
    elif os.environ.get(ENV_KEY_FILE):
        path = Path(os.environ[ENV_KEY_FILE]).expanduser()
        try:
            raw = path.read_bytes().strip()
        except OSError as exc:
            raise DataError(f"Cannot read the operator key file {str(path)!r} ({ENV_KEY_FILE}): {exc}.") from exc
    if raw is None:
        raise KeyMissingError(
            f"No operator key: set {ENV_KEY} (at least {MIN_KEY_BYTES} characters) or {ENV_KEY_FILE} (a file holding it)."
        )
    if len(raw) < MIN_KEY_BYTES:
        raise DataError(f"The operator key is {len(raw)} bytes; use at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`).")
    return raw


def has_operator_key() -> bool:
    """Whether an operator key is configured (it may still be refused as too short)."""
    return bool(os.environ.get(ENV_KEY) or os.environ.get(ENV_KEY_FILE))


def tag(key: bytes, message: bytes, purpose: str) -> str:
    """HMAC-SHA256 of ``message`` under ``key``, hex, domain-separated by ``purpose``.

    The purpose (e.g. ``"policy"``, ``"audit-checkpoint"``, ``"prompt"``) is mixed in so a tag made
    for one use can never be replayed as another.
    """
    return hmac.new(key, purpose.encode("ascii") + b"\x00" + message, hashlib.sha256).hexdigest()


def tag_matches(key: bytes, message: bytes, purpose: str, expected: str) -> bool:
    """Constant-time check of a tag made by :func:`tag`."""
    return hmac.compare_digest(tag(key, message, purpose), str(expected))
