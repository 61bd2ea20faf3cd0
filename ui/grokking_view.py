"""Grokking lab tab: train a small model on (a o b) mod p, watch it grok, and track super weights.

Training and sweeps run as jobs of engine.core.jobs.RUNNER (one per run or sweep, shared by every
session that asks for the same one; a training job holds its run's claim), which write the run
folders; the page polls them with `st.fragment(run_every=...)`, so several users can train at once,
a reload loses nothing, and a run trained by another process (the CLI) is followed too.

On the shared server (ui.access): a person owns the runs they start; they see their own runs, shared
runs and runs made outside the server, and only the owner stops, deletes, resumes or shares a run.
`?run=<id>` opens a run (a private run of someone else opens a notice and nothing of it). Steps and
sweep size are checked against the server's limits; starting checks the person's long jobs and disk quota.
A person's runs have their owner id in the run key (engine.grokking.runs), so two people training the same
configuration never share (or collide on) a run; runs made outside the server (the CLI) keep their ids.

The LLM-shaped model (a Llama decoder on [BOS, a, op, b, =], engine.grokking.llm) is one click away; its
runs are measured with engine.grokking.llm_measures at every checkpoint (the first tab's super-weight scan +
causal test on train and test, super activations, attention sinks, key Fourier frequencies), can be
trained with super-weight suppression, and every checkpoint exports as a local model for the first tab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.options import default_of, help_of
from engine.core.runstore import run_id_for
from engine.grokking import analysis as ga
from engine.grokking import runs
from engine.grokking.config import (
    GROK_ACCURACY,
    HALF_GROK_ACCURACY,
    LLM_MAX_LAYERS,
    LLM_MEASURE_LABELS,
    LLM_PRESET,
    MAX_LAYERS,
    MEASURE_LABELS,
    MEASURES,
    MEMORISATION_ACCURACY,
    MODEL_KINDS,
    TASK_LABELS,
    TRAIN_THREADS,
    GrokConfig,
    SweepConfig,
    validate,
)
from engine.grokking.measures import MeasureSettings
from ui import access
from ui.state import forget, latest, recall, remember

POLL_SECONDS = 1.0
TOPIC = runs.CACHE_TOPIC  # the runs' topic in the lab database
DEFAULTS = GrokConfig()
EVALS_PER_CHECKPOINT = DEFAULTS.checkpoint_every // DEFAULTS.eval_every  # the form keeps the defaults' ratio
VIEW_SLOT = "grok_view"  # the run shown: the last one started or reopened
SWEEP_SLOT = "grok_sweep"  # the sweep job started for exactly these sweep inputs
MODEL_FORMAT = {
    "mlp": "one-hot MLP (Prieto et al. 2025)",
    "transformer": f"transformer d{DEFAULTS.d_model}, {DEFAULTS.n_heads} heads (Nanda et al. 2023)",
    "llm": "LLM-shaped (Llama: RMSNorm, gated MLP, RoPE, BOS)",
}
LLM_PRESET_LABEL = "LLM-shaped (Llama)"
LLM_WHY_SLOWER = (
    "The one-hot MLP default groks in under a minute: one matrix product per layer on 2p inputs. The LLM-shaped "
    f"model ({LLM_PRESET['n_layers']} Llama layers, d_model {LLM_PRESET['d_model']}, d_mlp {LLM_PRESET['d_mlp']}) "
    "runs attention, RMSNorm, RoPE and a gated MLP over 5 positions per example, and its measures run the "
    "super-weight scan and causal tests at every checkpoint: expect minutes on a CPU (it trains on CUDA when "
    "present). It is the model where 'super weight' means what it means in the first tab."
)
_ONSET, _MEASURE, _LLM = ga.OnsetSettings(), MeasureSettings(), ga.LLM_MEASURE_SETTINGS

HELP = f"""
**Task.** Predict c = (a ∘ b) mod p for all pairs (a, b); a random *train fraction* of the pairs is the
training set, the rest the test set (Power et al. 2022). **Grokking**: test accuracy jumps long after
train accuracy reached 100%.

**Events** (steps, read off the evaluation rows): *memorisation* = first step with train accuracy
≥ {MEMORISATION_ACCURACY:.0%}; *grokking* = first step with test accuracy ≥ {HALF_GROK_ACCURACY:.0%} and
≥ {GROK_ACCURACY:.0%}.

