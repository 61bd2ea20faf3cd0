"""The grokking tab's charts: curves over steps (accuracy, loss, weight norm), the super-weight measures by
checkpoint, the event rules and the selected checkpoint on every chart (a click picks the nearest checkpoint),
a preview of what a run draws, and human labels for every column shown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from engine.grokking import runs
from engine.grokking.config import GROK_ACCURACY, HALF_GROK_ACCURACY, MEMORISATION_ACCURACY, GrokConfig
from engine.grokking.measure_registry import REGISTRY
from engine.grokking.measures import MeasureSettings
from ui.figures import show_chart

STEP_KEY = "grok_step"  # the selected checkpoint (a query parameter)
NEWEST = "newest"  # the picker's first option: the newest checkpoint, followed while the run trains
PICK = "grok_pick"  # the charts' click selection: the step clicked
SELECTED = "selected checkpoint"
AXIS = {"labelLimit": 0, "titleLimit": 0}
CHART_FRAME = 170  # px of a step chart's height outside its plot and legends: title, x axis, paddings (measured)
LEGEND_ROW = 24  # px a legend row takes
MEASURE = MeasureSettings()
LLM_COLUMN_LABELS = {  # llm_measures.csv (engine.grokking.llm_measures.LlmMeasures.summary) in words
    "step": "step",
    "max_ppl_ratio_train": "largest perplexity ratio on train, one weight zeroed",
    "max_ppl_ratio_test": "largest perplexity ratio on test, one weight zeroed",
    "max_acc_drop_train": "largest train-accuracy drop, one weight zeroed",
    "max_acc_drop_test": "largest test-accuracy drop, one weight zeroed",
    "fires_train": "a zeroed weight is causal on train",
    "fires_test": "a zeroed weight is causal on test",
    "scan_fires_train": "a scan candidate is causal on train",
    "scan_fires_test": "a scan candidate is causal on test",
    "n_scan_candidates": "scan candidates",
    "scan_candidates": "scan candidates (layer:row:column)",
    "super_activation_bos": "super activation at BOS (max |y|)",
    "super_activation_layer": "layer of the super activation",
    "super_activation_any": "largest |y| at any position",
    "bos_over_median": "BOS activation / median |y|",
    "persisting_layers": "layers the BOS spike persists in",
    "sink_share_max": "attention share on BOS, largest over layers",
    "sink_share_mean": "attention share on BOS, mean over layers",
    "sink_excess_max": "BOS share minus uniform attention's, largest over layers",
    "sink_head_excess_max": "BOS share minus uniform attention's, largest head",
    "resid_bos_over_median": "residual stream max |h| at BOS / median |h|",
    "n_key_frequencies": "key Fourier frequencies",
    "fourier_covered": "energy share of the key frequencies",
}
LLM_SERIES = {  # the llm charts' legend entries (each chart's title says what is measured)
    "max_ppl_ratio_train": "train",
    "max_ppl_ratio_test": "test",
    "super_activation_bos": "max |y| at BOS",
    "bos_over_median": "max |y| at BOS / median |y|",
    "sink_share_max": "BOS share, largest over layers",
    "sink_share_mean": "BOS share, mean over layers",
    "sink_excess_max": "excess over uniform, largest layer mean",
    "sink_head_excess_max": "excess over uniform, largest head",
    "resid_bos_over_median": "residual max |h| at BOS / median |h|",
    "n_key_frequencies": "key frequencies",
}


def column_label(column: str) -> str:
    """A column's label in words (an llm measure's, else the name with spaces)."""
    return LLM_COLUMN_LABELS.get(column, column.replace("_", " "))


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


def on_pick(chart_key: str, steps: Sequence[int]) -> None:
    """on_select of a curve: the checkpoint nearest to the click becomes the selected one (the picker's
    session state is set before it is drawn again)."""
    step = step_from_selection(st.session_state.get(chart_key), steps)
    if step is not None:
        st.session_state[STEP_KEY] = step


def event_marks(events: runs.RunEvents, selected: int | None) -> alt.LayerChart | None:
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


def step_chart(
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


def show_step_charts(
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
                    on_select=(lambda k=key: on_pick(k, steps)) if steps else "ignore",
                    selection_mode=PICK if steps else None,
                )


def curves(metrics: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
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
        chart = step_chart(frame, y, "series", title, marks, tooltip=tooltip, height=200)
        charts.append((chart, f"grokking_{key.removeprefix('grok_chart_')}", key, metrics[["step", *cols]]))
    show_step_charts(charts, steps, per_row=3)


def measure_charts(measures: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
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
        chart = step_chart(frame, y, "name", title, marks, points=True, tooltip=tooltip, height=220, columns=3)
        charts.append((chart, f"grokking_measure_{short}", f"grok_chart_m_{short}", frame))
    show_step_charts(charts, steps, per_row=2)


FIXED_LLM_PANELS = [  # (columns, y axis, title, scale): columns of the built-in summary no single measure owns
    (["max_ppl_ratio_train", "max_ppl_ratio_test"], "ppl ratio", "Largest perplexity ratio, one weight zeroed", "log"),
    (["super_activation_bos", "bos_over_median"], "activation", "Super activation at BOS (max |y|, / median)", "log"),
    (["n_key_frequencies"], "frequencies", "Key Fourier frequencies of the number embedding", "linear"),
]


def llm_panels() -> list[tuple[list[str], str, str, str]]:
    """The llm measure charts: the fixed panels, then one per measure registered with a chart panel
    (engine.grokking.measure_registry), so a new measure is charted with no edit here."""
    registered = [
        (list(spec.columns), spec.panel.axis_title, spec.panel.title, spec.panel.scale)
        for spec in REGISTRY.values()
        if spec.panel is not None
    ]
    return FIXED_LLM_PANELS[:2] + registered + FIXED_LLM_PANELS[2:]


def llm_measure_charts(measures: pd.DataFrame, marks: alt.LayerChart | None, steps: Sequence[int]) -> None:
    """The llm measures of every checkpoint (llm_measures.csv): causal effects on train and test, super
    activation, attention sink, key Fourier frequencies."""
    if measures.empty or len(measures) == 0:
        st.info("The measures appear at the first checkpoint.")
        return
    panels = llm_panels()
    charts = []
    for i, (columns, axis_title, title, scale) in enumerate(panels):
        present = [c for c in columns if c in measures]
        if not present:  # a run measured before this measure existed
            continue
        long = measures.melt("step", present)
        long["series"] = long["variable"].map(lambda c: LLM_SERIES.get(c, column_label(c)))
        y = alt.Y("value:Q", title=axis_title, scale=alt.Scale(type=scale), axis=alt.Axis(**AXIS))
        tooltip = ["step:Q", "series:N", alt.Tooltip("value:Q", format=".4g")]
        chart = step_chart(
            long.drop(columns="variable"), y, "series", title, marks, points=True, tooltip=tooltip, height=220
        )
        charts.append((chart, f"grokking_llm_measure_{i}", f"grok_chart_llm_{i}", measures[["step", *present]]))
    show_step_charts(charts, steps, per_row=2)


def preview(config: GrokConfig) -> None:
    """Before a run of these settings exists: the accuracy chart it will draw, empty (its axes, and the
    accuracy levels that mark its events)."""
    levels = pd.DataFrame(
        {
            "accuracy": [MEMORISATION_ACCURACY, GROK_ACCURACY, HALF_GROK_ACCURACY],
            "event": [
                f"memorisation: train ≥ {MEMORISATION_ACCURACY:.0%}",
                f"grokking: test ≥ {GROK_ACCURACY:.0%}",
                f"first sign: test ≥ {HALF_GROK_ACCURACY:.0%}",
            ],
            "step": [0, config.steps, 0],  # where each level's label sits: the two close levels at either end
            "align": ["left", "right", "left"],
        }
    )
    x = alt.X("step:Q", title="step", scale=alt.Scale(domain=[0, config.steps]), axis=alt.Axis(**AXIS))
    y = alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(**AXIS))
    base = alt.Chart(levels)
    rules = base.mark_rule(strokeDash=[5, 3], color="gray").encode(y=y)
    labels = [
        base.transform_filter(alt.datum.align == side)
        .mark_text(align=side, dx=4 if side == "left" else -4, dy=-6 if side == "left" else 10, color="gray")
        .encode(x=x, y=y, text="event:N")
        for side in ("left", "right")
    ]
    chart = alt.layer(rules, *labels).properties(
        height=220 + CHART_FRAME,
        title=alt.TitleParams(
            "Preview: train and test accuracy of these settings will be drawn here",
            subtitle=[
                f"Press Start below: up to {config.steps:,} steps. Loss, weight norm and the super-weight",
                "measures of every checkpoint follow under it.",
            ],
            anchor="start",
            limit=0,
            fontSize=13,
        ),
    )
    show_chart(chart, "grokking_preview", key="grok_chart_preview", data=levels)
