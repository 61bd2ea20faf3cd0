"""Charts of the attention page: one head's heatmap, the model view of every head in small blocks,
and a head function's mean score per layer and head."""

from __future__ import annotations

from typing import Literal, get_args

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from engine.attention.config import HeadFunction
from engine.attention.head_functions import FUNCTION_TITLES, HeadFunctionTable
from engine.attention.maps import AttentionResult, block_mean

ColourScale = Literal["0 to visible max", "0 to 1", "log"]
COLOUR_SCALES: tuple[ColourScale, ...] = get_args(ColourScale)
MODEL_VIEW_BINS = 16  # each head of the model view is averaged into at most this many x this many blocks


@st.cache_data(max_entries=16, show_spinner=False)
def model_view_frame(
    _result: AttentionResult, result_key: tuple, hide_bos: bool, per_head_scale: bool, bins: int = MODEL_VIEW_BINS
) -> pd.DataFrame:
    """Every head's map in bins x bins blocks, one row per block (cached per result: picking a head
    does not rebuild it)."""
    maps = _result.maps.copy()
    if hide_bos and maps.shape[-1] > 1:
        maps[..., 0] = np.nan
    rows = []
    layers, heads = _result.layer_labels(), _result.head_labels()
    for layer in range(_result.n_layers):
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
                                "layer": layers[layer],
                                "head": heads[head],
                                "q": a,
                                "k": b,
                                "weight": float(blocks[a, b]),
                                "queries": f"{edges[a]}-{edges[a + 1] - 1}",
                                "keys": f"{edges[b]}-{edges[b + 1] - 1}",
                            }
                        )
    return pd.DataFrame(rows)


def model_view_chart(
    result: AttentionResult, result_key: tuple, hide_bos: bool, per_head_scale: bool
) -> alt.FacetChart:
    """Small multiples: rows are layers, columns heads, each a blocked heatmap of the head's map."""
    df = model_view_frame(result, result_key, hide_bos, per_head_scale)
    base = (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("k:O", axis=None),
            y=alt.Y("q:O", axis=None),
            color=alt.Color(
                "weight:Q", scale=alt.Scale(scheme="blues"), title="weight" + (" / head max" if per_head_scale else "")
            ),
            tooltip=["layer", "head", "queries", "keys", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(width=64, height=64)
    )
    return base.facet(
        row=alt.Row(
            "layer:N", sort=result.layer_labels(), title=None, header=alt.Header(labelAngle=0, labelAlign="left")
        ),
        column=alt.Column("head:N", sort=result.head_labels(), title=None),
        spacing=4,
    )


def head_chart(result: AttentionResult, layer: int, head: int, hide_bos: bool, scale: ColourScale) -> alt.Chart:
    """One head's [T, T] map as a heatmap with token labels (query rows, key columns; j <= i only)."""
    pattern = result.head(layer, head)
    n = pattern.shape[0]
    rows = [
        {"query": result.labels[i], "key": result.labels[j], "i": i, "j": j, "weight": float(pattern[i, j])}
        for i in range(n)
        for j in range(i + 1)
        if not (hide_bos and j == 0 and n > 1)
    ]
    df = pd.DataFrame(rows)
    keys = result.labels[1:] if hide_bos and n > 1 else result.labels
    if scale == "log":
        color_scale = alt.Scale(type="log", domain=[1e-3, 1], clamp=True, scheme="blues")
    elif scale == "0 to 1":
        color_scale = alt.Scale(domain=[0, 1], scheme="blues")
    else:
        color_scale = alt.Scale(domain=[0, max(float(df["weight"].max()), 1e-6)], scheme="blues")
    size = max(320, min(900, 18 * n))
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X(
                "key:N",
                sort=list(keys),
                title="key (attended) token",
                axis=alt.Axis(labelAngle=-60, labelLimit=120, labelOverlap=False),
            ),
            y=alt.Y(
                "query:N",
                sort=list(result.labels),
                title="query token",
                axis=alt.Axis(labelLimit=120, labelOverlap=False),
            ),
            color=alt.Color("weight:Q", scale=color_scale),
            tooltip=["i", "query", "j", "key", alt.Tooltip("weight:Q", format=".4f")],
        )
        .properties(width=size, height=size, title=f"Layer {layer} head {head}")
    )


def function_heatmap(table: HeadFunctionTable, fn: HeadFunction) -> alt.Chart:
    """A function's mean score over the prompts per layer x head (std and prompt count in the tooltip)."""
    mean, std, n = table.mean(fn), table.std(fn), table.n_defined(fn)
    df = pd.DataFrame(
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
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("head:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("mean:Q", scale=alt.Scale(scheme="viridis"), title=FUNCTION_TITLES[fn]),
            tooltip=[
                "layer",
                "head",
                alt.Tooltip("mean:Q", format=".3f"),
                alt.Tooltip("std:Q", format=".3f"),
                "n_prompts",
            ],
        )
        .properties(width=220, height=18 * mean.shape[0], title=f"{FUNCTION_TITLES[fn]}: mean over prompts")
    )
