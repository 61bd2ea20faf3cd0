"""Attention self-interpretation: every head of a prompt, text descriptions, head functions across
prompts, the model's own explanations of a head, and explain -> simulate -> score against detectors."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from engine.attention import head_functions as hf
from engine.attention import self_explain as se
from engine.attention.maps import DEFAULT_MAX_TOKENS, describe_head, description_text, kv_groups, run_attention
from engine.attention.png import heatmap_png
from engine.core.errors import LabError
from ui.models import get_model, render_sidebar

st.set_page_config(page_title="Attention self-interpretation", page_icon=":material/visibility:", layout="wide")
render_sidebar()
st.title("Attention self-interpretation")
st.caption(
    "Hypothesis under test: a model can explain some of its own attention heads as well as external "
    "detectors can. One forward pass gives every layer x head map; each head is described in text "
    "(top-5 attended tokens per token); detectors label heads across prompts; the model explains a "
    "head and its explanation is scored on held-out prompts (explain -> simulate -> score, Bills et al. 2023)."
)

DEFAULT_PROMPT = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again."
FORMULAS = """
With **A** a head's attention pattern (rows = query positions i, columns = key positions j, each row
sums to 1) over n positions and **D** a 0/1 detection pattern, the pattern score is
**Σ(A ⊙ D) / ΣA** (TransformerLens `head_detector`, "mul"):

* previous-token: D[i, i−1] = 1
* duplicate-token: D[i, j] = 1 iff j < i and t_j = t_i
* induction: D[i, j] = 1 iff j ≤ i and t_{j−1} = t_i with j−1 < i (the token after an earlier copy)

Since ΣA = n, a pattern score cannot exceed the fraction of rows that have a target (a prompt without
repeated tokens scores 0 on duplicate/induction: such prompts are left out of those averages).
Also: **BOS/sink** = mean over i ≥ 1 of A[i, 0]; **self** = mean over i ≥ 1 of A[i, i]; **spread** =
mean over i ≥ 1 of the row entropy −Σ_j A[i,j] ln A[i,j] (nats). Mean and std are over prompts (std =
consistency). **Best label**: the strongest of previous-token / duplicate / induction / self when its
mass on the target over rows that have one (score ÷ ceiling) reaches 0.3; else BOS/sink if ≥ 0.3;
else diffuse (score = spread).
"""
SCORING_HELP = """
**Explain → simulate → score** (Bills et al. 2023, adapted to heads). The explanation is written from
the prompt above only. On held-out prompts (two sentences not in the built-in set and random tokens
repeated twice, seed 100) the same model gets only the explanation and the tokens and, for each query
token i, scores each earlier token j ≤ i by the log-probability of its text as the next token after
"... attends most to the earlier token:"; a softmax gives predicted weights, the argmax the predicted
top-1. **top-1 agreement** = share of query rows whose real argmax is the predicted one (1/k credit
when k candidates tie: identical token texts cannot be told apart by the simulator).
**correlation** = Pearson r of predicted vs real weights over all (i, j ≤ i) pairs.
Compared: the *detector label* turned into a rule (previous-token → i−1, induction → token after the
latest earlier copy, duplicate → latest earlier copy, self → i, sink → BOS, diffuse → uniform), the
trivial baselines *BOS* and *uniform*, and a **control**: the simulator with no explanation (its prior).
An explanation tells something about the head only where it beats the control and the baselines.
"""


# ---------------------------------------------------------------------------------------------
# Cached computations (changing the selected head re-uses the forward pass)


@st.cache_data(max_entries=8, show_spinner=False)
def forward(_lm, model_key: tuple[str, str], prompt: str, max_tokens: int):
    """One eager forward pass: all maps of the prompt (cached by model, prompt and token limit)."""
    return run_attention(_lm, prompt, max_tokens=max_tokens)


@st.cache_data(max_entries=8, show_spinner=False)
def heldout_results(_lm, model_key: tuple[str, str], max_tokens: int):
    return se.run_heldout(_lm, se.heldout_prompts(_lm.tokenizer), max_tokens=max_tokens)


def block_mean(pattern: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Average an [n, n] pattern into at most bins x bins blocks (upper triangle masked); block edges."""
    n = pattern.shape[0]
    edges = np.unique(np.linspace(0, n, min(n, bins) + 1).round().astype(int))
    masked = np.where(np.tril(np.ones((n, n), bool)), pattern, np.nan)
    out = np.full((len(edges) - 1, len(edges) - 1), np.nan)
    for a in range(len(edges) - 1):
        for b in range(a + 1):
            block = masked[edges[a] : edges[a + 1], edges[b] : edges[b + 1]]
            if not np.isnan(block).all():
                out[a, b] = np.nanmean(block)
    return out, edges


