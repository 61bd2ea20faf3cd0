"""AppTest of the super-weights tab: nothing loads before Scan; scan, ablation and quantization run and render.

The tab is rendered through a small script (AppTest.from_function) so this test does not depend on the
grokking tab of the same page; the full page file is rendered too.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_superweights import one_torch_thread  # noqa: F401 (autouse fixture)

from engine.core.jobs import RUNNER

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "app_pages" / "1_Super_weights_and_grokking.py"


def _tab_script():
    import streamlit as st

    from ui.models import render_sidebar
    from ui.superweights_view import render

    st.set_page_config(page_title="Super weights", layout="wide")
    render_sidebar()
    render()


def _frames(at) -> list:
    return [d.value for d in at.dataframe]


def test_tab_loads_nothing_until_scan_then_scans_ablates_and_quantizes():
    import ui.models as ui_models

    loaded_before = set(ui_models._LOADED_IN_PROCESS)
    at = AppTest.from_function(_tab_script, default_timeout=600)
    at.run()
    assert not at.exception
    assert any("Press **Scan**" in i.value for i in at.info)
    assert set(ui_models._LOADED_IN_PROCESS) == loaded_before  # no model load before the button

    at.text_area(key="sw_prompts").input("  \n ").run()
    assert not at.exception
    assert any("No prompt" in e.value for e in at.error)  # said under the field, before any click
    assert at.button(key="sw_scan").disabled

    at.text_area(key="sw_prompts").input("Apple Inc. is a worldwide tech company.").run()
    at.button(key="sw_scan").click().run()
    assert not at.exception
    frames = _frames(at)
    scan = next(f for f in frames if "max |output|" in f.columns)
    assert len(scan) == 18  # Gemma 3 270M layers
    cands = next(f for f in frames if "persists in layers" in f.columns)
    assert len(cands) >= 1
    first = cands.iloc[0]
    assert first["layer"] == scan["max |output|"].idxmax()
    assert len(at.get("vega_lite_chart")) >= 2  # scan chart + residual trace
    assert at.selectbox(key="sw_layer").value == first["layer"]  # the first candidate's layer is selected

    at.selectbox(key="sw_eval_tokens").set_value(256)
    at.button(key="sw_ablate").click().run()
    assert not at.exception
    for job in RUNNER.jobs():  # the ablation runs in the background; the job panel redraws the page at its end
        if job.key.startswith("sw-ablation-"):
            job.wait(600)
    at.run()
    table = next(f for f in _frames(at) if "perplexity ratio, ablated / original" in f.columns)
    assert list(table["condition"])[:2] == ["original", "super weight zeroed"] and len(table) == 5
    assert table["perplexity"].gt(1).all()
    assert at.query_params.get("sw_ablated") == "1"  # a reload shows the ablation again

    at.multiselect(key="sw_q_blocks").set_value([4096])
    at.multiselect(key="sw_q_methods").set_value(["rtn", "rtn, super weight held"])
    at.selectbox(key="sw_q_tokens").set_value(256)
    at.button(key="sw_quant").click().run()
    assert not at.exception
    for job in RUNNER.jobs():  # the quantization too
        if job.key.startswith("sw-quantization-"):
            job.wait(600)
    at.run()
    quant = next(f for f in _frames(at) if "weights held in full precision" in f.columns)
    assert len(quant) == 3 and quant["perplexity"].gt(1).all()

    # a changed input keeps the last results on screen, marked as from other settings, until Scan
    at.text_area(key="sw_prompts").input("Summer is hot. Winter is").run()
    assert not at.exception
    assert any("Showing the last scan" in i.value and "settings below changed" in i.value for i in at.info)
    assert any("max |output|" in f.columns for f in _frames(at))
    assert at.query_params.get("sw_scanned") is None  # a reload would not show it as these settings' scan


def test_full_page_renders_both_tabs_without_loading_the_model():
    """The real page file, both tabs."""
    import ui.models as ui_models

    loaded_before = set(ui_models._LOADED_IN_PROCESS)
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Super weights and grokking"
    assert any("Press **Scan**" in i.value for i in at.info)
    assert set(ui_models._LOADED_IN_PROCESS) == loaded_before
