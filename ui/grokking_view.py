"""Grokking lab tab: train a small model on (a o b) mod p, watch it grok, and track super weights.

Training and sweeps run as jobs of engine.core.jobs.RUNNER (one per run or sweep, shared by every
session that asks for the same one; a training job holds its run's claim); each job trains in a child
process (engine.core.processes: no GIL contention with the other sessions, and an out-of-memory there
does not end the server), which writes the run folders; the page polls them with a fragment
(ui.errors.lab_fragment), so several users can train at once,
a reload loses nothing, and a run trained by another process (the CLI) is followed too.

On the shared server (ui.access): a person owns the runs they start; they see their own runs, shared
runs and runs made outside the server, and only the owner stops, deletes, resumes or shares a run.
`?run=<id>` opens a run (a private run of someone else opens a notice and nothing of it). Steps and
sweep size are checked against the server's limits; starting checks the person's long jobs and disk quota.
A person's runs have their owner id in the run key (engine.grokking.runs), so two people training the same
configuration never share (or collide on) a run; runs made outside the server (the CLI) keep their ids.

The address bar holds the view (issue 13): `run` (the run shown, ui.access), every setting of the form
(`grok_task`, `grok_p`, ... bound to query parameters), the selected checkpoint (`grok_step`) and the sweep's
inputs (`grok_sweep_seeds`, `grok_sweep_wds`, `grok_sweep_measure`); a reload or a copied link opens the same
view, the runs coming back from the run store on disk. A bad field shows its reason under it and turns off
only the Start buttons it feeds: the run shown, its charts, the run list and the sweep stay. A click on a
curve selects the nearest checkpoint (a rule on every chart), and the checkpoint's detail follows.

The LLM-shaped model (a Llama decoder on [BOS, a, op, b, =], engine.grokking.llm) is one click away; its
runs are measured with engine.grokking.llm_measures at every checkpoint (the first tab's super-weight scan +
causal test on train and test, super activations, attention sinks, key Fourier frequencies), can be
trained with super-weight suppression, and every checkpoint exports as a local model for the first tab.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.options import default_of, help_of
from engine.core.processes import StopTimeout, run_in_process
from engine.core.runstore import run_id_for
from engine.grokking import analysis as ga
from engine.grokking import process as grok_process
from engine.grokking import runs
from engine.grokking.config import (
    GROK_ACCURACY,
    HALF_GROK_ACCURACY,
    INVERSE_TASKS,
    LLM_MAX_LAYERS,
    LLM_MEASURE_LABELS,
    LLM_MIN_LAYERS,
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
    is_prime,
    n_pairs,
    validate,
    validate_suppression,
)
from engine.grokking.measures import MeasureSettings
from ui import access
from ui.errors import lab_fragment
from ui.fields import between
from ui.figures import show_chart
from ui.progress import eta_seconds, eta_text
from ui.state import forget, latest, recall, remember

POLL_SECONDS = 1.0
TOPIC = runs.CACHE_TOPIC  # the runs' topic in the lab database
DEFAULTS = GrokConfig()
EVALS_PER_CHECKPOINT = DEFAULTS.checkpoint_every // DEFAULTS.eval_every  # the form keeps the defaults' ratio
VIEW_SLOT = "grok_view"  # the run shown: the last one started or reopened
SWEEP_SLOT = "grok_sweep"  # the sweep job started for exactly these sweep inputs
P_MAX = 2000  # largest p on this page (the command line takes any p its memory estimate allows)
STEP_KEY = "grok_step"  # the selected checkpoint (a query parameter)
NEWEST = "newest"  # the picker's first option: the newest checkpoint, followed while the run trains
PICK = "grok_pick"  # the charts' click selection: the step clicked
START_SLOT = "start"  # where a problem of the whole configuration is shown: right above Start
SELECTED = "selected checkpoint"
MODEL_FORMAT = {"mlp": "one-hot MLP", "transformer": "transformer", "llm": "LLM-shaped (Llama)"}
MODEL_HELP = (
    "**one-hot MLP**: an MLP on the concatenated one-hot codes of a and b (Prieto et al. 2025). "
    f"**transformer**: d_model {DEFAULTS.d_model}, {DEFAULTS.n_heads} heads, no LayerNorm (Nanda et al. 2023). "
    "**LLM-shaped**: a Llama decoder (RMSNorm, gated MLP, RoPE, BOS)."
)
# measured: `python -m engine grok` (the defaults, 1650 steps) took 19 s wall on the 2-core CPU of the lab
# server while other work ran; the issue saw 110 s on a fully busy one
DEFAULT_TAKES = "about 20 s on an idle 2-core CPU, up to about 2 min when the server is busy"
LLM_PRESET_LABEL = "LLM-shaped (Llama)"
LLM_WHY_SLOWER = (
    f"The one-hot MLP default takes {DEFAULT_TAKES}: one matrix product per layer on 2p inputs. The LLM-shaped "
    f"model ({LLM_PRESET['n_layers']} Llama layers, d_model {LLM_PRESET['d_model']}, d_mlp {LLM_PRESET['d_mlp']}) "
    "runs attention, RMSNorm, RoPE and a gated MLP over 5 positions per example, and its measures run the "
    "super-weight scan and causal tests at every checkpoint: expect minutes on a CPU (it trains on CUDA when "
    "present). It is the model where 'super weight' means what it means in the first tab."
)
AXIS = {"labelLimit": 0, "titleLimit": 0}
CHART_FRAME = 170  # px of a step chart's height outside its plot and legends: title, x axis, paddings (measured)
LEGEND_ROW = 24  # px a legend row takes
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


# ------------------------------------------------------------------------------------------------ the form


class _Form:
    """The settings form's problems, each shown right under its field (a slot made below every field):
    widgets have no bounds that would silently keep an old value, every range is checked here."""

    def __init__(self) -> None:
        self.slots: dict[str, Any] = {}
        self.problems: dict[str, str] = {}

    def number(
        self,
        col: Any,
        label: str,
        key: str,
        value: float,
        check: Callable[[Any], str | None],
        **kwargs: Any,
    ) -> Any:
        """A number field bound to the query parameter `key`, its problem (check(value)) shown under it.

        `value` is the field's real default, never None with the value kept in the session state only: a browser
        that draws a field without the run that carried its value (a busy server stops runs for newer ones)
        shows the widget's default and sends it back, which left "Layers" empty (benchmarks/soak.py)."""
        number = col.number_input(label, value=value, key=key, bind="query-params", **kwargs)
        self.slots[key] = col.empty()
        self.refuse(key, f"{label}: enter a number." if number is None else check(number))
        return number

    def refuse(self, key: str, message: str | None) -> None:
        if message and key not in self.problems:
            self.problems[key] = message

    def show(self) -> None:
        for key, message in self.problems.items():
            self.slots[key].error(message, icon=":material/error:")


