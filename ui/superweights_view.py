"""View of the tab "Super weights of a pretrained LLM" (Yu et al. 2024): scan, detect, inspect, ablate, quantize.

Thin: every number comes from engine.superweights (detect, ablation, quantize; the CLI `python -m engine
superweights` calls the same functions), and every default or threshold a help text names is read from
engine.superweights.config. Results are kept with ui.state for exactly the inputs they were computed
for. Nothing loads the LLM until "Scan" is pressed. On the shared server (ui.access) a scan's prompts are
checked against the server's limits (prompts per request, tokens per prompt) and its memory before it
runs, and a computation that waits for the model says the person's place in its queue.
"""

from __future__ import annotations

import contextlib
import dataclasses

import altair as alt
import pandas as pd
import streamlit as st

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
from ui.models import current_choice, get_model, is_loaded
from ui.state import ModelKey, compute, forget, latest, model_key, recall

DETECTION_SLOT = "sw_detection"
WSTATS_SLOT = "sw_weight_stats"
ABLATION_SLOT = "sw_ablation"
QUANT_SLOT = "sw_quantization"
TOKEN_CHOICES = [256, 512, 1024, 2048, EVAL_TOKENS]

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


def _detection_config() -> DetectionConfig:
    """The detection settings the widgets show (defaults from engine.superweights.config)."""
    ss = st.session_state
    return DetectionConfig(
        mode=ss.get("sw_mode", DEFAULT_MODE),
        factor=float(ss.get("sw_factor", RELATIVE_FACTOR)),
        absolute=float(ss.get("sw_absolute", ABSOLUTE_THRESHOLD)),
        max_iterations=int(ss.get("sw_iters", MAX_ITERATIONS)),
    )


def _scan_inputs(lm: LoadedModel, config: DetectionConfig) -> tuple[ModelKey, tuple[str, ...], DetectionConfig]:
    """What a detection depends on: the model, the cleaned prompts and the settings (LabError without prompts)."""
    return (model_key(lm), tuple(sw.clean_prompts(st.session_state.get("sw_prompts", DEFAULT_PROMPT))), config)


@st.cache_data(show_spinner=False, max_entries=8)
def _detect(_lm: LoadedModel, key: ModelKey, prompts: tuple[str, ...], config: DetectionConfig) -> sw.Detection:
    return sw.detect(_lm, list(prompts), **dataclasses.asdict(config))


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


def _show_rejected(detection: sw.Detection) -> None:
    """Spikes the iterative procedure rejected: zeroing their weight left them in place."""
    if not detection.rejected:
        return
    with st.expander(f"Rejected: {len(detection.rejected)} spike(s) that survived zeroing their weight"):
        st.caption(
            "Zeroing W[r, c] left the spike at the same place: the weight is not what makes it "
            "(see 'share': W[r, c]·x[t, c] / y[t, r]). Not ablated below."
        )
        st.dataframe(detection.frame(rejected=True), hide_index=True, width="stretch")


def _download(frame: pd.DataFrame, name: str, key: str) -> None:
    st.download_button(f"Download {name}", frame.to_csv(index=False), file_name=name, mime="text/csv", key=key)


def _scan_chart(detection: sw.Detection) -> alt.Chart:
    frame = detection.scans[0].frame()
    long = pd.concat(
        [
            pd.DataFrame({"layer": frame["layer"], "value": frame["max_abs_input"], "curve": "max |input|"}),
            pd.DataFrame({"layer": frame["layer"], "value": frame["max_abs_output"], "curve": "max |output|"}),
        ]
    )
    lines = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer"),
            y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="max |activation| of mlp down projection"),
            color=alt.Color("curve:N", title=None),
            tooltip=["layer", "curve", alt.Tooltip("value:Q", format=".4g")],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [detection.threshold]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(y="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", format=".4g")])
    )
    return (lines + rule).properties(height=320)


def _render_inputs() -> None:
    st.text_area(
        "Prompts (one per line)",
        DEFAULT_PROMPT,
        key="sw_prompts",
        height=90,
        help="The paper's prompt by default; any text works (super activations are input-agnostic)."
        + access.limit_note("prompts_per_request", "prompts")
        + access.limit_note("prompt_tokens", "tokens per prompt"),
    )
    c1, c2, c3 = st.columns(3)
    mode = c1.radio(
        "Threshold",
        list(THRESHOLD_MODES),
        index=THRESHOLD_MODES.index(DEFAULT_MODE),
        key="sw_mode",
        horizontal=True,
        help=f"relative: max|y| >= f x median over layers (default); absolute: max|y| >= "
        f"{number(ABSOLUTE_THRESHOLD)} (paper).",
    )
    if mode == "relative":
        c2.number_input(
            "Relative factor f", min_value=1.5, max_value=1000.0, value=RELATIVE_FACTOR, step=0.5, key="sw_factor"
        )
    else:
        c2.number_input("Absolute threshold", min_value=0.1, max_value=1e6, value=ABSOLUTE_THRESHOLD, key="sw_absolute")
    c3.number_input(
        "Max iterations",
        min_value=1,
        max_value=10,
        value=MAX_ITERATIONS,
        key="sw_iters",
        help="Remove the detected weight, re-scan, repeat (the paper's iterative procedure).",
    )


