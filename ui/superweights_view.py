"""View of the tab "Super weights of a pretrained LLM" (Yu et al. 2024): scan, detect, inspect, ablate, quantize.

Thin: every number comes from engine.superweights (detect, ablation, quantize; the CLI `python -m engine
superweights` calls the same functions), and every default or threshold a help text names is read from
engine.superweights.config. Nothing loads the LLM until "Scan" is pressed (or a link to a scan is opened).
On the shared server (ui.access) a scan's prompts are checked against the server's limits (prompts per
request, tokens per prompt) and its memory before it runs, and a computation that waits for the model says
the person's place in its queue.

Figures first: each result starts with its figure (ui.figures.show_chart: PNG, SVG and CSV downloads), the
table below. The scan's figure is linked to the layer picker: clicking a layer selects it, the selected
layer is highlighted. Long steps (detection, ablation, quantization) show steps and an ETA (ui.progress).

State that survives a reload and travels as a link: every input is bound to a query parameter (`sw_prompts`,
`sw_mode`, `sw_factor`, `sw_absolute`, `sw_iters`; `sw_layer`, `sw_topk`, `sw_neigh_pick`, `sw_radius`;
`sw_ablate_cands`, `sw_k`, `sw_scale`, `sw_eval_tokens`; `sw_q_blocks`, `sw_q_methods`, `sw_q_frac`,
`sw_q_tokens`), and `sw_scanned=1`, `sw_ablated=1`, `sw_quantized=1` say which results are on screen. A
reload (a new session) shows them again from the process's results for exactly those inputs and the model
key (ui.state.model_key), without recomputing. Results are also kept per session (ui.state) for exactly the
inputs they were computed for; a value refused by validation is explained under its field, disables only
the button it feeds, and leaves the results on screen (marked as the previous ones).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine.attention.maps import readable_token
from engine.core.embedded import EMBEDDED_LM
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.weight_edits import weights_edit_problem
from engine.superweights import ablation, quantize
from engine.superweights import detect as sw
from engine.superweights.config import (
    ABSOLUTE_THRESHOLD,
    CLIP_FRACTION,
    DEFAULT_BITS,
    DEFAULT_MODE,
    DEFAULT_PROMPT,
    DEFAULT_SCALE,
    EVAL_TOKENS,
    EVAL_WINDOW,
    MAX_ITERATIONS,
    METHODS,
    PAPER_TOPK_FRACTION,
    PERSIST_FACTOR,
    RELATIVE_FACTOR,
    RESTORE_SA_FRACTION,
    SCALE_RANGE,
    THRESHOLD_MODES,
    DetectionConfig,
    number,
)
from ui import access
from ui.fields import range_problem
from ui.figures import show_chart
from ui.models import current_choice, get_model, is_loaded
from ui.progress import ProgressFn, steps
from ui.state import ModelKey, compute, forget, latest, model_key, recall, remember

DETECTION_SLOT = "sw_detection"
WSTATS_SLOT = "sw_weight_stats"
ABLATION_SLOT = "sw_ablation"
QUANT_SLOT = "sw_quantization"
TOKEN_CHOICES = [256, 512, 1024, 2048, EVAL_TOKENS]
SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG = "sw_scanned", "sw_ablated", "sw_quantized"  # link flags: results on screen
LAYER_KEY = "sw_layer"  # the selected layer (picker and chart clicks)
LAYER_PICK = "sw_layer_pick"  # the scan chart's click selection (Vega-Lite parameter name)
SCAN_CHART_KEY = "sw_scan_chart"
N_LAYERS_KEY = "_sw_n_layers"
# Accepted values of the number fields (checked in Python, so a refusal says why under the field)
FACTOR_RANGE = (1.5, 1000.0)
ABSOLUTE_RANGE = (1e-6, 1e6)
ITERATION_RANGE = (1, 10)
TOPK_RANGE = (1, 200)
K_RANGE = (0, 100_000)
FRACTION_RANGE = (0.0, 0.01)

INTRO = """
**Super weights** (Yu et al., *The Super Weight in Large Language Models*, arXiv 2411.07191): a handful of
scalars in an early layer's MLP down projection. Removing one of them destroys Llama-7B (zero-shot average
70.1 → 35.1, perplexity from single digits to hundreds), while removing the next ~7,000 largest weights barely
matters. Press **Scan** to hook every down projection of the selected model over your prompts.
"""

DETECTION_HELP = r"""
Each layer's down projection computes $y_t = W x_t$ with $W \in \mathbb{R}^{d \times d_{ff}}$
(row = output channel, col = input channel; GPT-2's Conv1D weight is transposed to this layout).
The scan records $\max_{t,c}|x_{t,c}|$ and $\max_{t,r}|y_{t,r}|$ per layer.

A layer **spikes** when $\max|y| \ge f \cdot \operatorname{median}_\ell \max|y^{(\ell)}|$ (relative, default
$f = %(relative)s$, works across model scales) or $\max|y| \ge %(absolute)s$ (the paper's absolute threshold). In the
strongest spiking layer, with the spike at token $t$ and output channel $r$, the candidate is $W[r, c]$ with
$c = \arg\max_c |x_{t,c}|$. **share** $= W[r,c]\,x_{t,c} / y_{t,r}$ is how much of the spike that one weight
makes. Iterate (the paper's procedure): zero it, re-scan, repeat until no layer spikes (the threshold stays the
one of the original scan); every weight is restored bit-for-bit afterwards.

**Persists in layers**: layers $\ell$ after the candidate's where the residual stream keeps
$|h_\ell[t, r]| \ge %(persist)s \cdot \operatorname{median}|h_\ell|$.
"""
DETECTION_HELP %= {  # %-format, so the LaTeX braces stay single
    "relative": number(RELATIVE_FACTOR),
    "absolute": number(ABSOLUTE_THRESHOLD),
    "persist": number(PERSIST_FACTOR),
}

CONDITIONS_HELP = (
    "Conditions: original; super weight(s) zeroed; zeroed with the super activation restored "
    f"($y_{{t,r}} \\mathrel{{+}}= W_{{rc}} x_{{t,c}}$ where the original $|y_{{t,r}}| \\ge "
    f"{number(RESTORE_SA_FRACTION)}\\,|SA|$); the $k$ largest other weights of all decoder linear layers zeroed; "
    "super weight(s) scaled by $s$.\n\n"
    "Perplexity $= \\exp(\\frac{1}{N}\\sum -\\log p(x_i \\mid x_{<i}))$ over independent "
    f"{EVAL_WINDOW}-token windows (each starts with BOS) of the bundled text. **p_stopwords**: next-token "
    "probability mass on English stopwords and punctuation, averaged over a prompt set; **p_expected**: "
    "probability of the obvious content word (e.g. *cold* after *Summer is hot. Winter is*). Every edit is "
    "undone bit-for-bit (checked)."
)


@st.cache_data(show_spinner=False, max_entries=8)
def _trace(_lm: LoadedModel, key: ModelKey, prompt: str, token: int, channel: int) -> pd.DataFrame:
    return sw.residual_trace(_lm, prompt, token, channel)


@st.cache_data(show_spinner=False, max_entries=16)
def _top_weights(_lm: LoadedModel, key: ModelKey, layer: int, k: int) -> pd.DataFrame:
    return sw.top_weights(_lm, layer, k)


@st.cache_data(show_spinner=False, max_entries=16)
def _neighbourhood(_lm: LoadedModel, key: ModelKey, layer: int, row: int, col: int, radius: int) -> pd.DataFrame:
    return sw.neighbourhood(_lm, layer, row, col, radius)


@st.cache_data(show_spinner=False, max_entries=4)
def _weight_stats(_lm: LoadedModel, key: ModelKey) -> pd.DataFrame:
    return sw.layer_weight_stats(_lm)


# ---------------------------------------------------------------------------------------------
# Results that survive a reload: kept per process, keyed on the model key and every input


class _Results:
    """The last `keep` results of the long computations (scan, ablation, quantization) in this process,
    keyed on (kind, inputs); the inputs always start with the model key (ui.state.model_key)."""

    def __init__(self, keep: int = 24) -> None:
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Hashable, value: Any) -> Any:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._keep:
                self._items.popitem(last=False)
        return value


@st.cache_resource(show_spinner=False)
def _results() -> _Results:
    """One store per process, shared by sessions (st.cache_data cannot hold these: a cached function that
    draws into a progress bar made outside it fails on replay)."""
    return _Results()


def _compute(slot: str, inputs: Hashable, label: str, fn: Callable[[ProgressFn], Any]) -> Any | None:
    """fn(progress) under a progress bar with steps and ETA, or the process's result for exactly these
    inputs when it was computed before (a reload, a shared link); remembered for the session (ui.state).
    A LabError is shown, not raised (None then)."""
    store = _results()
    try:
        result = store.get((slot, inputs))
        if result is None:
            with steps(label) as progress:
                result = store.put((slot, inputs), fn(progress))
        return remember(slot, inputs, result)
    except LabError as err:
        st.error(str(err))
        return None


def _flag(name: str) -> bool:
    return st.query_params.get(name) == "1"


def _set_flag(name: str, on: bool) -> None:
    """A link flag saying that a result is on screen (a reload or a link shows it again)."""
    if on:
        st.query_params[name] = "1"
    elif name in st.query_params:
        del st.query_params[name]


# ---------------------------------------------------------------------------------------------
# Validation next to the field


def _refuse(box, problem: str | None) -> bool:
    """Show `problem` right under the field (in the field's column); True when there is one."""
    if problem:
        box.error(problem, icon=":material/error:")
    return problem is not None


def _detection_config() -> DetectionConfig:
    """The detection settings the widgets show (defaults from engine.superweights.config)."""
    ss = st.session_state
    return DetectionConfig(
        mode=ss.get("sw_mode", DEFAULT_MODE),
        factor=float(ss.get("sw_factor", RELATIVE_FACTOR)),
        absolute=float(ss.get("sw_absolute", ABSOLUTE_THRESHOLD)),
        max_iterations=int(ss.get("sw_iters", MAX_ITERATIONS)),
    )


def _prompts() -> tuple[str, ...]:
    """The cleaned prompts of the text area (LabError without one)."""
    return tuple(sw.clean_prompts(st.session_state.get("sw_prompts", DEFAULT_PROMPT)))


def _render_inputs() -> bool:
    """The scan's fields; each refused value is explained under its field. True when all are valid."""
    st.text_area(
        "Prompts (one per line)",
        DEFAULT_PROMPT,
        key="sw_prompts",
        bind="query-params",
        height=90,
        help="The paper's prompt by default; any text works (super activations are input-agnostic)."
        + access.limit_note("prompts_per_request", "prompts")
        + access.limit_note("prompt_tokens", "tokens per prompt"),
    )
    bad = False
    try:
        _prompts()
    except LabError as err:
        bad = _refuse(st, str(err))
    c1, c2, c3 = st.columns(3)
    mode = c1.radio(
        "Threshold",
        list(THRESHOLD_MODES),
        index=THRESHOLD_MODES.index(DEFAULT_MODE),
        key="sw_mode",
        bind="query-params",
        horizontal=True,
        help=f"relative: max|y| >= f x median over layers (default); absolute: max|y| >= "
        f"{number(ABSOLUTE_THRESHOLD)} (paper).",
    )
    if mode == "relative":
        low, high = FACTOR_RANGE
        f = c2.number_input(
            "Relative factor f",
            value=RELATIVE_FACTOR,
            step=0.5,
            key="sw_factor",
            bind="query-params",
            help=f"Between {number(low)} and {number(high)}: a layer spikes at f x the median over layers.",
        )
        bad |= _refuse(c2, range_problem("The relative factor", f, low, high))
    else:
        a = c2.number_input(
            "Absolute threshold",
            value=ABSOLUTE_THRESHOLD,
            key="sw_absolute",
            bind="query-params",
            help=f"Between {number(ABSOLUTE_RANGE[0])} and {number(ABSOLUTE_RANGE[1])}.",
        )
        bad |= _refuse(c2, range_problem("The absolute threshold", a, *ABSOLUTE_RANGE))
    low, high = ITERATION_RANGE
    n = c3.number_input(
        "Max iterations",
        value=MAX_ITERATIONS,
        step=1,
        key="sw_iters",
        bind="query-params",
        help=f"Remove the detected weight, re-scan, repeat (the paper's iterative procedure); {low} to {high}.",
    )
    bad |= _refuse(c3, range_problem("Max iterations", n, low, high, integer=True))
    return not bad


def _scan(config: DetectionConfig) -> bool:
    """Scan (the button, or a reload / link showing a scan): drop every earlier result of the session,
    check the request against the server's limits, load the model, check its tokens and memory, detect
    (served from the process's results when these inputs were scanned before). False when it could not."""
    for slot in (DETECTION_SLOT, ABLATION_SLOT, QUANT_SLOT, WSTATS_SLOT):
        forget(slot)
    try:
        prompts = _prompts()  # before the model loads
        access.check_prompt_count(len(prompts))
    except LabError as err:
        st.error(str(err))
        return False
    lm = get_model()
    if lm is None:
        return False
    try:
        lengths = access.prompt_lengths(lm, prompts)
        access.check_prompt_tokens(lengths, [f"prompt {i}" for i in range(1, len(prompts) + 1)])
        access.ensure_memory(lm, access.scan_bytes(lm, max(lengths)), f"the scan of {max(lengths)} tokens")
    except LabError as err:
        st.error(str(err))
        return False
    inputs = (model_key(lm), prompts, config)
    with access.queue_notice(lm):
        result = _compute(
            DETECTION_SLOT,
            inputs,
            "Scanning the down projections (the paper's iterative procedure)",
            lambda progress: sw.detect(lm, list(prompts), **dataclasses.asdict(config), progress=progress),
        )
    return result is not None


def render() -> None:
    """The whole tab. Loads the model only after the user presses Scan (or opens a link to a scan)."""
    st.markdown(INTRO)
    with st.expander("How the scan and detection work", icon=":material/functions:"):
        st.markdown(DETECTION_HELP)
    valid = _render_inputs()
    config = _detection_config() if valid else None
    clicked = st.button(
        "Scan",
        key="sw_scan",
        type="primary",
        icon=":material/search:",
        disabled=not valid,
        help=None if valid else "Fix the field marked in red first.",
    )
    if clicked:
        for flag in (SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG):
            _set_flag(flag, False)
        if not _scan(config):
            return
        _set_flag(SCAN_FLAG, True)
    elif valid and latest(DETECTION_SLOT) is None and _flag(SCAN_FLAG):
        if not _scan(config):  # a reload or a link: the scan comes back (from the process's results)
            return
    if latest(DETECTION_SLOT) is None:
        st.info("Press **Scan** to load the model (if needed) and scan it.", icon=":material/info:")
        return
    lm, detection, note = _shown_detection(config)
    if lm is None or detection is None:
        for flag in (SCAN_FLAG, ABLATION_FLAG, QUANT_FLAG):  # a reload would show another scan than this page
            _set_flag(flag, False)
        st.warning(
            "The inputs or the model changed since the last scan: press **Scan** again.", icon=":material/refresh:"
        )
        return
    if note:
        st.info(note, icon=":material/history:")
    _render_scan(lm, detection)
    _render_weights(lm, detection)
    _render_ablation(lm, detection)
    _render_quantization(lm, detection)


def _shown_detection(config: DetectionConfig | None) -> tuple[LoadedModel | None, sw.Detection | None, str]:
    """(model, detection, note) to show: the scan for exactly the fields' inputs; while a field is invalid,
    the last scan of this model, with a note saying so; (.., None, "") when the inputs changed."""
    if not is_loaded(current_choice()):  # a newly chosen model is not loaded just to say that the scan is stale
        return None, None, ""
    lm = get_model()
    if lm is None:
        return None, None, ""
    if config is not None:
        try:
            return lm, recall(DETECTION_SLOT, (model_key(lm), _prompts(), config)), ""
        except LabError:
            return lm, None, ""
    (key, prompts, used), detection = latest(DETECTION_SLOT)
    if key != model_key(lm):
        return lm, None, ""
    setting = f"f = {number(used.factor)}" if used.mode == "relative" else f"absolute {number(used.absolute)}"
    note = (
        f"Showing the last scan ({len(prompts)} prompt(s), {used.mode} threshold {setting}, "
        f"{used.max_iterations} iteration(s)): a field above is invalid, so **Scan** waits until it is fixed."
    )
    return lm, detection, note


# ---------------------------------------------------------------------------------------------
# Charts


def _axis(**kwargs) -> alt.Axis:
    return alt.Axis(labelLimit=0, titleLimit=0, **kwargs)


def layer_x(n_layers: int, title: str = "layer") -> alt.X:
    """A layer axis with integers 0..n-1 only (every one up to 48 layers, whole steps above)."""
    ticks = {"values": list(range(n_layers))} if n_layers <= 48 else {"tickMinStep": 1}
    return alt.X(
        "layer:Q",
        title=title,
        scale=alt.Scale(domain=[0, max(n_layers - 1, 1)], nice=False, zero=False, padding=10),
        axis=_axis(format="d", **ticks),
    )


def scan_chart(detection: sw.Detection, selected: int | None = None) -> alt.LayerChart:
    """Max |input| and |output| of each layer's down projection (log), the threshold, and the selected
    layer highlighted; clicking a point selects its layer (selection `LAYER_PICK`)."""
    frame = detection.scans[0].frame()
    n = len(frame)
    long = pd.concat(
        [
            pd.DataFrame({"layer": frame["layer"], "value": frame["max_abs_input"], "curve": "max |input|"}),
            pd.DataFrame({"layer": frame["layer"], "value": frame["max_abs_output"], "curve": "max |output|"}),
        ]
    )
    pick = alt.selection_point(name=LAYER_PICK, fields=["layer"], on="click", nearest=True)
    is_selected = alt.datum.layer == (-1 if selected is None else int(selected))
    base = alt.Chart(long).encode(
        x=layer_x(n),
        y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="max |activation|, down projection", axis=_axis()),
        color=alt.Color("curve:N", title=None, legend=alt.Legend(labelLimit=0, orient="top")),
        tooltip=["layer", "curve", alt.Tooltip("value:Q", format=".4g")],
    )
    lines = base.mark_line()
    points = (
        base.mark_point(filled=True)
        .encode(
            size=alt.condition(is_selected, alt.value(180), alt.value(50)),
            opacity=alt.condition(is_selected, alt.value(1.0), alt.value(0.6)),
        )
        .add_params(pick)
    )
    limit = alt.Chart(pd.DataFrame({"threshold": [detection.threshold], "what": ["spike threshold"]}))
    rule = limit.mark_rule(strokeDash=[4, 4], color="gray").encode(
        y="threshold:Q", tooltip=["what", alt.Tooltip("threshold:Q", format=".4g")]
    )
    label = limit.mark_text(align="right", dy=-7, color="gray").encode(
        x=alt.datum(n - 1), y="threshold:Q", text="what:N"
    )
    layers = [lines, points, rule, label]
    if selected is not None:
        layers.insert(
            0,
            alt.Chart(pd.DataFrame({"layer": [int(selected)]}))
            .mark_rule(color="crimson", strokeWidth=10, opacity=0.15)
            .encode(x=layer_x(n)),
        )
    return alt.layer(*layers).properties(height=320)


def layer_from_selection(state: Any, n_layers: int) -> int | None:
    """The layer clicked in the scan chart, read from Streamlit's chart selection state
    ({"selection": {LAYER_PICK: [{"layer": 5, ...}]}}); None when nothing (valid) is selected."""
    try:
        points = state["selection"][LAYER_PICK]
    except (KeyError, TypeError, AttributeError):
        return None
    for point in points or []:
        layer = point.get("layer") if hasattr(point, "get") else None
        if layer is not None and 0 <= int(layer) < n_layers:
            return int(layer)
    return None


def _on_layer_click() -> None:
    """The scan chart's click: select that layer (runs before the script, so before the layer widget)."""
    layer = layer_from_selection(st.session_state.get(SCAN_CHART_KEY), st.session_state.get(N_LAYERS_KEY, 0))
    if layer is not None:
        st.session_state[LAYER_KEY] = layer


def ablation_chart(table: pd.DataFrame) -> alt.LayerChart:
    """Perplexity ratio (ablated / original, log) per condition, as bars from 1; a rule at 1."""
    frame = table[["condition", "perplexity", "ppl_ratio"]].assign(baseline=1.0)
    frame["label"] = frame["ppl_ratio"].map(lambda r: f"{r:.3g}x")
    frame["label_at"] = frame["ppl_ratio"].map(lambda r: max(r, 1.0))  # right of the bar (and of the rule at 1)
    order = list(frame["condition"])
    y = alt.Y("condition:N", sort=order, title=None, axis=_axis())
    ratios = [float(r) for r in frame["ppl_ratio"] if math.isfinite(r) and r > 0]
    low, high = min([1.0, *ratios]), max([1.0, *ratios])
    x = alt.X(
        "ppl_ratio:Q",
        # around the data (and 1), room at the right for the labels: a "nice" log domain of 0.1 to 10 drew
        # ratios of 0.99 to 1.05 as bars one pixel wide
        scale=alt.Scale(type="log", domain=[low / 1.15, high * 1.6], nice=False),
        title="perplexity ratio, ablated / original (log)",
        axis=_axis(),
    )
    bars = (
        alt.Chart(frame)
        .mark_bar(height={"band": 0.7})
        .encode(
            y=y,
            x=x,
            x2="baseline:Q",
            color=alt.condition(alt.datum.ppl_ratio > 1.05, alt.value("crimson"), alt.value("steelblue")),
            tooltip=["condition", alt.Tooltip("perplexity:Q", format=".4g"), alt.Tooltip("ppl_ratio:Q", format=".4g")],
        )
    )
    text = alt.Chart(frame).mark_text(align="left", dx=4).encode(y=y, x=alt.X("label_at:Q"), text="label:N")
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(color="gray").encode(x="x:Q")
    return alt.layer(bars, text, one).properties(height=max(160, 44 * len(frame)))


def quantization_chart(table: pd.DataFrame) -> alt.LayerChart | None:
    """Perplexity per block size and method (log-log), the unquantized model as a dashed rule."""
    quant = table.dropna(subset=["block_size"])
    if quant.empty:
        return None
    blocks = sorted({int(b) for b in quant["block_size"]})
    lines = (
        alt.Chart(quant)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "block_size:Q",
                scale=alt.Scale(type="log", base=2),
                title="block size (weights)",
                axis=_axis(values=blocks, format="d"),
            ),
            y=alt.Y("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (log)", axis=_axis()),
            # legend at the top: below (one method a line) it took most of the height Streamlit fits the chart in
            color=alt.Color("method:N", title=None, legend=alt.Legend(labelLimit=0, orient="top")),
            tooltip=["block_size", "method", alt.Tooltip("perplexity:Q", format=".4g"), "held_weights"],
        )
    )
    original = table.loc[table["block_size"].isna(), "perplexity"]
    if original.empty:
        return lines.properties(height=340)
    base = alt.Chart(pd.DataFrame({"perplexity": [float(original.iloc[0])], "what": ["original (no quantization)"]}))
    rule = base.mark_rule(strokeDash=[4, 4], color="gray").encode(
        y="perplexity:Q", tooltip=["what", alt.Tooltip("perplexity:Q", format=".4g")]
    )
    label = base.mark_text(align="left", dx=4, dy=9, color="gray").encode(
        x=alt.datum(blocks[0]), y="perplexity:Q", text="what:N"
    )
    return alt.layer(lines, rule, label).properties(height=340)


