"""Checks of a policy's optional guarantee fields, and the probe entry helpers.

The fields added for risk-controlled thresholds (issue 12) are optional so that older policy
files load unchanged: ``risk_control`` (how the threshold was certified), ``ood`` and
``ood_layer`` (the distance model of the calibration states) and ``prefix_need`` (what the
policy needs from a prompt). Each is validated here; :mod:`ic_core.governance.policy` calls
:func:`check_guarantee_fields` from its own field checks.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ic_core.errors import DataError
from ic_core.stats.gating import PlattCalibration

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.governance.policy import Policy

OPTIONAL_FIELDS: tuple[str, ...] = ("risk_control", "ood", "ood_layer", "prefix_need")
"""Fields left out of the document (and so of its id and signature) while they are None."""
PREFIX_NEEDS: tuple[str, ...] = ("none", "per_kind", "per_item")
"""What a policy needs from a prompt: nothing, a generic prefix of its task kind, or the item's own prefix."""
PREFIX_NEED_OF_MODE = {"none": "none", "fixed": "per_kind", "per_item": "per_item"}
"""The prefix need each prefix mode implies."""
RISK_METHODS: tuple[str, ...] = ("ltt",)
BOUNDS: tuple[str, ...] = ("clopper_pearson", "hoeffding_bentkus")
RISK_KEYS = frozenset({"method", "bound", "alpha", "delta", "n_calibration", "coverage", "certified", "reason",
                       "needed_n", "direction"})
MAX_REASON_CHARS = 500


def _number(name: str, value: Any, lo: float, hi: float, *, open_low: bool = False, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"Policy field {name!r} must be a finite number; got {type(value).__name__} {value!r:.60}.")
    if value < lo or value > hi or (open_low and value == lo) or (open_high and value == hi):
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise DataError(f"Policy field {name!r} must be in {left}{lo:g}, {hi:g}{right}; got {value!r:.60}.")
    return float(value)


def _count(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"Policy field {name!r} must be a positive integer; got {value!r:.60}.")


def check_risk_control(rc: Any, escalate_all: bool) -> None:
    """Refuse a malformed ``risk_control`` entry, or one that contradicts the policy's thresholds.

    A certified entry needs a coverage and a policy that does not escalate everything; an
    uncertified one needs its reason and a policy that escalates everything (never a threshold
    the test did not certify).

    Raises:
        DataError: unknown or missing keys, values out of range, or a contradiction.

    """
    if not isinstance(rc, dict):
        raise DataError(f"Policy field 'risk_control' must be an object or null; got {type(rc).__name__}.")
    unknown = sorted(set(rc) - RISK_KEYS)
    if unknown:
        raise DataError(f"Unknown risk_control keys: {', '.join(str(u)[:40] for u in unknown[:5])}.")
    missing = sorted({"method", "bound", "alpha", "delta", "n_calibration", "certified"} - set(rc))
    if missing:
        raise DataError(f"risk_control is missing {', '.join(missing)}.")
    if rc["method"] not in RISK_METHODS:
        raise DataError(f"risk_control.method {rc['method']!r:.40} is not one of {', '.join(RISK_METHODS)}.")
    if rc["bound"] not in BOUNDS:
        raise DataError(f"risk_control.bound {rc['bound']!r:.40} is not one of {', '.join(BOUNDS)}.")
    if rc.get("direction") not in (None, "le", "ge"):
        raise DataError(f"risk_control.direction {rc.get('direction')!r:.40} is not 'le' or 'ge'.")
    _number("risk_control.alpha", rc["alpha"], 0.0, 1.0, open_low=True, open_high=True)
    _number("risk_control.delta", rc["delta"], 0.0, 1.0, open_low=True, open_high=True)
    _count("risk_control.n_calibration", rc["n_calibration"])
    _count("risk_control.needed_n", rc.get("needed_n"), optional=True)
    if not isinstance(rc["certified"], bool):
        raise DataError("risk_control.certified must be true or false.")
    reason = rc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise DataError(f"risk_control.reason must be a string of at most {MAX_REASON_CHARS} characters.")
    coverage = rc.get("coverage")
    if rc["certified"]:
        if coverage is None:
            raise DataError("A certified risk_control needs the coverage it certified.")
        _number("risk_control.coverage", coverage, 0.0, 1.0)
        if escalate_all:
            raise DataError("risk_control says certified but the policy escalates every prompt.")
    else:
        if coverage is not None:
            raise DataError("An uncertified risk_control has no coverage.")
        if not reason:
            raise DataError("An uncertified risk_control needs the reason nothing was certified.")
        if not escalate_all:
            raise DataError("risk_control is not certified, so the policy must escalate every prompt "
                            "(an uncertified threshold is not a guarantee).")