**Super-weight measures**, at every checkpoint: per weight matrix max|w|/median|w|, excess kurtosis, the
coordinate of its largest |w|; per layer max|a|/median|a| on the test inputs (massive activations); and the
causal test: test accuracy after zeroing the largest |w| of a matrix (top-1), its top-k (k = {_MEASURE.k}), and
k random weights of the same matrix outside its top k. A weight is **super** when drop(top-1) >
{_MEASURE.threshold * 100:g} points of test accuracy while drop(k random) ≤ {_MEASURE.threshold * 100:g} points
(Yu et al. 2024).

**Onset** of a measure = the first checkpoint from which it stays on at *every* later checkpoint,
earliest over matrices/layers: max/median ≥ {_ONSET.ratio_factor:g} × its step-0 value;
kurtosis ≥ {_ONSET.kurtosis_threshold:g}; top coordinate unchanged to the end (≥ {_ONSET.min_span}
checkpoints); max|a|/median ≥ {_ONSET.ratio_factor:g} × its step-0 value; a super weight present in some matrix.
**Lag** = onset − grokking step ({GROK_ACCURACY:.0%}); negative = the measure came first.

**LLM-shaped model** ({LLM_PRESET_LABEL}): at every checkpoint the first tab's super-weight scan and detection
rule run unchanged on the checkpoint; each candidate (and the largest |w| of each down projection) is zeroed
alone and the **train** and **test** loss and accuracy compared with zeroing {_LLM.k_random} random weights of
the same matrix: it fires at a perplexity ratio ≥ {_LLM.ppl_threshold:g} or an accuracy drop >
{_LLM.acc_threshold * 100:g} points. Also: the super activation at BOS per layer and whether it persists, the
attention share on BOS (attention sink), and the number of key Fourier frequencies of the number embedding
(Nanda et al. 2023). Onsets of these use the same "stays on" rule ({_ONSET.ratio_factor:g} × the step-0 value for
the ratios, ÷ {_ONSET.ratio_factor:g} for the Fourier count). **Suppression** clips every down projection's |w|
to c × its q-quantile every N steps; at the end of a grokked run its super weights are zeroed to see whether it
falls back to memorisation (train kept, test lost) or breaks.
"""


def _job_key(run: runs.GrokRun) -> str:
    return f"grokking:{run.run_id}"


def _my_run(config: GrokConfig) -> runs.GrokRun:
    """The run of this configuration that belongs to the person of this session (their owner id in its key)."""
    return runs.run_for(config, owner=access.me())


def _apply_llm_preset() -> None:
    """on_click of the preset button: the form's model fields set to config.LLM_PRESET."""
    st.session_state["grok_model"] = LLM_PRESET["model"]
    st.session_state["grok_layers"] = LLM_PRESET["n_layers"]
    st.session_state["grok_d_model"] = LLM_PRESET["d_model"]
    st.session_state["grok_heads"] = LLM_PRESET["n_heads"]
    st.session_state["grok_d_mlp"] = LLM_PRESET["d_mlp"]