# ---------------------------------------------------------------------------------------------
# Sections


def _show_rejected(detection: sw.Detection) -> None:
    """Proposals that are not candidates: cancelling weights and minor ones (less than half of their spike)."""
    if detection.cancelling:
        with st.expander(f"Cancelling: {len(detection.cancelling)} weight(s) that push a massive activation back"):
            st.caption(
                "A massive activation already enters this layer and the weight's change of the residual stream "
                "opposes it ('residual_in', 'residual_change'): it cancels a super activation, it does not make "
                "one. Not ablated below."
            )
            st.dataframe(_readable(detection.frame(cancelling=True)), hide_index=True, width="stretch")
    if not detection.rejected:
        return
    with st.expander(f"Minor: {len(detection.rejected)} weight(s) that make less than half of their spike"):
        st.caption("'share' = W[r, c]·x[t, c] / y[t, r]: the rest of the spike comes from other weights. Not ablated.")
        st.dataframe(_readable(detection.frame(rejected=True)), hide_index=True, width="stretch")


def _readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Token texts without SentencePiece / BPE markers."""
    if "token_text" in frame.columns:
        frame = frame.assign(token_text=frame["token_text"].map(lambda t: readable_token(str(t))))
    return frame


def _download(frame: pd.DataFrame, name: str, key: str) -> None:
    st.download_button(f"Download {name}", frame.to_csv(index=False), file_name=name, mime="text/csv", key=key)


def _selected_layer(detection: sw.Detection) -> int:
    """The layer picker, above the figure it highlights: from a chart click, the picker, or `?sw_layer=`
    (a link); default: the first candidate's layer, else the layer with the largest output.

    Kept in the URL by hand rather than with `bind`: a bound widget leaves its default out of the URL,
    and this default (index 0) is not the page's default layer, so layer 0 would not survive a reload."""
    frame = detection.scans[0].frame()
    n = len(frame)
    if detection.candidates:
        default = detection.candidates[0].layer
    else:
        default = int(frame["layer"].iloc[int(frame["max_abs_output"].to_numpy().argmax())])
    st.session_state[N_LAYERS_KEY] = n
    if st.session_state.get(LAYER_KEY) not in range(n):
        wanted = str(st.query_params.get(LAYER_KEY, ""))
        st.session_state[LAYER_KEY] = int(wanted) if wanted.isdigit() and int(wanted) < n else default
    c1, c2 = st.columns([1, 3])
    layer = int(
        c1.selectbox(
            "Selected layer",
            list(range(n)),
            key=LAYER_KEY,
            help="Or click a point of the figure. Its weights are shown in section 3.",
        )
    )
    if st.query_params.get(LAYER_KEY) != str(layer):
        st.query_params[LAYER_KEY] = str(layer)
    row = frame.iloc[layer]
    c2.caption(
        f"Layer {layer}: max |output| {row['max_abs_output']:.4g} (channel {int(row['output_channel'])}), "
        f"max |input| {row['max_abs_input']:.4g} (channel {int(row['input_channel'])})."
    )
    return layer