@st.cache_data(max_entries=16, show_spinner=False)
def model_view_frame(_result, result_key: tuple, hide_bos: bool, per_head_scale: bool, bins: int = 16) -> pd.DataFrame:
    """Every head's map in bins x bins blocks (cached: picking a head does not rebuild it)."""
    maps = _result.maps.copy()
    if hide_bos and maps.shape[-1] > 1:
        maps[..., 0] = np.nan
    rows = []
    layers, heads = _result.layer_labels(), _result.head_labels()
    for layer in range(_result.n_layers):
        for head in range(_result.n_heads):
            pattern = maps[layer, head]
            if per_head_scale:
                top = np.nanmax(np.where(np.tril(np.ones_like(pattern, bool)), pattern, np.nan))
                pattern = pattern / top if top and top > 0 else pattern
            blocks, edges = block_mean(pattern, bins)
            for a in range(blocks.shape[0]):
                for b in range(a + 1):
                    if not np.isnan(blocks[a, b]):
                        rows.append(
                            {
                                "layer": layers[layer],
                                "head": heads[head],
                                "q": a,
                                "k": b,
                                "weight": float(blocks[a, b]),
                                "queries": f"{edges[a]}-{edges[a + 1] - 1}",
                                "keys": f"{edges[b]}-{edges[b + 1] - 1}",
                            }
                        )
    return pd.DataFrame(rows)


def model_view_chart(result, result_key: tuple, hide_bos: bool, per_head_scale: bool) -> alt.FacetChart:
    df = model_view_frame(result, result_key, hide_bos, per_head_scale)
    base = (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("k:O", axis=None),
            y=alt.Y("q:O", axis=None),
            color=alt.Color(
                "weight:Q", scale=alt.Scale(scheme="blues"), title="weight" + (" / head max" if per_head_scale else "")
            ),
            tooltip=["layer", "head", "queries", "keys", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(width=64, height=64)
    )
    return base.facet(
        row=alt.Row(
            "layer:N", sort=result.layer_labels(), title=None, header=alt.Header(labelAngle=0, labelAlign="left")
        ),
        column=alt.Column("head:N", sort=result.head_labels(), title=None),
        spacing=4,
    )


def head_chart(result, layer: int, head: int, hide_bos: bool, scale: str) -> alt.Chart:
    pattern = result.head(layer, head)
    n = pattern.shape[0]
    rows = [
        {"query": result.labels[i], "key": result.labels[j], "i": i, "j": j, "weight": float(pattern[i, j])}
        for i in range(n)
        for j in range(i + 1)
        if not (hide_bos and j == 0 and n > 1)
    ]
    df = pd.DataFrame(rows)
    keys = result.labels[1:] if hide_bos and n > 1 else result.labels
    if scale == "log":
        color_scale = alt.Scale(type="log", domain=[1e-3, 1], clamp=True, scheme="blues")
    elif scale == "0 to 1":
        color_scale = alt.Scale(domain=[0, 1], scheme="blues")
    else:
        color_scale = alt.Scale(domain=[0, max(float(df["weight"].max()), 1e-6)], scheme="blues")
    size = max(320, min(900, 18 * n))
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X(
                "key:N",
                sort=list(keys),
                title="key (attended) token",
                axis=alt.Axis(labelAngle=-60, labelLimit=120, labelOverlap=False),
            ),
            y=alt.Y(
                "query:N",
                sort=list(result.labels),
                title="query token",
                axis=alt.Axis(labelLimit=120, labelOverlap=False),
            ),
            color=alt.Color("weight:Q", scale=color_scale),
            tooltip=["i", "query", "j", "key", alt.Tooltip("weight:Q", format=".4f")],
        )
        .properties(width=size, height=size, title=f"Layer {layer} head {head}")
    )


