"""Study: run a prompt set in several regimes, save it, reopen it, and look at the states."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from ic_core.analysis import Analysis
from ic_core.datasets import (
    LoadResult,
    bundled_sets,
    load_bundled,
)
from ic_core.errors import DataError, ICError
from ic_core.generate import MAX_NEW_TOKENS_LIMIT
from ic_core.jobs import JobContext, JobFn, JobInfo, job_queue
from ic_core.models import LoadedModel
from ic_core.plots.study import (
    accuracy_figure,
    dim_eff_figure,
    lens_curves_figure,
    pca_colour_options,
    pca_colour_values,
    pca_figure,
    pca_hover,
    readout_entropy_distribution_figure,
    token_entropy_bar_figure,
)
from ic_core.probes.report import probe_column, probe_column_text
from ic_core.prompts import REGIMES, readout_label
from ic_core.runs.health import BrokenRun, broken_from_error, broken_runs
from ic_core.runs.lock import run_in_progress
from ic_core.runs.schema import verdict_label
from ic_core.runs.store import StudyRun, default_run_name, list_runs, run_mtime, run_path, runs_root, status_label
from ic_core.stats.geometry import DimEff
from ic_core.study.compare import (
    RegimeComparison,
    StudyPCA,
    default_pca_layer,
    dim_eff_by_regime,
    dim_eff_table,
    pca_of_layer,
    place_state,
    regime_comparison,
)
from ic_core.study.export import items_csv, metrics_json
from ic_core.study.report import build_report, summary_markdown
from ic_core.study.runner import COT_MIN_NEW_TOKENS, MAX_LIMIT, resume_run, run_study
from ui.common import (
    EXPLORE_RESULT_KEY,
    KEEP_PREFIX,
    cached_run,
    footer,
    gen_config,
    get_loaded,
    md_text,
    require_router,
    show_error,
)
from ui.jobs import live_job, submit
from ui.progress import duration_text, measured_speed
from ui.study_upload import choose_upload, validation_report

# Session keys of the new-study inputs (kept across page switches).
K = {name: KEEP_PREFIX + "study." + name for name in
     ("source", "bundled", "regimes", "limit", "wanted", "max_new", "use_prefix", "generate", "run_name")}
RUN_SELECT_KEY = "study_run_select"
JOB_KEY = "study.job_id"
REPORTED_KEY = "study.job_reported"
BROKEN_KEY = "study.broken_runs"
ITEM_PICK_KEY = "study_item_pick"
PREFIX_HELP = (
    "Many bundled items carry a forced answer prefix (e.g. 'The capital of France is'). In the direct regime the "
    "state is then read after that prefix — still before the model writes any content token — and its entropy "
    "is H_slot. Without it the state is read at the last prompt token, which on small chat models mostly "
    "measures boilerplate ('The', 'To'…). CoT and babble never use prefixes (CoT must reason first; babble must not answer)."
)


VERDICT_ICONS = {"correct": "✔", "wrong": "✘", "not graded": "—"}


# ------------------------------------------------------------ cached wrappers (keyed by path + mtime)


@st.cache_data(max_entries=3, show_spinner="Fitting the last-5-layers probe per regime (nested CV, ~15 s each)…")
def cached_probe_column(path: str, mtime: float) -> dict[str, dict[str, str]]:
    return probe_column_text(probe_column(cached_run(path, mtime)))


@st.cache_data(max_entries=3, show_spinner="Comparing regimes…")
def cached_comparison(path: str, mtime: float, with_probe: bool = False) -> RegimeComparison:
    extra = cached_probe_column(path, mtime) if with_probe else None
    return regime_comparison(cached_run(path, mtime), extra_columns=extra, dim_effs=cached_dim_eff(path, mtime))


@st.cache_data(max_entries=3, show_spinner="Effective dimensionality per layer…")
def cached_dim_eff(path: str, mtime: float) -> dict[str, DimEff]:
    return dim_eff_by_regime(cached_run(path, mtime))


@st.cache_data(max_entries=8, show_spinner=False)
def cached_pca(path: str, mtime: float, layer: int, regimes: tuple[str, ...]) -> StudyPCA:
    run = cached_run(path, mtime)
    rows = run.table.loc[run.table["regime"].isin(regimes), "row"].to_numpy()
    return pca_of_layer(run, layer, rows)


@st.cache_data(max_entries=2, show_spinner="Building the HTML report…")
def cached_report(path: str, mtime: float) -> str:
    return build_report(cached_run(path, mtime), comparison=cached_comparison(path, mtime),
                        dim_effs=cached_dim_eff(path, mtime))


# ------------------------------------------------------------ choosing the prompt set


def choose_bundled() -> tuple[str, LoadResult] | None:
    sets = bundled_sets()
    names = [s.name for s in sets]
    if st.session_state.get(K["bundled"]) not in names:
        st.session_state[K["bundled"]] = "capitals" if "capitals" in names else names[0]
    name = st.selectbox("Bundled set", names, key=K["bundled"],
                        format_func=lambda n: f"{n} ({next(s.n_items for s in sets if s.name == n)} items)")
    info = next(s for s in sets if s.name == name)
    st.caption(f"Licence: {md_text(info.license)} · kinds: {md_text(', '.join(info.kinds))}")
    return name, load_bundled(name)


# ------------------------------------------------------------ running


def study_task(generate: bool) -> str:
    """Name of the measured speed: rows with generation and rows that only read states differ ~20×."""
    return "study:generate" if generate else "study:read"


def time_estimate(n_rows: int, generate: bool) -> str:
    """The pre-run estimate from the speed measured on this machine, or how it will be measured."""
    per_row = measured_speed(study_task(generate))
    if per_row is None:
        return ("The time left is shown from the measured speed of the first rows (the first study on this "
                "server has no measurement yet).")
    return (f"At the speed measured on this machine ({per_row:.1f} s per row), {n_rows} rows take "
            f"{duration_text(per_row * n_rows)}.")


def study_job(loaded: LoadedModel, folder: str, **study_args: object) -> JobFn:
    """The background job of a new study: it names its folder at once, then runs the study row by row."""
    def run(ctx: JobContext) -> str:
        ctx.set_result_path(folder)
        return str(run_study(loaded, out_dir=folder, progress=ctx.progress, cancel=ctx.cancelled, **study_args).path)
    return run


def resume_job(loaded: LoadedModel, folder: str) -> JobFn:
    """The background job that finishes an interrupted or cancelled run."""
    def run(ctx: JobContext) -> str:
        return str(resume_run(loaded, folder, progress=ctx.progress, cancel=ctx.cancelled).path)
    return run


def start_study(loaded: LoadedModel, name: str, result: LoadResult, regimes: list[str], limit: int, use_prefix: bool,
                max_new: int, generate: bool) -> None:
    """Queue the study as a background job (it keeps running on other pages) and show its run."""
    config = dataclasses.replace(gen_config(), max_new_tokens=max_new)
    folder = str(run_path(st.session_state.get(K["run_name"]) or default_run_name(name, regimes, limit)))
    if job_queue().active_for(folder) is not None:
        st.warning(f"A job is already writing {md_text(Path(folder).name)}; its progress is shown below.")
        return
    fn = study_job(loaded, folder, items=result.items, regimes=regimes, limit=limit, gen_config=config,
                   use_item_prefix=use_prefix, generate=generate, seed=config.seed, dataset_name=name,
                   dataset_sha256=result.sha256)
    st.session_state[JOB_KEY] = submit("study", Path(folder).name, fn, result_path=folder,
                                       speed_task=study_task(generate))
    st.session_state[RUN_SELECT_KEY] = folder
    st.rerun()  # the live view sits above the form


def remember_limit() -> None:
    """Keep the limit the user typed, so it comes back when more rows become usable."""
    st.session_state[K["wanted"]] = st.session_state[K["limit"]]


def new_study_form(loaded: LoadedModel) -> None:
    source = st.radio("Prompt set", ["Bundled set", "Upload CSV / JSONL"], horizontal=True, key=K["source"])
    chosen = choose_bundled() if source == "Bundled set" else choose_upload()
    if chosen is None:
        return
    name, result = chosen
    if source != "Bundled set":
        validation_report(result)
    if not result.items:
        st.error("No usable items: fix the rows listed above.")
        return
    n_max = min(MAX_LIMIT, len(result.items))
    # the shown limit follows the good rows; the user's own choice (K["wanted"]) survives a dip in them
    st.session_state[K["limit"]] = max(1, min(int(st.session_state[K["wanted"]]), n_max))
    c1, c2, c3 = st.columns(3)
    regimes = c1.multiselect("Regimes", REGIMES, key=K["regimes"],
                             help="direct = answer only; cot = reason step by step, then '#### answer'; "
                                  "babble = talk about the topic without solving it (a control).")
    limit = c2.number_input("Items (limit)", 1, n_max, key=K["limit"], on_change=remember_limit,
                            help=f"The first N items of the set (at most {MAX_LIMIT} here; the CLI has no cap).")
    max_new = c3.number_input("Max new tokens", 1, MAX_NEW_TOKENS_LIMIT, key=K["max_new"],
                              help=f"Per answer; CoT always gets at least {COT_MIN_NEW_TOKENS}.")
    c4, c5 = st.columns(2)
    use_prefix = c4.checkbox("Use item answer prefixes (direct regime)", key=K["use_prefix"], help=PREFIX_HELP)
    generate = c5.checkbox("Generate answers", key=K["generate"],
                           help="Off: only read the states (and grade outputs the file carries) — much faster.")
    st.text_input("Run name (optional)", key=K["run_name"],
                  placeholder=default_run_name(name, regimes or ["direct"], int(limit)),
                  help="A folder name under the runs directory; unsafe characters are replaced. Re-using the "
                       "name of an unfinished run with the same settings resumes it.")
    typed = st.session_state.get(K["run_name"]) or ""
    if typed:
        try:
            st.caption(f"Folder: {md_text(run_path(typed))}")
        except DataError as exc:
            show_error(exc)
            return
    n_rows = int(limit) * max(1, len(regimes))
    st.caption(f"{n_rows} rows (items × regimes). {time_estimate(n_rows, generate)}")
    if st.button("Run study", type="primary", key="study_run_btn", disabled=not regimes):
        start_study(loaded, name, result, list(regimes), int(limit), use_prefix, int(max_new), generate)


# ------------------------------------------------------------ showing a run


def analysis_from_explore() -> Analysis | None:
    analysis = st.session_state.get("last_analysis")
    if analysis is None:
        result = st.session_state.get(EXPLORE_RESULT_KEY)
        analysis = result.get("analysis") if isinstance(result, dict) else None
    return analysis


def show_header(run: StudyRun, loaded: LoadedModel | None) -> None:
    st.subheader(f"Run: {md_text(run.name)}")
    live = run_in_progress(run.path)
    c = st.columns([1, 1, 3])
    c[0].metric("Rows", f"{len(run.table)} / {run.n_planned}")
    c[1].metric("Status", status_label(run.status, live))
    c[2].markdown(safe_summary(run))
    if live:
        st.info("Another process is writing this run right now; reopen it later to see more rows.")
    elif run.status != "complete" and loaded is not None:
        if st.button("Resume this run", key="study_resume_btn",
                     help="Finish the remaining rows with the run's own items and settings (in the background)."):
            st.session_state[JOB_KEY] = submit("study", run.name, resume_job(loaded, str(run.path)),
                                               result_path=str(run.path),
                                               speed_task=study_task(bool(run.manifest.get("generate", True))))
            st.rerun()


def live_rows(path: str) -> Callable[[JobInfo], None]:
    """The live view's body: the rows of the run folder finished so far (read again as it grows)."""
    def body(job: JobInfo) -> None:
        if not Path(path, "manifest.json").is_file():
            st.caption("Preparing the run folder…")
            return
        try:
            run = cached_run(path, run_mtime(path))
        except ICError as exc:
            show_error(exc)
            return
        st.caption(f"{len(run.table)} of {run.n_planned} rows saved so far. Every row is saved as soon as it is "
                   "done: leave this page and come back, or press Stop, and no finished row is lost. The "
                   "figures appear when the run is complete.")
        if len(run.table):  # the columns that fit a laptop screen; the full table comes with the finished run
            st.dataframe(items_view(run)[LIVE_COLUMNS], hide_index=True, key=f"study_live_rows:{job.job_id}",
                         column_config=ITEM_COLUMNS | LIVE_WIDTHS)
    return body