def _render_scan(lm: LoadedModel, detection: sw.Detection) -> None:
    st.subheader("1. Scan, layer by layer")
    layer = _selected_layer(detection)
    scan_frame = detection.scans[0].frame()
    show_chart(
        scan_chart(detection, layer),
        "superweight_scan",
        key=SCAN_CHART_KEY,
        data=scan_frame,
        on_select=_on_layer_click,
        selection_mode=LAYER_PICK,
    )
    problem = weights_edit_problem(lm)
    if problem:
        st.info(problem, icon=":material/info:")
    if lm.name == EMBEDDED_LM:
        st.caption(
            "The embedded Gemma 3 270M is a dequantized Q4_K_M GGUF: its weights have already been through "
            "block quantization, and the paper did not study Gemma 3. Its numbers are measured here, not "
            "published ones."
        )
    st.dataframe(scan_frame, hide_index=True, width="stretch")

    st.subheader("2. Detected super-weight candidates")
    st.caption(f"Rule: {detection.rule}. Stopped: {detection.stop_reason}. {detection.note}")
    if not detection.candidates:
        st.warning(
            "No layer's down-projection output stands out: no super-weight candidate for this model and these prompts.",
            icon=":material/search_off:",
        )
        _show_rejected(detection)
        return
    first = detection.candidates[0]
    trace = _trace(lm, model_key(lm), detection.scans[0].prompts[first.prompt], first.token, first.row)
    trace = trace.assign(abs_value=trace["value"].abs())
    st.markdown(
        f"**Residual stream after each layer** at the first candidate's super activation "
        f"(token {first.token} '{readable_token(first.token_text)}', channel {first.row})"
    )
    chart = (
        alt.Chart(trace)
        .mark_line(point=True)
        .encode(
            x=layer_x(len(trace)),
            y=alt.Y("abs_value:Q", scale=alt.Scale(type="log"), title="|h[token, channel]| (log)", axis=_axis()),
            tooltip=["layer", alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("ratio:Q", format=".3g")],
        )
        .properties(height=300)  # the whole chart, axes included (Streamlit fits it): room for the y title
    )
    show_chart(chart, "superweight_residual_trace", key="sw_trace_chart", data=trace)
    frame = _readable(detection.frame())
    st.dataframe(frame, hide_index=True, width="stretch")
    _download(frame, "superweight_candidates.csv", "sw_dl_candidates")
    _show_rejected(detection)
    published = sw.published_for(lm.name)
    if published:
        st.markdown("**Detected vs published** (Yu et al. 2024, Table 2 / their code)")
        st.dataframe(sw.compare_with_published(detection.candidates, published), hide_index=True)
    else:
        st.caption(
            f"No published coordinates for {lm.name} (the paper did not study it; its numbers are this "
            "lab's own measurement)."
        )


