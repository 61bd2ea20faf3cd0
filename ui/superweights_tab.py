"""Tab "Super weights of a pretrained LLM" (Yu et al. 2024): scan, detect, inspect, ablate, quantize.

Thin: every number comes from engine.superweights.detect / engine.superweights.ablation / engine.superweights.quantize (the CLI
`python -m engine superweights` calls the same functions). Nothing loads the LLM until "Scan" is pressed.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine.core import weight_edits
from engine.core.embedded import EMBEDDED_LM
from engine.core.errors import LabError
from engine.superweights import detect as sw
from ui.models import current_choice, get_model

RESULT_KEY = "sw_result"
ABLATION_KEY = "sw_ablation_result"
QUANT_KEY = "sw_quant_result"
WSTATS_KEY = "sw_wstats_result"

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
$f = 5$, works across model scales) or $\max|y| \ge 50$ (the paper's absolute threshold). In the strongest
spiking layer, with the spike at token $t$ and output channel $r$, the candidate is $W[r, c]$ with
$c = \arg\max_c |x_{t,c}|$. **share** $= W[r,c]\,x_{t,c} / y_{t,r}$ is how much of the spike that one weight
makes. Iterate (the paper's procedure): zero it, re-scan, repeat until no layer spikes (the threshold stays the
one of the original scan); every weight is restored bit-for-bit afterwards.

**Persists in layers**: layers $\ell$ after the candidate's where the residual stream keeps
$|h_\ell[t, r]| \ge 10 \cdot \operatorname{median}|h_\ell|$.
"""


def _params() -> dict:
    ss = st.session_state
    return {
        "prompts": ss.get("sw_prompts", sw.DEFAULT_PROMPT),
        "mode": ss.get("sw_mode", "relative"),
        "factor": float(ss.get("sw_factor", sw.RELATIVE_FACTOR)),
        "absolute": float(ss.get("sw_absolute", sw.ABSOLUTE_THRESHOLD)),
        "iterations": int(ss.get("sw_iters", 5)),
        "model": current_choice(),
    }


@st.cache_data(show_spinner=False, max_entries=8)
def _detect(_lm, model_key, prompts: tuple[str, ...], mode: str, factor: float, absolute: float, iterations: int):
    return sw.detect(_lm, list(prompts), mode=mode, factor=factor, absolute=absolute, max_iterations=iterations)


@st.cache_data(show_spinner=False, max_entries=8)
def _trace(_lm, model_key, prompt: str, token: int, channel: int) -> pd.DataFrame:
    return sw.residual_trace(_lm, prompt, token, channel)


@st.cache_data(show_spinner=False, max_entries=16)
def _top_weights(_lm, model_key, layer: int, k: int) -> pd.DataFrame:
    return sw.top_weights(_lm, layer, k)


@st.cache_data(show_spinner=False, max_entries=16)
def _neighbourhood(_lm, model_key, layer: int, row: int, col: int, radius: int) -> pd.DataFrame:
    return sw.neighbourhood(_lm, layer, row, col, radius)


@st.cache_data(show_spinner=False, max_entries=4)
def _weight_stats(_lm, model_key) -> pd.DataFrame:
    return sw.layer_weight_stats(_lm)


def _compute(key: str, run: dict, message: str, fn) -> None:
    """Run fn() under a spinner and keep its result with the inputs it was computed for (or show the error)."""
    try:
        with st.spinner(message):
            st.session_state[key] = {"run": run, "result": fn()}
    except LabError as err:
        st.error(str(err))


def _current(key: str, run: dict):
    """The stored result for exactly these inputs, or None (never a stale result)."""
    state = st.session_state.get(key)
    return state["result"] if state is not None and state["run"] == run else None


def _show_rejected(detection) -> None:
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