def show_live(path: str, job: JobInfo) -> None:
    """A run that a background job is writing: its bar, Stop, and the rows as they finish."""
    st.subheader(f"Run: {md_text(Path(path).name)}")
    live_job(job.job_id, live_rows(path), key="study_stop")


def safe_summary(run: StudyRun) -> str:
    """:func:`summary_markdown` with the manifest's stored strings (model label, set name) escaped."""
    m = run.manifest
    dataset = m.get("dataset") if isinstance(m.get("dataset"), dict) else {}
    manifest = {**m, "model_label": md_text(m.get("model_label", "?")),
                "dataset": {**dataset, "name": md_text(dataset.get("name", "?"))}}
    return summary_markdown(dataclasses.replace(run, manifest=manifest))


ITEM_COLUMNS = {"readout_entropy_bits": st.column_config.NumberColumn("H_int / H_slot (bits)", format="%.2f"),
                "item_id": st.column_config.TextColumn("item id", width="medium"),
                "expected": st.column_config.TextColumn("expected answer"),
                "aliases": st.column_config.TextColumn("also accepted")}

LIVE_COLUMNS = ["item_id", "regime", "question", "expected", "extracted_answer", "correct", "readout_entropy_bits"]
LIVE_WIDTHS = {"question": st.column_config.TextColumn("question", width="large"),
               "extracted_answer": st.column_config.TextColumn("answer", width="small"),
               "correct": st.column_config.TextColumn("correct", width="small")}


