"""The grokking tab's sweep: seeds x weight decays of the settings above as one job
(engine.grokking.jobs.start_sweep), its progress and Stop, the onset-vs-grokking scatter, the connection in
words and a table with every column labelled. Its inputs live in the URL (`grok_sweep_seeds`, `grok_sweep_wds`,
`grok_sweep_measure`)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import RUNNER
from engine.core.options import default_of, help_of
from engine.grokking import analysis as ga
from engine.grokking import jobs
from engine.grokking.config import (
    GROK_ACCURACY,
    HALF_GROK_ACCURACY,
    MEASURE_LABELS,
    MEASURES,
    GrokConfig,
    SweepConfig,
    validate,
)
from ui import access
from ui.errors import lab_fragment
from ui.figures import show_chart
from ui.grokking_charts import AXIS
from ui.grokking_runs import gate
from ui.job_panel import job_ended, job_progress
from ui.state import latest, recall, remember
from ui.tables import readable

POLL_SECONDS = 1.0
SWEEP_SLOT = "grok_sweep"  # the sweep job started for exactly these sweep inputs


def table_labels(measure: str) -> dict[str, str]:
    """ga.sweep_table's columns in words."""
    return {
        "seed": "seed",
        "weight_decay": "weight decay",
        "state": "state",
        "memorisation_step": "memorised at step (train 99%)",
        "grok_50_step": f"test {HALF_GROK_ACCURACY:.0%} at step",
        "grok_95_step": f"grokked at step (test {GROK_ACCURACY:.0%})",
        "grokked": "grokked",
        "onset_step": f"{MEASURE_LABELS[measure]} onset (step)",
        "lag": "lag: onset − grokking (steps)",
        "final_test_acc": "final test accuracy",
    }


def _parse_sweep(seeds_text: str, wds_text: str, base: GrokConfig | None) -> tuple[list[int], list[float], str | None]:
    """(seeds, weight decays, problem): the problem names what to fix, None when the sweep can start."""
    try:
        seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
        wds = [float(s) for s in wds_text.split(",") if s.strip()]
    except ValueError:
        return [], [], "Seeds and weight decays: comma-separated numbers, at least one of each."
    if not seeds or not wds:
        return seeds, wds, "Seeds and weight decays: comma-separated numbers, at least one of each."
    if base is None:
        return seeds, wds, None
    try:
        for wd in wds:
            validate(base.replace(weight_decay=wd))
    except LabError as err:
        return seeds, wds, str(err)
    return seeds, wds, None


