"""Charts as files for a paper: Vega-Lite (Altair) specs rendered to PNG and SVG with vl-convert.

One place for the conversion, used by the reports and by every chart on the pages. A chart whose
width follows its container ("container") has no width outside a browser, so it is exported at
`EXPORT_WIDTH` pixels.
"""

from __future__ import annotations

import json
from typing import Any

EXPORT_WIDTH = 800  # pixels, for charts sized to their container on the page
PNG_SCALE = 2  # 2x pixels: sharp in print


def _fixed_widths(node: Any) -> Any:
    """The spec with every `"width": "container"` replaced by EXPORT_WIDTH (recursively)."""
    if isinstance(node, dict):
        return {k: (EXPORT_WIDTH if k == "width" and v == "container" else _fixed_widths(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_fixed_widths(v) for v in node]
    return node


def export_spec(chart) -> str:
    """The chart's Vega-Lite JSON for export (data inlined, no row cap, fixed width)."""
    import altair as alt

    with alt.data_transformers.disable_max_rows():  # Altair refuses > 5000 rows by default; files are fine
        spec = chart.to_dict()
    return json.dumps(_fixed_widths(spec))


def chart_png(chart, scale: float = PNG_SCALE) -> bytes:
    """The chart as PNG bytes (vl-convert, `scale` x pixels)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(export_spec(chart), scale=scale)


def chart_svg(chart) -> str:
    """The chart as an SVG document (vl-convert)."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(export_spec(chart))
