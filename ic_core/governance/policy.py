"""The policy document: a validated, versioned JSON gate policy and the checks that it fits the loaded model."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ic_core.errors import DataError
from ic_core.governance.policy_schema import (
    OPTIONAL_FIELDS,
    calibration_of,
    check_guarantee_fields,
    guarantee_text,
    probe_digests,
    probe_entry,
)
from ic_core.io import atomic_write_text

__all__ = ["FORMAT_VERSION", "SIGNALS", "ModelMismatchError", "Policy", "calibration_of", "check_model",
           "check_model_spec", "check_spec_matches", "probe_digests", "probe_entry"]

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
    risk_control: dict[str, Any] | None = None
    """How the threshold was certified (Learn then Test: method, bound, alpha, delta, n_calibration,
    coverage, certified, reason, needed_n); None for an empirical threshold (no guarantee)."""
    ood: dict[str, Any] | None = None
    """Distance model of the calibration states (:meth:`ic_core.stats.ood.OODModel.to_json`), or None."""
    ood_layer: int | None = None
    """Layer (hidden_states index) of the read-out state the OOD model measures."""
    prefix_need: str | None = None
    """What the policy needs from a prompt: ``none``, ``per_kind`` or ``per_item`` (None: older files)."""
    created: str = field(default_factory=_now_iso)
    """UTC ISO time the policy was made."""
    format_version: int = FORMAT_VERSION
    policy_id: str = ""
    """Content hash; filled in automatically."""
    signature: str = ""
    """HMAC-SHA256 (operator key, purpose ``policy``) of the canonical JSON of every other field; "" = unsigned."""

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
        body = {k: v for k, v in self._fields_dict().items() if k not in ("policy_id", "created", "signature")}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def _fields_dict(self) -> dict[str, Any]:
        # The optional guarantee fields are left out while None, so older files keep their id and signature.
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name in OPTIONAL_FIELDS and getattr(self, f.name) is None)}

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature covers: every field but ``signature`` itself."""
        body = {k: v for k, v in self._fields_dict().items() if k != "signature"}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    def sign(self, key: bytes | None = None) -> Policy:
        """A copy signed with ``key`` (default: :func:`ic_core.governance.keys.operator_key`)."""
        from dataclasses import replace

        from ic_core.governance.keys import signing_key, tag

        k = signing_key() if key is None else key
        return replace(self, signature=tag(k, self.signed_bytes(), "policy"))

    def signature_valid(self, key: bytes | None = None) -> bool:
        """Whether ``signature`` is this content's tag under ``key`` (default: the operator key)."""
        from ic_core.governance.keys import operator_key, tag_matches

        if not self.signature:
            return False
        return tag_matches(operator_key() if key is None else key, self.signed_bytes(), "policy", self.signature)

    @property
    def is_signed(self) -> bool:
        """Whether the policy carries a signature (verified when it was loaded without ``allow_unsigned``)."""
        return bool(self.signature)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """The policy document (pretty-printed JSON)."""
        return json.dumps(self._fields_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, allow_unsigned: bool = False) -> Policy:
        """Parse, validate and verify a policy document.

        Args:
            text: The JSON document.
            allow_unsigned: Accept a policy without a valid signature (the caller takes the risk
                that anyone who can edit the file can change its thresholds).

        Raises:
            DataError: not JSON (NaN/Infinity, numbers past Python's int-string limit and nesting
                deeper than :data:`MAX_DEPTH` included), not an object, unknown/missing fields,
                wrong types, bad values, a ``policy_id`` that does not match the content, or a
                missing/wrong signature without ``allow_unsigned``.

        """
        if len(text) > MAX_POLICY_BYTES:
            raise DataError(f"The policy file is {len(text)} bytes; a policy is at most {MAX_POLICY_BYTES}.")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"The policy file is not valid JSON: {exc}.") from exc
        except RecursionError as exc:
            raise DataError(f"The policy file nests deeper than {MAX_DEPTH} levels.") from exc
        except ValueError as exc:  # int-string conversion limit, NaN/Infinity
            raise DataError(f"The policy file is not valid JSON: {str(exc).splitlines()[0]}.") from exc
        return cls.from_dict(data, allow_unsigned=allow_unsigned)

    @classmethod
    def from_dict(cls, data: Any, allow_unsigned: bool = False) -> Policy:
        """Build from a parsed JSON object (validated and verified; see :meth:`from_json`)."""
        policy = cls._from_dict_unverified(data)
        if not allow_unsigned:
            policy.verify()
        return policy

    def verify(self) -> None:
        """Refuse an unsigned policy or one whose signature is not the operator key's tag of it.

        Raises:
            DataError: unsigned, wrongly signed, or no operator key to check with.

        """
        from ic_core.governance.keys import KeyMissingError

        if not self.signature:
            raise DataError(
                f"Policy {self.policy_id} is unsigned: sign it (`python -m ic_core policy sign FILE`) or pass "
                "--allow-unsigned to accept that anyone who can edit the file can change its thresholds."
            )
        try:
            ok = self.signature_valid()
        except KeyMissingError as exc:
            raise DataError(f"Policy {self.policy_id} is signed but cannot be verified: {exc}") from exc
        if not ok:
            raise DataError(
                f"Policy {self.policy_id} has a wrong signature: it was edited after signing or signed with "
                "another operator key; refit or re-sign it."
            )

    @classmethod
    def _from_dict_unverified(cls, data: Any) -> Policy:
        _check_depth(data)
        if not isinstance(data, dict):
            raise DataError("A policy must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"Unknown policy fields: {', '.join(json.dumps(u)[1:-1][:40] for u in unknown[:5])}.")
        missing = sorted(n for n in _REQUIRED_IN_FILE if n not in data)
        if missing:
            raise DataError(f"The policy is missing required fields: {', '.join(missing)}.")
        if data["format_version"] != FORMAT_VERSION:
            raise DataError(
                f"Policy format_version {data['format_version']!r} is not supported (this version reads {FORMAT_VERSION})."
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], allow_unsigned: bool = False) -> Policy:
        """Read a policy file (see :meth:`from_json` for ``allow_unsigned``).

        Raises:
            DataError: unreadable file, invalid document or bad signature.

        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"Cannot read the policy file {str(p)!r}: {exc}.") from exc
        return cls.from_json(text, allow_unsigned=allow_unsigned)

    def save(self, path: str | os.PathLike[str], sign: bool = True) -> Path:
        """Write the policy atomically (:func:`ic_core.io.atomic_write`).

        Args:
            path: The file.
            sign: True (default) signs with the operator key (creating the default key file on
                first use, see :func:`ic_core.governance.keys.signing_key`); False writes the
                policy as it is (unsigned unless it already carries a signature).

        """
        policy = self.sign() if sign else self
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(target, policy.to_json() + "\n")

    @property
    def entropy_name(self) -> str | None:
        """``H_int`` or ``H_slot``: the entropy this policy reads, if any."""
        name = self.signal if self.signal in ("h_int", "h_slot") else self.entropy_signal
        return {"h_int": "H_int", "h_slot": "H_slot"}.get(name or "")

    @property
    def uses_probe(self) -> bool:
        """Whether a saved probe is needed at gate time."""
        return self.signal in ("probe", "combined")

    @property
    def guarantee(self) -> str:
        """Which guarantee the policy's approvals carry (see :func:`~ic_core.governance.policy_schema.guarantee_text`)."""
        return guarantee_text(self)

    @property
    def agent_ready(self) -> bool:
        """Whether an agent's prompt can be gated as it is (no per-item answer prefix needed)."""
        return self.prefix_mode != "per_item"

    def describe(self) -> str:
        """One sentence: the rule."""
        if self.escalate_all:
            if self.risk_control is not None:
                return f"Escalate every prompt (no threshold certified: {self.risk_control.get('reason')})."
            return "Escalate every prompt (the target error could not be met on the training items)."
        parts = []
        if self.t_entropy_bits is not None and self.signal in ("h_int", "h_slot", "combined"):
            parts.append(f"{self.entropy_name} > {self.t_entropy_bits:.2f} bits")
        if self.t_probe is not None and self.uses_probe:
            parts.append(f"probe P(correct) < {self.t_probe:.2f}")
        return "Escalate when " + " or ".join(parts) + "."


