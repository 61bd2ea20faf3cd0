"""The one job panel (ui.job_panel): every page draws a background job's progress, Stop and end through it,
in the kit's words or in the phases' own words where a job has phases (a grokking run)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from streamlit.testing.v1 import AppTest

UI = Path(__file__).resolve().parents[1] / "ui"
KIT = {"job_panel.py", "progress.py"}  # background jobs, and blocking steps on a page


def test_no_page_draws_a_progress_bar_of_its_own():
    """A second progress idiom (its own ETA, its own Stop) is how pages drifted apart: only the kit draws bars."""
    drawn = [
        f"{path.name}:{number}"
        for path in sorted(UI.glob("*.py"))
        if path.name not in KIT
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bst\.progress\(", line)
    ]
    assert not drawn, drawn


def _panel_app():
    import streamlit as st

    from engine.core.jobs import RUNNER
    from ui.job_panel import job_progress

    job = RUNNER.get(st.session_state["job_key"])
    job_progress(
        job,
        what="Training",
        unit="steps",
        can_stop=True,
        widget_key="t",
        text=lambda j: f"Loading checkpoint {j.done}…",
        fraction=lambda j: 0.25,
        stop_note="Stopping at the next step.",
    )


def test_a_job_with_phases_shows_its_own_words_and_stops_once():
    from engine.core.jobs import RUNNER

    release = threading.Event()
    job = RUNNER.start("test-job-panel", lambda j: release.wait(30), total=8, done=4)
    try:
        at = AppTest.from_function(_panel_app, default_timeout=30)
        at.session_state["job_key"] = job.key
        at.run()
        (bar,) = at.get("progress")
        assert bar.proto.text == "Loading checkpoint 4…" and abs(bar.proto.value - 25) <= 1
        at.button(key="t_stop").click().run()
        assert job.stopping
        at.run()  # the next redraw: the stop's note instead of Stop
        assert not any(b.key == "t_stop" for b in at.button)
        assert any(c.value == "Stopping at the next step." for c in at.caption)
    finally:
        release.set()
        job.wait(10)
