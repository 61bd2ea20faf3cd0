"""The attention page's "Head functions across prompts" tab: every head scored by each detector over a
prompt set (the built-in texts, random tokens repeated twice, the person's prompts), as a heatmap with
layers as columns (as the model view) and a table with named columns. A changed setting keeps the last
table on screen, marked, until the person runs again.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.attention.config import (
    HIGHLIGHTED,
    LABEL_THRESHOLD,
    PromptSetOptions,
)
from engine.attention.head_functions import (
    FUNCTION_TITLES,
    FUNCTIONS,
    PromptSpec,
    builtin_prompts,
    run_prompt_set,
    user_prompts,
)
from engine.core.errors import LabError
from engine.core.options import default_of
from ui import access
from ui.attention_charts import (
    HEAD_PICK,
    function_frame,
    function_heatmap,
)
from ui.attention_common import (
    HF_SLOT,
    Q,
    Shape,
    View,
    help_text,
    int_field,
    on_head_click,
    run_kept,
)
from ui.figures import show_chart
from ui.links import url_text_area
from ui.progress import steps
from ui.state import latest, recall

FORMULAS = f"""
With **A** a head's attention pattern (rows = query positions i, columns = key positions j, each row
sums to 1) over n positions and **D** a 0/1 detection pattern, the pattern score is
**Σ(A ⊙ D) / ΣA** (TransformerLens `head_detector`, "mul"):

* previous-token: D[i, i−1] = 1
* duplicate-token: D[i, j] = 1 iff j < i and t_j = t_i
* induction: D[i, j] = 1 iff j ≤ i and t_{{j−1}} = t_i with j−1 < i (the token after an earlier copy)

Since ΣA = n, a pattern score cannot exceed the fraction of rows that have a target (a prompt without
repeated tokens scores 0 on duplicate/induction: such prompts are left out of those averages).
Also: **BOS/sink** = mean over i ≥ 1 of A[i, 0]; **self** = mean over i ≥ 1 of A[i, i]; **spread** =
mean over i ≥ 1 of the row entropy −Σ_j A[i,j] ln A[i,j] (nats). Mean and std are over prompts (std =
consistency). **Best label**: the strongest of previous-token / duplicate / induction / self when its
mass on the target over rows that have one (score ÷ ceiling) reaches {LABEL_THRESHOLD}; else BOS/sink if
≥ {LABEL_THRESHOLD}; else diffuse (score = spread).
"""


def head_functions(view: View, shape: Shape) -> None:
    with st.expander("Formulas", expanded=False):
        st.markdown(FORMULAS)
    c1, c2 = st.columns([1, 2])
    with c1:
        use_builtin = st.checkbox(
            "Built-in texts",
            value=default_of(PromptSetOptions, "builtin"),
            key="att_hf_builtin",
            bind=Q,
            help=help_text(PromptSetOptions, "builtin"),
        )
        n_random = int_field(
            "Random-token sequences repeated twice",
            default_of(PromptSetOptions, "random"),
            0,
            8,
            "att_hf_random",
            help=help_text(PromptSetOptions, "random"),
        )
    with c2:
        user_text = url_text_area("Your prompts (one per line)", "", "att_hf_user", height=80)
    specs = []
    if n_random is not None:
        specs = builtin_prompts(view.lm.tokenizer, n_random=n_random, texts=use_builtin) + user_prompts(user_text)
    inputs = (view.key, tuple(specs), view.max_tokens)
    lengths = _spec_lengths(view, specs)
    try:
        access.check_prompt_count(len(specs))
        access.check_prompt_tokens(lengths, [f"prompt {spec.name!r}" for spec in specs])
    except LabError as err:
        st.error(str(err), icon=":material/block:")
        over = True
    else:
        over = False
    label = f"Score all heads on {len(specs)} prompts"
    if st.button(label, key="att_hf_run", disabled=not specs or over or n_random is None):
        try:
            need = access.head_functions_bytes(view.lm, lengths)
            access.ensure_memory(view.lm, need, f"the maps of {len(specs)} prompts (all kept)")
        except LabError as err:
            st.error(str(err), icon=":material/error:")
        else:
            with access.queue_notice(view.lm), steps("Scoring every head") as progress:
                run_kept(
                    HF_SLOT,
                    inputs,
                    lambda: run_prompt_set(view.lm, specs, max_tokens=view.max_tokens, progress=progress),
                )
    if not specs and n_random is not None:
        st.warning("No prompts: tick the built-in texts, add random sequences or type at least one prompt.")
    table = recall(HF_SLOT, inputs, shared=True) if n_random is not None else None
    if table is None:  # a changed or bad field: the last table of this model stays on screen, marked
        saved = latest(HF_SLOT)
        if saved is not None and saved[0][0] == view.key:
            table = saved[1]
            st.info(
                "The table below is from the last run, with other prompts or settings than the fields above: "
                "press the button to score these.",
                icon=":material/history:",
            )
    if table is not None:
        fn = st.selectbox(
            "Function", list(FUNCTIONS), key="att_hf_fn", format_func=lambda f: FUNCTION_TITLES[f], bind=Q
        )
        show_chart(
            function_heatmap(table, fn, (view.layer, view.head)),
            f"head_function_{fn}",
            key="att_hf_chart",
            data=function_frame(table, fn),
            on_select=on_head_click("att_hf_chart", shape),
            selection_mode=HEAD_PICK,
        )
        st.caption("Click a cell to select that head (framed in red).")
        for f in HIGHLIGHTED:
            st.caption(f"Top {FUNCTION_TITLES[f]} heads: {table.top_heads(f)}")
        st.dataframe(readable_table(table.wide().sort_values(fn, ascending=False)), hide_index=True, key="att_hf_table")
        st.download_button(
            "Download head-function table (csv)",
            table.table().to_csv(index=False),
            file_name="head_functions.csv",
            key="att_hf_dl",
        )


def _spec_lengths(view: View, specs: list[PromptSpec]) -> list[int]:
    """Tokens of each head-function prompt as it runs (cut at the page's token limit)."""
    lengths = [len(s.token_ids) if s.token_ids else access.token_count(view.lm, s.text or "") for s in specs]
    return [min(n, view.max_tokens) for n in lengths]


def readable_table(wide: pd.DataFrame) -> pd.DataFrame:
    """The head-function table with its columns named in words (a function's title, "… (std)")."""
    names = {"layer.head": "head (layer.head)", "best_label": "best label", "best_score": "best score"}
    for fn in FUNCTIONS:
        names[fn] = FUNCTION_TITLES[fn]
        names[f"{fn}_std"] = f"{FUNCTION_TITLES[fn]} (std over prompts)"
    return wide.rename(columns=names)
