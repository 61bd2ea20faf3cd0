"""Charts of the attention page: one head's heatmap (a token window, labels thinned on long prompts),
the model view of every head in small blocks (click a head to select it; the selected head framed),
a head function's mean score per layer and head (clickable too), and the explanation scores per head
against the control and the baselines."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from engine.attention.config import HeadFunction
from engine.attention.head_functions import FUNCTION_TITLES, HeadFunctionTable
from engine.attention.maps import AttentionResult, block_mean, layer_kind

ColourScale = Literal["0 to visible max", "0 to 1", "log"]
COLOUR_SCALES: tuple[ColourScale, ...] = get_args(ColourScale)
MODEL_VIEW_BINS = 16  # each head of the model view is averaged into at most this many x this many blocks
PAGE_WIDTH = 900  # px the wide layout gives a chart at a 1400 px window (sidebar open); the model view fits it
MAX_LABELS = 40  # token labels per heatmap axis; a longer window shows every k-th label
HEAD_PICK = "att_pick"  # the Altair selection (a click on a head) of the model view and the function heatmap
HIGHLIGHT = "#d62728"
SCORE_METRICS = {"top1_agreement": "top-1 agreement", "correlation": "correlation (Pearson r)"}
PREDICTOR_ORDER = [
    "self-explanation",
    "simulator, no explanation",
    "detector label",
    "baseline: BOS",
    "baseline: uniform",
]
PREDICTOR_COLOURS = ["#1f77b4", "#9ecae1", "#ff7f0e", "#7f7f7f", "#c7c7c7"]


def _axis(**kwargs) -> alt.Axis:
    """An axis whose labels and title are never cut."""
    return alt.Axis(labelLimit=0, titleLimit=0, **kwargs)


def head_from_selection(state: Any, param: str = HEAD_PICK) -> tuple[int, int] | None:
    """(layer, head) of the clicked head in a chart's selection state (Streamlit's chart event: a
    mapping with "selection" -> {param: [{"layer_i": 3, "head_i": 1}, ...]}), or None when nothing is
    selected. Field names "layer"/"head" (the function heatmap) are read too."""
    if state is None:
        return None
    selection = state.get("selection") if isinstance(state, Mapping) else getattr(state, "selection", None)
    if not selection:
        return None
    points = selection.get(param) if isinstance(selection, Mapping) else getattr(selection, param, None)
    if not points:
        return None
    point = points[-1] if isinstance(points, Sequence) and not isinstance(points, Mapping) else points
    if not isinstance(point, Mapping):
        return None
    layer, head = point.get("layer_i", point.get("layer")), point.get("head_i", point.get("head"))
    try:
        return int(layer), int(head)
    except (TypeError, ValueError):
        return None


def thinned(labels: Sequence[str], max_labels: int = MAX_LABELS) -> list[str]:
    """Every k-th label (k = ceil(n / max_labels)), so a long axis stays readable; all when few."""
    step = max(1, math.ceil(len(labels) / max_labels))
    return list(labels[::step])


def layer_header(layer_type: str, index: int) -> str:
    """'L3 local' / 'L5 global': the model view's column header."""
    return f"L{index} {layer_kind(layer_type)}"