def items_view(run: StudyRun) -> pd.DataFrame:
    """The items table: each row's question, expected and other accepted answers, output, verdict and read-out."""
    view = run.table[["item_id", "regime", "question", "expected", "aliases", "output_text", "extracted_answer",
                      "correct", "readout_entropy_bits", "signal"]].copy()
    view["aliases"] = view["aliases"].map(lambda a: " | ".join(a) if isinstance(a, list | tuple) else "")
    view["correct"] = view["correct"].map(lambda v: VERDICT_ICONS[verdict_label(v)])
    return view


def show_items(run: StudyRun) -> None:
    t = run.table
    view = items_view(run)
    # Widget keys are per run: another run's row index (or label) must never reach this one.
    pick_key, df_key, last_key = (f"{name}:{run.path}" for name in (ITEM_PICK_KEY, "study_items_df", "study.last_df_pick"))
    event = st.dataframe(view, hide_index=True, on_select="rerun", selection_mode="single-row", key=df_key,
                         column_config=ITEM_COLUMNS)
    labels = [f"{r.item_id} · {r.regime}" for r in t.itertuples()]
    rows = getattr(getattr(event, "selection", None), "rows", None) or []
    picked = int(rows[0]) if rows else None
    if picked != st.session_state.get(last_key):  # a new click in the table drives the selectbox
        st.session_state[last_key] = picked
        if picked is not None:
            st.session_state[pick_key] = picked
    current = st.session_state.get(pick_key, 0)
    if not isinstance(current, int) or not 0 <= current < len(labels):
        st.session_state[pick_key] = 0
    choice = st.selectbox("Show one row (or click a row in the table)", range(len(labels)),
                          format_func=lambda i: labels[i], key=pick_key)
    show_row(t.iloc[int(choice)])


