"""Who is using the lab: an owner key kept in a browser cookie, never in a link.

On the first visit a random key is made and stored in the `lab_owner_key` cookie; later visits read
it back from the request (`st.context.cookies`, which is read-only). The cookie is written by a
one-line script that `st.html` runs in the page itself as the page's first element, so it lands within
moments of the first load (a component in an iframe took a second or more to load, and a reload in
that time made the person a new owner). The person is known to the server by
`owner_id()`, a hash of the key, so the key itself is never stored or shown to anyone else. The
sidebar shows the person's name and id, and lets them copy their key into another browser.
Runs, marks and jobs are attributed to the owner id (engine.core.db, engine.core.queue).
"""

from __future__ import annotations

import hashlib
import re
import secrets

import streamlit as st

from engine.core.db import lab_db
from engine.core.queue import set_current_owner

COOKIE = "lab_owner_key"
_KEY = "_lab_owner_key"
_PENDING = "_lab_owner_cookie_pending"
COOKIE_SECONDS = 365 * 24 * 3600
_VALID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def owner_key() -> str:
    """This session's owner key: from the session, else the browser's cookie, else a new one."""
    state = st.session_state
    if _KEY not in state:
        key = st.context.cookies.get(COOKIE)
        if not isinstance(key, str) or not _VALID.match(key):  # (AppTest mocks st.context)
            key = secrets.token_urlsafe(24)
            state[_PENDING] = key
        state[_KEY] = key
    return state[_KEY]


def owner_id() -> str:
    """The person as the server knows them: the first 16 hex digits of sha256(owner key)."""
    return hashlib.sha256(owner_key().encode()).hexdigest()[:16]


def use_key(key: str) -> None:
    """Become the person whose key this is (carried from another browser)."""
    key = key.strip()
    if not _VALID.match(key):
        raise ValueError(
            "An owner key is 16-64 letters, digits, '-' or '_' (copy it from the other browser's sidebar)."
        )
    st.session_state[_KEY] = key
    st.session_state[_PENDING] = key


def establish() -> str:
    """Call at the top of every page: fixes this run's owner (for the model queue and jobs), writes a
    new key to the cookie, and returns the owner id."""
    oid = owner_id()
    set_current_owner(oid)  # this script run acts for this person (engine.core.queue.current_owner)
    pending = st.session_state.pop(_PENDING, None)
    if pending:
        _store_in_browser(pending)
    return oid


def _store_in_browser(key: str) -> None:
    """Write the owner key to the browser's cookie jar (a year; this site only; never sent elsewhere)."""
    if not _VALID.match(key):  # the key goes into a script: only the characters a key may have
        raise ValueError("not an owner key")
    st.html(
        f"<script>document.cookie = '{COOKIE}={key}; path=/; max-age={COOKIE_SECONDS}; SameSite=Strict';</script>",
        unsafe_allow_javascript=True,
    )


def render_identity() -> None:
    """Sidebar block: the person's name and id, and how to be the same person in another browser."""
    oid = owner_id()
    db = lab_db()
    name = db.name_of(oid)
    with st.sidebar.expander(f"You: {name or 'anonymous'} · {oid[:8]}", icon=":material/person:"):
        typed = st.text_input(
            "Your name (shown to colleagues on shared runs)", value=name, max_chars=60, key="lab_identity_name"
        )
        if typed != name:
            db.set_name(oid, typed)
        st.caption(
            "Your runs are private unless you share them. To be you in another browser, copy this key "
            "there (keep it to yourself: whoever has it can change your runs). It is never put in a link."
        )
        st.code(owner_key(), language=None)
        other = st.text_input("Use a key from another browser", type="password", key="lab_identity_other")
        if st.button("Use this key", key="lab_identity_use", disabled=not other):
            try:
                use_key(other)
            except ValueError as err:
                st.error(str(err))
            else:
                st.rerun()