def _scan(config: DetectionConfig) -> bool:
    """The Scan button: drop every earlier result, check the request against the server's limits, load the
    model, check its tokens and memory, detect. False when it could not start."""
    for slot in (DETECTION_SLOT, ABLATION_SLOT, QUANT_SLOT, WSTATS_SLOT):
        forget(slot)
    try:
        prompts = sw.clean_prompts(st.session_state.get("sw_prompts", DEFAULT_PROMPT))  # before the model loads
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
    inputs = _scan_inputs(lm, config)
    with access.queue_notice(lm):
        compute(
            DETECTION_SLOT,
            inputs,
            "Scanning the down projections (the paper's iterative procedure)...",
            lambda: _detect(lm, *inputs),
        )
    return True


def render() -> None:
    """The whole tab. Loads the model only after the user presses Scan."""
    st.markdown(INTRO)
    with st.expander("How the scan and detection work", icon=":material/functions:"):
        st.markdown(DETECTION_HELP)
    _render_inputs()
    config = _detection_config()
    if st.button("Scan", key="sw_scan", type="primary", icon=":material/search:") and not _scan(config):
        return
    if latest(DETECTION_SLOT) is None:
        st.info("Press **Scan** to load the model (if needed) and scan it.", icon=":material/info:")
        return
    lm, detection = None, None
    if is_loaded(current_choice()):  # a newly chosen model is not loaded just to say that the scan is stale
        lm = get_model()
        if lm is None:
            return
        with contextlib.suppress(LabError):  # no prompt left: no result for these inputs
            detection = recall(DETECTION_SLOT, _scan_inputs(lm, config))
    if lm is None or detection is None:
        st.warning(
            "The inputs or the model changed since the last scan: press **Scan** again.", icon=":material/refresh:"
        )
        return
    _render_scan(lm, detection)
    _render_weights(lm, detection)
    _render_ablation(lm, detection)
    _render_quantization(lm, detection)


def _render_scan(lm: LoadedModel, detection: sw.Detection) -> None:
    st.subheader("1. Scan, layer by layer")
    problem = weights_edit_problem(lm)
    if problem:
        st.info(problem, icon=":material/info:")
    if lm.name == EMBEDDED_LM:
        st.caption(
            "The embedded Gemma 3 270M is a dequantized Q4_K_M GGUF: its weights have already been through "
            "block quantization, and the paper did not study Gemma 3. Its numbers are measured here, not "
            "published ones."
        )
    st.altair_chart(_scan_chart(detection), width="stretch")
    scan_frame = detection.scans[0].frame()
    st.dataframe(scan_frame, hide_index=True, width="stretch")
    _download(scan_frame, "superweight_scan.csv", "sw_dl_scan")

    st.subheader("2. Detected super-weight candidates")
    st.caption(f"Rule: {detection.rule}. Stopped: {detection.stop_reason}. {detection.note}")
    if not detection.candidates:
        st.warning(
            "No layer's down-projection output stands out: no super-weight candidate for this model and these prompts.",
            icon=":material/search_off:",
        )
        _show_rejected(detection)
        return
    frame = detection.frame()
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
    first = detection.candidates[0]
    trace = _trace(lm, model_key(lm), detection.scans[0].prompts[first.prompt], first.token, first.row)
    trace = trace.assign(abs_value=trace["value"].abs())
    chart = (
        alt.Chart(trace)
        .mark_line(point=True)
        .encode(
            x="layer:Q",
            y=alt.Y("abs_value:Q", scale=alt.Scale(type="log"), title=f"|h[token {first.token}, channel {first.row}]|"),
            tooltip=["layer", alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("ratio:Q", format=".3g")],
        )
        .properties(height=220, title="Residual stream after each layer at the first candidate's super activation")
    )
    st.altair_chart(chart, width="stretch")


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
        chart = (
            alt.Chart(stats)
            .mark_line(point=True)
            .encode(
                x="layer:Q",
                y=alt.Y("max_over_median:Q", scale=alt.Scale(type="log"), title="max|w| / median|w|"),
                color="projection:N",
                tooltip=["layer", "projection", "max_over_median", "kurtosis", "row", "col"],
            )
            .properties(height=260)
        )
        st.altair_chart(chart, width="stretch")
        st.dataframe(stats, hide_index=True, width="stretch")
        _download(stats, "weight_stats.csv", "sw_dl_wstats")
    n_layers = len(detection.scans[0].layers)
    default_layer = detection.candidates[0].layer if detection.candidates else 0
    c1, c2 = st.columns(2)
    layer = c1.number_input("Layer", 0, n_layers - 1, default_layer, key="sw_layer")
    k = c2.number_input("Top-k largest |w| of its down projection", 1, 200, 10, key="sw_topk")
    st.dataframe(_top_weights(lm, key, int(layer), int(k)), hide_index=True)
    if detection.candidates:
        labels = _labels(detection)
        pick = st.selectbox("Row and column around a candidate", labels, key="sw_neigh_pick")
        radius = st.slider("Radius", 2, 32, 8, key="sw_radius")
        c = detection.candidates[labels.index(pick)]
        around = _neighbourhood(lm, key, c.layer, c.row, c.col, int(radius))
        chart = (
            alt.Chart(around)
            .mark_bar()
            .encode(
                x=alt.X("offset:O", title="offset from the candidate"),
                y="value:Q",
                color=alt.condition(alt.datum.offset == 0, alt.value("crimson"), alt.value("steelblue")),
                column=alt.Column("along:N", title=None),
                tooltip=["row", "col", alt.Tooltip("value:Q", format=".4g")],
            )
            .properties(width=280, height=200)
        )
        st.altair_chart(chart)


