"""Every chart on the pages, saveable for a paper: the chart, then PNG, SVG and CSV downloads.

Streamlit's chart menu offers no export here, so the files are rendered on the server with
vl-convert (engine.core.figures), only when a download is clicked (the buttons take callables).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from engine.core.figures import chart_png, chart_svg


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "chart"


def _chart_data(chart) -> pd.DataFrame | None:
    data = getattr(chart, "data", None)
    return data if isinstance(data, pd.DataFrame) else None


def show_chart(
    chart,
    name: str,
    *,
    key: str,
    data: pd.DataFrame | None = None,
    on_select: str | Callable[[], None] = "ignore",
    selection_mode: str | list[str] | None = None,
) -> Any:
    """Draw an Altair chart at the container's width with "PNG · SVG · CSV" downloads below it.

    `name` names the files (e.g. "a1_a2_a3" -> a1_a2_a3.png); `data` is the CSV (default: the chart's
    own DataFrame). With `on_select="rerun"` it returns Streamlit's selection state (chart events)."""
    state = st.altair_chart(
        chart,
        width="stretch",
        key=key,
        on_select=on_select,
        selection_mode=selection_mode,
    )
    stem = _file_stem(name)
    table = data if data is not None else _chart_data(chart)
    files = [
        ("PNG", lambda: chart_png(chart), "png", "image/png"),
        ("SVG", lambda: chart_svg(chart), "svg", "image/svg+xml"),
    ]
    if table is not None:
        files.append(("CSV", lambda: table.to_csv(index=False), "csv", "text/csv"))
    row = st.container(horizontal=True, gap="small")  # buttons at their own width, never cut in a narrow column
    for label, render, ext, mime in files:  # rendered only when clicked (a callable)
        row.download_button(
            label,
            render,
            f"{stem}.{ext}",
            mime,
            key=f"{key}_{ext}",
            on_click="ignore",
            icon=":material/download:",
            type="tertiary",
        )
    return state


def identical_curves(frame: pd.DataFrame, key: str = "method", x: str = "rejected_fraction", y: str = "accuracy"):
    """Groups (2 or more) of the frame's series that coincide point for point, so that one line hides the
    others; in the frame's order."""
    groups: dict[tuple, list[str]] = {}
    for name, part in frame.groupby(key, sort=False):
        points = tuple(zip(part[x].round(12), part[y].round(12)))
        groups.setdefault(points, []).append(str(name))
    return [names for names in groups.values() if len(names) > 1]
