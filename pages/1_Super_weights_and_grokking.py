"""Super weights of a pretrained LLM (Yu et al. 2024) and a grokking lab (Power et al. 2022), as tabs."""

import streamlit as st

from ui.grokking_view import render as render_grokking
from ui.models import render_sidebar
from ui.superweights_view import render as render_superweights

st.set_page_config(page_title="Super weights and grokking", page_icon=":material/fitness_center:", layout="wide")
render_sidebar()
st.title("Super weights and grokking")
scan_tab, grok_tab = st.tabs(["Super weights of a pretrained LLM", "Grokking lab"])
with scan_tab:
    render_superweights()
with grok_tab:
    render_grokking()
