"""The uncertainty page's runs: the run shown (the picker, the address bar `?uq_run=`, a link followed
once), a person's generation found again after a reload, which run is shown vs the one just started,
the run's status and job panel, and deleting it.

The picker's value is set when another run is to be shown, never dropped: a dropped value is taken
back from the browser, which still holds the run it showed before (so a finished new run would give
way to the previous one).
"""

from __future__ import annotations

import streamlit as st

from engine.core.errors import LabError
from engine.uq import jobs as uq_jobs
from engine.uq import store
from engine.uq.generation import job_key
from engine.uq.store import UqRun
from ui import access
from ui.job_panel import job_panel, started_elsewhere_note

RUN_PARAM = "uq_run"  # ?uq_run=<run id>: the run shown (never an owner key)


PICK = "uq_run_pick"  # the run picker's value


PENDING = "_uq_pending_pick"  # a run to show, applied before the picker is drawn


JUST_STARTED = "_uq_just_started"  # the run this session started last


TOPIC = store.STORE.topic  # the runs' topic in the lab database


def follow_link() -> tuple[UqRun | None, bool]:
    """(the run the address bar names when this person may read it and it is not the one already shown,
    blocked). `?run=<id>` (older links, ui.access) is followed once and turned into `?uq_run=<id>`.
    blocked: the link names a run that is missing or private to someone else; a notice (and nothing of
    the run) is shown, with a button back to the page without the link."""
    linked, blocked = access.follow_link(TOPIC, store.get_run, "uq")
    if blocked:
        return None, True
    if linked is not None:
        access.set_link(None)
        return linked, False
    run_id = st.query_params.get(RUN_PARAM)
    if not run_id:
        return None, False
    try:
        run = store.get_run(str(run_id))
    except LabError:
        st.error(
            f"No saved run {str(run_id)[:64]!r}: the link is wrong, or the run was deleted.", icon=":material/error:"
        )
        _back_button()
        return None, True
    if not access.can_read(TOPIC, run.run_id):
        st.warning(
            f"{access.PRIVATE_NOTICE} Ask them to share it with the group if you should see it.",
            icon=":material/lock:",
        )
        _back_button()
        return None, True
    if st.session_state.get("_uq_url_run") == run.run_id:
        return None, False  # already shown (the picker may have moved on in this rerun)
    return run, False


def show_in_url(run_id: str | None) -> None:
    """Make the address bar name the run shown (or no run)."""
    st.session_state["_uq_url_run"] = run_id
    if run_id is None:
        st.query_params.pop(RUN_PARAM, None)
    elif st.query_params.get(RUN_PARAM) != run_id:
        st.query_params[RUN_PARAM] = run_id


def _back_button() -> None:
    if st.button("Back to the page", key="uq_link_back", icon=":material/arrow_back:"):
        show_in_url(None)
        st.rerun()


def select(run_id: str) -> None:
    """Show this run in the run picker from the next time the picker is drawn (in this script run when it
    is not drawn yet, else after a rerun). The picker's own value is set, not dropped: a dropped value
    is taken back from the browser, which still holds the run it showed before."""
    st.session_state[PENDING] = run_id


def apply_selection() -> None:
    """Before the picker is drawn: the run chosen by `select` becomes its value."""
    run_id = st.session_state.pop(PENDING, None)
    if run_id is not None:
        st.session_state["uq_run_id"] = run_id
        st.session_state[PICK] = run_id


def uq_job_note(shown: str) -> None:
    """When the person's latest generation is another run than the one shown: which is which."""

    def show() -> None:
        select(uq_jobs.run_id_of(mine))

    mine = uq_jobs.latest_job_of(access.me())
    if mine is not None and (mine.running or uq_jobs.run_id_of(mine) == st.session_state.get(JUST_STARTED)):
        started_elsewhere_note(shown, mine, lambda job: f"run {uq_jobs.run_id_of(job)}", show)


def saved_run() -> UqRun | None:
    """The run picker over the saved runs (None when there is none); strays can be deleted."""
    _strays()
    saved = {run.run_id: run for run in access.readable(TOPIC, store.list_runs())}
    if not saved:
        st.info("No saved run yet.")
        return None
    ids = list(saved)
    labels = {
        run_id: run_label(run, access.owner_label(access.access_of(TOPIC, run_id))) for run_id, run in saved.items()
    }
    wanted = st.session_state.get("uq_run_id")
    if st.session_state.get(PICK) not in ids:
        st.session_state.pop(PICK, None)
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(wanted) if wanted in ids else 0,
        key=PICK,
        format_func=labels.get,
        help="Runs are saved question by question in cache/uq/ and resume. You see your own runs, runs shared "
        "with the group and runs made outside the server.",
    )
    st.session_state["uq_run_id"] = run_id
    return saved[run_id]


def run_label(run: UqRun, owner: str) -> str:
    """The picker's line for a run: what it is and whose, never its progress (a label does not refresh
    while a run generates; the progress is the status line under the picker, redrawn from the run)."""
    cfg = run.config
    generation = cfg.get("generation") or {}
    return (
        f"{run.run_id} · {cfg.get('model')} · {cfg.get('source')} · {cfg.get('n_questions')} questions · "
        f"K={generation.get('samples')} · {cfg.get('created')} · {owner}"
    )


def bad_records(run: UqRun) -> None:
    """Records that cannot be read (a crash, a full disk): named, and generated again on resume."""
    bad = run.bad_records()
    if bad:
        listed = "; ".join(f"question {b.index + 1} ({b.reason})" for b in bad[:5]) + (" …" if len(bad) > 5 else "")
        st.warning(
            f"{len(bad)} saved record(s) cannot be read and will be generated again when the run resumes "
            f"(press Generate): {listed}.",
            icon=":material/build:",
        )


def _strays() -> None:
    strays = access.deletable_strays(TOPIC, store.stray_runs())
    if not strays:
        return
    with st.expander(f"{len(strays)} saved folder(s) in cache/uq/ from an older version", icon=":material/history:"):
        st.caption("They cannot be opened: " + ", ".join(s.run_id for s in strays))
        if st.button("Delete them", key="uq_delete_strays", icon=":material/delete:"):
            for stray in strays:
                try:
                    store.delete_run(stray)
                    access.forget_deleted(TOPIC, stray.run_id)
                except LabError as err:
                    st.error(str(err))
            st.rerun()


def progress_panel(run: UqRun, writable: bool) -> None:
    """The run's status line and, while it generates in this process, its job panel (progress, ETA once
    measured, the place in the model's queue, Stop for the owner)."""
    job_panel(
        job_key(run.run_id),
        what="Generation",
        unit="questions",
        can_stop=writable,
        widget_key="uq",
        status=lambda _job: uq_jobs.status(run).line,
    )


def delete_button(run: UqRun) -> None:
    _, right = st.columns([4, 1])
    if right.button("Delete this run", key="uq_delete", icon=":material/delete:"):
        try:
            store.delete_run(run.run_id)
            access.forget_deleted(TOPIC, run.run_id)
            show_in_url(None)
            st.session_state.pop("uq_run_id", None)
            st.session_state.pop(PICK, None)
            st.rerun()
        except LabError as err:
            st.error(str(err))