def show_row(r: pd.Series) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Question** ({md_text(r['kind'])}, expected: “{md_text(r['expected'])}”)")
        st.text(r["user_text"] or r["question"])
        if r["answer_prefix"]:
            st.caption(f"Read after the forced answer prefix “{md_text(r['answer_prefix'])}” ({md_text(r['signal'])}).")
        st.markdown(f"**{md_text(r['signal'])}** = {r['readout_entropy_bits']:.2f} bits · top-1 probability "
                    f"{r['top1_prob']:.2f} · read-out token “{md_text(r['readout_token'])}”")
        if isinstance(r["top_tokens"], list):
            st.caption("Most likely next tokens: " + ", ".join(f"“{md_text(t)}” {p:.2f}" for t, p in r["top_tokens"]))
    with right:
        st.markdown("**Output**" + (" (from the file)" if r["output_source"] == "dataset" else ""))
        st.text(r["output_text"] if r["output_text"] is not None else "(not generated)")
        st.markdown(f"Extracted: “{md_text(r['extracted_answer'])}” ({md_text(r['grade_rule'])}) → "
                    f"**{verdict_label(r['correct'])}**")
        if isinstance(r["generated_tokens"], list) and r["generated_tokens"]:
            st.plotly_chart(token_entropy_bar_figure(r["generated_tokens"], r["token_entropies_bits"]),
                            key="study_tok_fig")


