"""Checks before a remote read-out: an NDIF key is set and NDIF can be reached from here.

NDIF (the National Deep Inference Fabric) runs nnsight traces on models up to 405B. A remote
trace without a key, or from a machine with no route to NDIF, would otherwise fail after
nnsight's own retries (or hang on a websocket); these checks fail in seconds with one line.
The key comes from ``NDIF_API_KEY`` (or nnsight's own config file), the host from ``NDIF_HOST``
(default :data:`DEFAULT_HOST`), as nnsight reads them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from ic_core.backends import BackendError

DEFAULT_HOST = "https://api.ndif.us"
KEY_ENV = "NDIF_API_KEY"
HOST_ENV = "NDIF_HOST"
CONNECT_TIMEOUT_S = 3.0
"""The TCP connect check gives up after this long (an offline machine answers at once or never)."""


@dataclass(frozen=True)
class NdifTarget:
    """Where a remote trace goes, checked."""

    host: str
    """Base URL, e.g. ``https://api.ndif.us``."""
    api_key: str
    """The key sent with each request (never printed)."""


def _config_value(attr: str) -> str | None:
    """The key or host in nnsight's config (its config file), without failing when nnsight is missing."""
    try:
        from ic_core.backends.nnsight_import import import_nnsight

        import_nnsight()
        from nnsight.schema.config import CONFIG
    except ImportError:
        return None
    value = getattr(CONFIG.API, attr, None)
    return str(value) if value else None


def ndif_host() -> str:
    """``NDIF_HOST``, else nnsight's configured host, else :data:`DEFAULT_HOST`."""
    return os.environ.get(HOST_ENV) or _config_value("HOST") or DEFAULT_HOST


def check_ndif(timeout_s: float = CONNECT_TIMEOUT_S) -> NdifTarget:
    """The NDIF host and key, after checking the key is set and the host accepts a TCP connection.

    Raises:
        BackendError: one line: no key (how to get one), a host that is not a URL, or no connection
            within ``timeout_s`` (what to do instead).

    """
    key = os.environ.get(KEY_ENV) or _config_value("APIKEY")
    if not key:
        raise BackendError(
            f"--remote runs the read-out on NDIF and needs an API key: set {KEY_ENV} (get one at "
            "https://login.ndif.us), or drop --remote to read on this machine."
        )
    host = ndif_host()
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"{HOST_ENV}={host!r} is not an http(s) URL such as {DEFAULT_HOST}.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BackendError(
            f"NDIF at {host} cannot be reached from this machine ({reason}, {timeout_s:g} s connect timeout): "
            "run --remote where the network allows it, or drop --remote to read on this machine."
        ) from None
    return NdifTarget(host, key)