def _config_form() -> GrokConfig | None:
    d = DEFAULTS
    st.button(
        LLM_PRESET_LABEL,
        key="grok_llm_preset",
        icon=":material/neurology:",
        on_click=_apply_llm_preset,
        help="One click: the LLM-shaped model. " + LLM_WHY_SLOWER,
    )
    for key, value in (
        ("grok_model", d.model),
        ("grok_layers", d.n_layers),
        ("grok_d_model", LLM_PRESET["d_model"]),
        ("grok_heads", LLM_PRESET["n_heads"]),
        ("grok_d_mlp", LLM_PRESET["d_mlp"]),
    ):  # widgets the preset sets: their values live in the session state only
        st.session_state.setdefault(key, value)
    c1, c2, c3, c4 = st.columns(4)
    task = c1.selectbox("Task", list(TASK_LABELS), format_func=TASK_LABELS.get, key="grok_task")
    p = c1.number_input("p (modulus)", 3, 2000, d.p, key="grok_p", help=help_of(GrokConfig, "p"))
    frac = c1.number_input(
        "Train fraction", 0.0, 1.0, d.train_frac, 0.05, key="grok_frac", help=help_of(GrokConfig, "train_frac")
    )
    model = c2.selectbox(
        "Model", MODEL_KINDS, key="grok_model", format_func=MODEL_FORMAT.get, help=help_of(GrokConfig, "model")
    )
    is_llm = model == "llm"
    layers = c2.number_input(
        "Layers", 1, max(LLM_MAX_LAYERS, MAX_LAYERS), key="grok_layers", help=help_of(GrokConfig, "n_layers")
    )
    seed = c2.number_input("Seed", 0, 10_000, d.seed, key="grok_seed", help=help_of(GrokConfig, "seed"))
    lr = c3.number_input("Learning rate", 1e-5, 1e-1, d.lr, format="%.4f", key="grok_lr")
    wd = c3.number_input("Weight decay", 0.0, 10.0, d.weight_decay, 0.1, key="grok_wd")
    beta2 = c3.number_input("AdamW β2", 0.5, 0.9999, d.beta2, format="%.4f", key="grok_beta2")
    grokfast = c4.checkbox(
        "Grokfast EMA filter",
        d.grokfast,
        key="grok_grokfast",
        help=f"g ← g + λ·EMA_α(g), α = {d.grokfast_alpha:g}, λ = {d.grokfast_lamb:g} (Lee et al. 2024): "
        "amplifies slow gradient components.",
    )
    batch = c4.number_input("Batch size (0 = full batch)", 0, 100_000, d.batch_size, key="grok_batch")
    steps = c4.number_input(
        "Max steps",
        10,
        200_000,
        d.steps,
        100,
        key="grok_steps",
        help=f"The run ends {d.stop_after_grok} steps after test accuracy first reaches {GROK_ACCURACY:.0%}, "
        "or at this step." + access.limit_note("grok_steps", "steps"),
    )
    eval_every = c4.number_input(
        "Evaluate every (steps)",
        1,
        10_000,
        d.eval_every,
        key="grok_eval",
        help=f"One metrics row per evaluation; a checkpoint (with all measures) every {EVALS_PER_CHECKPOINT} "
        "evaluations.",
    )
    sizes: dict[str, Any] = {}
    suppression: dict[str, Any] = {}
    if is_llm:
        st.caption(LLM_WHY_SLOWER)
        s1, s2, s3, s4 = st.columns(4)
        sizes = {
            "d_model": int(s1.number_input("d_model", 8, 512, step=8, key="grok_d_model")),
            "n_heads": int(s2.number_input("Heads", 1, 16, key="grok_heads")),
            "d_mlp": int(s3.number_input("d_mlp", 8, 2048, step=8, key="grok_d_mlp")),
        }
        if s4.checkbox("Suppress super weights", False, key="grok_suppress", help=help_of(GrokConfig, "suppress")):
            q1, q2, q3 = st.columns(3)
            suppression = {
                "suppress": True,
                "suppress_quantile": float(
                    q1.number_input(
                        "Clip quantile q",
                        0.5,
                        1.0,
                        d.suppress_quantile,
                        0.0005,
                        format="%.4f",
                        key="grok_sup_q",
                        help=help_of(GrokConfig, "suppress_quantile"),
                    )
                ),
                "suppress_factor": float(
                    q2.number_input(
                        "Clip factor c",
                        0.0,
                        100.0,
                        d.suppress_factor,
                        0.1,
                        key="grok_sup_c",
                        help=help_of(GrokConfig, "suppress_factor"),
                    )
                ),
                "suppress_every": int(
                    q3.number_input(
                        "Clip every (steps)",
                        1,
                        10_000,
                        d.suppress_every,
                        key="grok_sup_every",
                        help=help_of(GrokConfig, "suppress_every"),
                    )
                ),
            }
    config = d.replace(
        **sizes,
        **suppression,
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
        checkpoint_every=EVALS_PER_CHECKPOINT * int(eval_every),
    )
    try:
        validate(config)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return None
    if access.refuse_over("grok_steps", config.steps, "Max steps"):
        return None
    return config


