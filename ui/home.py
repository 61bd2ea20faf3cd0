"""The home page: the three research ideas, each with a preview figure and a link (loads no model)."""

from __future__ import annotations

import streamlit as st

from engine.core.paths import REPO_ROOT

# (file, title in the navigation, icon): the pages of the app, in order (app.py builds st.navigation from it)
PAGES = [
    ("app_pages/1_Super_weights_and_grokking.py", "Super weights and grokking", ":material/fitness_center:"),
    ("app_pages/2_Semantic_uncertainty.py", "Semantic uncertainty", ":material/psychology:"),
    ("app_pages/3_Attention_self_interpretation.py", "Attention self-interpretation", ":material/visibility:"),
]

# one preview per idea: figures the studies and docs/make_previews.py wrote (committed with the repo)
PREVIEWS = {
    "superweights": (REPO_ROOT / "docs" / "previews" / "superweights.png", "Super weights of Gemma 3 270M"),
    "grokking": (REPO_ROOT / "reports" / "grokking" / "accuracy_curves.png", "The grokking study's runs"),
    "uncertainty": (REPO_ROOT / "reports" / "uq" / "figures" / "a1_a2_a3.png", "A1 / A2 / A3 of the uncertainty study"),
    "attention": (REPO_ROOT / "docs" / "previews" / "attention.png", "A previous-token head of Gemma 3 270M"),
}


def _preview(*names: str) -> None:
    for name in names:
        path, caption = PREVIEWS[name]
        if path.is_file():  # a clone without the figures still shows the page
            st.image(str(path), caption=caption, width="stretch")


def render() -> None:
    st.markdown(
        "Three research ideas about how language models work inside, each on its own page, each "
        "backed by the Streamlit-free `engine` package (`python -m engine --help` gives the same "
        "numbers from the command line). The embedded **Gemma 3 270M** runs offline on a laptop CPU; "
        "pick any other causal LM you have locally in the sidebar."
    )

    col1, col2, col3 = st.columns(3)
    with col1:
        st.subheader("1 · Super weights and grokking")
        st.markdown(
            "Find the few scalar **super weights** of a pretrained LLM layer by layer (Yu et al. 2024, "
            "arXiv 2411.07191), ablate them and measure the damage. Then train a small model (a one-hot MLP "
            "by default, or a transformer or a small Llama) until it **groks** modular arithmetic (Power et al. "
            "2022) and see whether super weights appear, and when, relative to grokking."
        )
        _preview("superweights", "grokking")
        st.page_link(
            "app_pages/1_Super_weights_and_grokking.py",
            label="Open super weights & grokking",
            icon=":material/fitness_center:",
        )
    with col2:
        st.subheader("2 · Semantic vs surface uncertainty")
        st.markdown(
            "On your CSV of open-ended questions: **A1** = accuracy answering all; **A2** = accuracy on "
            "the half the model is most sure of by a usual score; **A3** = the same with *semantic* "
            "uncertainty (semantic entropy, semantic entropy probes, a semantic/surface subspace split "
            "of the hidden states)."
        )
        _preview("uncertainty")
        st.page_link(
            "app_pages/2_Semantic_uncertainty.py", label="Open semantic uncertainty", icon=":material/psychology:"
        )
    with col3:
        st.subheader("3 · Self-interpretation of attention")
        st.markdown(
            "Type a prompt and see every attention head; describe each head in text (top-5 attended "
            "tokens per token); find head functions across many prompts; ask the model to explain a "
            "head and **score its explanation** against external detectors."
        )
        _preview("attention")
        st.page_link(
            "app_pages/3_Attention_self_interpretation.py", label="Open attention", icon=":material/visibility:"
        )

    st.divider()
    st.caption(
        "Models load once per server process and are shared by every session; a lock keeps sessions "
        "from interleaving inside one model. Runtime data (converted models, runs) lives in `cache/`."
    )
