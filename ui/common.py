"""Shared app state: the model (one per process, keyed by its full spec), runs, settings, errors.

Pages call :func:`get_loaded` for the model the sidebar picked, :func:`cached_run` for a saved
run, :func:`gen_config` for the generation settings, and :func:`show_error` to turn engine
errors into ``st.error``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import streamlit as st

from ic_core.admin import admin_settings, check_app_model
from ic_core.errors import ICError
from ic_core.generate import GenerationConfig
from ic_core.models import LoadedModel, ModelSpec, load_model
from ic_core.runs.store import StudyRun, load_run

SPEC_KEY = "model_spec"
INJECTED_KEY = "_injected_model"
"""Tests may put a LoadedModel here (AppTest) to run the pages on a tiny model."""


@st.cache_resource(max_entries=3, show_spinner="Opening the run…")
def cached_run(path: str, mtime: float) -> StudyRun:
    """The run folder at ``path``, loaded once per (path, mtime) and shared read-only by every page.

    ``cache_resource`` hands out the same object (no copy of the state array per call, as
    ``cache_data`` would make); ``mtime`` (:attr:`ic_core.runs.store.RunInfo.mtime`) changes
    as a run grows, so a growing or re-run folder is read again.
    """
    return load_run(path)


def _model_cache_entries() -> int:
    """One cache entry per model the administrator allows (bounded), so sessions do not evict each other."""
    try:
        return admin_settings().model_cache_entries
    except ICError:  # a bad setting: get_loaded shows its message on every page
        return 1


@st.cache_resource(max_entries=_model_cache_entries(), show_spinner=False)
def _load_cached(spec: ModelSpec) -> LoadedModel:
    # The full spec is the cache key (no underscore): another dtype or device reloads.
    check_app_model(spec)  # also here, so no caller of the cache can skip the administrator's check
    return load_model(spec)


def load_app_model(spec: ModelSpec) -> LoadedModel:
    """The app's one model loader: the administrator settings' check, then the shared cache.

    Raises:
        ICError: a model the settings refuse (:func:`ic_core.admin.check_app_model`) or one that
            cannot be loaded.

    """
    check_app_model(spec)
    return _load_cached(spec)


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
            return load_app_model(spec)
    except ICError as exc:
        st.error(f"**Model not loaded.** {md_text(exc)}")
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
        st.error(inert_message(str(exc)))
    else:
        st.error(inert_message(
            f"Unexpected error ({type(exc).__name__}): {exc}. Please report it with the steps that led here."))


def inert_message(text: str) -> str:
    """An engine message made safe for ``st.error``: it may echo user input (file names, model ids).

    Brackets are escaped so ``![x](http://…)`` can never become an image (a beacon) or a link,
    ``$`` so nothing becomes LaTeX, and ``:`` before ``[`` cannot start a colour directive; the rest
    of the sentence keeps its punctuation, so it reads as written.
    """
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace("$", "\\$")


def footer(loaded: LoadedModel | None) -> None:
    """The model in use and whether it runs on CPU or GPU."""
    if loaded is None:
        return
    st.caption(
        f"Model: **{md_text(loaded.spec.label)}** · {loaded.n_layers} layers · d={loaded.d_model} · "
        f"runs on **{loaded.device_label}** · dtype {loaded.spec.dtype}"
    )


def json_download(label: str, data: Any, file_name: str, key: str | None = None) -> None:
    """A download button for a JSON-ready object."""
    import json

    st.download_button(label, json.dumps(data, indent=2, ensure_ascii=False), file_name, "application/json", key=key)


UPLOAD_LIMIT_BYTES = 1_000_000
"""Largest prompt file accepted by the Explore page's upload (1 MB: the upload widget counts whole MB and
states this limit itself; a prompt longer than the model's context is refused when it is rendered)."""

KEEP_PREFIX = "keep:"
"""Widget keys starting with this survive page switches (see :func:`keep_widget_values`)."""


def read_text_upload(name: str, data: bytes, limit_bytes: int = UPLOAD_LIMIT_BYTES) -> str:
    """Decode an uploaded prompt file, refusing what is not a modest UTF-8 text file.

    Args:
        name: File name (for the message).
        data: The file's bytes.
        limit_bytes: Largest accepted size.

    Returns:
        The prompt text, validated by :func:`ic_core.prompts.clean_prompt`.

    Raises:
        PromptError: too large, binary, not UTF-8, or empty.

    """
    from ic_core.errors import PromptError
    from ic_core.prompts import clean_prompt

    if len(data) > limit_bytes:
        raise PromptError(
            f"{name} is {len(data) / 1000:,.0f} kB; the limit is {limit_bytes / 1000:,.0f} kB. "
            "Upload a shorter text file, paste the part you need, or raise ui.common.UPLOAD_LIMIT_BYTES."
        )
    if b"\x00" in data:
        raise PromptError(f"{name} looks like a binary file (it contains NUL bytes). Upload a plain .txt file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptError(
            f"{name} is not UTF-8 text (undecodable byte at position {exc.start}). Save it as UTF-8 and try again."
        ) from exc
    try:
        return clean_prompt(text)
    except PromptError as exc:
        raise PromptError(f"{name}: {exc}") from exc


def keep_widget_values() -> None:
    """Keep page widgets' values when the user visits another page and comes back.

    Streamlit forgets a widget's value once a run does not draw it. Re-assigning every
    ``keep:``-prefixed key at the top of each run (app.py does it) turns it into plain
    session state that survives. Only value widgets may use the prefix, never buttons,
    download buttons or file uploaders (their state cannot be assigned).
    """
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(KEEP_PREFIX)]:
        st.session_state[key] = st.session_state[key]


EXPLORE_KEYS = {
    "question": KEEP_PREFIX + "explore.prompt",
    "regime": KEEP_PREFIX + "explore.regime",
    "kind": KEEP_PREFIX + "explore.kind",
    "template": KEEP_PREFIX + "explore.template",
    "answer_prefix": KEEP_PREFIX + "explore.prefix",
    "expected": KEEP_PREFIX + "explore.expected",
    "aliases": KEEP_PREFIX + "explore.aliases",
    "choices": KEEP_PREFIX + "explore.choices",
}
"""Session-state keys of the Explore page's input widgets (other pages may fill them)."""
EXPLORE_RESULT_KEY = "explore.result"
EXPLORE_NOTE_KEY = "explore.note"
EXPLORE_STALE_KEY = "explore.answer_fields_stale"
"""True while the answer prefix / expected answer may belong to a previous question."""


def fill_explore(item: dict[str, Any], regime: str = "direct") -> None:
    """Put a prompt-set item into the Explore page's inputs and clear its old result.

    Call it before ``st.switch_page("pages/1_Explore.py")`` (not while Explore's widgets are drawn).

    Args:
        item: A prompt-set item (keys question, kind, answer_prefix, answer, aliases, choices, note).
        regime: The regime to select.

    """
    s = st.session_state
    s[EXPLORE_KEYS["question"]] = item["question"]
    s[EXPLORE_KEYS["regime"]] = regime
    s[EXPLORE_KEYS["kind"]] = item.get("kind") or "free_text"
    s[EXPLORE_KEYS["answer_prefix"]] = item.get("answer_prefix") or ""
    s[EXPLORE_KEYS["expected"]] = str(item.get("answer") or "")
    s[EXPLORE_KEYS["aliases"]] = ", ".join(item.get("aliases") or ())
    s[EXPLORE_KEYS["choices"]] = "\n".join(item.get("choices") or ())
    s[EXPLORE_NOTE_KEY] = {"question": item["question"], "note": item.get("note") or ""}
    s[EXPLORE_STALE_KEY] = False  # the prefix and answer come with this question
    s.pop(EXPLORE_RESULT_KEY, None)


def page_title(file_name: str) -> str:
    """Navigation title of a page file: ``1_Explore.py`` → ``Explore``, ``2_Compare_regimes.py`` → ``Compare regimes``."""
    import re
    from pathlib import Path

    stem = Path(file_name).stem
    return re.sub(r"^\d+[_\- ]*", "", stem).replace("_", " ").strip() or stem


ROUTER_KEY = "_router_active"
"""True while app.py's st.navigation is running the current page."""
WANTED_PAGE_KEY = "_wanted_page"


def require_router(page_file: str) -> None:
    """Make sure a page runs under app.py's router (sidebar, settings), even when opened by URL.

    On a freshly started server, Streamlit treats an app with a ``pages/`` folder as an
    old-style multipage app until app.py has run once, so the first visit to a page's own
    URL would run that page alone (no sidebar). The page then hands over to app.py, which
    registers the navigation and switches back to the page. Call it first on every page.

    Args:
        page_file: The page's ``__file__``.

    """
    if st.session_state.get(ROUTER_KEY):
        return
    from pathlib import Path

    st.session_state[WANTED_PAGE_KEY] = f"pages/{Path(page_file).name}"
    st.switch_page("app.py")


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#.!|<>~:$&])")


def md_text(value: Any, limit: int | None = None) -> str:
    """Stored or user text made literal for ``st.markdown``/``st.caption``/``st.info``.

    Every Markdown, HTML, LaTeX (``$``) and Streamlit directive (``:red[…]``) character is
    backslash-escaped, so ``![x](http://…)`` or ``<img src=…>`` shows as those characters and
    never becomes an image, a link or HTML; line breaks become spaces (the text sits inside a
    sentence).

    Args:
        value: The text (``None`` gives "").
        limit: Cut to this many characters first (an ellipsis marks the cut).

    """
    text = "" if value is None else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))
    return "\\" + text if text[:1] in ("-", "+") else text  # not a list item