@st.cache_data(max_entries=16, show_spinner=False)
def model_view_frame(
    _result: AttentionResult, result_key: tuple, hide_bos: bool, per_head_scale: bool, bins: int = MODEL_VIEW_BINS
) -> pd.DataFrame:
    """Every head's map in bins x bins blocks, one row per block (cached per result: picking a head
    does not rebuild it). Blocks q (query) and k (key) span [q, q1) and [k, k1)."""
    maps = _result.maps.copy()
    if hide_bos and maps.shape[-1] > 1:
        maps[..., 0] = np.nan
    rows = []
    heads = _result.head_labels()
    for layer in range(_result.n_layers):
        column = layer_header(_result.layer_types[layer], layer)
        for head in range(_result.n_heads):
            pattern = maps[layer, head]
            if per_head_scale:
                top = np.nanmax(np.where(np.tril(np.ones_like(pattern, bool)), pattern, np.nan))
                pattern = pattern / top if top and top > 0 else pattern
            blocks, edges = block_mean(pattern, bins)
            for a in range(blocks.shape[0]):
                for b in range(a + 1):
                    if not np.isnan(blocks[a, b]):
                        rows.append(
                            {
                                "layer": column,
                                "head": heads[head],
                                "layer_i": layer,
                                "head_i": head,
                                "q": a,
                                "k": b,
                                "q1": a + 1,
                                "k1": b + 1,
                                "weight": float(blocks[a, b]),
                                "queries": f"{edges[a]}-{edges[a + 1] - 1}",
                                "keys": f"{edges[b]}-{edges[b + 1] - 1}",
                            }
                        )
    return pd.DataFrame(rows)