def render() -> None:
    """The whole tab. Loads the model only after the user presses Scan."""
    st.markdown(INTRO)
    with st.expander("How the scan and detection work", icon=":material/functions:"):
        st.markdown(DETECTION_HELP)
    st.text_area(
        "Prompts (one per line)",
        sw.DEFAULT_PROMPT,
        key="sw_prompts",
        height=90,
        help="The paper's prompt by default; any text works (super activations are input-agnostic).",
    )
    c1, c2, c3 = st.columns(3)
    mode = c1.radio(
        "Threshold",
        ["relative", "absolute"],
        key="sw_mode",
        horizontal=True,
        help="relative: max|y| >= f x median over layers (default); absolute: max|y| >= 50 (paper).",
    )
    if mode == "relative":
        c2.number_input(
            "Relative factor f", min_value=1.5, max_value=1000.0, value=sw.RELATIVE_FACTOR, step=0.5, key="sw_factor"
        )
    else:
        c2.number_input(
            "Absolute threshold", min_value=0.1, max_value=1e6, value=sw.ABSOLUTE_THRESHOLD, key="sw_absolute"
        )
    c3.number_input(
        "Max iterations",
        min_value=1,
        max_value=10,
        value=5,
        key="sw_iters",
        help="Remove the detected weight, re-scan, repeat (the paper's iterative procedure).",
    )
    params = _params()
    if st.button("Scan", key="sw_scan", type="primary", icon=":material/search:"):
        for key in (RESULT_KEY, ABLATION_KEY, QUANT_KEY, WSTATS_KEY):
            st.session_state.pop(key, None)
        try:
            prompts = sw.clean_prompts(params["prompts"])
        except LabError as err:
            st.error(str(err))
            return
        lm = get_model()
        if lm is None:
            return
        _compute(
            RESULT_KEY,
            params,
            "Scanning the down projections (the paper's iterative procedure)...",
            lambda: _detect(
                lm,
                params["model"],
                tuple(prompts),
                params["mode"],
                params["factor"],
                params["absolute"],
                params["iterations"],
            ),
        )
    state = st.session_state.get(RESULT_KEY)
    if state is None:
        st.info("Press **Scan** to load the model (if needed) and scan it.", icon=":material/info:")
        return
    if state["run"] != params:
        st.warning(
            "The inputs or the model changed since the last scan: press **Scan** again.", icon=":material/refresh:"
        )
        return
    detection = state["result"]
    lm = get_model()
    if lm is None:
        return
    _render_scan(lm, detection)
    _render_weights(lm, detection)
    _render_ablation(lm, detection)
    _render_quantization(lm, detection)


def _render_scan(lm, detection: sw.Detection) -> None:
    st.subheader("1. Scan, layer by layer")
    problem = weight_edits.weights_edit_problem(lm)
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
    trace = _trace(lm, current_choice(), detection.scans[0].prompts[first.prompt], first.token, first.row)
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


def _render_weights(lm, detection: sw.Detection) -> None:
    st.subheader("3. Weights, layer by layer")
    if weight_edits.weights_edit_problem(lm):
        st.info("Weight statistics need unquantized weights.", icon=":material/info:")
        return
    if st.button("Compute weight statistics", key="sw_wstats"):
        with st.spinner("max/median and kurtosis of every projection..."):
            st.session_state[WSTATS_KEY] = _weight_stats(lm, current_choice())
    stats = st.session_state.get(WSTATS_KEY)
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
    top = _top_weights(lm, current_choice(), int(layer), int(k))
    st.dataframe(top, hide_index=True)
    if detection.candidates:
        labels = [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates]
        pick = st.selectbox("Row and column around a candidate", labels, key="sw_neigh_pick")
        radius = st.slider("Radius", 2, 32, 8, key="sw_radius")
        c = detection.candidates[labels.index(pick)]
        around = _neighbourhood(lm, current_choice(), c.layer, c.row, c.col, int(radius))
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


