"""One panel for every long job a page starts in the background (engine.core.jobs.RUNNER): progress with
an ETA once the job measured a pace ("estimating…" before), a stop button for whoever may stop it, why it
ended (stopped or failed), and the page redrawn once when it ends so its result shows.

A job is found again by the person who started it (engine.core.jobs.JobRunner.latest_of): a reload or a
reopened tab shows its progress while it runs and its result when it is done. When the view shows
another run than the one the person just started, `started_elsewhere_note` says so, with a button to it.

`job_progress` is the bar and Stop alone, for a view that polls a whole run itself (the grokking run
panel, the sweep): its phases give the bar's words there ("Starting the training process…", "Loading
checkpoint N…", "estimating the time left…"), the bar, Stop and the stop's note are the kit's.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from engine.core.jobs import RUNNER, Job
from ui.errors import lab_fragment
from ui.model_queue import job_queue_note
from ui.progress import eta_text

POLL_SECONDS = 2.0  # how often a running job's panel is redrawn
ESTIMATING = "estimating…"


def progress_text(job: Job, unit: str) -> str:
    """'9/15 conditions · about 40 s left', or '· estimating…' before the job measured a pace; the place in
    the model's queue while it waits for the model."""
    done = f"{job.done:,}/{job.total:,} {unit}" if job.total else f"{job.done:,} {unit}"
    left = eta_text(job.eta_seconds()) if job.rate_measured else ""
    message = f" · {job.message}" if job.message else ""
    return f"{done}{message} · {left or ESTIMATING}{job_queue_note(job.key)}"


def ended_text(job: Job, what: str) -> str | None:
    """Why a job that ended did not finish: 'stopped at 9/15 …' or 'failed: <its one line>'; None when it finished."""
    if job.state == "failed":
        return f"{what} failed: {job.error}"
    if job.state == "stopped":
        at = f" at {job.done:,}/{job.total:,}" if job.total else ""
        return f"{what} stopped{at}."
    return None


def job_progress(
    job: Job,
    *,
    what: str,
    unit: str,
    can_stop: bool,
    widget_key: str,
    text: Callable[[Job], str] | None = None,
    fraction: Callable[[Job], float] | None = None,
    stop_label: str = "Stop",
    on_stop: Callable[[], None] | None = None,
    stop_note: str | None = None,
) -> None:
    """A running job's bar and Stop, drawn where the caller is (inside a fragment that polls, e.g. a view that
    redraws a whole run while it trains; `job_panel` is that fragment for a job alone).

    text(job): the bar's text when the job's phases need their own words (default "what: progress_text");
    fraction(job): the bar's fill (default done/total); on_stop(): what Stop does (default job.stop());
    stop_note: the toast after Stop (default "what stops after the step in flight"). Once a stop is asked,
    Stop gives way to that line."""
    after = stop_note or f"{what} stops after the step in flight."
    total = job.total or 0
    filled = fraction(job) if fraction is not None else (job.done / total if total else 0.0)
    label = text(job) if text is not None else f"{what}: {progress_text(job, unit)}"
    st.progress(min(max(filled, 0.0), 1.0), text=label)
    if job.stopping:
        st.caption(after)
    elif can_stop and st.button(stop_label, key=f"{widget_key}_stop", icon=":material/stop_circle:"):
        (on_stop or job.stop)()
        st.toast(after)


def job_ended(job: Job, what: str) -> None:
    """Why an ended job did not finish (ended_text), as an error (failed) or a note (stopped); nothing when it
    finished."""
    ended = ended_text(job, what)
    if ended:
        (st.error if job.state == "failed" else st.info)(ended, icon=":material/info:")


def job_panel(
    key: str,
    *,
    what: str,
    unit: str,
    can_stop: bool,
    widget_key: str,
    status: Callable[[Job | None], str] | None = None,
    poll: float = POLL_SECONDS,
) -> Job | None:
    """The panel of the job of `key` (None: no job of that key in this process; only `status` is shown).

    what: the job in words ("Generation", "The ablation"); unit: what it counts ("questions");
    can_stop: a Stop button (the person may stop it); status(job): a line above the bar (e.g. the run's
    saved questions). While the job runs the panel redraws every `poll` seconds; when it ends, the whole
    page is redrawn once (so the result shows where the page draws it)."""
    job = RUNNER.get(key)

    @lab_fragment(run_every=poll if job is not None and job.running else None)
    def panel() -> None:
        job = RUNNER.get(key)
        if status is not None:
            st.caption(status(job))
        if job is None:
            return
        if job.running:
            job_progress(job, what=what, unit=unit, can_stop=can_stop, widget_key=widget_key)
            return
        job_ended(job, what)
        seen = f"_{widget_key}_seen_end"
        if st.session_state.get(seen) != (key, job.started):
            st.session_state[seen] = (key, job.started)
            st.rerun(scope="app")

    panel()
    return job


def started_elsewhere_note(
    shown: str | None, started: Job | None, name: Callable[[Job], str], show: Callable[[], None]
) -> None:
    """When the person's latest job works on (or made) something other than what the view shows: a note
    saying which is which, and a button that shows theirs (`show()`); nothing when they are the same."""
    if started is None or name(started) == shown:
        return
    state = {"running": "is running", "stopping": "is stopping", "finished": "finished"}.get(started.state, "ended")
    left, right = st.columns([4, 1])
    left.info(
        f"Showing {shown or 'nothing yet'}; the job you started, {name(started)}, {state}.",
        icon=":material/swap_horiz:",
    )
    if right.button("Show it", key=f"_job_show_{started.key}", icon=":material/visibility:"):
        show()
        st.rerun()
