"""Intention Collapse Dashboard: the router and the shared sidebar.

Run with ``streamlit run app.py``. Every ``pages/<N>_<Name>.py`` file becomes a page
(sorted by file name; ``2_Compare_regimes.py`` is titled "Compare regimes"); Explore is
the default. The sidebar picks the model (nothing reloads until "Apply") and holds the
generation settings, which pages read through ``ui.common.gen_config()``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ic_core.errors import ICError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT
from ic_core.models import DEFAULT_NAME, ModelSpec
from ui.common import (
    ROUTER_KEY,
    SPEC_KEY,
    WANTED_PAGE_KEY,
    current_spec,
    keep_widget_values,
    page_title,
    show_error,
)

ROOT = Path(__file__).resolve().parent
PAGES_DIR = ROOT / "pages"
DEFAULT_PAGE_TITLE = "Explore"
DEFAULT_SOURCE = f"Offline default ({DEFAULT_NAME})"
OTHER_SOURCE = "Hub id or local folder"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "auto", "cuda")
GEN_DEFAULTS = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0, "seed": 0}


def discover_pages() -> list[st.Page]:
    """One page per ``pages/*.py`` file, sorted by name; Explore (or the first) is the default."""
    files = sorted(PAGES_DIR.glob("*.py"))
    titles = [page_title(f.name) for f in files]
    default = titles.index(DEFAULT_PAGE_TITLE) if DEFAULT_PAGE_TITLE in titles else 0
    return [st.Page(str(f), title=t, default=i == default) for i, (f, t) in enumerate(zip(files, titles))]


def _init_sidebar_state() -> None:
    spec = current_spec()
    defaults = {
        "sb_source": DEFAULT_SOURCE if spec.source == "default" else OTHER_SOURCE,
        "sb_model_text": "" if spec.source == "default" else spec.name,
        "sb_dtype": spec.dtype,
        "sb_device": spec.device,
        "sb_trust_remote_code": spec.trust_remote_code,
        **GEN_DEFAULTS,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def _spec_from_widgets() -> ModelSpec:
    s = st.session_state
    options = dict(dtype=s["sb_dtype"], device=s["sb_device"], trust_remote_code=bool(s["sb_trust_remote_code"]))
    if s["sb_source"] == DEFAULT_SOURCE:
        return ModelSpec(**options)
    text = s["sb_model_text"].strip()
    if not text:
        raise ICError("Type a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local model folder, then press Apply.")
    return ModelSpec.parse(text, **options)


def _apply_model() -> None:
    try:
        st.session_state[SPEC_KEY] = _spec_from_widgets()
        st.session_state.pop("sb_apply_error", None)
    except ICError as exc:
        st.session_state["sb_apply_error"] = exc


def model_picker() -> None:
    """Model choice; the current spec changes only when the user presses Apply."""
    st.subheader("Model")
    st.radio("Source", (DEFAULT_SOURCE, OTHER_SOURCE), key="sb_source",
             help="The default runs offline on any laptop. Other models need to be in your local "
                  "Hugging Face cache or in a folder.")
    if st.session_state["sb_source"] == OTHER_SOURCE:
        st.text_input("Hub id or local folder", key="sb_model_text", placeholder="Qwen/Qwen2.5-0.5B-Instruct",
                      help="A model id already in your Hugging Face cache, a folder with config.json, "
                           "or a .gguf file. Nothing is downloaded.")
    c1, c2 = st.columns(2)
    c1.selectbox("dtype", DTYPES, key="sb_dtype", help="float32 is the safe choice on CPU.")
    c2.selectbox("device", DEVICES, key="sb_device", help="auto uses a GPU when there is one.")
    st.checkbox("trust_remote_code", key="sb_trust_remote_code",
                help="Runs Python code shipped with the model. Leave it off unless you trust the source.")
    if st.session_state["sb_trust_remote_code"]:
        st.warning("trust_remote_code runs code from the model's files on this machine. "
                   "Only enable it for a model whose source you trust.")
    st.button("Apply", on_click=_apply_model, type="primary", width="stretch",
              help="Load the chosen model. Until you press it, the model in use does not change.")
    error = st.session_state.get("sb_apply_error")
    if error is not None:
        show_error(error)
    current = current_spec()
    try:
        pending = _spec_from_widgets() != current
    except ICError:
        pending = True
    st.caption(f"In use: **{current.label}** ({current.dtype}, {current.device})"
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
_init_sidebar_state()
navigation = st.navigation(discover_pages())
wanted = st.session_state.pop(WANTED_PAGE_KEY, None)
if wanted is not None:  # a page opened by URL before the router existed (see ui.common.require_router)
    st.switch_page(wanted)
with st.sidebar:
    model_picker()
    generation_settings()
st.session_state[ROUTER_KEY] = True
try:
    navigation.run()
finally:
    st.session_state[ROUTER_KEY] = False
