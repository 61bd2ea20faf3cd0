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
    """The previews at their own size, at most the column's width (a report figure squeezed into a third
    of the page had unreadable labels)."""
    for name in names:
        path, caption = PREVIEWS[name]
        if path.is_file():  # a clone without the figures still shows the page
            st.image(str(path), caption=caption)


def _idea(title: str, text: str, link: tuple[str, str, str], *previews: str) -> None:
    """One idea: its text and link at the left, its preview(s) at the right (about 520 px at 1400 px)."""
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.subheader(title)
        st.markdown(text)
        page, label, icon = link
        st.page_link(page, label=label, icon=icon)
    with right:
        _preview(*previews)


def render() -> None:
    st.markdown(
        "Three research ideas about how language models work inside, each on its own page, each "
        "backed by the Streamlit-free `engine` package (`python -m engine --help` gives the same "
        "numbers from the command line). The embedded **Gemma 3 270M** runs offline on a laptop CPU; "
        "pick any other causal LM you have locally in the sidebar."
    )
    _idea(
        "1 · Super weights and grokking",
        "Find the few scalar **super weights** of a pretrained LLM layer by layer (Yu et al. 2024, "
        "arXiv 2411.07191), ablate them and measure the damage. Then train a small model (a one-hot MLP "
        "by default, or a transformer or a small Llama) until it **groks** modular arithmetic (Power et al. "
        "2022) and see whether super weights appear, and when, relative to grokking.",
        ("app_pages/1_Super_weights_and_grokking.py", "Open super weights & grokking", ":material/fitness_center:"),
        "superweights",
    )
    _preview("grokking")  # two panels of many runs: the page's whole width
    st.divider()
    _idea(
        "2 · Semantic vs surface uncertainty",
        "On your CSV of open-ended questions: **A1** = accuracy answering all; **A2** = accuracy on "
        "the half the model is most sure of by a usual score; **A3** = the same with *semantic* "
        "uncertainty (semantic entropy, semantic entropy probes, a semantic/surface subspace split "
        "of the hidden states).",
        ("app_pages/2_Semantic_uncertainty.py", "Open semantic uncertainty", ":material/psychology:"),
        "uncertainty",
    )
    st.divider()
    _idea(
        "3 · Self-interpretation of attention",
        "Type a prompt and see every attention head; describe each head in text (top-5 attended "
        "tokens per token); find head functions across many prompts; ask the model to explain a "
        "head and **score its explanation** against external detectors.",
        ("app_pages/3_Attention_self_interpretation.py", "Open attention", ":material/visibility:"),
        "attention",
    )

    st.divider()
    st.caption(
        "Models load once per server process and are shared by every session; a lock keeps sessions "
        "from interleaving inside one model. Runtime data (converted models, runs) lives in `cache/`."
    )