def show_distributions(run: StudyRun, comparison: RegimeComparison) -> None:
    st.plotly_chart(accuracy_figure(comparison.per_regime), key="study_acc_fig")
    signal = readout_label(run.table["signal"])
    c1, c2 = st.columns(2)
    kind = c1.radio("Shape", ["box", "violin"], horizontal=True, key="study_dist_kind")
    split = c2.checkbox("Split by correctness", value=True, key="study_dist_split")
    st.plotly_chart(readout_entropy_distribution_figure(run.table["regime"].tolist(), run.table["readout_entropy_bits"].to_numpy(),
                                              run.table["correct"].tolist() if split else None, kind=kind, signal=signal),
                    key="study_hint_fig")
    st.plotly_chart(lens_curves_figure(run.lens_entropy_bits[run.table["row"].to_numpy()], run.table["regime"].tolist()),
                    key="study_lens_fig")


def show_dim_eff(run: StudyRun, dims: dict[str, DimEff]) -> None:
    if not dims:
        st.info("n too small: dim_eff needs at least 2 rows per regime.")
        return
    caps = ", ".join(f"{r}: {d.rank_cap}" for r, d in dims.items())
    st.caption(f"With N items the states span at most N − 1 dimensions, so no estimate can exceed the rank cap "
               f"({caps}); with few items dim_eff mostly reflects N. Layers where every item has the same state "
               "(layer 0 under a chat template: the same last token) are marked grey, not plotted.")
    st.plotly_chart(dim_eff_figure(dims), key="study_dim_fig")
    st.dataframe(dim_eff_table(dims), hide_index=True)


def show_pca(run: StudyRun, path: str, mtime: float) -> None:
    c1, c2, c3 = st.columns(3)
    layer = c1.slider("Layer", 0, run.n_layers, default_pca_layer(run.n_layers), key="study_pca_layer")
    colour = c2.radio("Colour by", pca_colour_options(readout_label(run.table["signal"])), horizontal=True,
                      key="study_pca_colour")
    regimes = c3.multiselect("Regimes", run.regimes, default=list(run.regimes), key="study_pca_regimes")
    if not regimes:
        st.info("Choose at least one regime.")
        return
    try:
        p = cached_pca(path, mtime, int(layer), tuple(regimes))
    except DataError as exc:
        st.info(str(exc))
        return
    sub = run.table.set_index("row").loc[p.rows]
    placement = None
    analysis = analysis_from_explore()
    if analysis is not None:
        try:  # the same PCA as p: the placed point is on the plotted axes
            placement = place_state(run, analysis.state.hidden, int(layer), p.rows)
        except DataError as exc:
            st.caption(f"The prompt from Explore cannot be placed: {exc}")
    st.plotly_chart(pca_figure(p.scores, pca_colour_values(sub, colour), colour, p.explained_ratio, hover=pca_hover(sub),
                               layer=int(layer), point=None if placement is None else placement.point,
                               point_label="prompt from Explore"), key="study_pca_fig")
    if placement is not None:
        where = "outside" if placement.outside else "inside"
        nearest = run.table.iloc[placement.nearest_row]
        st.markdown(
            f"**The prompt from Explore lies {where} what this study covered** at layer {layer}: its distance to "
            f"the nearest study item ({md_text(nearest['item_id'])} · {md_text(nearest['regime'])}) exceeds the nearest-neighbour "
            f"distance of {placement.nn_percentile:.0f} % of the study's own items (outside means more than 95 %; "
            f"Mahalanobis-like distance {placement.mahalanobis:.1f} over {placement.n_components} PCA components). "
            + ("Study results may not describe it." if placement.outside else ""))
        st.caption(f"Explore's prompt: “{md_text(analysis.rendered.user_text, 100)}” ({analysis.rendered.regime}, "
                   f"{analysis.signal_name}). Compare it with items read the same way (regime, answer prefix).")