def function_heatmap(table: hf.HeadFunctionTable, fn: str) -> alt.Chart:
    mean, std, n = table.mean(fn), table.std(fn), table.n_defined(fn)
    df = pd.DataFrame(
        [
            {
                "layer": layer,
                "head": head,
                "mean": float(mean[layer, head]),
                "std": float(std[layer, head]),
                "n_prompts": int(n[layer, head]),
            }
            for layer in range(mean.shape[0])
            for head in range(mean.shape[1])
        ]
    )
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("head:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("mean:Q", scale=alt.Scale(scheme="viridis"), title=hf.FUNCTION_TITLES[fn]),
            tooltip=[
                "layer",
                "head",
                alt.Tooltip("mean:Q", format=".3f"),
                alt.Tooltip("std:Q", format=".3f"),
                "n_prompts",
            ],
        )
        .properties(width=220, height=18 * mean.shape[0], title=f"{hf.FUNCTION_TITLES[fn]}: mean over prompts")
    )


# ---------------------------------------------------------------------------------------------
# Inputs and the forward pass

col_prompt, col_opts = st.columns([4, 1])
with col_prompt:
    prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="attn_prompt", height=90)
with col_opts:
    max_tokens = int(
        st.number_input(
            "Token limit",
            min_value=4,
            max_value=256,
            value=DEFAULT_MAX_TOKENS,
            step=8,
            key="attn_max_tokens",
            help="Longer prompts are truncated to this many tokens (BOS included); cost grows with n².",
        )
    )

if not prompt.strip():
    st.warning("Empty prompt: type some text to see its attention maps.", icon=":material/edit_note:")
    st.stop()

lm = get_model()
if lm is None:
    st.stop()
model_key = (lm.name, lm.quantization)  # cache key: the same model at another precision gives other maps

try:
    with st.spinner("Forward pass..."):
        result = forward(lm, model_key, prompt, max_tokens)
except LabError as err:
    st.error(str(err), icon=":material/error:")
    st.stop()

if result.note:
    st.warning(result.note, icon=":material/content_cut:")
kinds = ", ".join(sorted({"local" if t == "sliding_attention" else "global" for t in result.layer_types}))
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

pick1, pick2, pick3, pick4 = st.columns([1, 1, 1, 1])
with pick1:
    layer = st.selectbox(
        "Layer", list(range(result.n_layers)), key="attn_layer", format_func=lambda i: result.layer_labels()[i]
    )
with pick2:
    head = st.selectbox(
        "Head", list(range(result.n_heads)), key="attn_head", format_func=lambda h: result.head_labels()[h]
    )
with pick3:
    hide_bos = st.checkbox(
        "Hide BOS column",
        value=False,
        key="attn_hide_bos",
        help="Attention sinks put most weight on position 0 and wash out the colour scale.",
    )
with pick4:
    scale = st.radio("Colour scale", ["0 to visible max", "0 to 1", "log"], key="attn_scale", horizontal=False)
layer = min(int(layer), result.n_layers - 1)
head = min(int(head), result.n_heads - 1)

tab_all, tab_desc, tab_fn, tab_ask, tab_score = st.tabs(
    ["All heads", "Text description", "Head functions across prompts", "Ask the model", "Score explanations"]
)