def _render_weights(lm: LoadedModel, detection: sw.Detection) -> None:
    st.subheader("3. Weights, layer by layer")
    if weights_edit_problem(lm):
        st.info("Weight statistics need unquantized weights.", icon=":material/info:")
        return
    key = model_key(lm)
    if st.button("Compute weight statistics", key="sw_wstats"):
        with access.queue_notice(lm):
            compute(WSTATS_SLOT, key, "max/median and kurtosis of every projection...", lambda: _weight_stats(lm, key))
    stats = recall(WSTATS_SLOT, key)
    if stats is not None:
        n_layers = int(stats["layer"].max()) + 1
        chart = (
            alt.Chart(stats)
            .mark_line(point=True)
            .encode(
                x=layer_x(n_layers),
                y=alt.Y("max_over_median:Q", scale=alt.Scale(type="log"), title="max|w| / median|w|", axis=_axis()),
                # legend at the right: below, it took most of the height Streamlit fits the chart into
                color=alt.Color("projection:N", legend=alt.Legend(labelLimit=0, titleLimit=0, orient="right")),
                tooltip=["layer", "projection", "max_over_median", "kurtosis", "row", "col"],
            )
            .properties(height=340)
        )
        show_chart(chart, "weight_stats", key="sw_wstats_chart", data=stats)
        st.dataframe(stats, hide_index=True, width="stretch")
    layer = int(st.session_state.get(LAYER_KEY, 0))
    low, high = TOPK_RANGE
    c1, c2 = st.columns([1, 3])
    k = c1.number_input(
        "Top-k largest |w|, selected layer's down projection",
        value=10,
        step=1,
        key="sw_topk",
        bind="query-params",
        help=f"{low} to {high}. The layer is the one selected in section 1 (now layer {layer}).",
    )
    problem = range_problem("Top-k", k, low, high, integer=True)
    if not _refuse(c1, problem):
        st.session_state["_sw_topk_shown"] = int(k)
    shown = int(st.session_state.get("_sw_topk_shown", 10))
    if problem:
        st.caption(f"Showing the top {shown} until the field is fixed.")
    st.dataframe(_top_weights(lm, key, layer, shown), hide_index=True)
    if detection.candidates:
        labels = _labels(detection)
        pick = st.selectbox("Row and column around a candidate", labels, key="sw_neigh_pick", bind="query-params")
        radius = st.slider("Radius", 2, 32, 8, key="sw_radius", bind="query-params")
        c = detection.candidates[labels.index(pick)]
        around = _neighbourhood(lm, key, c.layer, c.row, c.col, int(radius))
        columns = st.columns(max(1, around["along"].nunique()))
        for box, (along, part) in zip(columns, around.groupby("along", sort=False)):
            chart = (
                alt.Chart(part)
                .mark_bar()
                .encode(
                    x=alt.X(
                        "offset:O", title=f"offset from the candidate, along its {along}", axis=_axis(labelAngle=0)
                    ),
                    y=alt.Y("value:Q", title="weight", axis=_axis()),
                    color=alt.condition(alt.datum.offset == 0, alt.value("crimson"), alt.value("steelblue")),
                    tooltip=["row", "col", alt.Tooltip("value:Q", format=".4g")],
                )
                .properties(height=260)
            )
            with box:
                show_chart(chart, f"superweight_neighbourhood_{along}", key=f"sw_neigh_chart_{along}", data=part)