def _rule(events: runs.RunEvents) -> alt.Chart | None:
    marks = [
        {"step": step, "event": label}
        for step, label in (
            (events["memorisation_step"], f"train {MEMORISATION_ACCURACY:.0%}"),
            (events["grok_50_step"], f"test {HALF_GROK_ACCURACY:.0%}"),
            (events["grok_95_step"], f"test {GROK_ACCURACY:.0%}"),
        )
        if step is not None
    ]
    if not marks:
        return None
    return (
        alt.Chart(pd.DataFrame(marks))
        .mark_rule(strokeDash=[4, 3], color="gray")
        .encode(x="step:Q", tooltip=["event:N", "step:Q"])
    )


def _curves(metrics: pd.DataFrame, events: runs.RunEvents) -> None:
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


def _measure_charts(measures: pd.DataFrame, events: runs.RunEvents) -> None:
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


def _progress_reporter(job: Job, config: GrokConfig) -> Callable[[dict[str, Any]], None]:
    """on_eval for a training job: step done of config.steps, with the seconds per step since the last row."""
    last: dict[str, float] = {}

    def on_eval(row: dict[str, Any]) -> None:
        seconds = None
        if last:
            seconds = (row["elapsed_s"] - last["elapsed_s"]) / max(row["step"] - last["step"], 1)
        last.update(step=row["step"], elapsed_s=row["elapsed_s"])
        job.progress(row["step"], config.steps, seconds=seconds)

    return on_eval


def _start_training(config: GrokConfig) -> bool:
    """Start (or resume) the run's training job unless it is finished and summarised; whether the run can
    be shown. Refused with its reason: someone else's run (read-only: shown; private: not), the person's
    jobs or disk quota over the server's limits, a run written by another process (shown, followed)."""
    run = _my_run(config)
    fresh = not run.exists()
    try:
        if not fresh and run.is_finished() and run.summary():
            if not access.can_read(TOPIC, run.run_id):
                access.claim_started_run(TOPIC, run.run_id, fresh=False)  # raises: someone else's, private
            return True  # reopened: nothing to write
        access.check_quota()
        access.check_jobs()
        access.claim_started_run(TOPIC, run.run_id, fresh, label=config.describe())
        run = runs.open_run(config, owner=access.me())
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return not fresh and access.can_read(TOPIC, run.run_id)

    def work(job: Job) -> runs.RunSummary:
        return ga.run_experiment(
            config,
            on_eval=_progress_reporter(job, config),
            stop=lambda: job.stopping,
            threads=TRAIN_THREADS,
            claim=False,
            owner=run.owner,
            max_checkpoints=access.limits().grok_checkpoints,
        )

    key = _job_key(run)
    try:
        access.start_job(
            key,
            lambda: RUNNER.start(
                key, work, label=config.describe(), run=run, total=config.steps, done=run.status()["step"]
            ),
            label=f"grokking run {run.run_id}",
            writes=lambda: [(TOPIC, run)],
        )
    except LabError as err:
        st.error(str(err), icon=":material/error:")
    return True


def _run_panel(run: runs.GrokRun, writable: bool) -> None:
    config = run.grok_config
    job = RUNNER.running(_job_key(run))
    status = run.status()
    metrics, measures, summary = ga.load_run(config, owner=run.owner)
    if job is not None:
        eta = job.eta_seconds()
        st.progress(
            min(1.0, job.done / config.steps),
            text=f"Training: step {job.done} of at most {config.steps}" + (f", ≤ {eta:.0f} s left" if eta else ""),
        )
        if writable and st.button("Stop", key="grok_stop", icon=":material/stop_circle:"):
            job.stop()
            st.toast("Stopping at the next step; the last checkpoint is kept.")
    elif run.is_claimed():
        st.info("This run is being trained by another session or process; the view follows it.", icon=":material/sync:")
    else:
        ended = RUNNER.get(_job_key(run))
        if ended is not None and ended.error:
            st.error(ended.error, icon=":material/error:")
    if status.get("state") == "stopped":
        resume = "Press Start to resume." if writable else "Only its owner can resume it."
        st.warning(f"Run {status['message']}. {resume}", icon=":material/pause_circle:")
    elif status.get("state") == "failed" and job is None:
        st.error(
            f"Run failed: {status.get('message')}. Its checkpoints are kept; press Start to resume.",
            icon=":material/error:",
        )
    if metrics.empty:
        st.info("No evaluation yet.")
        return
    is_llm = config.model == "llm"
    events = ga.run_events(metrics, measures, llm_measures=measures if is_llm else None)
    last = metrics.iloc[-1]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Step", int(last["step"]))
    m2.metric("Train accuracy", f"{last['train_acc']:.1%}")
    m3.metric("Test accuracy", f"{last['test_acc']:.1%}")
    m4.metric("Steps / s", f"{last['step'] / max(last['elapsed_s'], 1e-9):.0f}")
    _curves(metrics, events)
    st.subheader("Super-weight measures by checkpoint")
    if is_llm:
        _llm_measure_charts(measures, events)
    else:
        _measure_charts(measures, events)
    if summary is not None and job is None:
        st.subheader("Summary")
        st.success(ga.run_summary_text(summary), icon=":material/summarize:")
        labels = LLM_MEASURE_LABELS if is_llm else MEASURE_LABELS
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
        st.dataframe(onset_rows, hide_index=True)
        key = run.run_id
        d1, d2 = st.columns(2)
        d1.download_button("metrics.csv", metrics.to_csv(index=False), f"grok_{key}_metrics.csv", key="grok_dl_metrics")
        d2.download_button(
            "measures.csv", measures.to_csv(index=False), f"grok_{key}_measures.csv", key="grok_dl_measures"
        )
        st.caption(
            f"Run folder: `{run.path}` ({len(run.checkpoint_steps())} checkpoints, torch.load(weights_only=True))."
        )
    if is_llm and run.checkpoint_steps():
        _export_panel(run)


