"""Super weights of a pretrained LLM (Yu et al. 2024) and a grokking lab (Power et al. 2022), as tabs."""

import streamlit as st

from ui.grokking_view import render as render_grokking
from ui.page import lab_page
from ui.superweights_view import render as render_superweights

with lab_page("Super weights and grokking", ":material/fitness_center:"):
    scan_tab, grok_tab = st.tabs(  # the open tab is in the link, and a rerun never switches it back
        ["Super weights of a pretrained LLM", "Grokking lab"], key="sw_tab", bind="query-params"
    )
    with scan_tab:
        render_superweights()
    with grok_tab:
        render_grokking()
