"""AppTest for the home page: renders without exception, loads no model, model picker present."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_home_renders_with_model_picker_and_loads_nothing():
    import ui.models as ui_models

    before = set(ui_models._LOADED_IN_PROCESS)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert at.title[0].value == "LLM internals lab"
    picker = at.sidebar.selectbox(key="lab_model_picker")
    assert picker.value == "gemma-3-270m"
    assert "not loaded yet" in at.sidebar.info[0].value
    assert set(ui_models._LOADED_IN_PROCESS) == before  # opening the home page loaded no model


def test_picking_an_unavailable_model_keeps_the_app_working():
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.sidebar.selectbox(key="lab_model_picker").set_value("Other (HF id or local folder)...").run()
    at.sidebar.text_input(key="lab_model_custom").input("no-such-org/nothing-here").run()
    assert not at.exception
    at.sidebar.button(key="lab_model_load_now").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "no-such-org/nothing-here" in errors and "offline" in errors
