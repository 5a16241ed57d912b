"""Recoverability: can a linear probe on the pre-collapse state tell which answers will be right?"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from ic_core.errors import ICError
from ic_core.jobs import JobContext, JobFn, job_queue
from ic_core.narrative import reading
from ic_core.plots.calibration import reliability_figure
from ic_core.plots.probes import auroc_by_layer_figure, baselines_figure, roc_figure
from ic_core.probes.cv import C_GRID, N_INNER, N_SHUFFLES_PER_LAYER
from ic_core.probes.report import RecoverabilityReport, recoverability
from ic_core.probes.saved import default_probe_path, fit_saved_probe_for_run
from ic_core.probes.transfer import SIGNAL_NAMES, TransferMatrix, task_rows, transfer_matrix
from ic_core.runs.store import RunInfo, StudyRun, list_runs, runs_root
from ic_core.stats.auroc import N_BOOT, N_OUTER, N_SHUFFLES, AurocEstimate
from ic_core.stats.strata import StrataAuroc
from ic_core.study.export import safe_csv
from ui.common import cached_run, json_download, md_text, require_router, show_error
from ui.jobs import live_job, submit
from ui.probe_picker import saved_probe_picker
from ui.progress import duration_text, measured_speed

PROBE_KEY = "probe"  # where Explore and the Governance gate look for a loaded probe
RESULT_KEY = "recov.request"
TRANSFER_KEY = "recov.transfer_request"
POOLED = "pooled (all regimes)"
MAKE_RUN = ("python -m ic_core study --data capitals --regimes direct --limit 150")
JOBS_KEY = "recov.jobs"  # this session's computations: request → job id
MAX_RESULTS = 4


def recov_job(run: StudyRun, regime: str | None, pooled: bool, n_boot: int, n_shuffles: int, n_layer_shuffles: int,
              seed: int) -> JobFn:
    """The background job: nested-CV probes on every layer, the last-5 probe, baselines and their statistics.

    ``run`` is the page's shared, read-only loaded run (:func:`ui.common.cached_run`).
    """
    def compute(ctx: JobContext) -> RecoverabilityReport:
        def progress(done: int, total: int, label: str) -> None:
            ctx.check_cancelled()  # Stop ends the job between layers
            ctx.progress(done, total, message=label)

        return recoverability(run, regime=regime, pooled=pooled, n_boot=n_boot, n_shuffles=n_shuffles,
                              n_shuffles_per_layer=n_layer_shuffles, seed=seed, progress=progress)
    return compute


@st.cache_resource(max_entries=1)
def finished_results() -> dict[tuple, RecoverabilityReport | TransferMatrix]:
    """Finished computations by request (run path, mtime, selection, settings), shared by the sessions."""
    return {}


def remember_result(request: tuple, result: RecoverabilityReport | TransferMatrix) -> None:
    store = finished_results()
    store[request] = result
    while len(store) > MAX_RESULTS:
        store.pop(next(iter(store)))


def baselines_table(results: list[AurocEstimate]) -> pd.DataFrame:
    rows = []
    for r in results:
        rows.append({
            "signal": r.name,
            "AUROC [95 % CI]": r.ci_text(),
            "mean of fold AUROCs": "—" if r.auroc_fold_mean is None else f"{r.auroc_fold_mean:.2f}",
            "shuffled labels (mean, range)": "—" if r.shuffle_mean is None else
            f"{r.shuffle_mean:.2f} ({r.shuffle_min:.2f}–{r.shuffle_max:.2f})",
            "right / wrong": f"{r.n_pos} / {r.n_neg}",
            "what it computes": r.description,
            "note": r.note,
        })
    return pd.DataFrame(rows)


def selective_table(report: RecoverabilityReport) -> pd.DataFrame:
    """AURC / E-AURC / AUGRC [95 % CI] beside each AUROC of the report; ECE and Brier for the probe's P(correct)."""
    cal = report.calibration
    rows = []
    for est in [report.last_layers, *report.signals, *report.baselines]:
        summary = report.selective_of(est.name)
        if summary is None:
            continue
        is_probe = cal is not None and est.name == report.last_layers.name
        rows.append({
            "signal": est.name,
            "AUROC [95 % CI]": est.ci_text(),
            "AURC [95 % CI]": summary.aurc.ci_text(),
            "E-AURC [95 % CI]": summary.eaurc.ci_text(),
            "AUGRC [95 % CI]": summary.augrc.ci_text(),
            "calibration of P(correct)": f"{cal.ece_text()} · {cal.brier_text()}" if is_probe else "—",
            "items / errors": f"{summary.aurc.n} / {summary.aurc.n_errors}",
        })
    return pd.DataFrame(rows)