# ---------------------------------------------------------------------------------------------
with tab_all:
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(head_chart(result, layer, head, hide_bos, scale), key="attn_head_chart")
    with right:
        group = next(g for g in kv_groups(result.n_heads, result.num_kv_heads) if head in g)
        st.markdown(
            f"**{result.layer_labels()[layer]} · {result.head_labels()[head]}**  \n"
            f"Query heads sharing its key/value head: {', '.join(f'H{h}' for h in group)}"
        )
        scores = hf.score_heads(result.maps[layer : layer + 1, head : head + 1], result.token_ids)
        defined = hf.defined_functions(result.token_ids)
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "function": hf.FUNCTION_TITLES[fn],
                        "score on this prompt": float(scores[fn][0, 0]) if defined[fn] else None,
                    }
                    for fn in hf.FUNCTIONS
                ]
            ),
            hide_index=True,
        )
        st.caption(
            "Detector scores of this head on this prompt only; see *Head functions* for averages over many prompts."
        )
    st.subheader("Model view")
    per_head = st.checkbox("Scale each head to its own maximum", value=True, key="attn_mv_scale")
    st.caption(
        "Rows are layers (local = sliding window, global = full attention), columns heads (kvK = shared key/value head). "
        "Long prompts are averaged into at most 16 x 16 blocks per head."
    )
    st.altair_chart(
        model_view_chart(result, (model_key, prompt, max_tokens), hide_bos, per_head), key="attn_model_view"
    )

# ---------------------------------------------------------------------------------------------
with tab_desc:
    st.markdown(
        f"Top-5 attended tokens for every query token of **layer {layer}, head {head}**: the text given to the model."
    )
    desc_df = describe_head(result, layer, head)
    st.dataframe(desc_df, hide_index=True, key="attn_desc_table")
    text = description_text(result, layer, head)
    st.code(text, language=None)
    st.download_button("Download description (txt)", text, file_name=f"head_{layer}_{head}.txt", key="attn_desc_dl")
    st.caption(
        "Markers stripped (SentencePiece ▁, byte-level Ġ); special tokens as ⟨bos⟩; repeated tokens as text@position; "
        "↵ newline, ␣ space, \\uXXXX invisible characters."
    )

# ---------------------------------------------------------------------------------------------
with tab_fn:
    with st.expander("Formulas", expanded=False):
        st.markdown(FORMULAS)
    c1, c2 = st.columns([1, 2])
    with c1:
        use_builtin = st.checkbox(
            "Built-in texts",
            value=True,
            key="attn_hf_builtin",
            help="8 prompts: natural sentences, code snippets and lists (engine/data/attention_prompts.json).",
        )
        n_random = int(
            st.number_input(
                "Random-token sequences repeated twice",
                0,
                8,
                2,
                key="attn_hf_random",
                help="BOS + 20 random word tokens + the same 20 again (seeds 0, 1, ...): induction heads light up on the second copy.",
            )
        )
    with c2:
        user_text = st.text_area("Your prompts (one per line)", value="", key="attn_hf_user", height=80)
    specs = hf.builtin_prompts(lm.tokenizer, n_random=n_random, texts=use_builtin) + hf.user_prompts(user_text)
    hf_key = (model_key, tuple(specs), max_tokens)
    if st.button(f"Score all heads on {len(specs)} prompts", key="attn_hf_run", disabled=not specs):
        bar = st.progress(0.0, text="starting")
        try:
            table = hf.run_prompt_set(
                lm,
                specs,
                max_tokens=max_tokens,
                progress=lambda k, n, what: bar.progress(k / n, text=f"{k}/{n}: {what}"),
            )
            st.session_state["attn_hf_result"] = (hf_key, table)
        except LabError as err:
            st.error(str(err))
    if not specs:
        st.warning("No prompts: tick the built-in texts, add random sequences or type at least one prompt.")
    saved = st.session_state.get("attn_hf_result")
    if saved and saved[0] == hf_key:
        table = saved[1]
        fn = st.selectbox("Function", list(hf.FUNCTIONS), key="attn_hf_fn", format_func=lambda f: hf.FUNCTION_TITLES[f])
        st.altair_chart(function_heatmap(table, fn), key="attn_hf_chart")
        wide = table.wide()
        st.dataframe(wide.sort_values(fn, ascending=False), hide_index=True, key="attn_hf_table")
        st.download_button(
            "Download head-function table (csv)",
            table.table().to_csv(index=False),
            file_name="head_functions.csv",
            key="attn_hf_dl",
        )
        for f in ("induction", "previous_token"):
            st.caption(
                f"Top {hf.FUNCTION_TITLES[f]} heads: "
                + ", ".join(f"{a}.{b} ({s:.2f})" for a, b, s in table.ranking(f, 3))
            )
    elif saved:
        st.info("Inputs changed since the last run: press the button to score the heads again.")

