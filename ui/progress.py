"""Progress with steps and an ETA for blocking work on a page (detection, head scoring, explanation
scoring, asking the model, the LLM judge); background jobs are drawn by ui.job_panel.

The engine's long functions take `progress: ProgressFn | None` and call `progress(done, total, message)`
before each step and once at the end; `steps(label)` gives such a callback drawing a Streamlit progress
bar. It must run in the script's thread (background jobs report to `Job.progress` instead).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import streamlit as st

ProgressFn = Callable[[int, int, str], None]


def eta_text(seconds: float | None) -> str:
    """'about 40 s left' / 'about 3.5 min left' / '' (unknown)."""
    if seconds is None or seconds != seconds:
        return ""
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.1f} min left"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Remaining seconds at the mean pace so far: elapsed / done x (total - done); None before the first step."""
    return elapsed / done * max(total - done, 0) if done > 0 else None


@contextlib.contextmanager
def steps(label: str) -> Iterator[ProgressFn]:
    """`with steps("Ablating") as progress: engine_fn(..., progress=progress)`: a bar with
    "label: message (done / total, about N s left)", removed when the work ends."""
    bar = st.progress(0.0, text=f"{label}...")
    start = time.monotonic()

    def update(done: int, total: int, message: str = "") -> None:
        frac = min(max(done / total, 0.0), 1.0) if total else 0.0
        left = eta_text(eta_seconds(done, total, time.monotonic() - start)) if done < total else ""
        detail = f"{done} / {total}" + (f", {left}" if left else "")
        bar.progress(frac, text=f"{label}: {message} ({detail})" if message else f"{label} ({detail})")

    try:
        yield update
    finally:
        bar.empty()