def show_selective(report: RecoverabilityReport) -> None:
    st.subheader("Selective prediction beside each AUROC")
    table = selective_table(report)
    if table.empty:
        st.info("No signal has scores to judge.")
        return
    st.dataframe(table, hide_index=True, key="recov_selective")
    st.caption("If the answers were accepted from the most to the least confident by each signal: AURC = area "
               "under the risk–coverage curve (mean error among accepted answers over all coverages), E-AURC = "
               "AURC minus the best any ranking could do with these errors, AUGRC = area under the generalised "
               "risk (errors accepted / all items). Lower is better; percentile bootstrap 95 % CIs on the same "
               "items as the AUROC. Calibration only for the probe's out-of-fold P(correct).")
    cal = report.calibration
    if cal is not None and cal.bins is not None:
        st.plotly_chart(reliability_figure(cal.bins, title=f"Reliability of the {cal.name} probe's P(correct)"),
                        key="recov_reliability")
    elif cal is not None:
        st.caption(f"Probe calibration: {cal.reason}.")


def strata_table(results: tuple[StrataAuroc, ...]) -> pd.DataFrame:
    return pd.DataFrame([{
        "signal": r.signal, "shortcut (strata)": r.shortcut,
        "pooled AUROC": "—" if r.auroc_pooled is None else f"{r.auroc_pooled:.2f}",
        "within-strata AUROC [95 % CI]": r.ci_text(), "strata with both classes": f"{r.n_strata} of {r.n_strata_total}",
        "right / wrong": f"{r.n_pos} / {r.n_neg}",
    } for r in results])


def transfer_job(runs: tuple[StudyRun, ...], n_boot: int, n_shuffles: int, seed: int) -> JobFn:
    """The background job of the transfer matrix (one step per ordered pair of runs); ``runs`` are shared, read-only."""
    def compute(ctx: JobContext) -> TransferMatrix:
        def progress(done: int, total: int, label: str) -> None:
            ctx.check_cancelled()
            ctx.progress(done, total, message=label)

        tasks = [task_rows(run) for run in runs]
        return transfer_matrix(tasks, n_boot=n_boot, n_shuffles=n_shuffles, seed=seed, progress=progress)
    return compute


def matrix_frame(matrix: TransferMatrix, signal: str) -> pd.DataFrame:
    """Rows = trained on, columns = scored on; each cell "AUROC [CI] · right/wrong" or the reason."""
    k = SIGNAL_NAMES.index(signal)
    cells = {}
    for (i, j), ests in matrix.cells.items():
        e = ests[k]
        cells.setdefault(matrix.labels[i], {})[matrix.labels[j]] = f"{e.ci_text()} · {e.n_pos}/{e.n_neg}"
    return pd.DataFrame(cells).T.loc[list(matrix.labels), list(matrix.labels)]


