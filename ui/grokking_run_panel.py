"""The run shown on the grokking tab: its training progress (what the job is doing: starting the process,
loading, training with the time left once a rate is measured, stopping), Stop, how it ended (stopped: the
last checkpoint kept and the last evaluation, in agreement with the tiles and the summary; failed), the
curves and measure charts, the selected checkpoint's detail, the summary and the export of an llm checkpoint.
It polls (ui.errors.lab_fragment) while the run trains, here or in another process."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import Job
from engine.grokking import analysis as ga
from engine.grokking import jobs, runs
from engine.grokking.config import GROK_ACCURACY, LLM_MEASURE_LABELS, MEASURE_LABELS, GrokConfig
from ui import grokking_charts as charts
from ui.errors import lab_fragment
from ui.job_panel import job_ended, job_progress
from ui.progress import eta_text
from ui.tables import MISSING, cell_text, readable

POLL_SECONDS = 1.0
SMALL_MODEL_COLUMNS = {  # measures.csv of the small models, in words
    "kind": "kind",
    "name": "matrix or layer",
    "max_over_median": "max/median",
    "kurtosis": "excess kurtosis",
    "argmax": "largest |w| at",
    "drop_top1": "acc drop, top-1 zeroed",
    "drop_topk": f"acc drop, top-{charts.MEASURE.k} zeroed",
    "drop_random": f"acc drop, {charts.MEASURE.k} random zeroed",
    "is_super": "super weight",
}
SCAN_COLUMNS = ["step", "scan_fires_train", "scan_fires_test", "n_scan_candidates", "scan_candidates"]


def progress_text(progress: jobs.TrainingProgress, config: GrokConfig) -> str:
    """What the training job is doing, in words (engine.grokking.jobs' phases)."""
    waited = f"{progress.elapsed:.0f} s"
    if progress.phase == "starting":
        resume = f" to resume from checkpoint {progress.step}" if progress.step else ""
        return f"Starting the training process{resume} (loading torch; {waited} so far)…"
    if progress.phase == "loading":
        if progress.resume_step is not None:
            return f"Loading checkpoint {progress.resume_step} to resume from it ({waited} so far)…"
        return f"Building the data set and the model ({waited} so far)…"
    if progress.phase == "stopping":
        return f"Stopping at step {progress.step}: saving the checkpoint of the next step…"
    left = eta_text(progress.seconds_left) or "estimating the time left…"
    return (
        f"Training: step {progress.step} of at most {progress.total}, {left} (it ends "
        f"{config.stop_after_grok} steps after test accuracy reaches {GROK_ACCURACY:.0%})"
    )


def checkpoint_steps(measures: pd.DataFrame) -> list[int]:
    return sorted({int(s) for s in measures["step"]}) if "step" in measures and len(measures) else []


def checkpoint_picker(steps: Sequence[int]) -> int | None:
    """The selected checkpoint (query parameter grok_step), or None before any. Its first option, NEWEST, follows
    the newest checkpoint while the run trains: the page never writes a step into the widget itself, so a rerun
    that the browser asked for with an older state cannot pin the view to an old checkpoint."""
    if not steps:
        return None
    chosen = st.session_state.get(charts.STEP_KEY)  # None before the widget's first run (?grok_step seeds it)
    if chosen is not None and chosen not in (charts.NEWEST, *steps):
        st.session_state[charts.STEP_KEY] = charts.NEWEST  # another run's checkpoint
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    choice = c1.selectbox(
        "Checkpoint (step)",
        [charts.NEWEST, *steps],
        key=charts.STEP_KEY,
        bind="query-params",
        format_func=str,  # the URL holds these labels: ?grok_step=80; none while it shows the newest
        help="The checkpoint whose detail is shown below the charts; a click on a chart picks the nearest one. "
        f"'{charts.NEWEST}' follows the newest checkpoint while the run trains.",
    )
    c2.caption("Click a chart to pick the nearest checkpoint: the red line marks it on every chart.")
    return steps[-1] if choice == charts.NEWEST else int(choice)


def checkpoint_detail(metrics: pd.DataFrame, measures: pd.DataFrame, step: int, is_llm: bool) -> None:
    """The selected checkpoint: accuracy and loss at its step, then its measures as a table."""
    st.subheader(f"Checkpoint at step {step}")
    at_step = metrics[metrics["step"] <= step]
    if len(at_step):
        row = at_step.iloc[-1]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric(f"Train accuracy at {step}", f"{row['train_acc']:.1%}")  # (the run's last values are above)
        m2.metric(f"Test accuracy at {step}", f"{row['test_acc']:.1%}")
        m3.metric(f"Test loss at {step}", f"{row['test_loss']:.3g}")
        m4.metric(f"Weight norm ‖w‖₂ at {step}", f"{row['weight_norm']:.4g}")
    rows = measures[measures["step"] == step]
    if is_llm:
        if len(rows):
            values = rows.iloc[0].drop(labels=["step"])
            table = pd.DataFrame(
                {
                    "measure": [charts.column_label(c) for c in values.index],
                    "value": list(map(cell_text, values)),
                }
            )
            st.dataframe(table, hide_index=True, height=300)
        return
    shown = [c for c in SMALL_MODEL_COLUMNS if c in rows]
    st.dataframe(readable(rows[shown], SMALL_MODEL_COLUMNS), hide_index=True)


def _training(run: runs.GrokRun, config: GrokConfig, writable: bool) -> Job | None:
    """The progress of the job training the run (ui.job_panel, in the phases' words) and Stop, or a note that
    another process trains it, or why the last job failed."""
    job = jobs.running_job(run)
    progress = jobs.progress(run)
    if job is not None and progress is not None:
        job_progress(
            job,
            what="Training",
            unit="steps",
            can_stop=writable,
            widget_key="grok",
            text=lambda _: progress_text(progress, config),
            fraction=lambda _: progress.step / max(config.steps, 1),
            on_stop=lambda: jobs.stop(run),
            stop_note="Stopping at the next step; that step's checkpoint is kept and Start resumes from it.",
        )
    elif run.is_claimed():
        st.info("This run is being trained by another session or process; the view follows it.", icon=":material/sync:")
    else:
        ended = jobs.last_job(run)
        if ended is not None and ended.error:
            job_ended(ended, "Training")
    return job


def run_panel(run: runs.GrokRun, writable: bool) -> None:
    config = run.grok_config
    job = _training(run, config, writable)
    status = run.status()
    metrics, measures, summary = ga.load_run(config, owner=run.owner)
    note = jobs.stop_note(run) if job is None else None
    if note is not None:
        resume = "Press Start to resume." if writable else "Only its owner can resume it."
        st.warning(f"{note.text()} {resume}", icon=":material/pause_circle:")
    elif status.get("state") == "failed" and job is None:
        st.error(jobs.ended_text(run), icon=":material/error:")
    if metrics.empty:
        if job is None and not run.is_claimed():
            st.info("Not trained yet: press Start to train it.", icon=":material/play_arrow:")
        else:
            st.info("No evaluation yet: the first one is at step 0, right after the model is built.")
        return
    is_llm = config.model == "llm"
    events = ga.run_events(
        metrics,
        measures,
        llm_measures=measures if is_llm else None,
        hold_steps=ga.hold_steps_of(config.stop_after_grok),
    )
    steps = checkpoint_steps(measures)
    selected = checkpoint_picker(steps)
    marks = charts.event_marks(events, selected)
    charts.curves(metrics, marks, steps)
    last = metrics.iloc[-1]
    m1, m2, m3, m4 = st.container(key="grok_last").columns(4)  # the run's last values (key: for tests)
    m1.metric(
        "Last evaluated step",
        int(last["step"]),
        help=f"Train and test accuracy are evaluated every {config.eval_every} steps; the curves end here.",
    )
    m2.metric("Train accuracy", f"{last['train_acc']:.1%}")
    m3.metric("Test accuracy", f"{last['test_acc']:.1%}")
    m4.metric("Steps / s", f"{last['step'] / max(last['elapsed_s'], 1e-9):.0f}")
    st.subheader("Super-weight measures by checkpoint")
    if is_llm:
        charts.llm_measure_charts(measures, marks, steps)
    else:
        charts.measure_charts(measures, marks, steps)
    if selected is not None:
        checkpoint_detail(metrics, measures, selected, is_llm)
    if is_llm and len(measures):
        st.caption("Scan and causal test at every checkpoint")
        scan = measures[[c for c in SCAN_COLUMNS if c in measures]]
        st.dataframe(readable(scan, charts.LLM_COLUMN_LABELS), hide_index=True, height=180)
    if summary is not None and job is None:
        _summary(run, summary, metrics, measures, note)
    if is_llm and run.checkpoint_steps():
        export_panel(run, selected)


def _summary(
    run: runs.GrokRun,
    summary: runs.RunSummary,
    metrics: pd.DataFrame,
    measures: pd.DataFrame,
    note: jobs.StopNote | None,
) -> None:
    st.subheader("Summary")
    text = ga.run_summary_text(summary)
    if note is not None and note.last_evaluation is not None and note.last_evaluation != note.step:
        text = f"Up to step {note.last_evaluation} (the last evaluation before the stop at step {note.step}): {text}"
    st.success(text, icon=":material/summarize:")
    labels = LLM_MEASURE_LABELS if run.grok_config.model == "llm" else MEASURE_LABELS
    onset_rows = pd.DataFrame(
        [
            {
                "measure": labels[m],
                "onset step": summary["onsets"].get(m),
                "lag vs grokking (steps)": summary["lags"].get(m),
            }
            for m in labels
        ]
    )
    st.dataframe(readable(onset_rows, {}), hide_index=True)
    st.caption(f"{MISSING}: no onset (the measure never stays on), or no lag (the run did not grok).")
    key = run.run_id
    d1, d2 = st.columns(2)
    d1.download_button("metrics.csv", metrics.to_csv(index=False), f"grok_{key}_metrics.csv", key="grok_dl_metrics")
    d2.download_button("measures.csv", measures.to_csv(index=False), f"grok_{key}_measures.csv", key="grok_dl_measures")
    st.caption(
        f"Run {key}: {len(run.checkpoint_steps())} checkpoints kept (state dicts, read with "
        "torch.load(weights_only=True)); the command line writes the same files."
    )


def export_panel(run: runs.GrokRun, selected: int | None) -> None:
    """The selected checkpoint of an llm run as a Hugging Face folder for the first tab's local-model picker
    (the last saved one when the selected step has no saved checkpoint). The button has a row of its own: its
    label is never cut."""
    saved = run.checkpoint_steps()
    step = selected if selected in saved else saved[-1]
    if st.button(f"Open checkpoint {step} in the first tab", key="grok_export", icon=":material/open_in_new:"):
        try:
            folder = run.export_checkpoint(int(step))
        except LabError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.success(
            f"Paste this folder into the sidebar's **Other (HF id or local folder)**, then scan it in the first "
            f"tab:\n\n`{folder.resolve()}`",
            icon=":material/folder_open:",
        )


def show_run(run: runs.GrokRun, writable: bool) -> None:
    """The run's panel, redrawn every POLL_SECONDS while it trains (here or in another process); when the
    training ends, the whole tab is redrawn once without polling."""
    live_now = jobs.is_live(run)

    @lab_fragment(run_every=POLL_SECONDS if live_now else None)
    def live() -> None:
        run_panel(run, writable)
        if live_now and not jobs.is_live(run):
            st.rerun()  # the run ended: redraw the whole tab without polling

    live()
