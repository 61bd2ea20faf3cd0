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


def test_a_failed_load_leaves_the_picker_on_the_model_in_use():
    """After a failed load the sidebar names the loaded model, not the one that failed."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.sidebar.button(key="lab_model_load_now").click().run()  # the embedded model, now the working choice
    assert "Loaded: gemma-3-270m" in " ".join(s.value for s in at.sidebar.success)
    at.sidebar.selectbox(key="lab_model_picker").set_value("Other (HF id or local folder)...").run()
    at.sidebar.text_input(key="lab_model_custom").input("no-such-org/nothing-here").run()
    at.sidebar.button(key="lab_model_load_now").click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key="lab_model_picker").value == "gemma-3-270m"
    assert "Loaded: gemma-3-270m" in " ".join(s.value for s in at.sidebar.success)
    failed = " ".join(e.value for e in at.sidebar.error)
    assert "no-such-org/nothing-here" in failed and "Keeping gemma-3-270m" in failed


def test_the_picker_says_which_models_are_not_on_this_machine():
    from engine.core import registry

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    shown = at.sidebar.selectbox(key="lab_model_picker").options
    for row, label in zip(registry.list_models(), shown):
        absent = row["state"] == "not local" and row["name"] != "gemma-3-270m"
        assert label == (f"{row['name']} (not on this machine)" if absent else row["name"]), (row, label)
    assert shown[0] == "gemma-3-270m"  # the embedded model ships with the lab
