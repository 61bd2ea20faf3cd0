"""The head atlas of the attention page's "Whole model" view: every head of the model as a layer x head
grid (layers as columns, as the model view draws them), each cell coloured by the head's best external
function (the detector's best-fitting library rule on the train prompts) and marked by whether its
self-explanation beats the no-explanation control; heads the study did not take (a sample) are drawn
as "not studied". A click on a cell selects that head (selection HEAD_PICK, fields layer / head).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from engine.attention.rules import RULE_TITLES, RULES
from engine.attention.study_result import StudyResult
from ui.attention_charts import HEAD_PICK, HIGHLIGHT

NOT_STUDIED = "not studied"
NOT_STUDIED_COLOUR = "#f0f0f0"
# whether the self-explanation beats the control: the mark drawn on the cell (none: nothing to say)
SELF_MARKS = {
    "beats the control": ("triangle-up", "#1a9850"),
    "no difference": ("circle", "#636363"),
    "below the control": ("triangle-down", "#d73027"),
}
# legends below the grid: Streamlit's renderer cuts a legend on the right at the grid's height (a few heads:
# only its first entries showed, never "not studied"); the near-white "not studied" swatch gets an outline
LEGEND = {"orient": "bottom", "direction": "vertical", "labelLimit": 0, "titleLimit": 0}
COLUMNS = [
    "layer",
    "head",
    "layer.head",
    "best external function",
    "self vs control",
    "top1 self-text",
    "top1 control: no explanation",
    "top1 detector",
    "top1 probe",
    "explanation",
]


def atlas_frame(result: StudyResult, n_layers: int, n_heads: int) -> pd.DataFrame:
    """One row per head of the model (n_layers x n_heads rows, layer-major): the study's atlas row when the
    head was studied, else NOT_STUDIED in both the function and the self-vs-control columns."""
    studied = result.atlas().copy()
    studied["best external function"] = studied.get("detector_title", NOT_STUDIED)
    studied["self vs control"] = studied.get("self_vs_control", "no self-explanation")
    grid = pd.DataFrame([{"layer": layer, "head": head} for layer in range(n_layers) for head in range(n_heads)])
    frame = grid.merge(studied.drop(columns=["layer.head"], errors="ignore"), on=["layer", "head"], how="left")
    frame["layer.head"] = frame["layer"].astype(str) + "." + frame["head"].astype(str)
    for column in ("best external function", "self vs control"):
        frame[column] = frame[column].fillna(NOT_STUDIED)
    return frame[[c for c in COLUMNS if c in frame.columns]]


def atlas_chart(frame: pd.DataFrame, selected: tuple[int, int] | None = None) -> alt.LayerChart:
    """The atlas of `atlas_frame`: cells coloured by best external function, a mark for self vs control
    (▲ beats it, ● no difference, ▼ below it, no mark: no self-explanation or not studied); a click selects
    a head, the `selected` one framed in red."""
    n_layers, n_heads = int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1
    data = frame.rename(columns={"layer.head": "layer_head"})  # a "." in a field name is a path in Vega-Lite
    functions = [RULE_TITLES[r] for r in RULES]
    drawn = set(data["best external function"])
    present = [f for f in functions if f in drawn] + ([NOT_STUDIED] if NOT_STUDIED in drawn else [])
    colours = _palette(functions, present)
    layer, head = selected if selected is not None else (-1, -1)
    pick = alt.selection_point(name=HEAD_PICK, fields=["layer", "head"], on="click", toggle=False)
    is_selected = f"datum.layer == {int(layer)} && datum.head == {int(head)}"
    x = alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0, values=list(range(n_layers))))
    y = alt.Y("head:O", title="head", axis=alt.Axis(values=list(range(n_heads))))
    tooltip = [
        alt.Tooltip("layer_head:N", title="head"),
        "best external function",
        "self vs control",
        *[
            alt.Tooltip(field=c, type="quantitative", format=".3f")
            for c in COLUMNS
            if c.startswith("top1 ") and c in data.columns
        ],
        *(["explanation"] if "explanation" in data.columns else []),
    ]
    cells = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "best external function:N",
                title="best external function (detector)",
                sort=present,
                scale=alt.Scale(domain=present, range=colours),
                legend=alt.Legend(symbolStrokeColor="#969696", symbolStrokeWidth=0.5, **LEGEND),
            ),
            stroke=alt.condition(is_selected, alt.value(HIGHLIGHT), alt.value("white")),
            strokeWidth=alt.condition(is_selected, alt.value(3), alt.value(1)),
            tooltip=tooltip,
        )
        .add_params(pick)
    )
    marked = [k for k in SELF_MARKS if k in set(data["self vs control"])] or list(SELF_MARKS)
    marks = (
        alt.Chart(data)
        .transform_filter(alt.FieldOneOfPredicate(field="self vs control", oneOf=list(SELF_MARKS)))
        .mark_point(filled=True, size=90, opacity=0.95)
        .encode(
            x=x,
            y=y,
            shape=alt.Shape(
                "self vs control:N",
                title="self-explanation vs no-explanation control",
                scale=alt.Scale(domain=marked, range=[SELF_MARKS[k][0] for k in marked]),
                legend=alt.Legend(**LEGEND),
            ),
            fill=alt.Fill(
                "self vs control:N",
                scale=alt.Scale(domain=marked, range=[SELF_MARKS[k][1] for k in marked]),
                legend=None,
            ),
            tooltip=tooltip,
        )
    )
    return (
        alt.layer(cells, marks)
        .resolve_scale(color="independent")
        .properties(  # no fixed width or height: Streamlit's renderer collapsed the ordinal grid to one row
            title="Head atlas: best external function, and whether the self-explanation beats the control",
        )
    )


def _palette(functions: list[str], present: list[str]) -> list[str]:
    """A fixed colour per library rule (tableau10 order of RULES), so a rule keeps its colour across models."""
    tableau = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
    tableau.append("#bab0ac")
    by_rule = {f: tableau[k % len(tableau)] for k, f in enumerate(functions)}
    return [by_rule.get(f, NOT_STUDIED_COLOUR) for f in present]
