"""The frame every page shares: page config, who is using it, the model picker, errors without tracebacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import streamlit as st

from ui.errors import guarded
from ui.identity import establish, render_identity
from ui.models import render_sidebar


@contextlib.contextmanager
def lab_page(title: str, icon: str, caption: str | None = None) -> Iterator[None]:
    """`with lab_page(...):` around a page's body: the frame first, then the body; an error in either is
    shown as one line (or an error id), and a broken frame stops the page before its body."""
    st.set_page_config(page_title=title, page_icon=icon, layout="wide")
    ready = False
    with guarded():
        establish()
        render_sidebar()
        render_identity()
        st.title(title)
        if caption:
            st.caption(caption)
        ready = True
    if not ready:
        st.stop()
    with guarded():
        yield
