"""Semantic vs surface uncertainty: A1 / A2 / A3 on a question set (Farquhar et al. 2024; SEPs, arXiv 2406.15927)."""

import streamlit as st

from ui.models import render_sidebar
from ui.uq_view import render

st.set_page_config(page_title="Semantic uncertainty", page_icon=":material/psychology:", layout="wide")
render_sidebar()
st.title("Semantic vs surface uncertainty")
st.caption(
    "Does answering only the questions where the model is semantically sure reduce errors more than "
    "usual (token-level) confidence? A1 = accuracy on all questions, A2 = on the 50% most certain by a "
    "usual score, A3 = the same by semantic entropy."
)
render()
