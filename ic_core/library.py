"""Saved probes and policies that every session sees: the folders, the pickers' lists, the default policy.

Probes live in run folders (``<runs>/<run>/probes/<name>.json`` + ``.npz``); policies in a
``policies/`` folder beside the runs (``$IC_POLICIES_DIR``, default ``runs_root().parent /
"policies"``). An administrator may name a default policy with ``$IC_POLICY`` (a file path) so a
new session starts with the same gate. Every policy read here goes through
:meth:`~ic_core.governance.policy.Policy.load` (signature verified, never ``allow_unsigned``) and
its probe through :func:`~ic_core.governance.gate.load_policy_probe` (confined to the runs folder,
digests pinned), so no file in these folders is trusted for being there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ic_core.errors import DataError
from ic_core.governance.gate import load_policy_probe
from ic_core.governance.policy import Policy
from ic_core.probes.cv import C_GRID
from ic_core.probes.saved import SavedProbe
from ic_core.runs.store import runs_root

POLICIES_ENV = "IC_POLICIES_DIR"
"""Folder of saved policies (default: ``policies/`` beside the runs folder)."""
DEFAULT_POLICY_ENV = "IC_POLICY"
"""Path of the administrator's default policy, active in every new session."""
MAX_LISTED = 200
"""Most files listed per picker (newest first)."""
MIN_CONFIDENT_TRAIN = 50
"""Below this many training rows a probe's P(correct) is shown with a "barely separates" note."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A verified policy and the probe it reads (None for entropy-only policies)."""

    policy: Policy
    probe: SavedProbe | None
    path: Path


def policies_root() -> Path:
    """``$IC_POLICIES_DIR``, or ``policies/`` beside the runs folder."""
    env = os.environ.get(POLICIES_ENV)
    return Path(env) if env else runs_root().absolute().parent / "policies"


def _newest(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_LISTED]


def saved_policy_files(folder: Path | None = None) -> list[Path]:
    """The ``*.json`` regular files directly in the policies folder (no symlinks), newest first."""
    folder = folder or policies_root()
    if not folder.is_dir():
        return []
    return _newest([p for p in folder.glob("*.json") if p.is_file() and not p.is_symlink()])


def saved_probe_files(root: Path | None = None) -> list[Path]:
    """The probes saved in run folders (``<run>/probes/<name>.json`` with its ``.npz``), newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    found = [p for p in root.glob("*/probes/*.json")
             if p.is_file() and not p.is_symlink() and p.with_suffix(".npz").is_file()]
    return _newest(found)


def load_saved_probe(path: Path, root: Path | None = None) -> SavedProbe:
    """A probe from the list, read only from inside the runs folder (see :meth:`SavedProbe.load`)."""
    return SavedProbe.load(path, root or runs_root())


def load_policy_file(path: Path | str, root: Path | None = None) -> LoadedPolicy:
    """A policy file, signature verified, with its probe (confined to the runs folder, digests pinned).

    Raises:
        DataError: unreadable, invalid, unsigned or wrongly signed, or its probe refused.

    """
    policy = Policy.load(path)
    probe = load_policy_probe(policy, root or runs_root())
    return LoadedPolicy(policy, probe, Path(path))


def load_saved_policy(path: Path | str, folder: Path | None = None, root: Path | None = None) -> LoadedPolicy:
    """A policy picked from the policies folder; a path that resolves outside it is refused.

    Raises:
        DataError: outside the folder, or any refusal of :func:`load_policy_file`.

    """
    base = (folder or policies_root()).resolve()
    target = Path(path).resolve()
    if target.parent != base or target.suffix != ".json":
        raise DataError(f"{str(path)!r} is not a policy file in the policies folder {base}.")
    return load_policy_file(target, root)


def save_to_library(policy: Policy, folder: Path | None = None) -> Path:
    """Write ``policy`` signed with the operator key as ``policy-<id>.json`` in the policies folder."""
    signed = policy.sign()
    safe_id = "".join(ch for ch in signed.policy_id if ch.isalnum())
    return signed.save((folder or policies_root()) / f"policy-{safe_id}.json", sign=False)


def default_policy(root: Path | None = None) -> LoadedPolicy | None:
    """The administrator's default policy (``$IC_POLICY``); None when the variable is unset.

    Raises:
        DataError: the file is refused (the message names the variable).

    """
    path = os.environ.get(DEFAULT_POLICY_ENV, "").strip()
    if not path:
        return None
    try:
        return load_policy_file(path, root)
    except DataError as exc:
        raise DataError(f"The default policy {DEFAULT_POLICY_ENV}={path!r} was refused: {exc}") from exc


def weak_probe_reasons(probe: SavedProbe) -> list[str]:
    """Why a probe's P(correct) says little (empty when none applies), from what the saved probe records.

    A probe barely separates right from wrong when its cross-validated AUROC interval includes
    0.5 (or was not estimated), when CV chose the strongest regularisation on the grid (the
    weights are shrunk towards the base rate), or when it was trained on fewer than
    :data:`MIN_CONFIDENT_TRAIN` rows.
    """
    reasons = []
    if probe.cv_auroc is None or probe.cv_ci_low is None:
        reasons.append("its cross-validated AUROC was not estimated")
    elif probe.cv_ci_low <= 0.5:
        reasons.append(f"its cross-validated AUROC {probe.cv_auroc:.2f} [{probe.cv_ci_low:.2f}, "
                       f"{probe.cv_ci_high:.2f}] includes 0.5 (chance)")
    if probe.C <= min(C_GRID):
        reasons.append(f"CV chose the strongest regularisation on the grid (C = {probe.C:g}), so its scores "
                       "stay near the base rate")
    if probe.n_train < MIN_CONFIDENT_TRAIN:
        reasons.append(f"it was trained on only {probe.n_train} rows")
    return reasons
