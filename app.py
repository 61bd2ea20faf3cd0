"""The LLM internals lab: `streamlit run app.py`. The navigation (Home + one page per research idea);
the home page loads no model."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see engine/__init__.py)

import streamlit as st  # noqa: E402

from ui.home import PAGES, render  # noqa: E402
from ui.page import lab_page  # noqa: E402


def home() -> None:
    with lab_page("LLM internals lab", ":material/biotech:"):
        render()


st.navigation(
    [st.Page(home, title="Home", icon=":material/home:", default=True)]
    + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]
).run()
