"""The policy document: a validated, versioned JSON gate policy and the checks that it fits the loaded model."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ic_core.errors import DataError
from ic_core.io import atomic_write_text
from ic_core.stats.gating import PlattCalibration

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.models import LoadedModel, ModelSpec

FORMAT_VERSION = 1
SIGNALS: tuple[str, ...] = ("h_int", "h_slot", "probe", "combined")
Signal = Literal["h_int", "h_slot", "probe", "combined"]
PrefixMode = Literal["none", "fixed", "per_item"]
ENTROPY_NAMES = {"h_int": "H_int", "h_slot": "H_slot"}
"""Display name of each entropy read-out."""


class ModelMismatchError(DataError):
    """The policy was fitted on another model than the one loaded."""


# --------------------------------------------------------------------------------------
# The policy document
# --------------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Policy:
    """A gate policy: which signal, which thresholds, and what they were fitted with.

    Stored as JSON only (:meth:`to_json` / :meth:`from_json`); ``policy_id`` is a hash of the
    content (everything but ``policy_id`` and ``created``), so any edit changes it.
    """

    signal: Signal
    """``h_int``, ``h_slot``, ``probe`` or ``combined`` (escalate if either rule fires)."""
    model: dict[str, Any]
    """ModelSpec dict of the model the thresholds were fitted on."""
    regime: str = "direct"
    """Regime of the prompts the policy was fitted on (``direct``, ``cot``, ``babble``, ``custom``)."""
    kind: str = "short_answer"
    """Task kind (picks the template wording)."""
    template_user: str | None = None
    """A custom user template (``{question}``), or None for the regime's built-in template."""
    prefix_mode: PrefixMode = "none"
    """``none`` (read at the last prompt token: H_int), ``fixed`` (``answer_prefix`` for every
    prompt: H_slot), ``per_item`` (each prompt brings its own prefix, e.g. "The capital of X is")."""
    answer_prefix: str | None = None
    """The forced answer prefix when ``prefix_mode == "fixed"``."""
    t_entropy_bits: float | None = None
    """Escalate when the entropy at the read-out > this (signals h_int, h_slot, combined)."""
    entropy_signal: Literal["h_int", "h_slot"] | None = None
    """Which entropy the ``combined`` rule reads (equal to ``signal`` for h_int/h_slot)."""
    t_probe: float | None = None
    """Escalate when the calibrated P(correct) < this (signals probe, combined)."""
    escalate_all: bool = False
    """The target could not be met on training items: every prompt is escalated."""
    probe: dict[str, Any] | None = None
    """``{"path", "id", "platt_coef", "platt_intercept"}`` of the saved probe, if used."""
    model_n_layers: int | None = None
    model_d_model: int | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    """``run_path``, ``dataset``, ``n_train``, ``n_held_out``, ``n_ungraded_excluded``, ``holdout``, ``seed``."""
    target_error: float | None = None
    """Highest acceptable error among auto-approved answers the thresholds were fitted for."""
    held_out: dict[str, Any] = field(default_factory=dict)
    """Held-out figures with CIs (:meth:`HeldOutReport.to_json`)."""
    store_prompt_text: bool = False
    """When False the audit log keeps only the prompt's SHA-256."""
    created: str = field(default_factory=_now_iso)
    """UTC ISO time the policy was made."""
    format_version: int = FORMAT_VERSION
    policy_id: str = ""
    """Content hash; filled in automatically."""

    def __post_init__(self) -> None:
        _validate(self)
        if self.policy_id != self.content_hash():
            if self.policy_id:
                raise DataError(
                    f"policy_id {self.policy_id!r} does not match the policy's content: the file was edited "
                    "after it was made. Fit or save the policy again instead of editing it by hand."
                )
            object.__setattr__(self, "policy_id", self.content_hash())

    def content_hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON content (without id and time)."""
        body = {k: v for k, v in self._fields_dict().items() if k not in ("policy_id", "created")}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def _fields_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """The policy document (pretty-printed JSON)."""
        return json.dumps(self._fields_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        """Parse and validate a policy document.

        Raises:
            DataError: not JSON, not an object, unknown/missing fields, wrong types, bad values,
                or a ``policy_id`` that does not match the content.

        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"The policy file is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """Build from a parsed JSON object (validated; see :meth:`from_json`)."""
        if not isinstance(data, dict):
            raise DataError("A policy must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"Unknown policy fields: {', '.join(unknown)}.")
        missing = sorted(n for n in _REQUIRED_IN_FILE if n not in data)
        if missing:
            raise DataError(f"The policy is missing required fields: {', '.join(missing)}.")
        if data["format_version"] != FORMAT_VERSION:
            raise DataError(
                f"Policy format_version {data['format_version']!r} is not supported (this version reads {FORMAT_VERSION})."
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file.

        Raises:
            DataError: unreadable file or invalid document.

        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"Cannot read the policy file {str(p)!r}: {exc}.") from exc
        return cls.from_json(text)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy atomically (:func:`ic_core.io.atomic_write`)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(target, self.to_json() + "\n")

    @property
    def entropy_name(self) -> str | None:
        """``H_int`` or ``H_slot``: the entropy this policy reads, if any."""
        name = self.signal if self.signal in ("h_int", "h_slot") else self.entropy_signal
        return {"h_int": "H_int", "h_slot": "H_slot"}.get(name or "")

    @property
    def uses_probe(self) -> bool:
        """Whether a saved probe is needed at gate time."""
        return self.signal in ("probe", "combined")

    def describe(self) -> str:
        """One sentence: the rule."""
        if self.escalate_all:
            return "Escalate every prompt (the target error could not be met on the training items)."
        parts = []
        if self.t_entropy_bits is not None and self.signal in ("h_int", "h_slot", "combined"):
            parts.append(f"{self.entropy_name} > {self.t_entropy_bits:.2f} bits")
        if self.t_probe is not None and self.uses_probe:
            parts.append(f"probe P(correct) < {self.t_probe:.2f}")
        return "Escalate when " + " or ".join(parts) + "."


_REQUIRED_IN_FILE = ("format_version", "policy_id", "signal", "model", "regime", "kind", "prefix_mode", "created")

_TYPES: dict[str, tuple[type, ...]] = {
    "signal": (str,), "model": (dict,), "regime": (str,), "kind": (str,), "template_user": (str, type(None)),
    "prefix_mode": (str,), "answer_prefix": (str, type(None)), "t_entropy_bits": (int, float, type(None)),
    "entropy_signal": (str, type(None)), "t_probe": (int, float, type(None)), "escalate_all": (bool,),
    "probe": (dict, type(None)), "model_n_layers": (int, type(None)), "model_d_model": (int, type(None)),
    "fitted_on": (dict,), "target_error": (int, float, type(None)), "held_out": (dict,),
    "store_prompt_text": (bool,), "created": (str,), "format_version": (int,), "policy_id": (str,),
}


def _check_types(p: Policy) -> None:
    for name, types in _TYPES.items():
        value = getattr(p, name)
        # bool is an int subclass: refuse it where a number is expected, and vice versa.
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(f"Policy field {name!r} must be {expected}; got {type(value).__name__} {value!r:.60}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"Policy field {name!r} must be a finite number; got {value!r}.")


def _validate(p: Policy) -> None:
    _check_types(p)
    if p.signal not in SIGNALS:
        raise DataError(f"Unknown policy signal {p.signal!r}; choose one of {', '.join(SIGNALS)}.")
    if p.prefix_mode not in ("none", "fixed", "per_item"):
        raise DataError(f"Unknown prefix_mode {p.prefix_mode!r}; use none, fixed or per_item.")
    if (p.prefix_mode == "fixed") != bool(p.answer_prefix):
        raise DataError("prefix_mode 'fixed' needs an answer_prefix, and only it may have one.")
    entropy = p.signal if p.signal in ("h_int", "h_slot") else p.entropy_signal
    if p.signal in ("h_int", "h_slot") and p.entropy_signal not in (None, p.signal):
        raise DataError(f"entropy_signal {p.entropy_signal!r} contradicts signal {p.signal!r}.")
    if p.signal == "combined" and entropy not in ("h_int", "h_slot"):
        raise DataError("A combined policy needs entropy_signal 'h_int' or 'h_slot'.")
    if entropy == "h_slot" and p.prefix_mode == "none":
        raise DataError("H_slot is read after a forced answer prefix, but the policy has none (prefix_mode 'none').")
    if entropy == "h_int" and p.prefix_mode != "none":
        raise DataError("H_int is read without an answer prefix, but the policy has one; use signal 'h_slot'.")
    if not p.escalate_all:
        if entropy is not None and p.signal != "probe" and p.t_entropy_bits is None:
            raise DataError(f"Signal {p.signal!r} needs t_entropy_bits.")
        if p.signal in ("probe", "combined") and p.t_probe is None:
            raise DataError(f"Signal {p.signal!r} needs t_probe.")
    if p.signal in ("probe", "combined"):
        if p.probe is None:
            raise DataError(f"Signal {p.signal!r} needs a probe entry (path, id and Platt calibration).")
        need = {"path", "id", "platt_coef", "platt_intercept"}
        if not need <= set(p.probe):
            raise DataError(f"The policy's probe entry needs {', '.join(sorted(need))}.")
    if p.target_error is not None and not 0.0 <= p.target_error < 1.0:
        raise DataError(f"target_error must be in [0, 1); got {p.target_error}.")
    for key in ("source", "name", "dtype"):
        if not isinstance(p.model.get(key), str):
            raise DataError(f"The policy's model entry needs a string {key!r} (a ModelSpec dict).")


def check_spec_matches(want: dict[str, Any], spec: ModelSpec, what: str) -> None:
    """Refuse a model spec whose source, name or dtype differs from ``want`` (the device may differ).

    Args:
        want: ModelSpec dict something was fitted on.
        spec: The ModelSpec in use.
        what: Names the fitted thing in the message, e.g. ``Policy 3ffe…``.

    Raises:
        ModelMismatchError: with both models named.

    """
    have_dict = spec.to_dict()
    keys = ("source", "name", "dtype")
    w = {k: want.get(k) for k in keys}
    h = {k: have_dict.get(k) for k in keys}
    if w != h:
        raise ModelMismatchError(
            f"{what} was fitted on model {w['name']} ({w['source']}, {w['dtype']}) but the loaded model is "
            f"{h['name']} ({h['source']}, {h['dtype']}); load that model (e.g. --model) or fit again on this one."
        )


def check_model_spec(policy: Policy, spec: ModelSpec) -> None:
    """Refuse a model spec other than the policy's (see :func:`check_spec_matches`)."""
    check_spec_matches(policy.model, spec, f"Policy {policy.policy_id}")


def check_model(policy: Policy, loaded: LoadedModel) -> None:
    """Refuse a gate whose loaded model is not the one the policy was fitted on.

    Compares the specs (:func:`check_model_spec`) and, when the policy records them, the layer
    count and width.

    Raises:
        ModelMismatchError: with both models named.

    """
    check_model_spec(policy, loaded.spec)
    for attr, name in (("model_n_layers", "n_layers"), ("model_d_model", "d_model")):
        expected = getattr(policy, attr)
        if expected is not None and expected != getattr(loaded, name):
            raise ModelMismatchError(
                f"Policy {policy.policy_id} expects {name}={expected} but the loaded model has {getattr(loaded, name)}."
            )


def probe_entry(path: str, probe_id: str, calibration: PlattCalibration) -> dict[str, Any]:
    """The ``probe`` field of a policy."""
    return {"path": str(path), "id": str(probe_id), **{f"platt_{k}": v for k, v in asdict(calibration).items()}}


def calibration_of(policy: Policy) -> PlattCalibration | None:
    """The Platt calibration stored in a policy's probe entry."""
    if policy.probe is None:
        return None
    return PlattCalibration(float(policy.probe["platt_coef"]), float(policy.probe["platt_intercept"]))