def sweep_section(base: GrokConfig | None) -> None:
    st.subheader("Sweep: seeds × weight decays")
    c1, c2, c3 = st.columns([2, 2, 2])
    seeds_text = c1.text_input(
        "Seeds", ",".join(map(str, default_of(SweepConfig, "seeds"))), key="grok_sweep_seeds", bind="query-params"
    )
    wds_text = c2.text_input(
        "Weight decays",
        ",".join(map(str, default_of(SweepConfig, "weight_decays"))),
        key="grok_sweep_wds",
        help=help_of(SweepConfig, "weight_decays"),
        bind="query-params",
    )
    measure = c3.selectbox(
        "Onset measure",
        MEASURES,
        index=MEASURES.index(default_of(SweepConfig, "measure")),
        format_func=MEASURE_LABELS.get,
        key="grok_sweep_measure",
        help=help_of(SweepConfig, "measure"),
        bind="query-params",
    )
    seeds, wds, problem = _parse_sweep(seeds_text, wds_text, base)
    if problem:
        st.error(problem, icon=":material/error:")
    configs = ga.sweep_configs(base, seeds, wds) if base is not None and problem is None else []
    if configs:
        problem = access.over_limit("sweep_runs", len(configs), "Runs in this sweep")
        if problem:
            st.error(problem, icon=":material/block:")
    elif base is None:
        problem = "The sweep runs the settings above: fix the fields marked there first."
        st.caption(problem)
    sweep_key = jobs.sweep_key(configs, access.me()) if configs else None
    described = f"seeds {', '.join(map(str, seeds))} × weight decays {', '.join(f'{w:g}' for w in wds)}"
    if st.button(
        f"Run sweep ({len(configs)} runs, cached ones reopen instantly)" if configs else "Run sweep",
        key="grok_sweep_start",
        icon=":material/play_arrow:",
        disabled=problem is not None or sweep_key is None,
    ):
        assert base is not None and sweep_key is not None
        try:
            jobs.start_sweep(base, seeds, wds, gate())
        except LabError as err:
            st.error(str(err), icon=":material/error:")
            return
        remember(SWEEP_SLOT, sweep_key, described)
    shown = sweep_key if sweep_key is not None and recall(SWEEP_SLOT, sweep_key) is not None else None
    if shown is None and sweep_key is not None and RUNNER.get(sweep_key) is not None:
        shown = sweep_key  # this person's sweep of exactly these inputs, still in this server (e.g. after a reload)
        remember(SWEEP_SLOT, sweep_key, described)
    if shown is None and (base is None or problem is not None) and latest(SWEEP_SLOT) is not None:
        shown, what = latest(SWEEP_SLOT)  # the inputs cannot run: the last sweep stays, named
        st.caption(f"Showing your last sweep ({what}).")
    if shown is None:
        shown = jobs.running_sweep(access.me())  # one of theirs still running, started with other inputs
        if shown is not None:
            st.caption("Showing your sweep that is still running (started with other settings or inputs).")
    if shown is None:
        return
    _sweep_panel(str(shown), measure)


def _sweep_panel(sweep_key: str, measure: str) -> None:
    alive = RUNNER.running(sweep_key) is not None

    @lab_fragment(run_every=POLL_SECONDS if alive else None)
    def sweep_panel() -> None:
        job = RUNNER.get(sweep_key)
        if job is None:
            return
        if job.running:
            job_progress(
                job, what="Sweep", unit="runs", can_stop=True, widget_key="grok_sweep", stop_label="Stop sweep"
            )
        job_ended(job, "The sweep")
        summaries = list(job.result or [])
        if not summaries:
            return
        table = ga.sweep_table(summaries, measure)
        labels = table_labels(measure)
        stats = ga.connection(table)
        points = table[table["onset_step"].notna() & table["grokked"].astype(bool)]
        scatter = (
            alt.Chart(points if len(points) else pd.DataFrame(columns=table.columns))
            .mark_point(filled=True, size=80)
            .encode(
                x=alt.X("onset_step:Q", title=f"{MEASURE_LABELS[measure]} onset (step)", axis=alt.Axis(**AXIS)),
                y=alt.Y("grok_95_step:Q", title=f"grokking step (test {GROK_ACCURACY:.0%})", axis=alt.Axis(**AXIS)),
                color=alt.Color("grokked:N", legend=alt.Legend(labelLimit=0)),
                shape=alt.Shape("weight_decay:N", title="weight decay", legend=alt.Legend(labelLimit=0)),
                tooltip=[
                    alt.Tooltip(f"{column}:Q", title=labels[column])
                    for column in ("seed", "weight_decay", "memorisation_step", "grok_95_step", "onset_step", "lag")
                ],
            )
            .properties(height=300, title=alt.TitleParams("Onset vs grokking step, one point per run", anchor="start"))
        )
        show_chart(scatter, "grokking_sweep", key="grok_sweep_chart", data=table.drop(columns=["key"]))
        st.info(ga.plain_summary(stats, measure), icon=":material/insights:")
        st.dataframe(readable(table.drop(columns=["key"]), labels), hide_index=True)
        st.caption("Scatter: grokked runs with an onset. Runs that did not grok are in the table (contrast).")
        if alive and not job.running:
            st.rerun()  # the sweep ended: redraw without polling

    sweep_panel()