def show_exports(run: StudyRun, path: str, mtime: float, comparison: RegimeComparison) -> None:
    import json

    c1, c2, c3 = st.columns(3)
    c1.download_button("Per-item CSV", items_csv(run), f"{run.name}-items.csv", "text/csv", key="study_dl_csv")
    c2.download_button("Metrics JSON", json.dumps(metrics_json(run, comparison), indent=2, ensure_ascii=False),
                       f"{run.name}-metrics.json", "application/json", key="study_dl_json")
    if c3.button("Prepare HTML report", key="study_report_btn") or st.session_state.get("study.report_for") == path:
        st.session_state["study.report_for"] = path
        c3.download_button("Download HTML report", cached_report(path, mtime), f"{run.name}-report.html", "text/html",
                           key="study_dl_html")


def open_failures() -> dict[str, tuple[float, BrokenRun]]:
    """Listed runs that failed to open in this session: path → (mtime then, broken entry)."""
    return st.session_state.setdefault(BROKEN_KEY, {})


def broken_entries(listed: list[str]) -> dict[str, BrokenRun]:
    """Broken run folders by path: unreadable manifests, and listed runs that failed to open (same mtime)."""
    out = {str(b.path): b for b in broken_runs()}
    for path, (mtime, entry) in open_failures().items():
        if path in listed and run_mtime(path) == mtime:
            out[path] = entry
    return out


def show_run(path: str, loaded: LoadedModel | None) -> None:
    job = job_queue().active_for(path)
    if job is not None:  # another session's (or an earlier) job is writing it
        show_live(path, job)
        return
    mtime = run_mtime(path)
    try:
        run = cached_run(path, mtime)
    except ICError as exc:
        entry = broken_from_error(path, exc)
        st.error(f"**This run folder cannot be opened.** {md_text(entry.reason)} The other runs still work.")
        if path not in open_failures():
            open_failures()[path] = (mtime, entry)
            st.rerun()  # the run list marks it as broken
        return
    show_header(run, loaded)
    if len(run.table) == 0:
        st.info("No rows finished yet.")
        return
    probe_flag = f"study_probe_column:{path}"
    comparison = cached_comparison(path, mtime, bool(st.session_state.get(probe_flag)))
    st.dataframe(comparison.paper_table(), key="study_paper_table")
    if not st.session_state.get(probe_flag) and st.button(
        "Add the probe AUROC column", key="study_probe_col_btn",
        help="Recoverability per regime: a last-5-layers probe, nested 5-fold CV, bootstrap 95 % CI "
             "(about 15 s per regime on a laptop CPU). Regimes with too few graded items say so.",
    ):
        st.session_state[probe_flag] = True
        st.rerun()
    if len(comparison.pairs):
        st.caption("Paired Wilcoxon signed-rank test of H_int between regimes (items present in both):")
        st.dataframe(comparison.pairs, hide_index=True, key="study_pairs_table")
    tabs = st.tabs(["Items", "Accuracy & entropy", "dim_eff", "PCA of I", "Export"])
    with tabs[0]:
        show_items(run)
    with tabs[1]:
        show_distributions(run, comparison)
    with tabs[2]:
        show_dim_eff(run, cached_dim_eff(path, mtime))
    with tabs[3]:
        show_pca(run, path, mtime)
    with tabs[4]:
        show_exports(run, path, mtime, comparison)


