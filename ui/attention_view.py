"""The attention page: every head of a prompt, text descriptions, head functions across prompts, the
model's own explanation of a head, and explain -> simulate -> score against detectors (Bills et al. 2023).

The view lives in the URL: every input (prompt, token limit, layer, head, token window, the tabs'
settings) is a widget bound to a query parameter named att_*, so a reload or a copied link opens the
same view. The layer and head pickers are drawn from the model's shape before the prompt is read, so
clearing the prompt keeps them. A click on a head in the model view (or the head-function heatmap)
selects it. The forward pass is cached per process (model, prompt, token limit); the head-function
table, explanations and scores are kept per session for exactly their inputs (`ui.state`) and in a
small per-process store, so a reload (a new session) gets them back without recomputing. On the
shared server (ui.access) a prompt's tokens and a head-function request's prompts are checked
against the server's limits and the memory their maps need; a bad number is refused right under its
field, and the results already shown stay.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.attention import maps
from engine.attention.config import (
    TOP_K,
    MapOptions,
)
from engine.attention.head_functions import FUNCTION_TITLES, head_scores
from engine.core.errors import LabError
from engine.core.options import default_of
from ui import access
from ui.attention_charts import (
    COLOUR_SCALES,
    HEAD_PICK,
    MAX_LABELS,
    MODEL_VIEW_BINS,
    ColourScale,
    head_chart,
    model_view_chart,
)
from ui.attention_common import (
    HEAD_TAB,
    Q,
    Shape,
    View,
    description_table,
    forward,
    help_text,
    model_shape,
    on_head_click,
    truncation_note,
)
from ui.attention_functions import head_functions
from ui.attention_scoring import ask, score
from ui.attention_study import whole_model
from ui.figures import show_chart
from ui.links import url_text_area
from ui.models import get_model
from ui.state import model_key

INTRO = (
    "Hypothesis under test: a model can explain some of its own attention heads as well as external "
    "detectors can. One forward pass gives every layer x head map; each head is described in text "
    f"(top-{TOP_K} attended tokens per token); detectors label heads across prompts; the model explains a "
    "head and its explanation is scored on held-out prompts (explain -> simulate -> score, Bills et al. 2023)."
)


DEFAULT_PROMPT = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again."


LAST_VIEW = "_att_last_view"  # (model key, prompt, token limit) of the last forward pass that worked
LAST_TOKENS = "_att_last_good_tokens"  # the last valid token limit (shown while the field holds a bad one)


WINDOW_N = "_att_window_tokens"  # the prompt length the token window was set for


def render() -> None:
    """The whole page below its title."""
    st.caption(INTRO)
    col_prompt, col_opts = st.columns([4, 1])
    with col_prompt:
        prompt = url_text_area("Prompt", DEFAULT_PROMPT, "att_prompt", height=90)
        prompt_message = st.empty()
    server_max = access.limits().attention_tokens
    with col_opts:
        asked = st.number_input(
            "Token limit",
            value=default_of(MapOptions, "max_tokens"),
            step=8,
            key="att_tokens",
            bind=Q,
            help=help_text(MapOptions, "max_tokens") + access.limit_note("attention_tokens", "tokens per prompt"),
        )
        max_tokens = _token_limit(asked, server_max)
    lm = get_model()
    if lm is None:
        return
    key = model_key(lm)
    shape = model_shape(lm)
    layer, head, hide_bos, scale = _pick_head(shape)
    if not prompt.strip():
        prompt_message.warning("Empty prompt: type some text to see its attention maps.", icon=":material/edit_note:")
        return
    if max_tokens is None:
        return
    try:
        tokens = min(len(maps.tokenize_prompt(lm, prompt)), max_tokens)
        access.limits().check(
            "attention_tokens", tokens, "Tokens of this attention prompt (lower the Token limit to cut it)"
        )
        access.ensure_memory(lm, access.attention_forward_bytes(lm, tokens), f"the attention maps of {tokens} tokens")
        with access.queue_notice(lm), st.spinner("Forward pass..."):
            result = forward(lm, key, prompt, max_tokens)
    except LabError as err:
        prompt_message.error(str(err), icon=":material/error:")
        last = st.session_state.get(LAST_VIEW)
        if last is None or last[0] != key:
            return
        _, prompt, max_tokens = last  # the maps on screen stay, marked, until the fields work again
        result = forward(lm, key, prompt, max_tokens)
        st.info(
            f"Showing the maps of the last prompt and token limit that worked (token limit {max_tokens}, "
            f"{len(result.token_ids)} tokens): change the fields above to see others.",
            icon=":material/history:",
        )
    else:
        st.session_state[LAST_VIEW] = (key, prompt, max_tokens)
    _overview(result, server_max)
    layer, head = min(layer, result.n_layers - 1), min(head, result.n_heads - 1)
    view = View(lm, key, prompt, max_tokens, result, layer, head, hide_bos, scale)
    tab_all, tab_desc, tab_fn, tab_ask, tab_score, tab_whole = st.tabs(
        [
            HEAD_TAB,
            "Text description",
            "Head functions across prompts",
            "Ask the model",
            "Score explanations",
            "Whole model",
        ],
        key="att_tab",
        bind=Q,
    )
    with tab_all:
        _all_heads(view, shape)
    with tab_desc:
        _description(view)
    with tab_fn:
        head_functions(view, shape)
    with tab_ask:
        template, mode = ask(view)
    with tab_score:
        score(view, template, mode)
    with tab_whole:
        whole_model(lm, shape, (layer, head))


def _token_limit(asked: float | None, server_max: int) -> int | None:
    """The token limit to use: the field's value when valid (remembered), else the last valid one, with
    the reason right under the field (None when there is no valid one yet)."""
    if asked is not None and int(asked) == asked and asked >= 2:
        value = int(asked)
        st.session_state[LAST_TOKENS] = value
        if value > server_max:
            st.caption(
                f":orange[Over this server's limit of {server_max} tokens (attention_tokens): a prompt longer than "
                f"{server_max} tokens is refused; {server_max} cuts it there.]"
            )
        return value
    st.error(
        f"The token limit must be a whole number of at least 2 (BOS and one token); got {asked}.",
        icon=":material/block:",
    )
    last = st.session_state.get(LAST_TOKENS)
    if last is not None:
        st.caption(f"Showing the maps for the last valid token limit, {last}.")
    return last


def _overview(result: maps.AttentionResult, server_max: int) -> None:
    note = truncation_note(result, server_max)
    if note:
        st.warning(note, icon=":material/content_cut:")
    kinds = ", ".join(sorted({maps.layer_kind(t) for t in result.layer_types}))
    groups = result.n_heads // result.num_kv_heads
    st.caption(
        f"{len(result.token_ids)} tokens · {result.n_layers} layers ({kinds}) x {result.n_heads} query heads · "
        f"{result.num_kv_heads} key/value head(s): heads marked kvK share KV head K ({groups} per group)"
        + (
            f" · local layers see the last {result.sliding_window} tokens"
            if "local" in kinds and result.sliding_window
            else ""
        )
    )


def _keep_in_range(key: str, n: int) -> None:
    """Drop a remembered pick the model does not have (another model was chosen), before its widget."""
    value = st.session_state.get(key)
    if value is not None and not (isinstance(value, int) and 0 <= value < n):
        del st.session_state[key]


def _pick_head(shape: Shape) -> tuple[int, int, bool, ColourScale]:
    """Layer, head, hide-BOS and colour scale: drawn from the model's shape, before the prompt is read,
    so an empty prompt keeps them (a widget not drawn would lose its value and its URL parameter)."""
    _keep_in_range("att_layer", shape.n_layers)
    _keep_in_range("att_head", shape.n_heads)
    pick1, pick2, pick3, pick4 = st.columns([1, 1, 1, 1])
    with pick1:
        layer = st.selectbox("Layer", list(range(shape.n_layers)), key="att_layer", format_func=str, bind=Q)
    with pick2:
        head = st.selectbox("Head", list(range(shape.n_heads)), key="att_head", format_func=str, bind=Q)
    with pick3:
        hide_bos = st.checkbox(
            "Hide BOS column",
            value=False,
            key="att_hide_bos",
            bind=Q,
            help="Attention sinks put most weight on position 0 and wash out the colour scale.",
        )
    with pick4:
        scale = st.radio("Colour scale", COLOUR_SCALES, key="att_scale", horizontal=False, bind=Q)
    layer, head = int(layer), int(head)
    group = next(g for g in shape.kv_groups if head in g)
    st.caption(
        f"Selected: **{shape.layer_labels[layer]} · {shape.head_labels[head]}** (query heads sharing its key/value "
        f"head: {', '.join(f'H{h}' for h in group)}). Click a head in the model view to select it."
    )
    return layer, head, hide_bos, scale


def _window(view: View) -> tuple[int, int]:
    """The token window of the detail heatmap (query and key positions), bound to the URL (att_window)."""
    n = len(view.result.token_ids)
    if n < 3:
        return 0, n - 1
    kept = st.session_state.get("att_window")
    if kept is not None and (
        st.session_state.get(WINDOW_N) != n or not (0 <= kept[0] <= kept[1] <= n - 1)
    ):  # another prompt: its whole length (the slider's range moved, so its old value means nothing)
        st.session_state["att_window"] = (0, n - 1)
    st.session_state[WINDOW_N] = n
    lo, hi = st.slider(
        "Tokens shown (query and key positions)",
        0,
        n - 1,
        (0, n - 1),
        key="att_window",
        bind=Q,
        help=f"Zoom into positions i..j of the prompt. Over {MAX_LABELS} tokens, every k-th label is shown.",
    )
    return int(lo), int(hi)


def _all_heads(view: View, shape: Shape) -> None:
    result, layer, head = view.result, view.layer, view.head
    window = _window(view)
    show_chart(
        head_chart(result, layer, head, view.hide_bos, view.scale, window),
        f"attention_layer{layer}_head{head}",
        key="att_head_chart",
    )
    left, right = st.columns([2, 3])
    with left:
        scores = head_scores(result, layer, head)
        st.dataframe(
            pd.DataFrame(
                [{"function": FUNCTION_TITLES[fn], "score on this prompt": score} for fn, score in scores.items()]
            ),
            hide_index=True,
        )
    with right:
        st.caption(
            f"Detector scores of {result.layer_labels()[layer]} · {result.head_labels()[head]} on this prompt only; "
            "see *Head functions* for averages over many prompts."
        )
    st.subheader("Model view")
    per_head = st.checkbox("Scale each head to its own maximum", value=True, key="att_mv_scale", bind=Q)
    st.caption(
        "Columns are layers (local = sliding window, global = full attention), rows heads (kvK = shared key/value "
        f"head). Long prompts are averaged into at most {MODEL_VIEW_BINS} x {MODEL_VIEW_BINS} blocks per head. "
        "Click a head to select it; the selected head is framed in red."
    )
    show_chart(
        model_view_chart(result, view.result_key, view.hide_bos, per_head, (layer, head)),
        "attention_model_view",
        key="att_model_view",
        on_select=on_head_click("att_model_view", shape),
        selection_mode=HEAD_PICK,
    )


def _description(view: View) -> None:
    layer, head = view.layer, view.head
    st.markdown(
        f"Top-{TOP_K} attended tokens for every query token of **layer {layer}, head {head}**: "
        "the text given to the model."
    )
    st.dataframe(description_table(maps.describe_head(view.result, layer, head)), hide_index=True, key="att_desc_table")
    text = maps.description_text(view.result, layer, head)
    st.code(text, language=None)
    st.download_button("Download description (txt)", text, file_name=f"head_{layer}_{head}.txt", key="att_desc_dl")
    st.caption(
        "Markers stripped (SentencePiece ▁, byte-level Ġ); special tokens as ⟨bos⟩; repeated tokens as text@position; "
        "↵ newline, ␣ space, \\uXXXX invisible characters."
    )