GATE_PROBE_KEY = "probe"
"""The session's saved probe (the active policy's, for probe policies; Recoverability saves one too)."""


def html_block(markup: str) -> str:
    """Escaped HTML from :mod:`ic_core.plots` kept as one HTML block for ``st.markdown(unsafe_allow_html=True)``.

    A blank line (e.g. a generated ``"\\n\\n"`` token) would end the HTML block, and Markdown after
    it (an image link in the model's output) would be rendered; numeric references keep the line
    breaks, which the spans show with ``white-space: pre-wrap``.
    """
    return markup.replace("\r", "&#13;").replace("\n", "&#10;")


SECOND_MODEL_KEY = KEEP_PREFIX + "second_model"
"""The second model Explore and Compare show beside the first: an allowed model's label, or :data:`NO_SECOND_MODEL`."""
NO_SECOND_MODEL = "none"
SECOND_INJECTED_KEY = "_injected_second_model"
"""Tests may put a second LoadedModel here (AppTest); the picker then offers it under its spec label."""


def second_model_options() -> list[str]:
    """Labels of the models a session may add beside the current one (the administrator's allow-list).

    Empty when switching is off or nothing else is allowed; a test's injected second model is offered too.
    """
    current = current_spec()
    try:
        allowed = admin_settings().allowed_models
    except ICError:
        allowed = ()
    labels = [m.label for m in allowed if (m.source, m.name) != (current.source, current.name)]
    injected = st.session_state.get(SECOND_INJECTED_KEY)
    if injected is not None and injected.spec.label not in labels:
        labels.append(injected.spec.label)
    return labels