def _labels(detection: sw.Detection) -> list[str]:
    return [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates]


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
        help="All detected candidates by default, as the CLI does.",
    )
    k = c2.number_input(
        f"k other weights (0 = paper's {fraction})",
        0,
        100000,
        0,
        key="sw_k",
        help=f"0: k = {fraction} x the decoder linear weights = {ablation.paper_k(lm)} for this model.",
    )
    scale = c3.slider(
        "Scale s",
        low,
        high,
        DEFAULT_SCALE,
        0.1,
        key="sw_scale",
        help=f"W[r, c] <- s W[r, c]; s in [{number(low)}, {number(high)}].",
    )
    tokens = c4.selectbox(
        "Evaluation tokens",
        TOKEN_CHOICES,
        index=1,
        key="sw_eval_tokens",
        help=f"Tokens of the bundled CC0 text ({EVAL_TOKENS:,} ~ the whole text); fewer is faster.",
    )
    with st.expander("Conditions and metrics", icon=":material/functions:"):
        st.markdown(CONDITIONS_HELP)
    inputs = (model_key(lm), tuple(chosen), int(k), float(scale), int(tokens))
    if st.button("Run ablation", key="sw_ablate", icon=":material/science:"):
        forget(ABLATION_SLOT)
        if not chosen:
            st.error("Pick at least one super weight to ablate.")
            return
        cands = [detection.candidates[labels.index(lab)] for lab in chosen]
        with access.queue_notice(lm):
            compute(
                ABLATION_SLOT,
                inputs,
                "Running every condition (weights edited in place, then restored)...",
                lambda: ablation.ablation_table(
                    lm, cands, k=int(k) or None, scales=[float(scale)], max_tokens=int(tokens)
                ),
            )
    result = recall(ABLATION_SLOT, inputs)
    if result is None:
        if latest(ABLATION_SLOT) is not None:
            st.caption("Settings changed since the last ablation: press **Run ablation** again.")
        return
    st.caption(f"{result.eval_tokens} evaluation tokens, k = {result.k}, {result.seconds:.0f} s.")
    st.dataframe(result.table, hide_index=True, width="stretch")
    _download(result.table, "ablation.csv", "sw_dl_ablation")
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
        "Block sizes", [64, 128, 256, 512, 1024, 2048, 4096, 16384], default=[128, 4096], key="sw_q_blocks"
    )
    methods = c2.multiselect("Methods", list(METHODS), default=list(METHODS), key="sw_q_methods")
    fraction = c3.number_input("Outlier fraction held", 0.0, 0.01, CLIP_FRACTION, format="%.5f", key="sw_q_frac")
    tokens = c4.selectbox("Evaluation tokens", TOKEN_CHOICES, index=1, key="sw_q_tokens")
    inputs = (model_key(lm), tuple(blocks), tuple(methods), float(fraction), int(tokens))
    if st.button("Run quantization", key="sw_quant", icon=":material/compress:"):
        forget(QUANT_SLOT)
        if not blocks or not methods:
            st.error("Pick at least one block size and one method.")
            return
        with access.queue_notice(lm):
            compute(
                QUANT_SLOT,
                inputs,
                "Quantizing and measuring perplexity...",
                lambda: quantize.quantization_table(
                    lm,
                    detection.candidates,
                    blocks,
                    clip_fraction=float(fraction),
                    methods=methods,
                    max_tokens=int(tokens),
                ),
            )
    table = recall(QUANT_SLOT, inputs)
    if table is None:
        return
    quant = table.dropna(subset=["block_size"])
    if len(quant):
        chart = (
            alt.Chart(quant)
            .mark_line(point=True)
            .encode(
                x=alt.X("block_size:Q", scale=alt.Scale(type="log", base=2), title="block size"),
                y=alt.Y("perplexity:Q", scale=alt.Scale(type="log")),
                color="method:N",
                tooltip=["block_size", "method", alt.Tooltip("perplexity:Q", format=".4g"), "held_weights"],
            )
            .properties(height=260)
        )
        st.altair_chart(chart, width="stretch")
    st.dataframe(table, hide_index=True, width="stretch")
    _download(table, "sw_quantization.csv", "sw_dl_quant")