def nearest_prime(p: int, high: int = P_MAX) -> int:
    """The prime in [3, high] nearest to p (the smaller one on a tie): a suggestion the page accepts."""
    candidates = [q for q in range(3, high + 1) if is_prime(q)]
    return min(candidates, key=lambda q: (abs(q - p), q))


def prime_problem(task: str, p: int) -> str | None:
    """Why p cannot be used for a task that needs inverses mod p (engine.grokking.config.validate's rule),
    with a prime this page accepts to try; None when p is fine."""
    if task not in INVERSE_TASKS or is_prime(p):
        return None
    return (
        f"{TASK_LABELS[task]} needs every b ≠ 0 to have an inverse mod p, which holds only for prime p; "
        f"{p} is not prime (try {nearest_prime(p)})."
    )


def field_of_error(config: GrokConfig) -> str:
    """The form field a `validate(config)` refusal is about (its message is shown under that field), or
    START_SLOT for a problem of the whole configuration (the memory estimate)."""
    if config.task in INVERSE_TASKS and not is_prime(config.p):
        return "grok_p"
    if not 0 < config.train_frac < 1 or not 1 <= int(round(config.train_frac * n_pairs(config))) < n_pairs(config):
        return "grok_frac"
    if config.model == "llm" and (config.d_model % max(config.n_heads, 1) or (config.d_model // config.n_heads) % 2):
        return "grok_heads"
    if config.model != "llm" and (config.n_layers not in range(1, MAX_LAYERS + 1)):
        return "grok_layers"
    if config.suppress:
        return "grok_sup_q"
    return START_SLOT


def _layers_check(model: str) -> Callable[[int], str | None]:
    if model == "llm":
        return between(
            "Layers",
            LLM_MIN_LAYERS,
            LLM_MAX_LAYERS,
            note=" for the LLM-shaped model (its super-weight rule compares a layer with the median over layers)",
        )
    return between("Layers", 1, MAX_LAYERS)


FORM_FIELDS = {  # form key (query parameter) -> GrokConfig field
    "grok_task": "task",
    "grok_p": "p",
    "grok_frac": "train_frac",
    "grok_model": "model",
    "grok_layers": "n_layers",
    "grok_seed": "seed",
    "grok_lr": "lr",
    "grok_wd": "weight_decay",
    "grok_beta2": "beta2",
    "grok_grokfast": "grokfast",
    "grok_batch": "batch_size",
    "grok_steps": "steps",
    "grok_eval": "eval_every",
}
LLM_FORM_FIELDS = {
    "grok_d_model": "d_model",
    "grok_heads": "n_heads",
    "grok_d_mlp": "d_mlp",
    "grok_suppress": "suppress",
    "grok_sup_q": "suppress_quantile",
    "grok_sup_c": "suppress_factor",
    "grok_sup_every": "suppress_every",
}


def _fill_form(config: GrokConfig) -> None:
    """A link to a run that carries no settings (`?run=<id>` alone): the form set to the run's settings,
    before its widgets are drawn (a link with settings keeps them: they are what its sender saw)."""
    fields = FORM_FIELDS | (LLM_FORM_FIELDS if config.model == "llm" else {})
    if any(key in st.query_params for key in fields):
        return
    for key, name in fields.items():
        preset = key in ("grok_model", "grok_layers", "grok_d_model", "grok_heads", "grok_d_mlp")  # no default
        if preset or getattr(config, name) != getattr(DEFAULTS, name) or key in st.session_state:
            st.session_state[key] = getattr(config, name)


def _config_form() -> GrokConfig | None:
    """The settings (each bound to its query parameter); the configuration, or None when a field has a
    problem (shown under it; Start is then off)."""
    d = DEFAULTS
    form = _Form()
    st.button(
        LLM_PRESET_LABEL,
        key="grok_llm_preset",
        icon=":material/neurology:",
        on_click=_apply_llm_preset,
        help="One click: the LLM-shaped model. " + LLM_WHY_SLOWER,
    )
    c1, c2, c3, c4 = st.columns(4)
    task = c1.selectbox("Task", list(TASK_LABELS), format_func=TASK_LABELS.get, key="grok_task", bind="query-params")
    p = form.number(
        c1,
        "p (modulus)",
        "grok_p",
        d.p,
        between("p", 3, P_MAX, note=" on this page (the command line takes larger p)"),
        step=1,
        help=help_of(GrokConfig, "p") + f"; 3 to {P_MAX} here.",
    )
    if p is not None and "grok_p" not in form.problems:
        form.refuse("grok_p", prime_problem(task, int(p)))
    frac = form.number(
        c1,
        "Train fraction",
        "grok_frac",
        d.train_frac,
        lambda v: None if 0 < v < 1 else f"Train fraction must be strictly between 0 and 1 (got {v:g}).",
        step=0.05,
        help=help_of(GrokConfig, "train_frac"),
    )
    model = c2.selectbox(
        "Model",
        MODEL_KINDS,
        index=list(MODEL_KINDS).index(d.model),
        key="grok_model",
        format_func=MODEL_FORMAT.get,
        help=MODEL_HELP,
        bind="query-params",
    )
    is_llm = model == "llm"
    layers = form.number(
        c2, "Layers", "grok_layers", d.n_layers, _layers_check(model), step=1, help=help_of(GrokConfig, "n_layers")
    )
    seed = form.number(
        c2, "Seed", "grok_seed", d.seed, between("Seed", 0, 2**31 - 1), step=1, help=help_of(GrokConfig, "seed")
    )
    lr = form.number(
        c3, "Learning rate", "grok_lr", d.lr, between("Learning rate", 0, 1, low_open=True), format="%.4g", step=1e-4
    )
    wd = form.number(c3, "Weight decay", "grok_wd", d.weight_decay, between("Weight decay", 0, 100), step=0.1)
    beta2 = form.number(
        c3, "AdamW β2", "grok_beta2", d.beta2, between("β2", 0, 1, high_open=True), format="%.4f", step=0.001
    )
    grokfast = c4.checkbox(
        "Grokfast EMA filter",
        d.grokfast,
        key="grok_grokfast",
        bind="query-params",
        help=f"g ← g + λ·EMA_α(g), α = {d.grokfast_alpha:g}, λ = {d.grokfast_lamb:g} (Lee et al. 2024): "
        "amplifies slow gradient components.",
    )
    batch = form.number(
        c4,
        "Batch size (0 = full batch)",
        "grok_batch",
        d.batch_size,
        lambda v: None if v >= 0 else f"Batch size must be >= 0 (0 = full batch; got {v}).",
        step=1,
    )
    steps = form.number(
        c4,
        "Max steps",
        "grok_steps",
        d.steps,
        lambda v: "Max steps must be >= 1." if v < 1 else access.over_limit("grok_steps", v, "Max steps"),
        step=100,
        help=f"The run ends {d.stop_after_grok} steps after test accuracy first reaches {GROK_ACCURACY:.0%}, "
        "or at this step." + access.limit_note("grok_steps", "steps"),
    )
    eval_every = form.number(
        c4,
        "Evaluate every (steps)",
        "grok_eval",
        d.eval_every,
        lambda v: None if v >= 1 else f"Evaluate every: at least 1 step (got {v}).",
        step=1,
        help=f"One metrics row per evaluation; a checkpoint (with all measures) every {EVALS_PER_CHECKPOINT} "
        "evaluations.",
    )
    sizes: dict[str, Any] = {}
    suppression: dict[str, Any] = {}
    if is_llm:
        st.caption(LLM_WHY_SLOWER)
        s1, s2, s3, s4 = st.columns(4)
        sizes = {
            "d_model": form.number(
                s1, "d_model", "grok_d_model", LLM_PRESET["d_model"], between("d_model", 8, 512), step=8
            ),
            "n_heads": form.number(s2, "Heads", "grok_heads", LLM_PRESET["n_heads"], between("Heads", 1, 16), step=1),
            "d_mlp": form.number(s3, "d_mlp", "grok_d_mlp", LLM_PRESET["d_mlp"], between("d_mlp", 8, 2048), step=8),
        }
        if s4.checkbox(
            "Suppress super weights",
            False,
            key="grok_suppress",
            bind="query-params",
            help=help_of(GrokConfig, "suppress"),
        ):
            q1, q2, q3 = st.columns(3)
            suppression = {
                "suppress": True,
                "suppress_quantile": form.number(
                    q1,
                    "Clip quantile q",
                    "grok_sup_q",
                    d.suppress_quantile,
                    between("q", 0, 1, low_open=True),
                    step=0.0005,
                    format="%.4f",
                    help=help_of(GrokConfig, "suppress_quantile"),
                ),
                "suppress_factor": form.number(
                    q2,
                    "Clip factor c",
                    "grok_sup_c",
                    d.suppress_factor,
                    between("c", 0, 100, low_open=True),
                    step=0.1,
                    help=help_of(GrokConfig, "suppress_factor"),
                ),
                "suppress_every": form.number(
                    q3,
                    "Clip every (steps)",
                    "grok_sup_every",
                    d.suppress_every,
                    between("Clip every", 1, 10_000),
                    step=1,
                    help=help_of(GrokConfig, "suppress_every"),
                ),
            }
    form.slots[START_SLOT] = st.empty()
    config = None
    if not form.problems:
        config = d.replace(
            **{name: int(value) for name, value in sizes.items()},
            **{name: type(getattr(d, name))(value) for name, value in suppression.items()},
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
            if config.suppress:
                validate_suppression(config.suppress_quantile, config.suppress_factor, config.suppress_every)
            validate(config)
        except LabError as err:
            form.refuse(field_of_error(config), str(err))
            config = None
    form.show()
    return config


# ------------------------------------------------------------------------------------------------ charts


def step_from_selection(state: Any, steps: Sequence[int]) -> int | None:
    """The checkpoint nearest to the step clicked in a chart, or None (nothing clicked, no checkpoints).

    `state`: Streamlit's chart selection state, {"selection": {PICK: [{"step": 325.0}, ...]}}; the last
    point with a step counts; ties go to the earlier checkpoint."""
    try:
        points = (state or {}).get("selection", {}).get(PICK) or []
    except AttributeError:
        return None
    if isinstance(points, dict):
        points = [points]
    clicked = [float(p["step"]) for p in points if isinstance(p, dict) and p.get("step") is not None]
    if not clicked or not steps:
        return None
    return int(min(steps, key=lambda s: (abs(s - clicked[-1]), s)))


def _on_pick(chart_key: str, steps: Sequence[int]) -> None:
    """on_select of a curve: the checkpoint nearest to the click becomes the selected one (the picker's
    session state is set before it is drawn again)."""
    step = step_from_selection(st.session_state.get(chart_key), steps)
    if step is not None:
        st.session_state[STEP_KEY] = step


def _event_marks(events: runs.RunEvents, selected: int | None) -> alt.LayerChart | None:
    """The events as dashed gray rules and the selected checkpoint as a red rule, with a legend."""
    rows = [
        {"step": step, "event": label}
        for step, label in (
            (events["memorisation_step"], f"train acc {MEMORISATION_ACCURACY:.0%}"),
            (events["grok_50_step"], f"test acc {HALF_GROK_ACCURACY:.0%}"),
            (events["grok_95_step"], f"test acc {GROK_ACCURACY:.0%}"),
        )
        if step is not None
    ]
    if selected is not None:
        rows.append({"step": selected, "event": SELECTED})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    dashes = {SELECTED: [1, 0]}
    patterns = iter([[5, 3], [2, 2], [8, 3]])
    domain = list(dict.fromkeys(frame["event"]))
    legend = alt.Legend(  # two columns small enough for a chart a third of the page wide
        orient="bottom", labelLimit=0, titleLimit=0, columns=2, titleOrient="top", labelFontSize=11, columnPadding=6
    )
    dash = alt.StrokeDash(
        "event:N",
        title="events",
        scale=alt.Scale(domain=domain, range=[dashes.get(e) or next(patterns) for e in domain]),
        legend=legend,
    )
    color = alt.Color(  # the same field and title as the dashes: one legend, red for the selected checkpoint
        "event:N",
        title="events",
        scale=alt.Scale(domain=domain, range=["#d62728" if e == SELECTED else "gray" for e in domain]),
        legend=legend,
    )
    base = alt.Chart(frame).encode(x="step:Q", strokeDash=dash, color=color, tooltip=["event:N", "step:Q"])
    others = base.transform_filter(alt.datum.event != SELECTED).mark_rule()
    chosen = base.transform_filter(alt.datum.event == SELECTED).mark_rule(strokeWidth=2)
    return alt.layer(others, chosen)


def _step_chart(
    frame: pd.DataFrame,
    y: alt.Y,
    color: str,
    title: str,
    marks: alt.LayerChart | None,
    *,
    points: bool = False,
    tooltip: list | None = None,
    height: int = 200,
    columns: int = 2,
) -> alt.LayerChart:
    """Lines over steps, an invisible layer that picks the nearest point on a click (PICK), the event rules.

    `height` is the plot's: on a page Streamlit fits the whole chart (title, axes, legends) into the
    spec's height, so the legends' rows are added to it (the series legend on top, `columns` a row,
    the events legend below the x axis)."""
    n_series = max(1, int(frame[color].nunique())) if color in frame else 1
    legend_rows = -(-n_series // columns) + (3 if marks is not None else 0)  # events: title + 2 rows
    lines = (
        alt.Chart(frame)
        .mark_line(point=points)
        .encode(
            x=alt.X("step:Q", title="step", axis=alt.Axis(**AXIS)),
            y=y,
            color=alt.Color(f"{color}:N", title=None, legend=alt.Legend(orient="top", labelLimit=0, columns=columns)),
            tooltip=tooltip or ["step:Q", f"{color}:N"],
        )
    )
    pick = alt.selection_point(name=PICK, fields=["step"], on="click", nearest=True, empty=False)
    picker = alt.Chart(frame).mark_point(opacity=0, size=120).encode(x="step:Q", y=y).add_params(pick)
    layers = [lines, picker] + ([marks] if marks is not None else [])
    return (
        alt.layer(*layers)
        .resolve_scale(color="independent", strokeDash="independent")
        .properties(
            height=height + CHART_FRAME + LEGEND_ROW * legend_rows,
            title=alt.TitleParams(title, anchor="start", limit=0, fontSize=13),
        )
    )


def _show_step_charts(
    charts: list[tuple[alt.LayerChart, str, str, pd.DataFrame]], steps: Sequence[int], per_row: int
) -> None:
    """Each (chart, file name, key, CSV data) via ui.figures.show_chart, `per_row` to a row; a click on one
    picks the nearest checkpoint."""
    for start in range(0, len(charts), per_row):
        cols = st.columns(per_row)
        for col, (chart, name, key, data) in zip(cols, charts[start : start + per_row]):
            with col:
                show_chart(
                    chart,
                    name,
                    key=key,
                    data=data,
                    on_select=(lambda k=key: _on_pick(k, steps)) if steps else "ignore",
                    selection_mode=PICK if steps else None,
                )


def _curves(metrics: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
    names = {
        "train_acc": "train",
        "test_acc": "test",
        "train_loss": "train",
        "test_loss": "test",
        "weight_norm": "‖w‖₂ (all weights)",
    }
    long = metrics.melt("step", list(names), var_name="column")
    long["series"] = long["column"].map(names)
    charts = []
    for cols, title, axis_title, scale, key in (
        (["train_acc", "test_acc"], "Accuracy", "accuracy", alt.Scale(domain=[0, 1]), "grok_chart_acc"),
        (["train_loss", "test_loss"], "Loss (log scale)", "cross-entropy", alt.Scale(type="log"), "grok_chart_loss"),
        (["weight_norm"], "Weight norm", "‖w‖₂", alt.Scale(zero=False), "grok_chart_norm"),
    ):
        frame = long[long["column"].isin(cols)]
        log = scale.to_dict().get("type") == "log"  # short tick labels (1e-6, not 0.000001)
        y = alt.Y("value:Q", title=axis_title, scale=scale, axis=alt.Axis(**AXIS, **({"format": "~e"} if log else {})))
        tooltip = ["step:Q", "series:N", alt.Tooltip("value:Q", format=".4g")]
        chart = _step_chart(frame, y, "series", title, marks, tooltip=tooltip, height=200)
        charts.append((chart, f"grokking_{key.removeprefix('grok_chart_')}", key, metrics[["step", *cols]]))
    _show_step_charts(charts, steps, per_row=3)


def _measure_charts(measures: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
    if measures.empty:
        st.info("Super-weight measures appear at the first checkpoint.")
        return
    w = measures[measures["kind"] == "weight"]
    a = measures[measures["kind"] == "activation"]
    panels = [
        (w, "max_over_median", "max / median |w|", "Weight outliers: max|w| / median|w| per matrix", "ratio"),
        (w, "kurtosis", "excess kurtosis", "Excess kurtosis of each matrix's weights", "kurtosis"),
        (w, "drop_top1", "test-acc drop", "Test-accuracy drop when a matrix's top-1 |w| is zeroed", "drop"),
        (a, "max_over_median", "max / median |a|", "Massive activations: max|a| / median|a| per layer", "act"),
    ]
    charts = []
    for frame, column, axis_title, title, short in panels:
        y = alt.Y(f"{column}:Q", title=axis_title, axis=alt.Axis(**AXIS))
        tooltip = ["step:Q", "name:N", alt.Tooltip(f"{column}:Q", format=".4g")] + (
            ["argmax:N"] if column != "max_over_median" or frame is w else []
        )
        chart = _step_chart(frame, y, "name", title, marks, points=True, tooltip=tooltip, height=220, columns=3)
        charts.append((chart, f"grokking_measure_{short}", f"grok_chart_m_{short}", frame))
    _show_step_charts(charts, steps, per_row=2)


def _llm_measure_charts(measures: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
    """The llm measures of every checkpoint (llm_measures.csv): causal effects on train and test, super
    activation, attention sink, key Fourier frequencies."""
    if measures.empty or len(measures) == 0:
        st.info("The measures appear at the first checkpoint.")
        return
    panels = [
        (
            ["max_ppl_ratio_train", "max_ppl_ratio_test"],
            "ppl ratio",
            "Largest perplexity ratio, one weight zeroed",
            "log",
        ),
        (
            ["super_activation_bos", "bos_over_median"],
            "activation",
            "Super activation at BOS (max |y|, / median)",
            "log",
        ),
        (["sink_share_max", "sink_share_mean"], "share", "Attention share on BOS (sink)", "linear"),
        (["n_key_frequencies"], "frequencies", "Key Fourier frequencies of the number embedding", "linear"),
    ]
    charts = []
    for i, (columns, axis_title, title, scale) in enumerate(panels):
        present = [c for c in columns if c in measures]
        long = measures.melt("step", present)
        y = alt.Y("value:Q", title=axis_title, scale=alt.Scale(type=scale), axis=alt.Axis(**AXIS))
        tooltip = ["step:Q", "variable:N", alt.Tooltip("value:Q", format=".4g")]
        chart = _step_chart(long, y, "variable", title, marks, points=True, tooltip=tooltip, height=220)
        charts.append((chart, f"grokking_llm_measure_{i}", f"grok_chart_llm_{i}", measures[["step", *present]]))
    _show_step_charts(charts, steps, per_row=2)


def _checkpoint_steps(measures: pd.DataFrame) -> list[int]:
    return sorted({int(s) for s in measures["step"]}) if "step" in measures and len(measures) else []


def _checkpoint_picker(steps: Sequence[int]) -> int | None:
    """The selected checkpoint (query parameter grok_step), or None before any. Its first option, NEWEST, follows
    the newest checkpoint while the run trains: the page never writes a step into the widget itself, so a rerun
    that the browser asked for with an older state cannot pin the view to an old checkpoint."""
    if not steps:
        return None
    chosen = st.session_state.get(STEP_KEY)  # None before the widget's first run (a link's ?grok_step seeds it)
    if chosen is not None and chosen not in (NEWEST, *steps):
        st.session_state[STEP_KEY] = NEWEST  # another run's checkpoint
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    choice = c1.selectbox(
        "Checkpoint (step)",
        [NEWEST, *steps],
        key=STEP_KEY,
        bind="query-params",
        format_func=str,  # the URL holds these labels: ?grok_step=80; none while it shows the newest
        help="The checkpoint whose detail is shown below the charts; a click on a chart picks the nearest one. "
        f"'{NEWEST}' follows the newest checkpoint while the run trains.",
    )
    c2.caption("Click a chart to pick the nearest checkpoint: the red line marks it on every chart.")
    return steps[-1] if choice == NEWEST else int(choice)


def _checkpoint_detail(metrics: pd.DataFrame, measures: pd.DataFrame, step: int, is_llm: bool) -> None:
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
            table = pd.DataFrame({"measure": values.index, "value": [str(v) for v in values.to_numpy()]})
            st.dataframe(table, hide_index=True, height=300)
        return
    shown = [
        c
        for c in ("kind", "name", "max_over_median", "kurtosis", "argmax", "drop_top1", "drop_topk", "drop_random")
        if c in rows
    ]
    table = rows[shown + (["is_super"] if "is_super" in rows else [])].rename(
        columns={
            "max_over_median": "max/median",
            "drop_top1": "acc drop, top-1 zeroed",
            "drop_topk": f"acc drop, top-{_MEASURE.k} zeroed",
            "drop_random": f"acc drop, {_MEASURE.k} random zeroed",
            "argmax": "largest |w| at",
            "is_super": "super weight",
        }
    )
    st.dataframe(table, hide_index=True)


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


def _stopped_if_running(run: runs.GrokRun) -> None:
    """After a training child was ended for being slow to stop (StopTimeout): a run it left saying "running"
    is stopped at its last checkpoint (where Start resumes it), as the user asked."""
    if run.status().get("state") == "running":
        step = max(run.checkpoint_steps(), default=0)
        run.set_status("stopped", step, f"stopped at step {step} (its last checkpoint; it resumes from there)")


def _start_training(config: GrokConfig) -> bool:
    """Start (or resume) the run's training job unless it is finished and summarised; whether the run can
    be shown. Refused with its reason: someone else's run (read-only: shown; private: not), the person's
    jobs or disk quota over the server's limits, a run written by another process (shown, followed)."""
    run = _my_run(config)
    fresh = not run.exists()
    if not fresh and RUNNER.running(_job_key(run)) is not None and access.can_read(TOPIC, run.run_id):
        return True  # already training (this or another session of theirs): nothing new starts, nothing to check
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

    def work(job: Job) -> runs.RunSummary | None:
        """In a child process (engine.core.processes), under this job's claim of the run (claim=False there).
        A child ended because it was slow to stop (StopTimeout: a busy server, a niced child) leaves the run
        stopped at its last checkpoint, as the user asked, not failed."""
        on_eval = _progress_reporter(job, config)
        kwargs = dict(
            config=config,
            threads=TRAIN_THREADS,
            claim=False,
            owner=run.owner,
            max_checkpoints=access.limits().grok_checkpoints,
        )
        try:
            return run_in_process(grok_process.train_run, kwargs, job=job, on_message=lambda m: on_eval(m[1]))
        except StopTimeout:
            _stopped_if_running(run)
            return None
        except LabError as err:
            if run.status().get("state") == "running":  # the child could not say how it ended (killed)
                run.set_status("failed", run.status().get("step", 0), str(err))
            raise

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
        left = eta_text(job.eta_seconds())
        st.progress(
            min(1.0, job.done / config.steps),
            text=f"Training: step {job.done} of at most {config.steps}"
            + (f", at most {left}" if left else "")
            + f" (it ends {config.stop_after_grok} steps after test accuracy reaches {GROK_ACCURACY:.0%})",
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
            f"Run failed: {str(status.get('message')).rstrip('.')}. Its checkpoints are kept; press Start to resume.",
            icon=":material/error:",
        )
    if metrics.empty:
        st.info("No evaluation yet.")
        return
    is_llm = config.model == "llm"
    events = ga.run_events(metrics, measures, llm_measures=measures if is_llm else None)
    steps = _checkpoint_steps(measures)
    selected = _checkpoint_picker(steps)
    marks = _event_marks(events, selected)
    _curves(metrics, marks, steps)
    last = metrics.iloc[-1]
    m1, m2, m3, m4 = st.container(key="grok_last").columns(4)  # the run's last values (key: for tests)
    m1.metric("Last step", int(last["step"]))
    m2.metric("Train accuracy", f"{last['train_acc']:.1%}")
    m3.metric("Test accuracy", f"{last['test_acc']:.1%}")
    m4.metric("Steps / s", f"{last['step'] / max(last['elapsed_s'], 1e-9):.0f}")
    st.subheader("Super-weight measures by checkpoint")
    if is_llm:
        _llm_measure_charts(measures, marks, steps)
    else:
        _measure_charts(measures, marks, steps)
    if selected is not None:
        _checkpoint_detail(metrics, measures, selected, is_llm)
    if is_llm and len(measures):
        fires = measures[["step", "scan_fires_train", "scan_fires_test", "n_scan_candidates", "scan_candidates"]]
        st.caption("Scan and causal test at every checkpoint")
        st.dataframe(fires, hide_index=True, height=180)
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
        _export_panel(run, selected)


def _export_panel(run: runs.GrokRun, selected: int | None) -> None:
    """The selected checkpoint of an llm run as a Hugging Face folder for the first tab's local-model picker
    (the last saved one when the selected step has no saved checkpoint)."""
    saved = run.checkpoint_steps()
    step = selected if selected in saved else saved[-1]
    c1, c2 = st.columns([1, 3])
    if c1.button(f"Open checkpoint {step} in the first tab", key="grok_export", icon=":material/open_in_new:"):
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


def _sweep_section(base: GrokConfig | None) -> None:
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
    me = access.me()
    sweep_key = "grokking-sweep:" + run_id_for({"runs": [c.key(me) for c in configs]}) if configs else None
    described = f"seeds {', '.join(map(str, seeds))} × weight decays {', '.join(f'{w:g}' for w in wds)}"
    if st.button(
        f"Run sweep ({len(configs)} runs, cached ones reopen instantly)" if configs else "Run sweep",
        key="grok_sweep_start",
        icon=":material/play_arrow:",
        disabled=problem is not None or sweep_key is None,
    ):
        assert base is not None and sweep_key is not None
        if not _start_sweep(base, configs, seeds, wds, sweep_key):
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
        return
    _sweep_panel(str(shown), measure)


def _start_sweep(
    base: GrokConfig, configs: list[GrokConfig], seeds: list[int], wds: list[float], sweep_key: str
) -> bool:
    me = access.me()

    def work(job: Job) -> list[runs.RunSummary]:
        summaries: list[runs.RunSummary] = []
        job.result = summaries  # the summaries so far, for every session watching the sweep

        def on_message(message: tuple) -> None:  # from the child: engine.grokking.process.train_sweep
            if message[0] == "start":
                _, done, total, text = message
                job.progress(done, total, text)
            elif message[0] == "run":
                _, summary, done, total = message
                summaries.append(summary)
                job.progress(done, total)

        kwargs = dict(
            base=base,
            seeds=seeds,
            weight_decays=wds,
            threads=TRAIN_THREADS,
            owner=me,
            max_checkpoints=access.limits().grok_checkpoints,
        )
        try:
            run_in_process(grok_process.train_sweep, kwargs, job=job, on_message=on_message)  # each run in the child
        except StopTimeout:  # stopped as asked, forcibly: the run it was training is stopped, not failed
            for run in (runs.run_for(config, owner=me) for config in configs):  # `me`: read in the script thread
                if not run.is_claimed():  # the ended child's claims are gone; a claimed run trains elsewhere
                    _stopped_if_running(run)
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
        return False
    return True


def _sweep_panel(sweep_key: str, measure: str) -> None:
    alive = RUNNER.running(sweep_key) is not None

    @lab_fragment(run_every=POLL_SECONDS if alive else None)
    def sweep_panel() -> None:
        job = RUNNER.get(sweep_key)
        if job is None:
            return
        if job.running:
            left = eta_text(eta_seconds(job.done, job.total or 0, time.time() - job.started))
            st.progress(
                job.done / max(job.total or 1, 1),
                text=f"Sweep: {job.done} of {job.total} runs done"
                + (f", {left}" if left else "")
                + f"; now {job.message}",
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
                x=alt.X("onset_step:Q", title=f"{MEASURE_LABELS[measure]} onset (step)", axis=alt.Axis(**AXIS)),
                y=alt.Y("grok_95_step:Q", title=f"grokking step (test {GROK_ACCURACY:.0%})", axis=alt.Axis(**AXIS)),
                color=alt.Color("grokked:N", legend=alt.Legend(labelLimit=0)),
                shape=alt.Shape("weight_decay:N", title="weight decay", legend=alt.Legend(labelLimit=0)),
                tooltip=["seed:Q", "weight_decay:Q", "memorisation_step:Q", "grok_95_step:Q", "onset_step:Q", "lag:Q"],
            )
            .properties(height=300, title=alt.TitleParams("Onset vs grokking step, one point per run", anchor="start"))
        )
        show_chart(scatter, "grokking_sweep", key="grok_sweep_chart", data=table.drop(columns=["key"]))
        st.info(ga.plain_summary(stats, measure), icon=":material/insights:")
        st.dataframe(table.drop(columns=["key"]), hide_index=True)
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


def _run_label(run: runs.GrokRun) -> str:
    status = run.status()
    return (
        f"{run.grok_config.describe()} — {status.get('state', '?')} at step {status.get('step', 0)} "
        f"· {access.owner_label(access.access_of(TOPIC, run.run_id))}"
    )


def _reopen_picker() -> None:
    """The cached runs this person may see; the list is redrawn while one of them trains (only theirs and
    shared ones count: someone else's private run never makes this page poll)."""
    going = any(run.status().get("state") == "running" for run in access.readable(TOPIC, runs.list_runs()))

    @lab_fragment(run_every=POLL_SECONDS * 2 if going else None)
    def picker() -> None:
        saved = {run.run_id: run for run in access.readable(TOPIC, runs.list_runs())}
        if saved:
            labels = {run_id: _run_label(run) for run_id, run in saved.items()}
            pick = st.selectbox(
                "Reopen a cached run", ["—", *labels], format_func=lambda k: labels.get(k, k), key="grok_reopen"
            )
            if pick != "—" and st.session_state.get("grok_reopened") != pick:
                st.session_state["grok_reopened"] = pick
                _show(saved[pick])
                st.rerun()  # the whole tab shows it (the pick may have rerun this list only)
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
                f"{len(strays)} cached run folder(s) from an older version of the lab (or half-written): they cannot "
                f"be opened. {', '.join(f.run_id for f in strays[:5])}{' …' if len(strays) > 5 else ''}"
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

    picker()


def render() -> None:
    """The grokking lab (a tab of app_pages/1_Super_weights_and_grokking.py)."""
    st.markdown(
        "Train a small model on modular arithmetic until it **groks**, and see whether super weights "
        f"appear, and when, relative to grokking. Runs are cached by configuration; the default (a one-hot MLP) "
        f"takes {DEFAULT_TAKES}; the progress bar shows the time left."
    )
    with st.expander("Definitions: events, measures, onset", icon=":material/help:"):
        st.markdown(HELP)
    linked, blocked = access.follow_link(TOPIC, runs.get_run, "grok")
    if blocked:
        return
    if linked is not None:
        _show(linked)
        _fill_form(linked.grok_config)
    config = _config_form()
    start = st.button(
        "Start / resume / reopen",
        key="grok_start",
        icon=":material/play_arrow:",
        type="primary",
        disabled=config is None,
        help="Off while a field above has a problem (its reason is shown under it)." if config is None else None,
    )
    _reopen_picker()
    if start and config is not None and _start_training(config):
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
        if config is not None and run.grok_config != config:
            st.warning(
                "The settings above differ from the run shown: press Start to train (or reopen) them.",
                icon=":material/sync_problem:",
            )
        live_now = RUNNER.running(_job_key(run)) is not None or run.is_claimed()

        @lab_fragment(run_every=POLL_SECONDS if live_now else None)
        def live() -> None:
            _run_panel(run, writable)
            if live_now and RUNNER.running(_job_key(run)) is None and not run.is_claimed():
                st.rerun()  # the run ended: redraw the whole tab without polling

        live()
    st.divider()
    _sweep_section(config)
