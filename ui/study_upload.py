"""The Study page's prompt-file upload: read it as data, map CSV columns, report rejected rows.

Everything from the file is shown as text (a table, or Markdown-escaped with :func:`ui.common.md_text`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from ic_core.dataset_columns import format_column_map, parse_kind_value_args, suggest_column_map
from ic_core.dataset_load import file_headers
from ic_core.datasets import FIELDS, REQUIRED_FIELDS, LoadResult, load_items
from ic_core.errors import DataError, ICError
from ic_core.prompts import TASK_KINDS
from ui.common import md_text, show_error

NONE = "(none)"
AUTO_KIND = "(from each row, or guessed from the answer)"
PREVIEW_ROWS = 200
ANSWERS_HELP = ("In any answer cell `|` separates accepted answers: `Pacific|Pacific Ocean` → answer `Pacific`, "
                "also accepted `Pacific Ocean`. Write `\\|` for a literal bar. An aliases column adds more; the "
                "same column may be mapped to both answer and aliases.")


@st.cache_data(max_entries=4, show_spinner=False)
def cached_upload(data: bytes, fmt: str, mapping: tuple[tuple[str, str], ...], kind: str | None = None,
                  kind_values: tuple[tuple[str, str], ...] = ()) -> LoadResult:
    """The uploaded file's items, parsed once per (bytes, format, column mapping, kind settings)."""
    return load_items(data, fmt=fmt, column_map=dict(mapping), kind=kind, kind_values=dict(kind_values))


def choose_upload() -> tuple[str, LoadResult] | None:
    """The uploaded prompt file's name (stem) and items; None until a usable file is uploaded."""
    st.caption("JSONL: one object per line with at least `question` (optional: id, answer, aliases, choices, kind, "
               "answer_prefix, tags, source, license, output). CSV: a header row; aliases/choices/tags separated "
               "by `|`. An `output` column holds existing model outputs: they are graded instead of generating. "
               "Files are only read as data (max 5 MB / 5,000 rows). " + ANSWERS_HELP)
    upload = st.file_uploader("Prompt file", type=["jsonl", "csv", "json"], key="study_upload")
    if upload is None:
        return None
    data = upload.getvalue()
    fmt = "csv" if upload.name.lower().endswith(".csv") else "jsonl"
    try:
        headers = file_headers(data, fmt)
    except DataError as exc:
        show_error(exc)
        return None
    mapping = column_mapping(headers) if headers else {}
    try:
        kind, kind_values = kind_settings()
        result = cached_upload(data, fmt, tuple(sorted(mapping.items())), kind, tuple(sorted(kind_values.items())))
    except ICError as exc:
        show_error(exc)
        return None
    return Path(upload.name).stem, result


def column_mapping(headers: list[str]) -> dict[str, str]:
    """Let the user say which column (CSV header, JSONL key) holds each field, pre-filled with the guess.

    The guess is :func:`ic_core.dataset_columns.suggest_column_map`, the one the CLI prints.
    """
    guess = suggest_column_map(headers)
    headers_key = hashlib.sha256("\x1f".join(headers).encode("utf-8")).hexdigest()[:10]
    with st.expander(f"Column mapping — guessed: {md_text(format_column_map(guess), 120)}",
                     expanded=not set(REQUIRED_FIELDS) <= set(guess)):
        st.caption(f"Which column holds each field? `question` is required. Guessed: {md_text(format_column_map(guess))}.")
        cols = st.columns(4)
        mapping = {}
        for i, name in enumerate(FIELDS):
            options = [NONE, *headers]
            default = options.index(guess[name]) if name in guess else 0
            # the key includes the headers, so another file starts from its own guess
            choice = cols[i % 4].selectbox(name + (" *" if name in REQUIRED_FIELDS else ""), options, index=default,
                                           key=f"study_map_{name}_{headers_key}")
            if choice != NONE:
                mapping[name] = choice
    return mapping


def kind_settings() -> tuple[str | None, dict[str, str]]:
    """The kind for rows that name none, and the user's own words of a kind column (``short=short_answer``).

    Raises:
        DataError: a kind value written without ``=`` or naming an unknown kind.

    """
    c1, c2 = st.columns(2)
    kind = c1.selectbox("Kind of rows without one", [AUTO_KIND, *TASK_KINDS], key="study_upload_kind",
                        help="Sets the task kind (how answers are graded) of every row whose kind cell is empty.")
    text = c2.text_input("Kind values (optional)", key="study_upload_kind_values", placeholder="short=short_answer, mc=multiple_choice",
                         help="What the words of your kind column mean. Common words (short, mc, math…) are "
                              "recognised without this.")
    words = [w for w in text.split(",") if w.strip()]
    return (None if kind == AUTO_KIND else kind), parse_kind_value_args(words)


def accepted_preview(result: LoadResult) -> pd.DataFrame:
    """One row per item: id, question, answer, the other accepted answers and the kind (shown before a run)."""
    return pd.DataFrame([{"id": it.id, "question": it.question, "answer": it.answer or "",
                          "also accepted": " | ".join(it.aliases), "kind": it.kind}
                         for it in result.items[:PREVIEW_ROWS]])


def validation_report(result: LoadResult) -> None:
    """How many rows were usable, the rejected ones in a table, and the loader's warnings."""
    n_bad = len(result.errors)
    msg = f"{len(result.items)} good item(s) of {result.n_rows} row(s)."
    if n_bad:
        st.warning(f"{msg} {n_bad} row(s) rejected — they are left out:")
        st.dataframe(pd.DataFrame([{"line": e.line, "problem": e.message} for e in result.errors]),
                     hide_index=True, height=min(300, 40 + 35 * n_bad))
    else:
        st.success(msg)
    for w in result.warnings:
        st.info(md_text(w))
    if result.kind_words:
        st.caption("Kind column read as: " + md_text(", ".join(f"{w} → {k}" for w, k in result.kind_words)))
    if result.items:
        st.caption(f"Accepted answers per row, as they will be graded (first {min(PREVIEW_ROWS, len(result.items))}):")
        st.dataframe(accepted_preview(result), hide_index=True, key="study_upload_preview",
                     height=min(300, 40 + 35 * len(result.items)))
    if any(it.output is not None for it in result.items):
        st.info("This file carries model outputs: they are graded as given (no generation) and the states are "
                "read from the prompts. Use the regime those outputs were produced with.")
