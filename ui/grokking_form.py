"""The grokking tab's settings form: every field bound to its query parameter (`grok_p`, ...), each refusal
shown under its field: the range checks here (widgets have no bounds that would silently keep an old value),
and engine.grokking.config.validate's refusal under the field it names (engine.core.errors.FieldError), a
problem of the whole configuration (the memory estimate) right above Start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from engine.core.errors import FieldError, LabError
from engine.core.options import help_of
from engine.grokking.config import (
    GROK_ACCURACY,
    LLM_MAX_LAYERS,
    LLM_MAX_SEQ_LEN,
    LLM_MIN_LAYERS,
    LLM_MIN_SEQ_LEN,
    LLM_PRESET,
    MAX_LAYERS,
    MODEL_KINDS,
    SINK_TASK_PRESET,
    TASK_LABELS,
    GrokConfig,
    validate,
)
from ui import access
from ui.fields import between

DEFAULTS = GrokConfig()
EVALS_PER_CHECKPOINT = DEFAULTS.checkpoint_every // DEFAULTS.eval_every  # the form keeps the defaults' ratio
P_MAX = 2000  # largest p on this page (the command line takes any p its memory estimate allows)
START_SLOT = "start"  # where a problem of the whole configuration is shown: right above Start
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
SINK_PRESET_LABEL = "LLM-shaped, task that needs a sink"
CONTEXT_FORMAT = {"plain": "plain: [BOS, a, op, b, =]", "markov": "markov filler (needs a sink)"}
LLM_WHY_SLOWER = (
    f"The one-hot MLP default takes {DEFAULT_TAKES}: one matrix product per layer on 2p inputs. The LLM-shaped "
    f"model ({LLM_PRESET['n_layers']} Llama layers, d_model {LLM_PRESET['d_model']}, d_mlp {LLM_PRESET['d_mlp']}) "
    "runs attention, RMSNorm, RoPE and a gated MLP over 5 positions per example, and its measures run the "
    "super-weight scan and causal tests at every checkpoint: expect minutes on a CPU (it trains on CUDA when "
    "present). It is the model where 'super weight' means what it means in the first tab."
)


def apply_preset(preset: dict[str, Any]) -> None:
    """on_click of a preset button: every form field the preset names (engine.grokking.config.PRESETS) set to
    its value; a setting the form has no field for (e.g. checkpoint_every) keeps the form's own rule. A field
    the form draws only for the LLM-shaped model may not exist yet, so its value also goes into the link at once
    (a bound widget made in the next run would not put it there, and a colleague's link would lose it)."""
    for name, value in preset.items():
        if name not in FIELD_KEYS:
            continue
        key = FIELD_KEYS[name]
        st.session_state[key] = value
        if key in LLM_FORM_FIELDS and value != getattr(DEFAULTS, name):
            st.query_params[key] = CONTEXT_FORMAT[value] if key == "grok_context" else str(value)


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
        shows the widget's default and sends it back, which left "Layers" empty (benchmarks/soak)."""
        number = col.number_input(label, value=value, key=key, bind="query-params", **kwargs)
        self.slots[key] = col.empty()
        self.refuse(key, f"{label}: enter a number." if number is None else check(number))
        return number

    def refuse(self, key: str, message: str | None) -> None:
        if message and key not in self.problems:
            self.problems[key] = message

    def show(self) -> None:
        for key, message in self.problems.items():
            self.slots.get(key, self.slots[START_SLOT]).error(message, icon=":material/error:")


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
LLM_FORM_FIELDS = {  # the LLM-shaped model's fields
    "grok_d_model": "d_model",
    "grok_heads": "n_heads",
    "grok_d_mlp": "d_mlp",
    "grok_context": "context",
    "grok_seq_len": "seq_len",
    "grok_warmup": "warmup_steps",
    "grok_clip": "grad_clip",
    "grok_suppress": "suppress",
    "grok_sup_q": "suppress_quantile",
    "grok_sup_c": "suppress_factor",
    "grok_sup_every": "suppress_every",
}


FIELD_KEYS = {name: key for key, name in (FORM_FIELDS | LLM_FORM_FIELDS).items()}  # GrokConfig field -> form key


def fill_form(config: GrokConfig) -> None:
    """A link to a run that carries no settings (`?run=<id>` alone): the form set to the run's settings,
    before its widgets are drawn (a link with settings keeps them: they are what its sender saw)."""
    fields = FORM_FIELDS | (LLM_FORM_FIELDS if config.model == "llm" else {})
    if any(key in st.query_params for key in fields):
        return
    for key, name in fields.items():
        preset = key in ("grok_model", "grok_layers", "grok_d_model", "grok_heads", "grok_d_mlp")  # no default
        if preset or getattr(config, name) != getattr(DEFAULTS, name) or key in st.session_state:
            st.session_state[key] = getattr(config, name)


def config_form() -> GrokConfig | None:
    """The settings (each bound to its query parameter); the configuration, or None when a field has a
    problem (shown under it; Start is then off)."""
    d = DEFAULTS
    form = _Form()
    b1, b2 = st.columns(2)
    b1.button(
        LLM_PRESET_LABEL,
        key="grok_llm_preset",
        icon=":material/neurology:",
        on_click=apply_preset,
        args=(LLM_PRESET,),
        help="One click: the LLM-shaped model on the 5-token task (where no sink forms). " + LLM_WHY_SLOWER,
    )
    b2.button(
        SINK_PRESET_LABEL,
        key="grok_sink_preset",
        icon=":material/water_drop:",
        on_click=apply_preset,
        args=(SINK_TASK_PRESET,),
        help="One click: the study's control arm: BOS, Markov filler and 'a + b = c' at a random position, "
        "next-token loss everywhere (attention must sometimes do nothing). " + LLM_WHY_SLOWER,
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
    training: dict[str, Any] = {}
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
        t1, t2, t3, t4 = st.columns(4)
        context = t1.selectbox(
            "Sequence",
            list(CONTEXT_FORMAT),
            key="grok_context",
            format_func=CONTEXT_FORMAT.get,
            help=help_of(GrokConfig, "context"),
            bind="query-params",
        )
        training = {
            "context": context,
            "warmup_steps": form.number(
                t3,
                "Warmup steps",
                "grok_warmup",
                d.warmup_steps,
                between("Warmup steps", 0, 100_000),
                step=10,
                help=help_of(GrokConfig, "warmup_steps"),
            ),
            "grad_clip": form.number(
                t4,
                "Gradient clip (0 = off)",
                "grok_clip",
                d.grad_clip,
                between("Gradient clip", 0, 1000),
                step=0.5,
                help=help_of(GrokConfig, "grad_clip"),
            ),
        }
        if context == "markov":
            training["seq_len"] = form.number(
                t2,
                "Tokens per sequence",
                "grok_seq_len",
                d.seq_len,
                between("Tokens per sequence", LLM_MIN_SEQ_LEN, LLM_MAX_SEQ_LEN),
                step=1,
                help=help_of(GrokConfig, "seq_len"),
            )
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
            **{name: type(getattr(d, name))(value) for name, value in (training | suppression).items()},
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
        except LabError as err:  # under the field it names; a problem of the whole configuration above Start
            form.refuse(FIELD_KEYS.get(err.field, START_SLOT) if isinstance(err, FieldError) else START_SLOT, str(err))
            config = None
    form.show()
    return config