def check_ood(ood: Any, layer: Any, n_layers: int | None, d_model: int | None) -> None:
    """Refuse a malformed distance model or read-out layer (both or neither must be set).

    Raises:
        DataError: ``ood`` without ``ood_layer`` (or the reverse), a model that
            :meth:`~ic_core.stats.ood.OODModel.from_json` refuses, a width other than the
            model's, or a layer outside 0..n_layers.

    """
    if (ood is None) != (layer is None):
        raise DataError("Policy fields 'ood' and 'ood_layer' go together: give both or neither.")
    if ood is None:
        return
    from ic_core.stats.ood import OODModel

    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0 or (n_layers is not None and layer > n_layers):
        raise DataError(f"Policy field 'ood_layer' must be a layer index in 0..{n_layers}; got {layer!r:.40}.")
    model = OODModel.from_json(ood)
    if d_model is not None and model.d != d_model:
        raise DataError(f"The policy's OOD model reads states of width {model.d}, but the model's width is {d_model}.")


def check_prefix_need(need: Any, prefix_mode: str) -> None:
    """Refuse a ``prefix_need`` that is unknown or contradicts ``prefix_mode`` (None is allowed: older files).

    Raises:
        DataError: unknown value, or e.g. ``per_kind`` on a policy without a fixed prefix.

    """
    if need is None:
        return
    if need not in PREFIX_NEEDS:
        raise DataError(f"Unknown prefix_need {need!r:.40}; use {', '.join(PREFIX_NEEDS)}.")
    if PREFIX_NEED_OF_MODE.get(prefix_mode) != need:
        raise DataError(f"prefix_need {need!r} contradicts prefix_mode {prefix_mode!r} "
                        f"(which needs {PREFIX_NEED_OF_MODE.get(prefix_mode)!r}).")


def check_guarantee_fields(p: Policy) -> None:
    """All checks of the optional issue-12 fields of one policy."""
    if p.risk_control is not None:
        check_risk_control(p.risk_control, p.escalate_all)
    check_ood(p.ood, p.ood_layer, p.model_n_layers, p.model_d_model)
    check_prefix_need(p.prefix_need, p.prefix_mode)


def guarantee_text(p: Policy) -> str:
    """Which guarantee the policy's approvals carry, in one phrase."""
    rc = p.risk_control
    if rc is None:
        return "none (escalates every prompt)" if p.escalate_all else "none (empirical threshold)"
    if not rc["certified"]:
        return f"none (not certified: {rc.get('reason')})"
    bound = "Clopper-Pearson" if rc["bound"] == "clopper_pearson" else "Hoeffding-Bentkus"
    return (f"error among approved ≤ {rc['alpha']:g} with probability ≥ {1 - rc['delta']:g} "
            f"(LTT, {bound}, n={rc['n_calibration']})")


# --------------------------------------------------------------------------------------
# The probe entry
# --------------------------------------------------------------------------------------


def probe_entry(path: str, probe_id: str, calibration: PlattCalibration) -> dict[str, Any]:
    """The ``probe`` field of a policy, pinning the SHA-256 of the probe's ``.json`` and ``.npz`` when they exist."""
    entry: dict[str, Any] = {"path": str(path), "id": str(probe_id), **{f"platt_{k}": v for k, v in asdict(calibration).items()}}
    entry.update(probe_digests(path) or {})
    return entry


def probe_digests(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """``{"json_sha256", "npz_sha256"}`` of the probe pair at ``path`` (json, npz or stem); None if either is missing."""
    if not str(path):
        return None
    p = Path(path)
    if not p.name:
        return None
    stem = p.with_suffix("") if p.suffix in (".json", ".npz") else p
    out = {}
    for ext in ("json", "npz"):
        f = stem.with_name(stem.name + "." + ext)
        if not f.is_file():
            return None
        out[f"{ext}_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def calibration_of(policy: Policy) -> PlattCalibration | None:
    """The Platt calibration stored in a policy's probe entry."""
    if policy.probe is None:
        return None
    return PlattCalibration(float(policy.probe["platt_coef"]), float(policy.probe["platt_intercept"]))
