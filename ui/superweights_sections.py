"""Sections 1 to 3 of the super-weights tab: the scan layer by layer (its figure first, a click selects a
layer), the detected candidates with the residual stream at the first one's super activation, and the
weights of each layer (statistics, the top |w| of the selected layer, a candidate's neighbourhood).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.attention.maps import readable_token
from engine.core.embedded import EMBEDDED_LM
from engine.core.model import LoadedModel
from engine.core.weight_edits import weights_edit_problem
from engine.superweights import detect
from ui import superweights_tables as tables
from ui.fields import range_problem
from ui.figures import show_chart
from ui.model_queue import queue_notice
from ui.state import ModelKey, compute, model_key, recall
from ui.superweights_charts import (
    LAYER_PICK,
    layer_from_selection,
    neighbourhood_chart,
    residual_chart,
    scan_chart,
    weight_stats_chart,
)
from ui.superweights_form import refuse

WSTATS_SLOT = "sw_weight_stats"
LAYER_KEY = "sw_layer"  # the selected layer (picker and chart clicks)
SCAN_CHART_KEY = "sw_scan_chart"
N_LAYERS_KEY = "_sw_n_layers"
TOPK_RANGE = (1, 200)


@st.cache_data(show_spinner=False, max_entries=8)
def _trace(_lm: LoadedModel, key: ModelKey, prompt: str, token: int, channel: int) -> pd.DataFrame:
    return detect.residual_trace(_lm, prompt, token, channel)


@st.cache_data(show_spinner=False, max_entries=16)
def _top_weights(_lm: LoadedModel, key: ModelKey, layer: int, k: int) -> pd.DataFrame:
    return detect.top_weights(_lm, layer, k)


@st.cache_data(show_spinner=False, max_entries=16)
def _neighbourhood(_lm: LoadedModel, key: ModelKey, layer: int, row: int, col: int, radius: int) -> pd.DataFrame:
    return detect.neighbourhood(_lm, layer, row, col, radius)


@st.cache_data(show_spinner=False, max_entries=4)
def _weight_stats(_lm: LoadedModel, key: ModelKey) -> pd.DataFrame:
    return detect.layer_weight_stats(_lm)


def _show_rejected(detection: detect.Detection) -> None:
    """Proposals that are not candidates: cancelling weights and minor ones (less than half of their spike)."""
    if detection.cancelling:
        with st.expander(f"Cancelling: {len(detection.cancelling)} weight(s) that push a massive activation back"):
            st.caption(
                "A massive activation already enters this layer and the weight's change of the residual stream "
                "opposes it (columns 'residual stream entering' and 'its change of the residual stream'): it "
                "cancels a super activation, it does not make one. Not ablated below."
            )
            st.dataframe(
                tables.table(_readable(detection.frame(cancelling=True)), tables.CANDIDATES),
                hide_index=True,
                width="stretch",
            )
    if not detection.rejected:
        return
    with st.expander(f"Minor: {len(detection.rejected)} weight(s) that make less than half of their spike"):
        st.caption("'share' = W[r, c]·x[t, c] / y[t, r]: the rest of the spike comes from other weights. Not ablated.")
        st.dataframe(
            tables.table(_readable(detection.frame(rejected=True)), tables.CANDIDATES), hide_index=True, width="stretch"
        )


def _readable(frame: pd.DataFrame) -> pd.DataFrame:
    """Token texts without SentencePiece / BPE markers."""
    if "token_text" in frame.columns:
        frame = frame.assign(token_text=frame["token_text"].map(lambda t: readable_token(str(t))))
    return frame


def _download(frame: pd.DataFrame, name: str, key: str) -> None:
    st.download_button(f"Download {name}", frame.to_csv(index=False), file_name=name, mime="text/csv", key=key)


def _selected_layer(detection: detect.Detection) -> int:
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


def _on_layer_click() -> None:
    """The scan chart's click: select that layer (runs before the script, so before the layer widget)."""
    layer = layer_from_selection(st.session_state.get(SCAN_CHART_KEY), st.session_state.get(N_LAYERS_KEY, 0))
    if layer is not None:
        st.session_state[LAYER_KEY] = layer


def render_scan(lm: LoadedModel, detection: detect.Detection) -> None:
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
    st.dataframe(tables.table(scan_frame, tables.SCAN), hide_index=True, width="stretch")

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
    st.markdown(
        f"**Residual stream after each layer** at the first candidate's super activation "
        f"(token {first.token} '{readable_token(first.token_text)}', channel {first.row})"
    )
    chart = residual_chart(trace)
    show_chart(chart, "superweight_residual_trace", key="sw_trace_chart", data=trace)
    frame = _readable(detection.frame())
    st.dataframe(tables.table(frame, tables.CANDIDATES), hide_index=True, width="stretch")
    _download(frame, "superweight_candidates.csv", "sw_dl_candidates")
    _show_rejected(detection)
    published = detect.published_for(lm.name)
    if published:
        st.markdown("**Detected vs published** (Yu et al. 2024, Table 2 / their code)")
        st.dataframe(
            tables.table(detect.compare_with_published(detection.candidates, published), tables.PUBLISHED),
            hide_index=True,
        )
    else:
        st.caption(
            f"No published coordinates for {lm.name} (the paper did not study it; its numbers are this "
            "lab's own measurement)."
        )


def render_weights(lm: LoadedModel, detection: detect.Detection) -> None:
    st.subheader("3. Weights, layer by layer")
    if weights_edit_problem(lm):
        st.info("Weight statistics need unquantized weights.", icon=":material/info:")
        return
    key = model_key(lm)
    if st.button("Compute weight statistics", key="sw_wstats"):
        with queue_notice(lm):
            compute(WSTATS_SLOT, key, "max/median and kurtosis of every projection...", lambda: _weight_stats(lm, key))
    stats = recall(WSTATS_SLOT, key)
    if stats is not None:
        chart = weight_stats_chart(stats)
        show_chart(chart, "weight_stats", key="sw_wstats_chart", data=stats)
        st.dataframe(tables.table(stats, tables.WEIGHT_STATS), hide_index=True, width="stretch")
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
    if not refuse(c1, problem):
        st.session_state["_sw_topk_shown"] = int(k)
    shown = int(st.session_state.get("_sw_topk_shown", 10))
    if problem:
        st.caption(f"Showing the top {shown} until the field is fixed.")
    st.dataframe(tables.table(_top_weights(lm, key, layer, shown), tables.TOP_WEIGHTS), hide_index=True)
    if detection.candidates:
        labels = candidate_labels(detection)
        pick = st.selectbox("Row and column around a candidate", labels, key="sw_neigh_pick", bind="query-params")
        radius = st.slider("Radius", 2, 32, 8, key="sw_radius", bind="query-params")
        c = detection.candidates[labels.index(pick)]
        around = _neighbourhood(lm, key, c.layer, c.row, c.col, int(radius))
        columns = st.columns(max(1, around["along"].nunique()))
        for box, (along, part) in zip(columns, around.groupby("along", sort=False)):
            chart = neighbourhood_chart(part, along)
            with box:
                show_chart(chart, f"superweight_neighbourhood_{along}", key=f"sw_neigh_chart_{along}", data=part)


def candidate_labels(detection: detect.Detection) -> list[str]:
    return [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates]