def second_model_picker(where: str) -> None:
    """The "Compare with a second model" control (shared by Explore and Compare through one session key).

    Args:
        where: Page name for the widget's help text.

    """
    options = second_model_options()
    s = st.session_state
    if s.get(SECOND_MODEL_KEY) not in (NO_SECOND_MODEL, *options):
        s[SECOND_MODEL_KEY] = NO_SECOND_MODEL
    if not options:
        st.caption("Compare with a second model: this app allows one model. The administrator can allow more with "
                   "IC_ALLOW_MODEL_SWITCH=1 and IC_MODEL_ALLOWLIST (e.g. gemma3-270m).")
        return
    from ic_core.model_registry import GEMMA_NOTICE, bundled_by_word

    def label(choice: str) -> str:
        if choice == NO_SECOND_MODEL:
            return "no second model"
        bundled = bundled_by_word(choice)
        return bundled.name if bundled is not None else choice

    st.selectbox("Compare with a second model", (NO_SECOND_MODEL, *options), key=SECOND_MODEL_KEY,
                 format_func=label,
                 help=f"Read the same prompt on a second model and show both side by side on {where}. "
                      "Both stay loaded in this process (each behind its own lock); nothing is downloaded.")
    if s.get(SECOND_MODEL_KEY) == "gemma3-270m":
        st.caption(GEMMA_NOTICE)


def get_second_loaded() -> LoadedModel | None:
    """The second model the picker chose (same dtype and device as the first), or None.

    None when no second model is chosen, or after showing why it cannot be loaded.
    """
    choice = st.session_state.get(SECOND_MODEL_KEY, NO_SECOND_MODEL)
    if choice == NO_SECOND_MODEL:
        return None
    injected = st.session_state.get(SECOND_INJECTED_KEY)
    if injected is not None and injected.spec.label == choice:
        return injected
    try:
        allowed = {m.label: m for m in admin_settings().allowed_models}
        model = allowed.get(choice)
        if model is None:
            raise ICError(f"{choice[:80]} is not on this app's model allow-list any more.")
        current = current_spec()
        spec = model.spec(dtype=current.dtype, device=current.device)
        with st.spinner(f"Loading the second model, {spec.label} (its first load converts it once)…"):
            return load_app_model(spec)
    except ICError as exc:
        st.error(f"**Second model not loaded.** {md_text(exc)}")
        return None