def model_view_cell(n_layers: int, width: int = PAGE_WIDTH) -> int:
    """Pixel size of one head's square so that the layers (columns) fill `width` (28 to 140 px; 80 px
    are left for the row headers)."""
    return int(min(140, max(28, (width - 80) // max(n_layers, 1) - 4)))


def model_view_chart(
    result: AttentionResult,
    result_key: tuple,
    hide_bos: bool,
    per_head_scale: bool,
    selected: tuple[int, int] | None = None,
    width: int = PAGE_WIDTH,
) -> alt.FacetChart:
    """Small multiples: columns are layers, rows heads, each a blocked heatmap of the head's map.
    A click on a head selects it (selection HEAD_PICK, fields layer_i / head_i); the `selected`
    head is framed in red."""
    df = model_view_frame(result, result_key, hide_bos, per_head_scale)
    nb = int(df["q1"].max()) if len(df) else 1
    cell = model_view_cell(result.n_layers, width)
    pick = alt.selection_point(name=HEAD_PICK, fields=["layer_i", "head_i"], on="click", toggle=False)
    x = alt.X("k:Q", scale=alt.Scale(domain=[0, nb]), axis=None)
    y = alt.Y("q:Q", scale=alt.Scale(domain=[0, nb], reverse=True), axis=None)
    blocks = (
        alt.Chart()
        .mark_rect()
        .encode(
            x=x,
            x2="k1:Q",
            y=y,
            y2="q1:Q",
            color=alt.Color(
                "weight:Q",
                scale=alt.Scale(scheme="blues"),
                title=("block mean of " if nb < len(result.token_ids) else "")  # long prompts: averaged
                + "weight"
                + (" / head max" if per_head_scale else ""),
                legend=alt.Legend(orient="bottom", labelLimit=0, titleLimit=0),
            ),
            tooltip=["layer", "head", "queries", "keys", alt.Tooltip("weight:Q", format=".3f")],
        )
        .add_params(pick)
    )
    layer_i, head_i = selected if selected is not None else (-1, -1)
    frame = (
        alt.Chart()
        .transform_filter(f"datum.layer_i == {int(layer_i)} && datum.head_i == {int(head_i)}")
        .transform_aggregate(x0="min(k)", x1="max(k1)", y0="min(q)", y1="max(q1)", groupby=["layer", "head"])
        .mark_rect(filled=False, stroke=HIGHLIGHT, strokeWidth=3)
        .encode(x=alt.X("x0:Q", axis=None), x2="x1:Q", y=alt.Y("y0:Q", axis=None), y2="y1:Q")
    )
    layers = [layer_header(t, i) for i, t in enumerate(result.layer_types)]
    return (
        alt.layer(blocks, frame, data=df)
        .properties(width=cell, height=cell)
        .facet(
            column=alt.Column(
                "layer:N",
                sort=layers,
                title=None,
                header=alt.Header(labelAngle=-40, labelAlign="right", labelOrient="top", labelLimit=0),
            ),
            row=alt.Row(
                "head:N",
                sort=result.head_labels(),
                title=None,
                header=alt.Header(labelAngle=0, labelAlign="left", labelLimit=0),
            ),
            spacing=4,
        )
    )


def head_frame(
    result: AttentionResult, layer: int, head: int, hide_bos: bool, window: tuple[int, int] | None = None
) -> pd.DataFrame:
    """One head's weights in the token window [lo, hi] (queries and keys both in it; j <= i only)."""
    pattern = result.head(layer, head)
    n = pattern.shape[0]
    lo, hi = window if window is not None else (0, n - 1)
    lo, hi = max(0, int(lo)), min(n - 1, int(hi))
    return pd.DataFrame(
        [
            {"i": i, "query": result.labels[i], "j": j, "key": result.labels[j], "weight": float(pattern[i, j])}
            for i in range(lo, hi + 1)
            for j in range(lo, i + 1)
            if not (hide_bos and j == 0 and n > 1)
        ],
        columns=["i", "query", "j", "key", "weight"],
    )


def head_chart(
    result: AttentionResult,
    layer: int,
    head: int,
    hide_bos: bool,
    scale: ColourScale,
    window: tuple[int, int] | None = None,
    fit: bool = True,
) -> alt.Chart:
    """One head's [T, T] map as a heatmap with token labels (query rows, key columns; j <= i only),
    limited to the token window [lo, hi]; over MAX_LABELS tokens every k-th label is shown. `fit`: the
    page draws it at container width, fitting axes and titles into its height, so 130 px are added."""
    df = head_frame(result, layer, head, hide_bos, window)
    n = len(result.labels)
    lo, hi = window if window is not None else (0, n - 1)
    lo, hi = max(0, int(lo)), min(n - 1, int(hi))
    shown = list(result.labels[lo : hi + 1])
    keys = [k for k in shown if not (hide_bos and k == result.labels[0] and n > 1)]
    if scale == "log":
        color_scale = alt.Scale(type="log", domain=[1e-3, 1], clamp=True, scheme="blues")
    elif scale == "0 to 1":
        color_scale = alt.Scale(domain=[0, 1], scheme="blues")
    else:
        top = float(df["weight"].max()) if len(df) else 1.0
        color_scale = alt.Scale(domain=[0, max(top, 1e-6)], scheme="blues")
    height = max(320, min(720, 16 * len(shown)))  # the cells; the page fits labels and titles inside the chart size
    frame = height + 130 if fit else height
    window_note = "" if (lo, hi) == (0, n - 1) else f", tokens {lo}-{hi}"
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X(
                "key:N",
                sort=keys,
                title="key (attended) token",
                axis=_axis(labelAngle=-60, labelOverlap=False, values=thinned(keys)),
            ),
            y=alt.Y(
                "query:N",
                sort=shown,
                title="query token",
                axis=_axis(labelOverlap=False, values=thinned(shown)),
            ),
            color=alt.Color("weight:Q", scale=color_scale, legend=alt.Legend(labelLimit=0, titleLimit=0)),
            tooltip=["i", "query", "j", "key", alt.Tooltip("weight:Q", format=".4f")],
        )
        .properties(width=height, height=frame, title=f"Layer {layer} head {head}{window_note}")
    )


def function_frame(table: HeadFunctionTable, fn: HeadFunction) -> pd.DataFrame:
    """A function's mean, std and prompt count per layer x head."""
    mean, std, n = table.mean(fn), table.std(fn), table.n_defined(fn)
    return pd.DataFrame(
        [
            {
                "layer": layer,
                "head": head,
                "mean": float(mean[layer, head]),
                "std": float(std[layer, head]),
                "n_prompts": int(n[layer, head]),
            }
            for layer in range(mean.shape[0])
            for head in range(mean.shape[1])
        ]
    )


def function_heatmap(table: HeadFunctionTable, fn: HeadFunction, selected: tuple[int, int] | None = None) -> alt.Chart:
    """A function's mean score over the prompts per layer x head (std and prompt count in the tooltip);
    a click on a cell selects that head (HEAD_PICK), the `selected` head outlined in red."""
    df = function_frame(table, fn)
    n_layers, n_heads = table.mean(fn).shape
    layer, head = selected if selected is not None else (-1, -1)
    pick = alt.selection_point(name=HEAD_PICK, fields=["layer", "head"], on="click", toggle=False)
    is_selected = f"datum.layer == {int(layer)} && datum.head == {int(head)}"
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            # layers as columns and heads as rows, as the model view draws them
            x=alt.X("layer:O", title="layer", axis=_axis(labelAngle=0, values=list(range(n_layers)))),
            y=alt.Y("head:O", title="head", axis=_axis(values=list(range(n_heads)), labelOverlap=False)),
            color=alt.Color(
                "mean:Q",
                scale=alt.Scale(scheme="viridis"),
                title=FUNCTION_TITLES[fn],
                legend=alt.Legend(labelLimit=0, titleLimit=0),
            ),
            stroke=alt.condition(is_selected, alt.value(HIGHLIGHT), alt.value(None)),
            strokeWidth=alt.condition(is_selected, alt.value(3), alt.value(0)),
            tooltip=[
                "layer",
                "head",
                alt.Tooltip("mean:Q", format=".3f"),
                alt.Tooltip("std:Q", format=".3f"),
                alt.Tooltip("n_prompts:Q", title="prompts"),
            ],
        )
        .add_params(pick)
        .properties(
            width=max(240, 36 * n_layers),
            height=max(160, 28 * n_heads) + 80,
            title=f"{FUNCTION_TITLES[fn]}: mean over prompts",
        )
    )


