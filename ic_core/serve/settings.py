"""Settings of the gated endpoint and its API keys.

Keys come from ``IC_API_KEYS`` (comma-separated) or the file named by ``IC_API_KEY_FILE``
(one key a line, ``#`` comments), never from a request or a policy. A request's bearer token
is compared with every configured key through SHA-256 digests and :func:`hmac.compare_digest`,
so neither the time taken nor an early exit tells a caller how much of a key it guessed. The
audit log names a caller by a short fingerprint of its key, never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ic_core.errors import DataError

ENV_API_KEYS = "IC_API_KEYS"
ENV_API_KEY_FILE = "IC_API_KEY_FILE"
MIN_API_KEY_CHARS = 16
"""Shorter API keys are refused: a bearer key is only as strong as its length."""
Mode = Literal["block", "annotate"]
MODES: tuple[str, ...] = ("block", "annotate")


@dataclass(frozen=True)
class ServeSettings:
    """How the endpoint behaves; every limit is checked by the app before the model is touched."""

    mode: Mode = "block"
    """On escalate: ``block`` answers HTTP 409 and generates nothing; ``annotate`` generates and marks it."""
    api_keys: tuple[str, ...] = ()
    """Accepted bearer keys; empty means no authentication (only the CLI's explicit ``--no-auth``)."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies are answered 413 without being read further."""
    max_tokens_limit: int = 512
    """Largest ``max_tokens`` a request may ask for (400 above it)."""
    default_max_tokens: int = 64
    """``max_tokens`` when a request gives none."""
    queue_size: int = 8
    """Requests that may wait while the model worker is busy; one more is answered 429."""
    audit_log: str | None = None
    """Audit log path (None: ``$IC_AUDIT_LOG`` or ``audit/gate_audit.jsonl``)."""
    model_id: str | None = None
    """The model name served in ``/v1/models`` and responses (default: the model's label)."""
    batch_window_ms: float = 5.0
    """How long the model thread waits for more gate checks once a batch starts (0: no waiting)."""
    max_batch: int = 8
    """Most gate checks read in one forward pass."""
    prefix_cache_mb: int = 256
    """Memory budget of the prefix KV cache (0: no prefix caching)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"Unknown serve mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        for name in ("max_body_bytes", "max_tokens_limit", "default_max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise DataError(f"{name} must be a positive integer; got {getattr(self, name)!r}.")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise DataError(f"queue_size must be a non-negative integer; got {self.queue_size!r}.")
        if isinstance(self.batch_window_ms, bool) or not isinstance(self.batch_window_ms, (int, float)) \
                or not 0 <= self.batch_window_ms <= 1000:
            raise DataError(f"batch_window_ms must be a number between 0 and 1000; got {self.batch_window_ms!r}.")
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= 64:
            raise DataError(f"max_batch must be an integer between 1 and 64; got {self.max_batch!r}.")
        if not isinstance(self.prefix_cache_mb, int) or self.prefix_cache_mb < 0:
            raise DataError(f"prefix_cache_mb must be a non-negative integer; got {self.prefix_cache_mb!r}.")
        if self.default_max_tokens > self.max_tokens_limit:
            raise DataError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens_limit {self.max_tokens_limit}.")
        for key in self.api_keys:
            check_api_key(key)

    @property
    def auth_required(self) -> bool:
        """Whether requests must carry one of :attr:`api_keys`."""
        return bool(self.api_keys)


def check_api_key(key: str) -> str:
    """``key`` when it is usable as a bearer key.

    Raises:
        DataError: shorter than :data:`MIN_API_KEY_CHARS`, or containing spaces or control characters.

    """
    if len(key) < MIN_API_KEY_CHARS:
        raise DataError(f"An API key has {len(key)} characters; use at least {MIN_API_KEY_CHARS} "
                        "(e.g. `openssl rand -hex 24`).")
    if not key.isprintable() or any(ch.isspace() for ch in key):
        raise DataError("An API key contains spaces or control characters; use printable characters only.")
    return key


def load_api_keys(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The configured API keys: ``IC_API_KEYS``, else the lines of ``IC_API_KEY_FILE``, else none.

    Raises:
        DataError: an unreadable or empty key file, or a key that :func:`check_api_key` refuses.

    """
    env = os.environ if environ is None else environ
    if env.get(ENV_API_KEYS, "").strip():
        found = [k.strip() for k in env[ENV_API_KEYS].split(",") if k.strip()]
    elif env.get(ENV_API_KEY_FILE):
        path = Path(env[ENV_API_KEY_FILE]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"Cannot read the API key file {str(path)!r}: {exc}.") from exc
        found = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise DataError(f"The API key file {str(path)!r} holds no key (one key a line).")
    else:
        return ()
    return tuple(dict.fromkeys(check_api_key(k) for k in found))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_fingerprint(key: str) -> str:
    """A short public name for a key (the audit log's actor): 12 hex digits of its SHA-256."""
    return _digest(key).hex()[:12]


def match_api_key(token: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to ``token`` (compared in constant time with every key), else None."""
    if token is None:
        return None
    given = _digest(token)
    hit = None
    for key in keys:  # no early exit: every key is compared
        if hmac.compare_digest(given, _digest(key)):
            hit = key
    return hit


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
