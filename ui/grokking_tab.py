"""Grokking lab tab: train a small model on (a o b) mod p, watch it grok, and track super weights.

Training runs in a background thread (one per configuration, shared by every session that asks
for the same configuration) that writes the run cache; the page polls the cache with
`st.fragment(run_every=...)`, so several users can train at once and a reload loses nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.grokking import analysis as ga
from engine.grokking import training as grokking
from engine.grokking.training import GrokConfig, RunCache

POLL_SECONDS = 1.0
TRAIN_THREADS = 1  # 1 torch thread is fastest for these tiny models on a busy 2-core CPU (see the benchmark)


@dataclass
class _Job:
    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    progress: ga.SweepProgress | None = None


_JOBS: dict[str, _Job] = {}  # run key or sweep id -> job, process-wide (all sessions)
_JOBS_LOCK = threading.Lock()

HELP = f"""
**Task.** Predict c = (a ∘ b) mod p for all pairs (a, b); a random *train fraction* of the pairs is the
training set, the rest the test set (Power et al. 2022). **Grokking**: test accuracy jumps long after
train accuracy reached 100%.

**Events** (steps, read off the evaluation rows): *memorisation* = first step with train accuracy ≥ 99%;
*grokking* = first step with test accuracy ≥ 50% and ≥ 95%.

**Super-weight measures**, at every checkpoint: per weight matrix max|w|/median|w|, excess kurtosis, the
coordinate of its largest |w|; per layer max|a|/median|a| on the test inputs (massive activations); and the
causal test: test accuracy after zeroing the largest |w| of a matrix (top-1), its top-k, and k random
weights of the same matrix outside its top k. A weight is **super** when drop(top-1) > 10 points of test
accuracy while drop(k random) ≤ 10 points (Yu et al. 2024).

