"""The person's grokking runs on the server: what starting a job checks for them (`gate`: ownership, disk
quota, jobs, from ui.access), the run the tab shows (VIEW_SLOT: the last one started, reopened, linked or found
again), and the list of cached runs they may see (reopen, delete)."""

from __future__ import annotations

import streamlit as st

from engine.core.errors import LabError
from engine.grokking import jobs, runs
from ui import access
from ui.errors import lab_fragment
from ui.state import forget, latest, remember

TOPIC = jobs.TOPIC
VIEW_SLOT = "grok_view"  # the run shown: the last one started, reopened, linked or found again
POLL_SECONDS = 2.0  # how often the run list is redrawn while one of its runs trains


def _admit() -> None:
    """The person's disk quota and long jobs (LabError when over the server's limits)."""
    access.check_quota()
    access.check_jobs()


def gate() -> jobs.Gate:
    """What starting a job checks for the person of this session (read here, in the script thread)."""
    return jobs.Gate(
        person=access.me(),
        admit=_admit,
        claim=lambda run_id, fresh, label: access.claim_started_run(TOPIC, run_id, fresh, label=label),
        can_read=lambda run_id: access.can_read(TOPIC, run_id),
        start_job=lambda key, start, label, writes: access.start_job(key, start, label=label, writes=writes),
        owns_job=access.is_my_job,
        max_checkpoints=access.limits().grok_checkpoints,
    )


def show(run: runs.GrokRun) -> None:
    """Make the run the one the tab shows."""
    remember(VIEW_SLOT, run.run_id, run)


def shown() -> runs.GrokRun | None:
    """The run the tab shows, or None."""
    entry = latest(VIEW_SLOT)
    return None if entry is None else entry[1]


def forget_shown() -> None:
    forget(VIEW_SLOT)


def _run_label(run: runs.GrokRun) -> str:
    status = run.status()
    return (
        f"{run.grok_config.describe()} — {status.get('state', '?')} at step {status.get('step', 0)} "
        f"· {access.owner_label(access.access_of(TOPIC, run.run_id))}"
    )


def reopen_picker() -> None:
    """The cached runs this person may see; the list is redrawn while one of them trains (only theirs and
    shared ones count: someone else's private run never makes this page poll)."""
    going = any(run.status().get("state") == "running" for run in access.readable(TOPIC, runs.list_runs()))

    @lab_fragment(run_every=POLL_SECONDS if going else None)
    def picker() -> None:
        saved = {run.run_id: run for run in access.readable(TOPIC, runs.list_runs())}
        if saved:
            labels = {run_id: _run_label(run) for run_id, run in saved.items()}
            pick = st.selectbox(
                "Reopen a cached run", ["—", *labels], format_func=lambda k: labels.get(k, k), key="grok_reopen"
            )
            if pick != "—" and st.session_state.get("grok_reopened") != pick:
                st.session_state["grok_reopened"] = pick
                show(saved[pick])
                st.rerun()  # the whole tab shows it (the pick may have rerun this list only)
            if (
                pick != "—"
                and access.can_write(TOPIC, pick)
                and st.button("Delete this cached run", key="grok_delete", icon=":material/delete:")
            ):
                try:
                    runs.delete_run(pick)
                except LabError as err:
                    st.error(str(err), icon=":material/error:")
                    return
                access.forget_deleted(TOPIC, pick)
                access.set_link(None)
                st.session_state.pop("grok_reopened", None)
                st.session_state.pop("grok_reopen", None)
                current = shown()
                if current is not None and current.run_id == pick:
                    forget_shown()
                st.rerun()
        strays = access.deletable_strays(TOPIC, runs.strays())
        if strays:
            c1, c2 = st.columns([3, 1])
            c1.caption(
                f"{len(strays)} cached run folder(s) from an older version of the lab (or half-written): they cannot "
                f"be opened. {', '.join(f.run_id for f in strays[:5])}{' …' if len(strays) > 5 else ''}"
            )
            if c2.button("Delete them", key="grok_delete_strays", icon=":material/delete_sweep:"):
                problems = []
                for folder in strays:
                    try:
                        runs.delete_run(folder)
                        access.forget_deleted(TOPIC, folder.run_id)
                    except LabError as err:
                        problems.append(str(err))
                if problems:
                    st.error(problems[0], icon=":material/error:")
                    return
                st.rerun()

    picker()