# ------------------------------------------------------------ page


def init_state() -> None:
    defaults = {"source": "Bundled set", "regimes": ["direct"], "limit": 20, "wanted": 20,
                "max_new": int(gen_config().max_new_tokens), "use_prefix": True, "generate": True, "run_name": ""}
    for name, value in defaults.items():
        st.session_state.setdefault(K[name], value)


def pick_up_job() -> str | None:
    """Show this session's study job again: live while it runs, else how it ended (once, with its run selected).

    Returns:
        The run folder the job is writing while it runs (the saved-run view leaves it to the live view).

    """
    job = job_queue().info(st.session_state.get(JOB_KEY, ""))
    if job is None or job.result_path is None:
        return None
    if not job.finished:
        show_live(job.result_path, job)
    first_report = job.finished and st.session_state.get(REPORTED_KEY) != job.job_id
    if not job.finished or first_report:
        st.session_state[RUN_SELECT_KEY] = job.result_path
        st.session_state[REPORTED_KEY] = job.job_id if first_report else None
    if job.state == "complete" and first_report:
        st.success(f"Saved **{md_text(Path(job.result_path).name)}** ({job.done} rows) under {md_text(runs_root())}.")
    elif job.state == "failed":
        st.error(f"**The study stopped with an error.** {md_text(job.error)}")
    elif job.state == "cancelled" and not Path(job.result_path, "manifest.json").is_file():
        st.info(f"Stopped before {md_text(Path(job.result_path).name)} was started; nothing was saved.")
    elif job.state == "cancelled":
        st.info(f"Stopped: {job.done} of {job.total} rows are saved in {md_text(Path(job.result_path).name)}; "
                "**Resume this run** below finishes it.")
    return None if job.finished else job.result_path


require_router(__file__)
init_state()
st.title("Study a prompt set")
st.caption("Run many questions in one or more regimes, keep each one's pre-generation state I, and compare "
           "accuracy, H_int, effective dimensionality and the geometry of I. Runs are saved and can be reopened.")
loaded = get_loaded()
live_path = pick_up_job()
runs = list_runs()
with st.expander("New study", expanded=not runs):
    if loaded is None:
        st.info("Load a model in the sidebar to run a study; saved runs can still be opened below.")
    else:
        try:
            new_study_form(loaded)
        except ICError as exc:
            show_error(exc)
runs = list_runs()
broken = broken_entries([str(r.path) for r in runs])
if not runs and not broken:
    st.info(f"No saved runs in {md_text(runs_root())} yet (set IC_RUNS_DIR to use another folder).")
else:
    writing = {str(r.path) for r in runs if job_queue().active_for(str(r.path)) is not None}
    labels = {str(r.path): r.picker_label(str(r.path) in writing) for r in runs} | {p: b.label for p, b in broken.items()}
    paths = [p for p in labels if p not in broken] + [p for p in labels if p in broken]  # good runs first
    if st.session_state.get(RUN_SELECT_KEY) not in paths:
        st.session_state.pop(RUN_SELECT_KEY, None)
    choice = st.selectbox("Saved run", paths, format_func=labels.__getitem__, key=RUN_SELECT_KEY)
    if broken:
        st.caption(f"{len(broken)} run folder(s) cannot be opened; they are listed last, marked ⚠, with the reason.")
    if choice == live_path:
        st.caption("This run is being written by the background job shown above.")
    elif choice in broken:
        st.error(f"**This run folder cannot be opened.** {md_text(broken[choice].reason)} The other runs still work.")
    else:
        try:
            show_run(choice, loaded)
        except ICError as exc:
            show_error(exc)
footer(loaded)