MAX_DEPTH = 32
"""Deepest JSON nesting a policy may have (real ones nest 4 levels)."""
MAX_POLICY_BYTES = 1_000_000
MAX_INT = 10**12
"""Largest integer any policy field may hold (layer counts, item counts, seeds fit easily)."""
DTYPES = ("float32", "bfloat16", "float16")
SOURCES = ("default", "hub", "local", "gguf")
"""ModelSpec's dtypes and sources (``ic_core.models.DType`` / ``SourceKind``)."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _check_depth(data: Any) -> None:
    """Refuse nesting past :data:`MAX_DEPTH`, non-finite floats and huge ints anywhere (iteratively)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DataError(f"The policy nests deeper than {MAX_DEPTH} levels.")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            if not all(isinstance(k, str) for k in value):
                raise DataError("Policy object keys must be strings.")
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"The policy holds a non-finite number ({value!r}); every number must be finite.")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise DataError(f"The policy holds an integer past {MAX_INT:.0e}; no field needs one that large.")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise DataError(f"The policy holds a {type(value).__name__}; only JSON values are allowed.")


_REQUIRED_IN_FILE = ("format_version", "policy_id", "signal", "model", "regime", "kind", "prefix_mode", "created")

_TYPES: dict[str, tuple[type, ...]] = {
    "signal": (str,), "model": (dict,), "regime": (str,), "kind": (str,), "template_user": (str, type(None)),
    "prefix_mode": (str,), "answer_prefix": (str, type(None)), "t_entropy_bits": (int, float, type(None)),
    "entropy_signal": (str, type(None)), "t_probe": (int, float, type(None)), "escalate_all": (bool,),
    "probe": (dict, type(None)), "model_n_layers": (int, type(None)), "model_d_model": (int, type(None)),
    "fitted_on": (dict,), "target_error": (int, float, type(None)), "held_out": (dict,),
    "store_prompt_text": (bool,), "risk_control": (dict, type(None)), "ood": (dict, type(None)),
    "ood_layer": (int, type(None)), "prefix_need": (str, type(None)), "created": (str,), "format_version": (int,), "policy_id": (str,), "signature": (str,),
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


def _finite(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"Policy field {name!r} must be a finite number; got {type(value).__name__} {value!r:.60}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(f"Policy field {name!r} must be in [{lo}, {hi}]; got {value!r:.60}.")


def _check_fields(p: Policy) -> None:
    """Ranges and enums of the numeric and model fields (types are :func:`_check_types`')."""
    _check_depth(p._fields_dict())
    if p.signature and not (len(p.signature) == 64 and all(c in "0123456789abcdef" for c in p.signature)):
        raise DataError("Policy field 'signature' must be empty or 64 lowercase hex digits (an HMAC-SHA256).")
    if p.t_probe is not None:
        _finite("t_probe", p.t_probe, 0.0, 1.0)
    if p.t_entropy_bits is not None:
        _finite("t_entropy_bits", p.t_entropy_bits, 0.0, 64.0)
    for name in ("model_n_layers", "model_d_model"):
        value = getattr(p, name)
        if value is not None and not 1 <= value <= MAX_INT:
            raise DataError(f"Policy field {name!r} must be a positive integer; got {value!r:.60}.")
    if p.model.get("dtype") not in DTYPES:
        raise DataError(f"The policy's model.dtype {p.model.get('dtype')!r:.60} is not one of {', '.join(DTYPES)}.")
    if p.model.get("source") not in SOURCES:
        raise DataError(f"The policy's model.source {p.model.get('source')!r:.60} is not one of {', '.join(SOURCES)}.")
    digest = p.model.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
        raise DataError("Policy field 'model.weights_sha256' must be null or 64 lowercase hex digits (a SHA-256).")
    if p.probe is not None:
        for key in ("platt_coef", "platt_intercept"):
            if key in p.probe:
                _finite(f"probe.{key}", p.probe[key], -1e6, 1e6)
        for key in ("path", "id"):
            if key in p.probe and not isinstance(p.probe[key], str):
                raise DataError(f"Policy field 'probe.{key}' must be a string; got {type(p.probe[key]).__name__}.")
        for key in ("json_sha256", "npz_sha256"):
            value = p.probe.get(key)
            if value is not None and not (isinstance(value, str) and len(value) == 64
                                          and all(c in "0123456789abcdef" for c in value)):
                raise DataError(f"Policy field 'probe.{key}' must be 64 lowercase hex digits (a SHA-256).")


def _validate(p: Policy) -> None:
    _check_types(p)
    _check_fields(p)
    check_guarantee_fields(p)
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

    Compares the specs (:func:`check_model_spec`), the layer count and width when the policy records
    them, and the weights digest when the policy pins ``model.weights_sha256`` (an unknown digest,
    e.g. a model built in memory, is refused too; older policies without one are checked by spec only).

    Raises:
        ModelMismatchError: one line naming both models or both digests.

    """
    check_model_spec(policy, loaded.spec)
    for attr, name in (("model_n_layers", "n_layers"), ("model_d_model", "d_model")):
        expected = getattr(policy, attr)
        if expected is not None and expected != getattr(loaded, name):
            raise ModelMismatchError(
                f"Policy {policy.policy_id} expects {name}={expected} but the loaded model has {getattr(loaded, name)}."
            )
    pinned = policy.model.get("weights_sha256")
    have = getattr(loaded, "weights_sha256", None)
    if pinned and have != pinned:
        got = "weights that cannot be identified (a model built in memory)" if not have else f"weights {have[:16]}…"
        raise ModelMismatchError(
            f"Policy {policy.policy_id} was fitted on {policy.model.get('name')} with weights {pinned[:16]}… but the "
            f"loaded model has {got}: the file differs from the one the policy was fitted on; load that file or fit again."
        )