def scores_chart(table: pd.DataFrame, metric: str = "top1_agreement") -> alt.Chart:
    """Explanation scores: per head (x), one bar per predictor (the self-explanation beside the
    no-explanation control, the detector label and the BOS / uniform baselines)."""
    title = SCORE_METRICS[metric]
    domain = [0, 1] if metric == "top1_agreement" else [-1, 1]
    present = [p for p in PREDICTOR_ORDER if p in set(table["predictor"])]
    colours = [c for p, c in zip(PREDICTOR_ORDER, PREDICTOR_COLOURS) if p in present]
    data = table.rename(columns={"layer.head": "layer_head"})  # a "." in a field name is a path in Vega-Lite
    heads = sorted(set(data["layer_head"]), key=_head_order)  # 2.3 before 12.3
    return (
        alt.Chart(data[["layer_head", "predictor", metric, "n_queries", "detector_label"]])
        .mark_bar()
        .encode(
            x=alt.X("layer_head:N", title="head (layer.head)", sort=heads, axis=_axis(labelAngle=0)),
            xOffset=alt.XOffset("predictor:N", sort=present),
            y=alt.Y(f"{metric}:Q", title=title, scale=alt.Scale(domain=domain), axis=_axis()),
            color=alt.Color(
                "predictor:N",
                sort=present,
                scale=alt.Scale(domain=present, range=colours),
                title="predictor",
                # at the right: the page fits the whole chart (legend included) into its height, and a
                # legend below squashed the bars to a sliver
                legend=alt.Legend(orient="right", labelLimit=0, titleLimit=0),
            ),
            tooltip=[
                alt.Tooltip("layer_head:N", title="head"),
                "predictor",
                alt.Tooltip(f"{metric}:Q", format=".3f"),
                "n_queries",
                "detector_label",
            ],
        )
        .properties(height=360, title=f"Explanation scores: {title} per head")
    )


def _head_order(name: str) -> tuple[float, ...]:
    """Sort key of a "layer.head" name: numerically, layer first."""
    try:
        return tuple(float(part) for part in str(name).split("."))
    except ValueError:
        return (math.inf,)
