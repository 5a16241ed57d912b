"""Administrator settings of the served app: which models a browser session may load.

A served dashboard is shared: whatever the sidebar may load, any visitor may load. So the
administrator, not the visitor, decides

* whether the sidebar may switch models at all (``IC_ALLOW_MODEL_SWITCH``, default off: only
  the app's starting model, the offline default or ``IC_MODEL``);
* which models it may switch to (``IC_MODEL_ALLOWLIST``, comma-separated entries
  ``default``, ``hub:org/name``, ``local:/folder`` or ``gguf:/file.gguf``);
* whether ``trust_remote_code`` may be offered (``IC_ALLOW_TRUST_REMOTE_CODE``, default off).

The same keys may sit in an ``[admin]`` table of ``.streamlit/secrets.toml`` (lower case, e.g.
``allow_model_switch = true``, ``model_allowlist = ["hub:org/name"]``); the environment wins.
The file is read with :mod:`tomllib` so the engine needs no Streamlit. The app's one model
loader calls :func:`check_app_model`, so no page can load a model the settings refuse.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ic_core.errors import DataError, ICError
from ic_core.models import DEFAULT_NAME, ModelSpec

ENV_SWITCH = "IC_ALLOW_MODEL_SWITCH"
ENV_ALLOWLIST = "IC_MODEL_ALLOWLIST"
ENV_TRUST = "IC_ALLOW_TRUST_REMOTE_CODE"
ENV_START_MODEL = "IC_MODEL"
SECRETS_TABLE = "admin"
KEYS = {"allow_model_switch": ENV_SWITCH, "model_allowlist": ENV_ALLOWLIST, "allow_trust_remote_code": ENV_TRUST}
"""secrets.toml key → environment variable."""
MAX_CACHED_MODELS = 4
"""Most models the app keeps loaded at once, whatever the allow-list says (memory bound)."""
MAX_ALLOWLIST = 32
ALLOWED_SOURCES = ("hub", "local", "gguf")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class AllowedModel:
    """One allow-list entry: a model source and name (dtype and device stay the user's choice)."""

    source: str
    """``default``, ``hub``, ``local`` or ``gguf``, as in :class:`ic_core.models.ModelSpec`."""
    name: str
    """Hub id, or the resolved folder / ``.gguf`` path; :data:`DEFAULT_NAME` for ``default``."""

    @property
    def label(self) -> str:
        """The entry as an administrator writes it (``hub:org/name``), for pickers and messages."""
        if self.source == "default":  # a bundled offline model: its key ("default", "gemma3-270m")
            from ic_core.model_registry import bundled_by_word

            bundled = bundled_by_word(self.name)
            return bundled.key if bundled is not None else "default"
        return f"{self.source}:{self.name}"

    def spec(self, **options: Any) -> ModelSpec:
        """A spec of this model with the given dtype/device/trust_remote_code."""
        return ModelSpec(source=self.source, name=self.name, **options)  # type: ignore[arg-type]


DEFAULT_MODEL = AllowedModel("default", DEFAULT_NAME)


@dataclass(frozen=True)
class AdminSettings:
    """What the served app lets a browser session choose."""

    allow_model_switch: bool = False
    """The sidebar may switch to the allow-listed models."""
    model_allowlist: tuple[AllowedModel, ...] = ()
    """Models the sidebar may switch to (besides the starting model)."""
    allow_trust_remote_code: bool = False
    """The sidebar may offer ``trust_remote_code`` (and a spec may carry it)."""
    start_model: AllowedModel = DEFAULT_MODEL
    """The app's starting model (``IC_MODEL``, else the offline default): always allowed."""

    @property
    def allowed_models(self) -> tuple[AllowedModel, ...]:
        """Models a session may load: the starting model, then (when switching is on) the allow-list."""
        extra = self.model_allowlist if self.allow_model_switch else ()
        return tuple(dict.fromkeys((self.start_model, *extra)))

    @property
    def model_cache_entries(self) -> int:
        """How many loaded models the app keeps: every allowed one, at most :data:`MAX_CACHED_MODELS`."""
        return max(1, min(len(self.allowed_models), MAX_CACHED_MODELS))


def parse_bool(name: str, value: Any) -> bool:
    """An on/off setting from a TOML boolean or a word (1/0, true/false, yes/no, on/off).

    Raises:
        DataError: anything else.

    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise DataError(f"Administrator setting {name} must be 1 or 0 (true/false), not {str(value)[:40]!r}.")


def parse_entry(text: str) -> AllowedModel:
    """One allow-list entry: ``default``, a bundled key, ``hub:org/name``, ``local:/…`` or ``gguf:/….gguf``.

    A bundled key is another offline model's word, e.g. ``gemma3-270m``.

    Raises:
        DataError: another form, an unknown source, or an empty name.

    """
    entry = text.strip()
    if entry.lower() in ("default", DEFAULT_NAME.lower()):
        return DEFAULT_MODEL
    from ic_core.model_registry import bundled_by_word

    bundled = bundled_by_word(entry)
    if bundled is not None:  # another bundled offline model, e.g. gemma3-270m
        return AllowedModel("default", bundled.name)
    source, sep, name = entry.partition(":")
    source, name = source.strip().lower(), name.strip()
    if not sep or source not in ALLOWED_SOURCES or not name:
        raise DataError(
            f"Model allow-list entry {entry[:60]!r} is not 'default', 'hub:org/name', 'local:/folder' or "
            "'gguf:/file.gguf'."
        )
    if source in ("local", "gguf"):
        name = str(Path(name).expanduser().resolve())
    return AllowedModel(source, name)


def parse_allowlist(value: Any) -> tuple[AllowedModel, ...]:
    """The allow-list from a comma-separated string or a TOML list of strings (duplicates dropped).

    Raises:
        DataError: a bad entry, a non-string item, or more than :data:`MAX_ALLOWLIST` entries.

    """
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v for v in value if v.strip()]
    else:
        raise DataError("Administrator setting model_allowlist must be a comma-separated string or a list of strings.")
    if len(items) > MAX_ALLOWLIST:
        raise DataError(f"The model allow-list has {len(items)} entries; at most {MAX_ALLOWLIST} are allowed.")
    return tuple(dict.fromkeys(parse_entry(item) for item in items))


def read_secrets_table(path: Path) -> dict[str, Any]:
    """The ``[admin]`` table of a secrets.toml file ({} when the file or the table is absent).

    Raises:
        DataError: the file is not valid TOML, or ``admin`` is not a table.

    """
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"Cannot read the administrator settings in {path}: {exc}.") from exc
    table = data.get(SECRETS_TABLE, {})
    if not isinstance(table, dict):
        raise DataError(f"{path}: [{SECRETS_TABLE}] must be a table.")
    return table


def default_secrets_paths() -> tuple[Path, ...]:
    """Where Streamlit looks for secrets: the user's, then the project's (the later wins)."""
    return (Path.home() / ".streamlit" / "secrets.toml", Path.cwd() / ".streamlit" / "secrets.toml")


def _start_model(env: Mapping[str, str]) -> AllowedModel:
    text = env.get(ENV_START_MODEL, "").strip()
    if not text:
        return DEFAULT_MODEL
    try:
        spec = ModelSpec.parse(text)
    except ICError as exc:
        raise DataError(f"{ENV_START_MODEL}: {exc}") from exc
    return AllowedModel(spec.source, spec.name)


def admin_settings(env: Mapping[str, str] | None = None, secrets_paths: tuple[Path, ...] | None = None) -> AdminSettings:
    """The administrator settings in force: environment first, then ``[admin]`` in secrets.toml, then off.

    Args:
        env: The environment (default ``os.environ``).
        secrets_paths: secrets.toml files, later ones overriding earlier ones (default
            :func:`default_secrets_paths`).

    Raises:
        DataError: a setting that cannot be read (one line naming it).

    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    for path in default_secrets_paths() if secrets_paths is None else secrets_paths:
        merged.update(read_secrets_table(path))
    unknown = sorted(set(merged) - set(KEYS))
    if unknown:
        raise DataError(f"Unknown administrator setting(s) in [{SECRETS_TABLE}]: {', '.join(unknown)[:80]}.")
    for key, var in KEYS.items():
        if var in env:
            merged[key] = env[var]
    return AdminSettings(
        allow_model_switch=parse_bool(ENV_SWITCH, merged.get("allow_model_switch", False)),
        model_allowlist=parse_allowlist(merged.get("model_allowlist", "")),
        allow_trust_remote_code=parse_bool(ENV_TRUST, merged.get("allow_trust_remote_code", False)),
        start_model=_start_model(env),
    )


def check_app_model(spec: ModelSpec, settings: AdminSettings | None = None) -> None:
    """Refuse a model the administrator settings do not allow the app to load.

    Args:
        spec: What a session asks for.
        settings: The settings (default :func:`admin_settings`).

    Raises:
        DataError: trust_remote_code without permission, switching while switching is off, or a
            model outside the allow-list (one line each, saying who can change it).

    """
    settings = admin_settings() if settings is None else settings
    if spec.trust_remote_code and not settings.allow_trust_remote_code:
        raise DataError(
            "trust_remote_code is turned off for this app; the administrator can allow it with "
            f"{ENV_TRUST}=1 (or allow_trust_remote_code in .streamlit/secrets.toml)."
        )
    wanted = AllowedModel(spec.source, spec.name)
    if wanted in settings.allowed_models:
        return
    if not settings.allow_model_switch:
        raise DataError(
            f"{wanted.label[:80]} cannot be loaded: model switching is turned off for this app (only "
            f"{settings.start_model.label} may be loaded); "
            f"the administrator can allow it with {ENV_SWITCH}=1 and {ENV_ALLOWLIST}."
        )
    raise DataError(
        f"{wanted.label[:80]} is not on this app's model allow-list; the administrator can add it to {ENV_ALLOWLIST}."
    )
