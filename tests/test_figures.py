"""Charts saved for a paper (engine.core.figures, behind every page's PNG / SVG / CSV buttons)."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
from streamlit.testing.v1 import AppTest

from engine.core.figures import EXPORT_WIDTH, chart_png, chart_svg, export_spec


def _chart(rows: int = 3) -> alt.Chart:
    frame = pd.DataFrame({"layer": range(rows), "value": [1.0 + i for i in range(rows)]})
    return alt.Chart(frame).mark_bar().encode(x="layer:O", y="value:Q").properties(width="container", title="t")


def test_png_and_svg_are_real_images_of_the_chart():
    png = chart_png(_chart())
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")  # IHDR width, at scale 2
    assert width > 2 * EXPORT_WIDTH * 0.9  # a container-wide chart is exported EXPORT_WIDTH px wide, not 0
    svg = chart_svg(_chart())
    assert svg.lstrip().startswith("<svg") and ">t<" in svg  # the title is in the drawing


def test_export_has_no_container_width_and_no_row_cap():
    spec = json.loads(export_spec(_chart(6000)))  # Altair refuses > 5000 rows by default
    assert spec["width"] == EXPORT_WIDTH and "container" not in json.dumps(spec)
    assert len(next(iter(spec["datasets"].values()))) == 6000


def test_show_chart_draws_the_chart_and_its_three_downloads(tmp_path):
    page = tmp_path / "page.py"
    page.write_text(
        "import altair as alt, pandas as pd\n"
        "from ui.figures import show_chart\n"
        "frame = pd.DataFrame({'x': [1, 2], 'y': [3, 4]})\n"
        "show_chart(alt.Chart(frame).mark_bar().encode(x='x:O', y='y'), 'my chart', key='c')\n"
    )
    at = AppTest.from_file(str(page), default_timeout=30)
    at.run()
    assert not at.exception
    buttons = [e for e in at.get("download_button")]
    assert len(buttons) == 3


def test_identical_curves_names_the_series_one_line_hides():
    import pandas as pd

    from ui.figures import identical_curves

    x = [0.0, 0.5, 1.0]
    frame = pd.DataFrame(
        {
            "method": ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3,
            "rejected_fraction": x * 4,
            "accuracy": [0.5, 0.6, 0.7] + [0.5, 0.6, 0.7] + [0.5, 0.55, 0.7] + [0.5, 0.6, 0.7],
        }
    )
    assert identical_curves(frame) == [["a", "b", "d"]]
    assert identical_curves(frame[frame["method"] != "b"].query("method != 'd'")) == []