def _llm_measure_charts(measures: pd.DataFrame, events: runs.RunEvents) -> None:
    """The llm measures of every checkpoint (llm_measures.csv): causal effects on train and test, super
    activation, attention sink, key Fourier frequencies."""
    if measures.empty or len(measures) == 0:
        st.info("The measures appear at the first checkpoint.")
        return
    panels = [
        (["max_ppl_ratio_train", "max_ppl_ratio_test"], "max perplexity ratio, one weight zeroed", "log"),
        (["super_activation_bos", "bos_over_median"], "BOS super activation (max |y|, / median)", "log"),
        (["sink_share_max", "sink_share_mean"], "attention share on BOS", "linear"),
        (["n_key_frequencies"], "key Fourier frequencies", "linear"),
    ]
    cols = st.columns(4)
    for col, (columns, title, scale) in zip(cols, panels):
        present = [c for c in columns if c in measures]
        long = measures.melt("step", present)
        chart = (
            alt.Chart(long)
            .mark_line(point=True)
            .encode(
                x="step:Q",
                y=alt.Y("value:Q", title=title, scale=alt.Scale(type=scale)),
                color=alt.Color("variable:N", title=None, legend=alt.Legend(orient="bottom")),
                tooltip=["step:Q", "variable:N", alt.Tooltip("value:Q", format=".4g")],
            )
            .properties(height=260)
        )
        rule = _rule(events)
        col.altair_chart(chart + rule if rule is not None else chart, width="stretch")
    fires = measures[["step", "scan_fires_train", "scan_fires_test", "n_scan_candidates", "scan_candidates"]]
    st.dataframe(fires, hide_index=True, height=180)


def _export_panel(run: runs.GrokRun) -> None:
    """Any checkpoint of an llm run as a Hugging Face folder for the first tab's local-model picker."""
    steps = run.checkpoint_steps()
    c1, c2 = st.columns([1, 3])
    step = c1.selectbox("Checkpoint", steps, index=len(steps) - 1, key="grok_export_step")
    if c1.button("Open in the first tab", key="grok_export", icon=":material/open_in_new:"):
        try:
            folder = run.export_checkpoint(int(step))
        except LabError as err:
            st.error(str(err), icon=":material/error:")
            return
        c2.success(
            f"Paste this folder into the sidebar's **Other (HF id or local folder)**, then scan it in the first "
            f"tab:\n\n`{folder.resolve()}`",
            icon=":material/folder_open:",
        )