def transfer_tab(runs: list[RunInfo]) -> None:
    st.write("Fit each probe on one run (C chosen in that run's inner folds) and score every other run; the "
             "diagonal is nested cross-validation within the task. Runs must not share questions.")
    by_path = {str(r.path): r for r in runs}
    picked = st.multiselect("Runs (two or more)", list(by_path), key="recov_transfer_runs",
                            format_func=lambda p: f"{by_path[p].name} · {by_path[p].dataset_name}")
    a, b, c = st.columns(3)
    n_boot = a.number_input("bootstrap resamples", 100, 5000, N_BOOT, step=100, key="recov_transfer_boot")
    n_shuffles = b.number_input("label permutations", 0, 50, N_SHUFFLES, key="recov_transfer_shuffles")
    seed = c.number_input("seed", 0, 10_000, 0, key="recov_transfer_seed")
    if len(picked) < 2:
        st.info("Pick two or more runs (each is read in its direct regime, or its first one).")
        return
    request = ("transfer", tuple(picked), tuple(by_path[p].mtime for p in picked), int(n_boot), int(n_shuffles),
               int(seed))
    jobs: dict[tuple, str] = st.session_state.setdefault(JOBS_KEY, {})
    if st.button("Compute transfer", type="primary", key="recov_transfer_btn"):
        st.session_state[TRANSFER_KEY] = request
        if request not in finished_results() and job_queue().info(jobs.get(request, "")) is None:
            runs_read = tuple(cached_run(p, by_path[p].mtime) for p in picked)
            jobs[request] = submit("recoverability", f"transfer · {len(picked)} runs",
                                   transfer_job(runs_read, int(n_boot), int(n_shuffles), int(seed)), unit="cells")
    if st.session_state.get(TRANSFER_KEY) != request:
        st.info("Press **Compute transfer** (in the background; results are kept per runs and settings).")
        return
    matrix = job_result(request, jobs, key="recov_transfer_stop")
    if matrix is None:
        return
    for signal in SIGNAL_NAMES:
        st.subheader(signal)
        st.dataframe(matrix_frame(matrix, signal), key=f"recov_transfer_{SIGNAL_NAMES.index(signal)}")
    st.caption("Cells: AUROC [bootstrap 95 % CI over the scored run's items] · right/wrong answers of the scored "
               "run. Off the diagonal the shuffle control permutes the training run's labels and refits; "
               "'too few to judge' means fewer than 10 right or wrong answers.")
    records = pd.DataFrame(matrix.records())
    st.download_button("Download the matrix (CSV)", safe_csv(records), "transfer_matrix.csv", "text/csv",
                       key="recov_transfer_csv")
    json_download("Download the matrix (JSON)", matrix.to_json(), "transfer_matrix.json", key="recov_transfer_json")


def show_report(report: RecoverabilityReport, info: RunInfo) -> None:
    last = report.last_layers
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("graded answers", f"{report.n}", help=f"{report.n_ungraded} ungraded rows left out")
    c2.metric("accuracy", "—" if report.accuracy is None else f"{report.accuracy:.0%}")
    c3.metric("probe AUROC", last.reason if last.auroc_pooled is None else f"{last.auroc_pooled:.2f}",
              help=f"Pooled out-of-fold AUROC of the nested-CV probe on the {last.name}.")
    c4.metric("95 % CI", "—" if last.ci_low is None else f"{last.ci_low:.2f}–{last.ci_high:.2f}",
              help="Percentile bootstrap over items.")
    c5.metric("shuffled labels", "—" if last.shuffle_mean is None else f"{last.shuffle_mean:.2f}",
              help="Mean pooled AUROC of the same protocol on permuted labels: ≈ 0.5 when nothing leaks.")
    st.subheader("What this says")
    st.markdown("\n".join(f"- {line}" for line in reading(report)))

    st.subheader("Which layer knows?")
    st.plotly_chart(auroc_by_layer_figure(report.by_layer, last_layers=last), key="recov_by_layer")
    st.caption(f"Band: bootstrap 95 % CI ({report.settings['n_bootstrap']} resamples). Grey band: the same nested "
               f"protocol on shuffled labels ({report.settings['shuffles_per_layer']} permutations per layer). "
               "The best layer is picked after looking at every layer, so its AUROC is optimistic; the "
               f"{last.name} probe is the fixed, pre-registered choice.")

    st.subheader("ROC curves")
    ent = report.baseline("−")
    picks = [last] + [b for b in (ent, report.baseline("prompt length"), report.baseline("question text only"))
                      if b is not None]
    st.plotly_chart(roc_figure(picks), key="recov_roc")

    st.subheader("Baselines on the same items")
    everything = [last, *report.signals, *report.baselines]
    st.plotly_chart(baselines_figure(everything), key="recov_baselines")
    st.dataframe(baselines_table(everything), hide_index=True, key="recov_table")
    show_selective(report)
    st.caption("Probes: StandardScaler + L2 logistic regression, stratified "
               f"{report.settings['outer_folds']}-fold outer CV, C ∈ {report.settings['C_grid']} chosen by a "
               f"{report.settings['inner_folds']}-fold inner CV on each training fold only; each fold's scores "
               "put on its training fold's scale before pooling. Single scores are not fitted (prompt length's "
               "direction is chosen on the training folds).")
    if report.strata:
        st.subheader("Within shortcut strata")
        st.dataframe(strata_table(report.strata), hide_index=True, key="recov_strata")
        st.caption("Within-strata AUROC: each stratum's AUROC averaged with weights right × wrong, i.e. only right "
                   "and wrong answers of the same tag/kind/source are compared. Near 0.5 means the signal knows "
                   "nothing inside a stratum beyond the shortcut.")
    save_probe(report, info)
    json_download("Download the results (JSON)", report.to_json(), f"recoverability_{info.name}_{report.selection}.json",
                  key="recov_json")


