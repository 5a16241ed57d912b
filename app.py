"""Intention Collapse Dashboard: the router and the shared sidebar.

Run with ``streamlit run app.py``. Every ``pages/<N>_<Name>.py`` file becomes a page
(sorted by file name; ``2_Compare_regimes.py`` is titled "Compare regimes"); Explore is
the default. The sidebar picks the model among those the administrator allows (:mod:`ic_core.admin`;
nothing reloads until "Apply") and holds the
generation settings, which pages read through ``ui.common.gen_config()``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ic_core.admin import ENV_SWITCH, AdminSettings, AllowedModel, admin_settings, check_app_model
from ic_core.errors import ICError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT
from ic_core.model_registry import GEMMA_NOTICE, bundled_by_name
from ic_core.models import DEFAULT_NAME, ModelSpec
from ui.common import (
    ROUTER_KEY,
    SPEC_KEY,
    WANTED_PAGE_KEY,
    current_spec,
    keep_widget_values,
    md_text,
    page_title,
)
from ui.gate_policy import apply_default_policy
from ui.jobs import jobs_panel

ROOT = Path(__file__).resolve().parent
PAGES_DIR = ROOT / "pages"
DEFAULT_PAGE_TITLE = "Explore"
DEFAULT_SOURCE = f"Offline default ({DEFAULT_NAME})"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "auto", "cuda")
GEN_DEFAULTS = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "seed": 0}


def discover_pages() -> list[st.Page]:
    """One page per ``pages/*.py`` file, sorted by name; Explore (or the first) is the default."""
    files = sorted(PAGES_DIR.glob("*.py"))
    titles = [page_title(f.name) for f in files]
    default = titles.index(DEFAULT_PAGE_TITLE) if DEFAULT_PAGE_TITLE in titles else 0
    return [st.Page(str(f), title=t, default=i == default) for i, (f, t) in enumerate(zip(files, titles))]


def _settings() -> AdminSettings:
    """The administrator settings; broken settings offer nothing beyond the default (the loader says why)."""
    try:
        return admin_settings()
    except ICError:
        return AdminSettings()


def _model_label(model: AllowedModel) -> str:
    if model.source != "default":
        return model.label
    return DEFAULT_SOURCE if model.name == DEFAULT_NAME else bundled_by_name(model.name).description


def _init_sidebar_state(settings: AdminSettings) -> None:
    spec = current_spec()
    allowed = [m.label for m in settings.allowed_models]
    chosen = AllowedModel(spec.source, spec.name).label
    defaults = {
        "sb_model": chosen if chosen in allowed else allowed[0],
        "sb_dtype": spec.dtype,
        "sb_device": spec.device,
        "sb_trust_remote_code": spec.trust_remote_code and settings.allow_trust_remote_code,
        **GEN_DEFAULTS,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    if st.session_state["sb_model"] not in allowed:  # the settings changed under a running session
        st.session_state["sb_model"] = allowed[0]


def _spec_from_widgets(settings: AdminSettings) -> ModelSpec:
    s = st.session_state
    models = {m.label: m for m in settings.allowed_models}
    model = models.get(s["sb_model"], settings.start_model)
    trust = bool(s["sb_trust_remote_code"]) and settings.allow_trust_remote_code
    return model.spec(dtype=s["sb_dtype"], device=s["sb_device"], trust_remote_code=trust)


def _apply_model(settings: AdminSettings) -> None:
    try:
        spec = _spec_from_widgets(settings)
        check_app_model(spec)  # the loader checks again; here the refusal shows beside the Apply button
        st.session_state[SPEC_KEY] = spec
        st.session_state.pop("sb_apply_error", None)
    except ICError as exc:
        st.session_state["sb_apply_error"] = exc


def model_picker(settings: AdminSettings) -> None:
    """Model choice among the models the administrator allows; nothing changes until Apply."""
    st.subheader("Model")
    models = settings.allowed_models
    if len(models) > 1:
        st.selectbox("Model", [m.label for m in models], key="sb_model",
                     format_func=lambda label: _model_label(next(m for m in models if m.label == label)),
                     help="The models this app's administrator allows (IC_MODEL_ALLOWLIST). Nothing is downloaded.")
        if st.session_state.get("sb_model") == "gemma3-270m":
            st.caption(md_text(GEMMA_NOTICE))
    else:
        st.caption(f"Model: **{md_text(_model_label(models[0]))}**. Switching models is turned off for this app "
                   f"(administrator setting {ENV_SWITCH}).")
    c1, c2 = st.columns(2)
    c1.selectbox("dtype", DTYPES, key="sb_dtype", help="float32 is the safe choice on CPU.")
    c2.selectbox("device", DEVICES, key="sb_device", help="auto uses a GPU when there is one.")
    if settings.allow_trust_remote_code:
        st.checkbox("trust_remote_code", key="sb_trust_remote_code",
                    help="Runs Python code shipped with the model. Leave it off unless you trust the source.")
        if st.session_state["sb_trust_remote_code"]:
            st.warning("trust_remote_code runs code from the model's files on this machine. "
                       "Only enable it for a model whose source you trust.")
    st.button("Apply", on_click=_apply_model, args=(settings,), type="primary", width="stretch",
              help="Load the chosen model. Until you press it, the model in use does not change.")
    error = st.session_state.get("sb_apply_error")
    if error is not None:
        st.error(md_text(error))
    current = current_spec()
    pending = _spec_from_widgets(settings) != current
    st.caption(f"In use: **{md_text(current.label)}** ({current.dtype}, {current.device})"
               + (" · *changes not applied yet*" if pending else ""))


def generation_settings() -> None:
    """Decoding settings read by ``ui.common.gen_config()``."""
    st.subheader("Generation")
    st.number_input("Max new tokens", min_value=1, max_value=MAX_NEW_TOKENS_LIMIT, step=16, key="max_new_tokens",
                    help="Upper bound on the answer length. Chain-of-thought needs more (Compare regimes "
                         "gives CoT its own setting).")
    st.toggle("Sample (off = greedy)", key="do_sample",
              help="Greedy always writes the most likely token; sampling draws from the distribution.")
    st.slider("Temperature", min_value=0.05, max_value=2.0, step=0.05, key="temperature",
              disabled=not st.session_state["do_sample"], help="Only used when sampling.")
    st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed",
                    disabled=not st.session_state["do_sample"], help="Makes sampling repeatable.")


st.set_page_config(page_title="Intention Collapse Dashboard", layout="wide")
keep_widget_values()
admin = _settings()
_init_sidebar_state(admin)
navigation = st.navigation(discover_pages())
wanted = st.session_state.pop(WANTED_PAGE_KEY, None)
if wanted is not None:  # a page opened by URL before the router existed (see ui.common.require_router)
    st.switch_page(wanted)
with st.sidebar:
    model_picker(admin)
    generation_settings()
    jobs_panel()  # background jobs (studies, Recoverability, the demo run) on every page
apply_default_policy()  # the administrator's IC_POLICY, verified, once per session (every page sees it)
st.session_state[ROUTER_KEY] = True
try:
    navigation.run()
finally:
    st.session_state[ROUTER_KEY] = False