# ---------------------------------------------------------------------------------------------


def detector_labels() -> tuple[dict[tuple[int, int], str], str]:
    saved = st.session_state.get("attn_hf_result")
    if saved and saved[0][0] == model_key:
        table, source = saved[1], f"head-function table over {len(saved[1].prompt_names)} prompts"
    else:
        table = hf.table_from_results(lm.name, ["prompt"], [result])  # the page's forward pass, scored
        source = "this prompt only (the same evidence the model saw); run Head functions for labels over many prompts"
    labels = hf.best_labels(table)
    return {(a, b): labels[a][b][0] for a in range(len(labels)) for b in range(len(labels[a]))}, source


with tab_ask:
    st.markdown(
        f"The model reads layer {layer}, head {head}'s text description (detector scores withheld) and says what the head does. "
        + (
            "Instruction-tuned: the chat template wraps the prompt."
            if lm.is_instruction_tuned
            else "Base model: a completion-style prompt; the answer is cut at the first line break."
        )
    )
    template = st.text_area(
        "Explanation template ({description} is replaced)",
        value=se.default_template(lm),
        key=f"attn_template_{int(lm.is_instruction_tuned)}",
        height=200,
    )
    modes = ["text", "image", "text+image"] if lm.is_vlm else ["text"]
    mode = st.radio(
        "Show the model",
        modes,
        key="attn_mode",
        horizontal=True,
        help="A vision-language Gemma 3 can read a PNG of the heatmap (with token labels) instead of, or beside, the text.",
    )
    if mode != "text":
        st.image(
            heatmap_png(result.head(layer, head), result.labels, title=f"layer {layer} head {head}"),
            caption="image sent to the model",
        )
    ask_key = (model_key, prompt, max_tokens, layer, head, template, mode)
    if st.button("Ask the model", key="attn_explain"):
        try:
            with st.spinner("Generating..."):
                explanation = se.explain_head(lm, result, layer, head, template, mode)
            st.session_state.setdefault("attn_explanations", {})[ask_key] = explanation
        except LabError as err:
            st.error(str(err))
    explanation = st.session_state.get("attn_explanations", {}).get(ask_key)
    if explanation is not None:
        st.success(explanation.text, icon=":material/psychology:")
        with st.expander("Prompt sent to the model"):
            st.code(explanation.prompt, language=None)
        st.caption("Whether this explanation means anything is measured in *Score explanations*.")

