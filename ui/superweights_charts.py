"""Charts of the super-weights tab (Altair), built from the engine's frames: the scan per layer (a click
selects a layer), the residual stream at a super activation, weight statistics per layer, a candidate's
neighbourhood, the ablation's perplexity ratios and the quantization's perplexity per block size. Axis
and legend labels are never cut (labelLimit 0) and name what is drawn in words.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from engine.superweights import detect

LAYER_PICK = "sw_layer_pick"  # the scan chart's click selection (Vega-Lite parameter name)
PROJECTION_NAMES = {  # weight statistics' projection names, as the legend says them
    "down_proj": "MLP down projection",
    "up_proj": "MLP up projection",
    "gate_proj": "MLP gate projection",
    "q_proj": "attention query",
    "k_proj": "attention key",
    "v_proj": "attention value",
    "o_proj": "attention output",
}


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


def scan_chart(detection: detect.Detection, selected: int | None = None) -> alt.LayerChart:
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
            # dashes and shapes tell methods apart where their lines coincide (same perplexity)
            strokeDash=alt.StrokeDash("method:N", legend=None),
            shape=alt.Shape("method:N", legend=None),
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


def residual_chart(trace: pd.DataFrame) -> alt.Chart:
    """|h[token, channel]| after each layer (log) at a super activation (trace: layer, value, ratio)."""
    trace = trace.assign(abs_value=trace["value"].abs())
    return (
        alt.Chart(trace)
        .mark_line(point=True)
        .encode(
            x=layer_x(len(trace)),
            y=alt.Y("abs_value:Q", scale=alt.Scale(type="log"), title="|h[token, channel]| (log)", axis=_axis()),
            tooltip=["layer", alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("ratio:Q", format=".3g")],
        )
        .properties(height=300)  # the whole chart, axes included (Streamlit fits it): room for the y title
    )


def weight_stats_chart(stats: pd.DataFrame) -> alt.Chart:
    """max|w| / median|w| of every projection per layer (log), one line per projection."""
    n_layers = int(stats["layer"].max()) + 1
    stats = stats.assign(
        weights=stats["projection"].map(lambda p: PROJECTION_NAMES.get(str(p).rsplit(".", 1)[-1], str(p)))
    )
    return (
        alt.Chart(stats)
        .mark_line(point=True)
        .encode(
            x=layer_x(n_layers),
            y=alt.Y("max_over_median:Q", scale=alt.Scale(type="log"), title="max|w| / median|w|", axis=_axis()),
            # legend at the right: below, it took most of the height Streamlit fits the chart into
            color=alt.Color("weights:N", legend=alt.Legend(labelLimit=0, titleLimit=0, orient="right")),
            tooltip=["layer", "weights", "max_over_median", "kurtosis", "row", "col"],
        )
        .properties(height=340)
    )


def neighbourhood_chart(part: pd.DataFrame, along: Any) -> alt.Chart:
    """The weights around a candidate along its row or column (offset 0: the candidate, in red)."""
    return (
        alt.Chart(part)
        .mark_bar()
        .encode(
            x=alt.X("offset:O", title=f"offset from the candidate, along its {along}", axis=_axis(labelAngle=0)),
            y=alt.Y("value:Q", title="weight", axis=_axis()),
            color=alt.condition(alt.datum.offset == 0, alt.value("crimson"), alt.value("steelblue")),
            tooltip=["row", "col", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=260)
    )