def _sweep_section(base: GrokConfig) -> None:
    st.subheader("Sweep: seeds × weight decays")
    c1, c2, c3 = st.columns([2, 2, 2])
    seeds_text = c1.text_input("Seeds", ",".join(map(str, default_of(SweepConfig, "seeds"))), key="grok_sweep_seeds")
    wds_text = c2.text_input(
        "Weight decays",
        ",".join(map(str, default_of(SweepConfig, "weight_decays"))),
        key="grok_sweep_wds",
        help=help_of(SweepConfig, "weight_decays"),
    )
    measure = c3.selectbox(
        "Onset measure",
        MEASURES,
        index=MEASURES.index(default_of(SweepConfig, "measure")),
        format_func=MEASURE_LABELS.get,
        key="grok_sweep_measure",
        help=help_of(SweepConfig, "measure"),
    )
    try:
        seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
        wds = [float(s) for s in wds_text.split(",") if s.strip()]
        if not seeds or not wds:
            raise ValueError
        for wd in wds:
            validate(base.replace(weight_decay=wd))
    except ValueError:
        st.error("Seeds and weight decays: comma-separated numbers, at least one of each.", icon=":material/error:")
        return
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return
    configs = ga.sweep_configs(base, seeds, wds)
    if access.refuse_over("sweep_runs", len(configs), "Runs in this sweep"):
        return
    me = access.me()
    sweep_key = "grokking-sweep:" + run_id_for({"runs": [c.key(me) for c in configs]})
    if st.button(
        f"Run sweep ({len(configs)} runs, cached ones reopen instantly)",
        key="grok_sweep_start",
        icon=":material/play_arrow:",
    ):

        def work(job: Job) -> list[runs.RunSummary]:
            summaries: list[runs.RunSummary] = []
            job.result = summaries  # the summaries so far, for every session watching the sweep

            def on_run(summary: runs.RunSummary, done: int, total: int) -> None:
                summaries.append(summary)
                job.progress(done, total)

            ga.run_sweep(
                base,
                seeds,
                wds,
                stop=lambda: job.stopping,
                on_start=lambda c, done, total: job.progress(done, total, f"seed {c.seed}, wd {c.weight_decay:g}"),
                on_run=on_run,
                threads=TRAIN_THREADS,
                owner=me,
                max_checkpoints=access.limits().grok_checkpoints,
            )
            return summaries

        label = f"grokking sweep of {len(configs)} runs"
        try:
            if RUNNER.running(sweep_key) is None:
                _claim_sweep(configs)
            elif not access.is_my_job(sweep_key):
                raise LabError("This sweep is already running in another of your sessions: wait until it ends.")
            access.start_job(
                sweep_key,
                lambda: RUNNER.start(sweep_key, work, label=label, total=len(configs)),
                label=label,
                writes=lambda: [(TOPIC, _my_run(c)) for c in configs],
            )
        except LabError as err:
            st.error(str(err), icon=":material/error:")
            return
        remember(SWEEP_SLOT, sweep_key, sweep_key)
    if recall(SWEEP_SLOT, sweep_key) is None:
        return
    alive = RUNNER.running(sweep_key) is not None

    @st.fragment(run_every=POLL_SECONDS if alive else None)
    def sweep_panel() -> None:
        job = RUNNER.get(sweep_key)
        if job is None:
            return
        if job.running:
            st.progress(
                job.done / max(job.total or 1, 1),
                text=f"Sweep: {job.done} of {job.total} runs done; now {job.message}",
            )
            if st.button("Stop sweep", key="grok_sweep_stop", icon=":material/stop_circle:"):
                job.stop()
        if job.error:
            st.error(job.error, icon=":material/error:")
        summaries = list(job.result or [])
        if not summaries:
            return
        table = ga.sweep_table(summaries, measure)
        stats = ga.connection(table)
        points = table[table["onset_step"].notna() & table["grokked"].astype(bool)]
        scatter = (
            alt.Chart(points if len(points) else pd.DataFrame(columns=table.columns))
            .mark_point(filled=True, size=80)
            .encode(
                x=alt.X("onset_step:Q", title=f"{MEASURE_LABELS[measure]} onset (step)"),
                y=alt.Y("grok_95_step:Q", title=f"grokking step (test {GROK_ACCURACY:.0%})"),
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
        if alive and not job.running:
            st.rerun()  # the sweep ended: redraw without polling

    sweep_panel()


def _claim_sweep(configs: list[GrokConfig]) -> None:
    """Before a sweep starts: the person's disk quota and jobs, then every run of it made theirs (a new one is
    created at once, so nobody else can take it while the sweep goes); someone else's finished run is only
    read, an unfinished one refuses the sweep."""
    access.check_quota()
    access.check_jobs()
    for config in configs:
        run = _my_run(config)
        fresh = not run.exists()
        if not fresh and run.is_finished() and run.summary() and access.can_read(TOPIC, run.run_id):
            continue
        access.claim_started_run(TOPIC, run.run_id, fresh, label=config.describe())
        runs.open_run(config, owner=access.me())


def _show(run: runs.GrokRun) -> None:
    remember(VIEW_SLOT, run.run_id, run)


def _reopen_picker() -> None:
    saved = {run.run_id: run for run in access.readable(TOPIC, runs.list_runs())}
    if saved:
        labels = {}
        for run_id, run in saved.items():
            status = run.status()
            labels[run_id] = (
                f"{run.grok_config.describe()} — {status.get('state', '?')} at step {status.get('step', 0)} "
                f"· {access.owner_label(access.access_of(TOPIC, run_id))}"
            )
        pick = st.selectbox(
            "Reopen a cached run", ["—", *labels], format_func=lambda k: labels.get(k, k), key="grok_reopen"
        )
        if pick != "—" and st.session_state.get("grok_reopened") != pick:
            st.session_state["grok_reopened"] = pick
            _show(saved[pick])
        if (
            pick != "—"
            and access.can_write(TOPIC, pick)
            and st.button("Delete this cached run", key="grok_delete", icon=":material/delete:")
        ):
            try:
                runs.delete_run(pick)
            except LabError as err:
                st.error(str(err), icon=":material/error:")
                return
            access.forget_deleted(TOPIC, pick)
            access.set_link(None)
            st.session_state.pop("grok_reopened", None)
            st.session_state.pop("grok_reopen", None)
            shown = latest(VIEW_SLOT)
            if shown is not None and shown[0] == pick:
                forget(VIEW_SLOT)
            st.rerun()
    strays = access.deletable_strays(TOPIC, runs.strays())
    if strays:
        c1, c2 = st.columns([3, 1])
        c1.caption(
            f"{len(strays)} cached run folder(s) from an older version of the lab (or half-written): they cannot be "
            f"opened. {', '.join(f.run_id for f in strays[:5])}{' …' if len(strays) > 5 else ''}"
        )
        if c2.button("Delete them", key="grok_delete_strays", icon=":material/delete_sweep:"):
            problems = []
            for folder in strays:
                try:
                    runs.delete_run(folder)
                    access.forget_deleted(TOPIC, folder.run_id)
                except LabError as err:
                    problems.append(str(err))
            if problems:
                st.error(problems[0], icon=":material/error:")
                return
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
    linked, blocked = access.follow_link(TOPIC, runs.get_run, "grok")
    if blocked:
        return
    if linked is not None:
        _show(linked)
    config = _config_form()
    if config is None:
        return
    start = st.button("Start / resume / reopen", key="grok_start", icon=":material/play_arrow:", type="primary")
    _reopen_picker()
    if start and _start_training(config):
        _show(_my_run(config))
    shown = latest(VIEW_SLOT)
    if shown is not None and not access.can_read(TOPIC, shown[1].run_id):  # its owner made it private since
        forget(VIEW_SLOT)
        st.warning(access.PRIVATE_NOTICE, icon=":material/lock:")
        shown = None
    if shown is None:
        st.info("Press Start to train the configuration above (or reopen a cached run).")
    else:
        run: runs.GrokRun = shown[1]
        st.caption(f"Showing: {run.grok_config.describe()} (key {run.run_id})")
        access.set_link(run.run_id)
        writable = access.share_toggle(TOPIC, run.run_id, "grok").writable_by(access.me())
        if run.grok_config != config:
            st.warning(
                "The settings above differ from the run shown: press Start to train (or reopen) them.",
                icon=":material/sync_problem:",
            )
        live_now = RUNNER.running(_job_key(run)) is not None or run.is_claimed()

        @st.fragment(run_every=POLL_SECONDS if live_now else None)
        def live() -> None:
            _run_panel(run, writable)
            if live_now and RUNNER.running(_job_key(run)) is None and not run.is_claimed():
                st.rerun()  # the run ended: redraw the whole tab without polling

        live()
    st.divider()
    _sweep_section(config)
