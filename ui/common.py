"""Shared app state: the model (one per process, keyed by its full spec), settings, errors.

Pages call :func:`get_loaded` for the model the sidebar picked, :func:`gen_config` for the
generation settings, and :func:`show_error` to turn engine errors into ``st.error``.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.models import LoadedModel, ModelSpec, load_model

SPEC_KEY = "model_spec"
INJECTED_KEY = "_injected_model"
"""Tests may put a LoadedModel here (AppTest) to run the pages on a tiny model."""


@st.cache_resource(max_entries=1, show_spinner=False)
def _load_cached(spec: ModelSpec) -> LoadedModel:
    # The full spec is the cache key (no underscore): another dtype or device reloads.
    return load_model(spec)


def current_spec() -> ModelSpec:
    """The spec chosen in the sidebar (the offline default until the user changes it)."""
    spec = st.session_state.get(SPEC_KEY)
    if spec is None and os.environ.get("IC_MODEL"):
        spec = ModelSpec.parse(os.environ["IC_MODEL"])
    return spec or ModelSpec()


def get_loaded() -> LoadedModel | None:
    """The loaded model, or None after showing an error that says what to do."""
    injected = st.session_state.get(INJECTED_KEY)
    if injected is not None:
        return injected
    spec = current_spec()
    try:
        with st.spinner(f"Loading {spec.label} (the first load of the default model converts it once, ~15 s)…"):
            return _load_cached(spec)
    except ICError as exc:
        st.error(f"**Model not loaded.** {exc}")
        return None


def gen_config() -> GenerationConfig:
    """Generation settings from the sidebar."""
    s = st.session_state
    return GenerationConfig(
        max_new_tokens=int(s.get("max_new_tokens", 64)),
        do_sample=bool(s.get("do_sample", False)),
        temperature=float(s.get("temperature", 1.0)),
        seed=int(s.get("seed", 0)),
    )


def show_error(exc: Exception) -> None:
    """Show an engine error as one clear message (never a raw traceback)."""
    if isinstance(exc, ICError):
        st.error(str(exc))
    else:
        st.error(f"Unexpected error ({type(exc).__name__}): {exc}. Please report it with the steps that led here.")


def footer(loaded: LoadedModel | None) -> None:
    """The model in use and whether it runs on CPU or GPU."""
    if loaded is None:
        return
    st.caption(
        f"Model: **{loaded.spec.label}** · {loaded.n_layers} layers · d={loaded.d_model} · "
        f"runs on **{loaded.device_label}** · dtype {loaded.spec.dtype}"
    )


def json_download(label: str, data: Any, file_name: str, key: str | None = None) -> None:
    """A download button for a JSON-ready object."""
    import json

    st.download_button(label, json.dumps(data, indent=2, ensure_ascii=False), file_name, "application/json", key=key)