def save_probe(report: RecoverabilityReport, info: RunInfo) -> None:
    st.subheader("Save the probe")
    st.write(f"Fits the **{report.last_layers.name}** probe (a fixed choice, not the best layer) on all "
             f"{report.n} graded answers, with C chosen by cross-validation, and saves it as JSON + npz in the "
             "run's `probes/` folder. Explore and the Governance gate can then score new prompts with it.")
    if not report.last_layers.ok:
        st.info(f"No probe to save: {report.last_layers.reason}.")
        return
    if st.button("Save probe", key="recov_save"):
        try:
            run = cached_run(str(info.path), info.mtime)
            pooled = report.selection == "pooled"
            probe = fit_saved_probe_for_run(run, regime=None if pooled else report.selection, pooled=pooled,
                                            k=len(report.last_layer_indices), cv_result=report.last_layers)
            path = probe.save(default_probe_path(run, report.selection, len(report.last_layer_indices)))
        except ICError as exc:
            show_error(exc)
            return
        st.session_state[PROBE_KEY] = probe
        st.success(f"Saved probe {probe.probe_id} (layers {probe.layers[0]}–{probe.layers[-1]}, C={probe.C:g}) "
                   f"to `{path}`; it is now the probe Explore and the gate use.")
    picked = saved_probe_picker("recov")
    if picked is not None:
        st.success(f"Loaded probe {md_text(picked.probe_id)}; it is now the probe Explore and the gate use.")
    current = st.session_state.get(PROBE_KEY)
    if current is not None:
        st.caption(f"Probe in use: {getattr(current, 'probe_id', '?')} from {getattr(current, 'run_path', '?')}.")


require_router(__file__)
st.title("Recoverability")
st.caption("Can a linear probe on the state before the answer (I) tell which of the model's own answers will be "
           "correct? Probe AUROC by layer with bootstrap CIs and a label-shuffle control, beside simple "
           "baselines and shortcut checks on the same items.")
runs = [r for r in list_runs() if r.n_rows_done > 0]
if not runs:
    st.info(f"No saved study runs in `{runs_root()}` yet (set IC_RUNS_DIR to use another folder). Make one on the "
            f"**Study** page, or from a terminal:\n\n```\n{MAKE_RUN}\n```")
    st.stop()