def _labels(detection: sw.Detection) -> list[str]:
    return [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates]


def _candidates_key(cands: list[sw.Candidate]) -> tuple:
    """What an ablation or quantization depends on in the candidates (coordinates, weight, activation)."""
    return tuple((c.coord, c.weight, c.super_activation) for c in cands)


def _shown_result(slot: str, inputs: Hashable | None, flag: str, button: str) -> tuple[Any | None, bool]:
    """(result, is_previous): the slot's result for exactly `inputs`; while a field is invalid (inputs
    None) its last result, marked as previous. Settings that changed drop the link flag."""
    if inputs is None:
        last = latest(slot)
        return (last[1], True) if last else (None, False)
    result = recall(slot, inputs)
    if result is None and latest(slot) is not None:
        _set_flag(flag, False)
        st.caption(f"Settings changed since the last run: press **{button}** again.")
    return result, False


def _render_ablation(lm: LoadedModel, detection: sw.Detection) -> None:
    st.subheader("4. Ablate and measure, side by side")
    problem = weights_edit_problem(lm)
    if problem:
        st.info(problem, icon=":material/block:")
        return
    if not detection.candidates:
        st.info("Nothing to ablate: no candidate was detected.")
        return
    labels = _labels(detection)
    fraction = number(PAPER_TOPK_FRACTION)
    low, high = SCALE_RANGE
    c1, c2, c3, c4 = st.columns(4)
    chosen = c1.multiselect(
        "Super weights to ablate",
        labels,
        default=labels,
        key="sw_ablate_cands",
        bind="query-params",
        help="All detected candidates by default, as the CLI does.",
    )
    bad = _refuse(c1, None if chosen else "Pick at least one super weight to ablate.")
    k = c2.number_input(
        f"k other weights (0 = paper's {fraction})",
        value=0,
        step=1,
        key="sw_k",
        bind="query-params",
        help=f"0 to {K_RANGE[1]:,}. 0: k = {fraction} x the decoder linear weights = {ablation.paper_k(lm)} "
        "for this model.",
    )
    bad |= _refuse(c2, range_problem("k", k, *K_RANGE, integer=True))
    scale = c3.slider(
        "Scale s",
        low,
        high,
        DEFAULT_SCALE,
        0.1,
        key="sw_scale",
        bind="query-params",
        help=f"W[r, c] <- s W[r, c]; s in [{number(low)}, {number(high)}].",
    )
    tokens = c4.selectbox(
        "Evaluation tokens",
        TOKEN_CHOICES,
        index=1,
        key="sw_eval_tokens",
        bind="query-params",
        help=f"Tokens of the bundled CC0 text ({EVAL_TOKENS:,} ~ the whole text); fewer is faster.",
    )
    with st.expander("Conditions and metrics", icon=":material/functions:"):
        st.markdown(CONDITIONS_HELP)
    cands = [detection.candidates[labels.index(lab)] for lab in chosen]
    inputs = None if bad else (model_key(lm), _candidates_key(cands), int(k), float(scale), int(tokens))
    clicked = st.button("Run ablation", key="sw_ablate", icon=":material/science:", disabled=bad)
    restore = not clicked and inputs is not None and latest(ABLATION_SLOT) is None and _flag(ABLATION_FLAG)
    if clicked or restore:
        if clicked:
            forget(ABLATION_SLOT)
        with access.queue_notice(lm):
            done = _compute(
                ABLATION_SLOT,
                inputs,
                "Ablating (each condition: perplexity windows, then the prompts)",
                lambda progress: ablation.ablation_table(
                    lm, cands, k=int(k) or None, scales=[float(scale)], max_tokens=int(tokens), progress=progress
                ),
            )
        _set_flag(ABLATION_FLAG, done is not None)
    result, previous = _shown_result(ABLATION_SLOT, inputs, ABLATION_FLAG, "Run ablation")
    if result is None:
        return
    if previous:
        st.info("Showing the last ablation: a field above is invalid.", icon=":material/history:")
    show_chart(ablation_chart(result.table), "superweight_ablation", key="sw_ablation_chart", data=result.table)
    st.caption(f"{result.eval_tokens} evaluation tokens, k = {result.k}, {result.seconds:.0f} s.")
    st.dataframe(result.table, hide_index=True, width="stretch")
    st.markdown("**Greedy continuations**")
    st.dataframe(result.continuations, hide_index=True, width="stretch")
    with st.expander("Stopword shift per prompt"):
        st.dataframe(result.stopwords, hide_index=True, width="stretch")
        _download(result.stopwords, "stopword_shift.csv", "sw_dl_stop")