**Onset** of a measure = the first checkpoint from which it stays on at *every* later checkpoint,
earliest over matrices/layers: max/median ≥ {ga.OnsetSettings().ratio_factor:g} × its step-0 value;
kurtosis ≥ {ga.OnsetSettings().kurtosis_threshold:g}; top coordinate unchanged to the end (≥ {ga.OnsetSettings().min_span}
checkpoints); max|a|/median ≥ {ga.OnsetSettings().ratio_factor:g} × its step-0 value; a super weight present in some matrix.
**Lag** = onset − grokking step (95%); negative = the measure came first.
"""


def _start(key: str, target, *args, progress=None) -> _Job:
    """Start `target(*args, stop=...)` in a daemon thread unless a job with this key is alive."""
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job and job.thread.is_alive():
            return job
        job = _Job(thread=None, progress=progress)  # type: ignore[arg-type]

        def work():
            try:
                target(*args, stop=job.stop)
            except LabError as err:
                job.error = str(err)
            except Exception as err:  # noqa: BLE001 - shown to the user as one line, run cache stays
                job.error = f"{type(err).__name__}: {err}"

        job.thread = threading.Thread(target=work, daemon=True, name=f"grok-{key}")
        _JOBS[key] = job
        job.thread.start()
        return job


def _running(key: str) -> _Job | None:
    job = _JOBS.get(key)
    return job if job and job.thread.is_alive() else None


def _config_form() -> GrokConfig | None:
    d = GrokConfig()
    c1, c2, c3, c4 = st.columns(4)
    task = c1.selectbox("Task", list(grokking.TASKS), format_func=lambda t: grokking.TASKS[t][0], key="grok_task")
    p = c1.number_input(
        "p (modulus)", 3, 2000, d.p, key="grok_p", help="Prime p needed for ÷ (every b ≠ 0 needs an inverse)."
    )
    frac = c1.number_input(
        "Train fraction", 0.0, 1.0, d.train_frac, 0.05, key="grok_frac", help="Strictly between 0 and 1."
    )
    model = c2.selectbox(
        "Model",
        ["mlp", "transformer"],
        key="grok_model",
        format_func=lambda m: (
            "one-hot MLP (Prieto et al. 2025)" if m == "mlp" else "transformer d128, 4 heads (Nanda et al. 2023)"
        ),
    )
    layers = c2.number_input("Layers", 1, 2, d.n_layers, key="grok_layers")
    seed = c2.number_input("Seed", 0, 10_000, d.seed, key="grok_seed")
    lr = c3.number_input("Learning rate", 1e-5, 1e-1, d.lr, format="%.4f", key="grok_lr")
    wd = c3.number_input("Weight decay", 0.0, 10.0, d.weight_decay, 0.1, key="grok_wd")
    beta2 = c3.number_input("AdamW β2", 0.5, 0.9999, d.beta2, format="%.4f", key="grok_beta2")
    grokfast = c4.checkbox(
        "Grokfast EMA filter",
        d.grokfast,
        key="grok_grokfast",
        help="g ← g + λ·EMA_α(g), α = 0.98, λ = 2 (Lee et al. 2024): amplifies slow gradient components.",
    )
    batch = c4.number_input("Batch size (0 = full batch)", 0, 100_000, d.batch_size, key="grok_batch")
    steps = c4.number_input(
        "Max steps",
        10,
        200_000,
        d.steps,
        100,
        key="grok_steps",
        help=f"The run ends {d.stop_after_grok} steps after test accuracy first reaches 95%, or at this step.",
    )
    eval_every = c4.number_input(
        "Evaluate every (steps)",
        1,
        10_000,
        d.eval_every,
        key="grok_eval",
        help="One metrics row per evaluation; a checkpoint (with all measures) every 4 evaluations.",
    )
    config = d.replace(
        task=task,
        p=int(p),
        train_frac=float(frac),
        model=model,
        n_layers=int(layers),
        seed=int(seed),
        lr=float(lr),
        weight_decay=float(wd),
        beta2=float(beta2),
        grokfast=bool(grokfast),
        batch_size=int(batch),
        steps=int(steps),
        eval_every=int(eval_every),
        checkpoint_every=4 * int(eval_every),
    )
    try:
        grokking.validate(config)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return None
    return config


def _rule(events: dict) -> alt.Chart | None:
    marks = [
        {"step": events[k], "event": label}
        for k, label in (("memorisation_step", "train 99%"), ("grok_50_step", "test 50%"), ("grok_95_step", "test 95%"))
        if events.get(k) is not None
    ]
    if not marks:
        return None
    return (
        alt.Chart(pd.DataFrame(marks))
        .mark_rule(strokeDash=[4, 3], color="gray")
        .encode(x="step:Q", tooltip=["event:N", "step:Q"])
    )


def _curves(metrics: pd.DataFrame, events: dict) -> None:
    long = metrics.melt("step", ["train_acc", "test_acc", "train_loss", "test_loss", "weight_norm"])
    charts = []
    for cols, title, scale in (
        (["train_acc", "test_acc"], "accuracy", alt.Scale(domain=[0, 1])),
        (["train_loss", "test_loss"], "loss (log)", alt.Scale(type="log")),
        (["weight_norm"], "weight norm ||w||₂", alt.Scale(zero=False)),
    ):
        chart = (
            alt.Chart(long[long["variable"].isin(cols)])
            .mark_line()
            .encode(
                x=alt.X("step:Q"),
                y=alt.Y("value:Q", title=title, scale=scale),
                color=alt.Color("variable:N", title=None),
                tooltip=["step:Q", "variable:N", alt.Tooltip("value:Q", format=".4g")],
            )
            .properties(height=220)
        )
        rule = _rule(events)
        charts.append(chart + rule if rule is not None else chart)
    cols = st.columns(3)
    for col, chart in zip(cols, charts):
        col.altair_chart(chart, width="stretch")


def _measure_charts(measures: pd.DataFrame, events: dict) -> None:
    if measures.empty:
        st.info("Super-weight measures appear at the first checkpoint.")
        return
    w = measures[measures["kind"] == "weight"]
    a = measures[measures["kind"] == "activation"]
    panels = [
        (w, "max_over_median", "max|w| / median|w| per matrix"),
        (w, "kurtosis", "excess kurtosis per matrix"),
        (w, "drop_top1", "test-acc drop, zero top-1 weight"),
        (a, "max_over_median", "max|a| / median|a| per layer"),
    ]
    cols = st.columns(4)
    for col, (frame, column, title) in zip(cols, panels):
        chart = (
            alt.Chart(frame)
            .mark_line(point=True)
            .encode(
                x="step:Q",
                y=alt.Y(f"{column}:Q", title=title),
                color=alt.Color("name:N", title=None, legend=alt.Legend(orient="bottom", columns=2)),
                tooltip=["step:Q", "name:N", alt.Tooltip(f"{column}:Q", format=".4g")]
                + (["argmax:N"] if column != "max_over_median" or frame is w else []),
            )
            .properties(height=260)
        )
        rule = _rule(events)
        col.altair_chart(chart + rule if rule is not None else chart, width="stretch")


def _run_panel(config: GrokConfig) -> None:
    cache = RunCache(config)
    key = config.key()
    job = _running(key)
    status = cache.status()
    metrics, measures, summary = ga.load_run(config)
    if job is not None:
        done = int(metrics["step"].iloc[-1]) if len(metrics) else 0
        st.progress(min(1.0, done / config.steps), text=f"Training: step {done} of at most {config.steps}")
        if st.button("Stop", key="grok_stop", icon=":material/stop_circle:"):
            job.stop.set()
            st.toast("Stopping at the next step; the last checkpoint is kept.")
    elif _JOBS.get(key) and _JOBS[key].error:
        st.error(_JOBS[key].error, icon=":material/error:")
    if status.get("state") == "stopped":
        st.warning(f"Run {status['message']}. Press Start to resume.", icon=":material/pause_circle:")
    elif status.get("state") == "failed" and job is None:
        st.error(
            f"Run failed: {status.get('message')}. Its checkpoints are kept; press Start to resume.",
            icon=":material/error:",
        )
    if metrics.empty:
        st.info("No evaluation yet.")
        return
    events = ga.run_events(metrics, measures)
    last = metrics.iloc[-1]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Step", int(last["step"]))
    m2.metric("Train accuracy", f"{last['train_acc']:.1%}")
    m3.metric("Test accuracy", f"{last['test_acc']:.1%}")
    m4.metric("Steps / s", f"{last['step'] / max(last['elapsed_s'], 1e-9):.0f}")
    _curves(metrics, events)
    st.subheader("Super-weight measures by checkpoint")
    _measure_charts(measures, events)
    if summary is not None and job is None:
        st.subheader("Summary")
        st.success(ga.run_summary_text(summary), icon=":material/summarize:")
        onset_rows = pd.DataFrame(
            [
                {
                    "measure": ga.MEASURE_LABELS[m],
                    "onset step": summary["onsets"][m],
                    "lag vs grokking (steps)": summary["lags"][m],
                }
                for m in ga.MEASURES
            ]
        )
        st.dataframe(onset_rows, hide_index=True)
        d1, d2 = st.columns(2)
        d1.download_button("metrics.csv", metrics.to_csv(index=False), f"grok_{key}_metrics.csv", key="grok_dl_metrics")
        d2.download_button(
            "measures.csv", measures.to_csv(index=False), f"grok_{key}_measures.csv", key="grok_dl_measures"
        )
        st.caption(
            f"Run folder: `{cache.dir}` ({len(cache.checkpoint_steps())} checkpoints, torch.load(weights_only=True))."
        )


def _sweep_section(base: GrokConfig) -> None:
    st.subheader("Sweep: seeds × weight decays")
    c1, c2, c3 = st.columns([2, 2, 2])
    seeds_text = c1.text_input("Seeds", "0,1,2", key="grok_sweep_seeds")
    wds_text = c2.text_input(
        "Weight decays", "0.3,1.0", key="grok_sweep_wds", help="Weight decay 0 usually does not grok: a contrast."
    )
    measure = c3.selectbox("Onset measure", ga.MEASURES, format_func=ga.MEASURE_LABELS.get, key="grok_sweep_measure")
    try:
        seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
        wds = [float(s) for s in wds_text.split(",") if s.strip()]
        if not seeds or not wds:
            raise ValueError
        for wd in wds:
            grokking.validate(base.replace(weight_decay=wd))
    except ValueError:
        st.error("Seeds and weight decays: comma-separated numbers, at least one of each.", icon=":material/error:")
        return
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return
    sweep_id = "sweep:" + ",".join(c.key() for c in ga.sweep_configs(base, seeds, wds))
    if st.button(
        f"Run sweep ({len(seeds) * len(wds)} runs, cached ones reopen instantly)",
        key="grok_sweep_start",
        icon=":material/play_arrow:",
    ):
        progress = ga.SweepProgress()
        _start(
            sweep_id,
            lambda stop: ga.run_sweep(base, seeds, wds, progress=progress, stop=stop, threads=TRAIN_THREADS),
            progress=progress,
        )
        st.session_state["grok_sweep_id"] = sweep_id
    if st.session_state.get("grok_sweep_id") != sweep_id:
        return
    job = _JOBS.get(sweep_id)
    alive = bool(job and job.thread.is_alive())

    @st.fragment(run_every=POLL_SECONDS if alive else None)
    def sweep_panel():
        job_now = _JOBS.get(sweep_id)
        if job_now is None or job_now.progress is None:
            return
        prog = job_now.progress
        if job_now.thread.is_alive():
            st.progress(
                prog.done / max(prog.total, 1), text=f"Sweep: {prog.done} of {prog.total} runs done; now {prog.current}"
            )
            if st.button("Stop sweep", key="grok_sweep_stop", icon=":material/stop_circle:"):
                job_now.stop.set()
        if job_now.error:
            st.error(job_now.error, icon=":material/error:")
        if not prog.summaries:
            return
        table = ga.sweep_table(prog.summaries, measure)
        stats = ga.connection(table)
        points = table[table["onset_step"].notna() & table["grokked"].astype(bool)]
        scatter = (
            alt.Chart(points if len(points) else pd.DataFrame(columns=table.columns))
            .mark_point(filled=True, size=80)
            .encode(
                x=alt.X("onset_step:Q", title=f"{ga.MEASURE_LABELS[measure]} onset (step)"),
                y=alt.Y("grok_95_step:Q", title="grokking step (test 95%)"),
                color=alt.Color("grokked:N"),
                shape="weight_decay:N",
                tooltip=["seed:Q", "weight_decay:Q", "memorisation_step:Q", "grok_95_step:Q", "onset_step:Q", "lag:Q"],
            )
        )
        st.altair_chart(scatter.properties(height=300), width="stretch")
        st.info(ga.plain_summary(stats, measure), icon=":material/insights:")
        st.dataframe(table.drop(columns=["key"]), hide_index=True)
        st.download_button("sweep.csv", table.to_csv(index=False), "grok_sweep.csv", key="grok_sweep_dl")
        st.caption("Scatter: grokked runs with an onset. Runs that did not grok are in the table (contrast).")
        if alive and not job_now.thread.is_alive():
            st.rerun()  # the sweep ended: redraw without polling

    sweep_panel()


def _reopen_picker() -> None:
    runs = grokking.list_runs()
    if not runs:
        return
    labels = {c.key(): f"{c.describe()} — {s.get('state', '?')} at step {s.get('step', 0)}" for c, s in runs}
    configs = {c.key(): c for c, _ in runs}
    pick = st.selectbox(
        "Reopen a cached run", ["—"] + list(labels), format_func=lambda k: labels.get(k, k), key="grok_reopen"
    )
    if pick != "—" and st.session_state.get("grok_reopened") != pick:
        st.session_state["grok_reopened"] = pick
        st.session_state["grok_view"] = configs[pick]
    if pick != "—" and st.button("Delete this cached run", key="grok_delete", icon=":material/delete:"):
        try:
            grokking.delete_run(configs[pick])
        except LabError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.session_state.pop("grok_reopened", None)
        st.session_state.pop("grok_reopen", None)
        if st.session_state.get("grok_view") == configs[pick]:
            st.session_state.pop("grok_view", None)
        st.rerun()


def render() -> None:
    """The grokking lab (a tab of pages/1_Super_weights_and_grokking.py)."""
    st.markdown(
        "Train a small model on modular arithmetic until it **groks**, and see whether super weights "
        "appear, and when, relative to grokking. Runs are cached by configuration; the default groks in "
        "under a minute on a 2-core CPU."
    )
    with st.expander("Definitions: events, measures, onset", icon=":material/help:"):
        st.markdown(HELP)
    config = _config_form()
    if config is None:
        return
    start = st.button("Start / resume / reopen", key="grok_start", icon=":material/play_arrow:", type="primary")
    _reopen_picker()
    if start:
        cache = RunCache(config)
        if not cache.is_finished() or not cache.summary():
            _start(config.key(), lambda cfg, stop: ga.run_experiment(cfg, stop=stop, threads=TRAIN_THREADS), config)
        st.session_state["grok_view"] = config
    view: GrokConfig | None = st.session_state.get("grok_view")
    if view is None:
        st.info("Press Start to train the configuration above (or reopen a cached run).")
    else:
        st.caption(f"Showing: {view.describe()} (key {view.key()})")
        if view.key() != config.key():
            st.warning(
                "The settings above differ from the run shown: press Start to train (or reopen) them.",
                icon=":material/sync_problem:",
            )
        running = _running(view.key()) is not None

        @st.fragment(run_every=POLL_SECONDS if running else None)
        def live():
            _run_panel(view)
            if running and _running(view.key()) is None:
                st.rerun()  # the run ended: redraw the whole tab without polling

        live()
    st.divider()
    _sweep_section(config)
