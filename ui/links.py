"""Links to runs: `?run=<id>` opens a run; a private run of someone else opens a notice and nothing of
it; the address bar a session sets itself is not "followed" again on its next script run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from engine.core.errors import LabError
from engine.core.runstore import RunFolder
from ui.people import access_of, me

LINK_PARAM = "run"  # ?run=<run id>: a link to a run (never an owner key)
PRIVATE_NOTICE = "This run is private to its owner."
R = TypeVar("R", bound=RunFolder)
_SET_HERE = "_lab_link_set_here"  # the run id this session put in its own address bar


def linked_run_id() -> str | None:
    """The run id of this page's link (`?run=<id>`), or None."""
    value = st.query_params.get(LINK_PARAM)
    return str(value) if value else None


def set_link(run_id: str | None) -> None:
    """Make the address bar a link to the run shown (or to no run). A link the session sets itself is not
    "followed" on the next run (following one fills the form with the run's settings, which would undo
    what the person typed since)."""
    if run_id is None:
        st.query_params.pop(LINK_PARAM, None)
    elif st.query_params.get(LINK_PARAM) != run_id:
        st.query_params[LINK_PARAM] = run_id
    st.session_state[_SET_HERE] = run_id


def follow_link(topic: str, get: Callable[[str], R], key_prefix: str) -> tuple[R | None, bool]:
    """(the linked run when this person may read it and has not followed this link yet, blocked).

    blocked: the link names a run that is missing or private to someone else; a notice (and nothing of
    the run) is shown, with a button back to the page without the link, and the view shows no more."""
    run_id = linked_run_id()
    if run_id is None:
        return None, False
    run = readable_or_notice(topic, run_id, get, lambda: _back_button(key_prefix))
    if run is None:
        return None, True
    seen_key = f"_{key_prefix}_link_followed"
    if st.session_state.get(seen_key) == run_id or st.session_state.get(_SET_HERE) == run_id:
        return None, False
    st.session_state[seen_key] = run_id
    return run, False


def readable_or_notice(topic: str, run_id: str, get: Callable[[str], R], back: Callable[[], None]) -> R | None:
    """The run `run_id` when it exists and this person may read it; else a notice (missing, or private
    to someone else: nothing of it is shown), `back()` (a button back to the page) and None."""
    try:
        run = get(run_id)
    except LabError:
        st.error(f"No saved run {run_id[:64]!r}: the link is wrong, or the run was deleted.", icon=":material/error:")
        back()
        return None
    if not access_of(topic, run.run_id).readable_by(me()):
        st.warning(
            f"{PRIVATE_NOTICE} Ask them to share it with the group if you should see it.", icon=":material/lock:"
        )
        back()
        return None
    return run


def _back_button(key_prefix: str) -> None:
    if st.button("Back to the page", key=f"{key_prefix}_link_back", icon=":material/arrow_back:"):
        set_link(None)
        st.rerun()


URL_TEXT_MAX = 2_000  # characters of one text field the address bar holds (a longer link breaks in chats and mail)


def url_text_area(label: str, default: str, key: str, where=None, **options) -> str:
    """A text area kept in the URL (`?<key>=`) by hand instead of `bind`, so that a long text can be left
    out: a link opens the text it names; a text longer than URL_TEXT_MAX characters is not put in the
    address bar (a 3,000-word prompt made a 17,837-character link), with a note under the field saying
    that a link or a reload opens the default text then. `options`: those of st.text_area."""
    where = where or st
    seeded = f"_lab_url_seeded_{key}"
    if not st.session_state.get(seeded):
        st.session_state[seeded] = True
        if key not in st.session_state:
            st.session_state[key] = str(st.query_params.get(key, default))
    text = where.text_area(label, key=key, **options)
    if len(text) > URL_TEXT_MAX:
        st.query_params.pop(key, None)
        where.caption(
            f"This text ({len(text):,} characters) is too long for a link: the address bar leaves it out (over "
            f"{URL_TEXT_MAX:,} characters), so a reload or a copied link opens the default text. Copy the text "
            "itself to share it."
        )
    elif text == default:
        st.query_params.pop(key, None)
    elif st.query_params.get(key) != text:
        st.query_params[key] = text
    return text