def _render_quantization(lm: LoadedModel, detection: sw.Detection) -> None:
    st.subheader(f"5. Super-weight-aware {DEFAULT_BITS}-bit round-to-nearest")
    if weights_edit_problem(lm):
        st.info("Needs unquantized weights.", icon=":material/block:")
        return
    st.caption(
        "Blockwise asymmetric min-max RTN of every decoder-layer linear weight (embedding and LM head stay in "
        "full precision). Variants hold the super weight(s), and the largest |w| of each matrix, in full precision "
        "after clipping them out of the block range."
    )
    c1, c2, c3, c4 = st.columns(4)
    blocks = c1.multiselect(
        "Block sizes",
        [64, 128, 256, 512, 1024, 2048, 4096, 16384],
        default=[128, 4096],
        key="sw_q_blocks",
        bind="query-params",
    )
    bad = _refuse(c1, None if blocks else "Pick at least one block size.")
    methods = c2.multiselect("Methods", list(METHODS), default=list(METHODS), key="sw_q_methods", bind="query-params")
    bad |= _refuse(c2, None if methods else "Pick at least one method.")
    fraction = c3.number_input(
        "Outlier fraction held",
        value=CLIP_FRACTION,
        step=1e-5,
        format="%.5f",
        key="sw_q_frac",
        bind="query-params",
        help=f"Of each matrix's weights, {number(FRACTION_RANGE[0])} to {number(FRACTION_RANGE[1])}.",
    )
    bad |= _refuse(c3, range_problem("The outlier fraction", fraction, *FRACTION_RANGE))
    tokens = c4.selectbox("Evaluation tokens", TOKEN_CHOICES, index=1, key="sw_q_tokens", bind="query-params")
    inputs = (
        None
        if bad
        else (
            model_key(lm),
            _candidates_key(detection.candidates),
            tuple(blocks),
            tuple(methods),
            float(fraction),
            int(tokens),
        )
    )
    clicked = st.button("Run quantization", key="sw_quant", icon=":material/compress:", disabled=bad)
    restore = not clicked and inputs is not None and latest(QUANT_SLOT) is None and _flag(QUANT_FLAG)
    if clicked or restore:
        if clicked:
            forget(QUANT_SLOT)
        with access.queue_notice(lm):
            done = _compute(
                QUANT_SLOT,
                inputs,
                "Quantizing and measuring perplexity",
                lambda progress: quantize.quantization_table(
                    lm,
                    detection.candidates,
                    blocks,
                    clip_fraction=float(fraction),
                    methods=methods,
                    max_tokens=int(tokens),
                    progress=progress,
                ),
            )
        _set_flag(QUANT_FLAG, done is not None)
    table, previous = _shown_result(QUANT_SLOT, inputs, QUANT_FLAG, "Run quantization")
    if table is None:
        return
    if previous:
        st.info("Showing the last quantization: a field above is invalid.", icon=":material/history:")
    chart = quantization_chart(table)
    if chart is not None:
        show_chart(chart, "superweight_quantization", key="sw_quant_chart", data=table)
    st.dataframe(table, hide_index=True, width="stretch")