def _render_ablation(lm, detection: sw.Detection) -> None:
    from engine.superweights import ablation

    st.subheader("4. Ablate and measure, side by side")
    problem = weight_edits.weights_edit_problem(lm)
    if problem:
        st.info(problem, icon=":material/block:")
        return
    if not detection.candidates:
        st.info("Nothing to ablate: no candidate was detected.")
        return
    labels = [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates]
    c1, c2, c3, c4 = st.columns(4)
    chosen = c1.multiselect(
        "Super weights to ablate",
        labels,
        default=labels,
        key="sw_ablate_cands",
        help="All detected candidates by default, as the CLI does.",
    )
    k = c2.number_input(
        "k other weights (0 = paper's 1e-6)",
        0,
        100000,
        0,
        key="sw_k",
        help=f"0: k = 1e-6 x the decoder linear weights = {ablation.paper_k(lm)} for this model.",
    )
    scale = c3.slider("Scale s", 0.0, 3.0, 2.0, 0.1, key="sw_scale", help="W[r, c] <- s W[r, c]; s in [0, 3].")
    tokens = c4.selectbox(
        "Evaluation tokens",
        [256, 512, 1024, 2048, 4096],
        index=1,
        key="sw_eval_tokens",
        help="Tokens of the bundled CC0 text (4,096 ~ the whole text); fewer is faster.",
    )
    with st.expander("Conditions and metrics", icon=":material/functions:"):
        st.markdown(
            "Conditions: original; super weight(s) zeroed; zeroed with the super activation restored "
            "($y_{t,r} \\mathrel{+}= W_{rc} x_{t,c}$ where the original $|y_{t,r}| \\ge 0.5\\,|SA|$); the $k$ largest "
            "other weights of all decoder linear layers zeroed; super weight(s) scaled by $s$.\n\n"
            "Perplexity $= \\exp(\\frac{1}{N}\\sum -\\log p(x_i \\mid x_{<i}))$ over independent 512-token windows "
            "(each starts with BOS) of the bundled text. **p_stopwords**: next-token probability mass on English "
            "stopwords and punctuation, averaged over a prompt set; **p_expected**: probability of the obvious content "
            "word (e.g. *cold* after *Summer is hot. Winter is*). Every edit is undone bit-for-bit (checked)."
        )
    run = {"cands": tuple(chosen), "k": int(k), "scale": float(scale), "tokens": int(tokens), "model": current_choice()}
    if st.button("Run ablation", key="sw_ablate", icon=":material/science:"):
        st.session_state.pop(ABLATION_KEY, None)
        if not chosen:
            st.error("Pick at least one super weight to ablate.")
            return
        cands = [detection.candidates[labels.index(lab)] for lab in chosen]
        _compute(
            ABLATION_KEY,
            run,
            "Running every condition (weights edited in place, then restored)...",
            lambda: ablation.ablation_table(lm, cands, k=int(k) or None, scales=[float(scale)], max_tokens=int(tokens)),
        )
    result = _current(ABLATION_KEY, run)
    if result is None:
        if ABLATION_KEY in st.session_state:
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


def _render_quantization(lm, detection: sw.Detection) -> None:
    from engine.superweights import quantize as sw_quantize

    st.subheader("5. Super-weight-aware 4-bit round-to-nearest")
    if weight_edits.weights_edit_problem(lm):
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
    methods = c2.multiselect(
        "Methods", list(sw_quantize.METHODS), default=list(sw_quantize.METHODS), key="sw_q_methods"
    )
    fraction = c3.number_input("Outlier fraction held", 0.0, 0.01, 1e-4, format="%.5f", key="sw_q_frac")
    tokens = c4.selectbox("Evaluation tokens", [256, 512, 1024, 2048, 4096], index=1, key="sw_q_tokens")
    run = {
        "blocks": tuple(blocks),
        "methods": tuple(methods),
        "fraction": float(fraction),
        "tokens": int(tokens),
        "model": current_choice(),
    }
    if st.button("Run quantization", key="sw_quant", icon=":material/compress:"):
        st.session_state.pop(QUANT_KEY, None)
        if not blocks or not methods:
            st.error("Pick at least one block size and one method.")
            return
        _compute(
            QUANT_KEY,
            run,
            "Quantizing and measuring perplexity...",
            lambda: sw_quantize.quantization_table(
                lm, detection.candidates, blocks, clip_fraction=float(fraction), methods=methods, max_tokens=int(tokens)
            ),
        )
    table = _current(QUANT_KEY, run)
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