# ---------------------------------------------------------------------------------------------
with tab_score:
    with st.expander("How explanations are scored", expanded=False):
        st.markdown(SCORING_HELP)
    scope = st.radio(
        "Heads",
        ["selected head", "chosen heads", "all heads of a layer", "top heads by a detector"],
        key="attn_score_scope",
        horizontal=True,
        help="The selected head is the one picked above the tabs.",
    )
    all_heads = [f"{a}.{b}" for a in range(result.n_layers) for b in range(result.n_heads)]
    if scope == "selected head":
        heads = [(layer, head)]
        st.caption(f"Heads: {layer}.{head}")
    elif scope == "chosen heads":
        chosen = st.multiselect("Heads (LAYER.HEAD)", all_heads, default=[f"{layer}.{head}"], key="attn_score_heads")
        heads = [tuple(int(x) for x in h.split(".")) for h in chosen]
    elif scope == "all heads of a layer":
        lay = st.selectbox(
            "Layer",
            list(range(result.n_layers)),
            key="attn_score_layer",
            format_func=lambda i: result.layer_labels()[i],
        )
        heads = [(int(lay), b) for b in range(result.n_heads)]
    else:
        s1, s2 = st.columns(2)
        with s1:
            fn = st.selectbox(
                "Detector",
                list(hf.PATTERN_FUNCTIONS) + ["bos_sink", "self"],
                key="attn_score_fn",
                format_func=lambda f: hf.FUNCTION_TITLES[f],
            )
        with s2:
            top = int(st.number_input("Top", 1, 16, 3, key="attn_score_top"))
        saved = st.session_state.get("attn_hf_result")
        if saved and saved[0][0] == model_key:
            ranking = saved[1].ranking(fn, top)
        else:
            ranking = hf.table_from_results(lm.name, ["prompt"], [result]).ranking(fn, top)
            st.caption("Ranked on this prompt (run *Head functions* to rank over many prompts).")
        heads = [(a, b) for a, b, _ in ranking]
        st.caption("Heads: " + ", ".join(f"{a}.{b}" for a, b in heads))
    q1, q2 = st.columns(2)
    with q1:
        queries = int(
            st.number_input(
                "Query tokens per held-out prompt",
                2,
                20,
                8,
                key="attn_score_queries",
                help="Bounds the cost: one simulator row per query token and predictor that uses the model.",
            )
        )
    with q2:
        control = st.checkbox("Control: simulator with no explanation", value=True, key="attn_score_control")
    sim_template = st.text_area(
        "Simulation template ({explanation}, {tokens}, {position}, {token})",
        value=se.SIMULATE_TEMPLATE,
        key="attn_sim_template",
        height=110,
        help="The candidate earlier token's text is scored as the next token after this prompt.",
    )
    st.caption(
        f"About {len(heads) * (2 if control else 1) * 3 * queries} simulator rows plus {len(heads)} explanation(s) of up to 40 tokens."
    )
    score_key = (model_key, prompt, max_tokens, tuple(heads), queries, control, template, mode, sim_template)
    if st.button("Explain, simulate and score", key="attn_score_run", disabled=not heads):
        bar = st.progress(0.0, text="held-out forward passes")
        try:
            labels, source = detector_labels()
            heldout = heldout_results(lm, model_key, 24)
            reuse = {
                (e.layer, e.head): e.text
                for k, e in st.session_state.get("attn_explanations", {}).items()
                if k[:3] == (model_key, prompt, max_tokens) and k[5:] == (template, mode)
            }
            evaluations = se.explain_and_score(
                lm,
                result,
                heads,
                labels,
                heldout=heldout,
                template=template,
                mode=mode,
                max_queries=queries,
                control=control,
                explanations=reuse,
                simulate_template=sim_template,
                progress=lambda k, n, what: bar.progress(k / n, text=f"{k}/{n}: {what}"),
            )
            st.session_state["attn_score_result"] = (score_key, evaluations, source)
        except LabError as err:
            st.error(str(err))
    saved = st.session_state.get("attn_score_result")
    if saved and saved[0] == score_key:
        evaluations, source = saved[1], saved[2]
        st.caption(f"Detector labels from: {source}.")
        table = se.evaluations_table(evaluations)
        summary = table.pivot_table(
            index=["layer.head", "detector_label", "verdict"], columns="predictor", values="top1_agreement"
        ).reset_index()
        st.markdown("**Top-1 agreement with the real argmax** (per head and predictor)")
        st.dataframe(summary, hide_index=True, key="attn_score_summary")
        st.markdown("**All scores**")
        st.dataframe(table.drop(columns=["explanation"]), hide_index=True, key="attn_score_table")
        for e in evaluations:
            st.markdown(f"- **{e.layer}.{e.head}** ({e.detector_label}): _{e.explanation}_ → {e.verdict}")
        st.download_button(
            "Download scores (csv)", table.to_csv(index=False), file_name="explanation_scores.csv", key="attn_score_dl"
        )
        st.caption(
            "Read with care: a few dozen query rows per head, one greedy explanation, and a small model as its own "
            "simulator. Top-1 agreement near the BOS baseline mostly measures the attention sink, not understanding."
        )
    elif saved:
        st.info("Inputs changed since the last scoring: press the button to score again.")