def single_run_tab(runs: list[RunInfo]) -> None:
    by_path = {str(r.path): r for r in runs}
    left, right = st.columns([4, 1])
    choice = left.selectbox("Saved run", list(by_path), key="recov_run",
                            format_func=lambda p: by_path[p].picker_label(job_queue().active_for(p) is not None))
    info = by_path[choice]
    options = list(info.regimes) + ([POOLED] if len(info.regimes) > 1 else [])
    selection = right.selectbox("Regime", options, key="recov_regime",
                                help="Pooling keeps each item's rows (one per regime) in the same fold.")
    with st.expander("Settings"):
        a, b, c, d = st.columns(4)
        n_boot = a.number_input("bootstrap resamples", 100, 5000, N_BOOT, step=100, key="recov_boot")
        n_shuffles = b.number_input("label permutations (last-5, baselines)", 0, 50, N_SHUFFLES, key="recov_shuffles")
        n_layer_shuffles = c.number_input("label permutations per layer", 0, 20, N_SHUFFLES_PER_LAYER,
                                          key="recov_layer_shuffles")
        seed = d.number_input("seed", 0, 10_000, 0, key="recov_seed")
        per_step = measured_speed("recoverability:step")
        steps = cached_run(str(info.path), info.mtime).n_layers + 3
        when = (f"at the speed last measured on this server ({per_step:.1f} s per step) the {steps} steps take "
                f"{duration_text(per_step * steps)}" if per_step else
                "the progress bar shows the time left from the speed of the first layers")
        st.caption(f"C grid {list(C_GRID)}, {N_OUTER} outer folds, {N_INNER} inner folds. One step per layer, then "
                   f"the last-5 probe, the baselines and the selective statistics: {when} (most of it is the "
                   "per-layer shuffle control; the speed depends on the number of answers and settings).")

    request = (str(info.path), info.mtime, selection, int(n_boot), int(n_shuffles), int(n_layer_shuffles), int(seed))
    jobs: dict[tuple, str] = st.session_state.setdefault(JOBS_KEY, {})
    if st.button("Compute", type="primary", key="recov_compute"):
        st.session_state[RESULT_KEY] = request
        if request not in finished_results() and job_queue().info(jobs.get(request, "")) is None:
            pooled = selection == POOLED
            jobs[request] = submit("recoverability", f"{info.name} · {selection}",
                                   recov_job(cached_run(str(info.path), info.mtime), None if pooled else selection, pooled, int(n_boot),
                                             int(n_shuffles), int(n_layer_shuffles), int(seed)),
                                   unit="steps", speed_task="recoverability:step")
    if st.session_state.get(RESULT_KEY) != request:
        st.info("Press **Compute** to fit the probes (in the background; results are kept per run, regime and "
                "settings).")
        return
    result = job_result(request, jobs)
    if result is None:
        return
    report = result
    st.caption(f"Computed in {report.elapsed_s:.1f} s on {report.n} graded answers ({report.selection}).")
    show_report(report, info)


def job_result(request: tuple, jobs: dict[tuple, str], key: str = "recov_stop") -> Any:
    """The request's result (kept, or taken from its finished job); None after showing the job's state."""
    result = finished_results().get(request)
    job = job_queue().info(jobs.get(request, ""))
    if result is None and job is not None and job.state == "complete":
        result = job_queue().result(job.job_id)
        remember_result(request, result)
    if result is None:
        show_job_state(job, request, jobs, key=key)
    return result


def show_job_state(job, request: tuple, jobs: dict[tuple, str], key: str = "recov_stop") -> None:
    """The computation's live bar while it runs, or how it ended."""
    if job is None:
        st.info("Press **Compute** to fit the probes.")
    elif not job.finished:
        live_job(job.job_id, key=key)
        st.caption("Nested cross-validation on every layer, the last-5 probe, the baselines with their shuffle "
                   "controls, then AURC and calibration. It runs in the background: other pages stay usable, and "
                   "the result is here when you come back.")
    elif job.state == "failed":
        st.error(f"**The computation stopped with an error.** {md_text(job.error)}")
        jobs.pop(request, None)
    else:
        st.info("The computation was stopped; press **Compute** to start it again.")
        jobs.pop(request, None)


one_run, transfer = st.tabs(["This run", "Transfer"])
with one_run:
    single_run_tab(runs)
with transfer:
    transfer_tab(runs)
