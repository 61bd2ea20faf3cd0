"""Whose runs a person sees and changes on the shared server (engine.core.db): their own, shared ones
and those made outside the server; only the owner stops, deletes, shares or marks a run.

A person is an owner id (ui.identity: a hash of the key in their browser's cookie). A request over a
server limit is refused with a message naming the limit (ui.limits); the command line uses none of
this: it runs on a person's own machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import streamlit as st

from engine.core import jobs
from engine.core.db import RunAccess, lab_db
from engine.core.runstore import RunFolder
from ui.identity import owner_id

R = TypeVar("R", bound=RunFolder)


def me() -> str:
    """The person using this session (their owner id, engine.core.db)."""
    return owner_id()


def access_of(topic: str, run_id: str) -> RunAccess:
    return lab_db().access(topic, run_id)


def can_read(topic: str, run_id: str) -> bool:
    return access_of(topic, run_id).readable_by(me())


def can_write(topic: str, run_id: str) -> bool:
    """Whether this person may stop, delete, resume, share or mark the run (they own it)."""
    return access_of(topic, run_id).writable_by(me())


def readable(topic: str, runs: Sequence[R]) -> list[R]:
    """The runs this person may see: their own, shared ones and those made outside the server."""
    person = me()
    db = lab_db()
    return [run for run in runs if db.access(topic, run.run_id).readable_by(person)]


def deletable_strays(topic: str, strays: Sequence[R]) -> list[R]:
    """Unreadable folders this person may delete: theirs, or no one's (never another person's half-made run)."""
    person = me()
    db = lab_db()
    return [s for s in strays if db.access(topic, s.run_id).owner in (None, person)]


def owner_label(access: RunAccess) -> str:
    """Whose a run is, as this person sees it: "yours, private", "shared by Ada", "made outside the server"."""
    return jobs.owner_text(access, me())


def share_toggle(topic: str, run_id: str, key_prefix: str) -> RunAccess:
    """The owner's "Share with the group" toggle (a caption saying whose the run is for everyone else);
    the run's access after the change."""
    db, person = lab_db(), me()
    access = db.access(topic, run_id)
    if not access.writable_by(person):
        st.caption(f"This run is {owner_label(access)}: you can look, not change it.")
        return access
    shared = st.toggle(
        "Share with the group",
        value=access.shared,
        key=f"{key_prefix}_share_{run_id}",
        help="Shared runs are read-only for everyone else (they cannot stop, delete or mark them); "
        "private runs are seen by you only. A link to a private run shows others nothing of it.",
    )
    if shared != access.shared:
        db.set_shared(topic, run_id, person, shared)
        access = db.access(topic, run_id)
    return access


def claim_started_run(topic: str, run_id: str, fresh: bool, label: str = "") -> RunAccess:
    """Make this person the owner of the run they start, or refuse (engine.core.jobs.claim_started_run)."""
    return jobs.claim_started_run(topic, run_id, me(), fresh, label)


def forget_deleted(topic: str, run_id: str) -> None:
    """Drop a deleted run's ownership, marks and verdicts from the database."""
    lab_db().forget_run(topic, run_id)
