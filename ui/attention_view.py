"""The attention self-interpretation page: every head of a prompt, text descriptions, head functions
across prompts, the model's own explanation of a head, and explain -> simulate -> score against
detectors (Bills et al. 2023).

The forward pass is cached per process (model, prompt, token limit), so picking another head reuses
it; the head-function table, explanations and scores are kept per session for exactly the inputs
they were computed from (`ui.state`). On the shared server (ui.access) a prompt's tokens and a
head-function request's prompts are checked against the server's limits and the memory their maps
need before they run, and a computation that waits for the model says the person's place in its queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, get_args

import pandas as pd
import streamlit as st

from engine.attention import head_functions as hf
from engine.attention import maps
from engine.attention import self_explain as se
from engine.attention.config import (
    HELDOUT_MAX_TOKENS,
    HELDOUT_SEED,
    HIGHLIGHTED,
    LABEL_THRESHOLD,
    MAX_NEW_TOKENS,
    TOP_K,
    ExplainMode,
    HeadFunction,
    MapOptions,
    PromptSetOptions,
    ScoringOptions,
)
from engine.attention.png import heatmap_png
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.options import default_of, help_of
from ui import access
from ui.attention_charts import (
    COLOUR_SCALES,
    MODEL_VIEW_BINS,
    ColourScale,
    function_heatmap,
    head_chart,
    model_view_chart,
)
from ui.models import get_model
from ui.state import ModelKey, compute, entries, latest, model_key, recall

INTRO = (
    "Hypothesis under test: a model can explain some of its own attention heads as well as external "
    "detectors can. One forward pass gives every layer x head map; each head is described in text "
    f"(top-{TOP_K} attended tokens per token); detectors label heads across prompts; the model explains a "
    "head and its explanation is scored on held-out prompts (explain -> simulate -> score, Bills et al. 2023)."
)
DEFAULT_PROMPT = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again."
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
SCORING_HELP = f"""
**Explain → simulate → score** (Bills et al. 2023, adapted to heads). The explanation is written from
the prompt above only. On held-out prompts (texts not in the built-in set and random tokens repeated
twice, seed {HELDOUT_SEED}) the same model gets only the explanation and the tokens and, for each query
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
PROMPT_ONLY = "this prompt only (the same evidence the model saw); run Head functions for labels over many prompts"

HF_SLOT = "attn_head_functions"  # ui.state slots: results for exactly the inputs they came from
EXPLAIN_SLOT = "attn_explanations"
SCORE_SLOT = "attn_scores"
EXPLANATIONS_KEPT = 32  # explanations kept per session (reused when their heads are scored)

Scope = Literal["selected head", "chosen heads", "all heads of a layer", "top heads by a detector"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
RANKABLE: tuple[HeadFunction, ...] = (*hf.PATTERN_FUNCTIONS, "bos_sink", "self")


@dataclasses.dataclass(frozen=True)
class View:
    """What every tab reads: the model, the page's forward pass and the head picked above the tabs."""

    lm: LoadedModel
    key: ModelKey
    prompt: str
    max_tokens: int
    result: maps.AttentionResult
    layer: int
    head: int
    hide_bos: bool
    scale: ColourScale

    @property
    def result_key(self) -> tuple:
        """The inputs of the forward pass: (model key, prompt, token limit)."""
        return (self.key, self.prompt, self.max_tokens)


@dataclasses.dataclass(frozen=True)
class AskInputs:
    """The inputs an explanation was written from."""

    result_key: tuple
    layer: int
    head: int
    template: str
    mode: ExplainMode


@dataclasses.dataclass(frozen=True)
class Scored:
    """Scored explanations and where their detector labels came from."""

    evaluations: list[se.HeadEvaluation]
    label_source: str


# ---------------------------------------------------------------------------------------------
# Cached computations (changing the selected head re-uses the forward pass)


@st.cache_data(max_entries=8, show_spinner=False)
def _forward(_lm: LoadedModel, key: ModelKey, prompt: str, max_tokens: int) -> maps.AttentionResult:
    """One eager forward pass: all maps of the prompt (cached by model, prompt and token limit)."""
    return maps.run_attention(_lm, prompt, max_tokens=max_tokens)


@st.cache_data(max_entries=8, show_spinner=False)
def _heldout(_lm: LoadedModel, key: ModelKey, max_tokens: int) -> list[maps.AttentionResult]:
    """The held-out prompts' forward passes (shared by every head scored)."""
    return se.run_heldout(_lm, se.heldout_prompts(_lm.tokenizer), max_tokens=max_tokens)


def _help(cls: type, name: str) -> str:
    """An option's help text from the engine, as a sentence."""
    text = help_of(cls, name)
    return text[:1].upper() + text[1:] + "."


def _progress(bar: Any) -> Callable[[int, int, str], None]:
    """A progress callback drawing on a Streamlit progress bar."""
    return lambda k, n, what: bar.progress(k / n, text=f"{k}/{n}: {what}")


def _detector_table(view: View) -> tuple[hf.HeadFunctionTable, str]:
    """The session's head-function table for this model, else the page's own forward pass scored
    (PROMPT_ONLY); and a note saying which."""
    saved = latest(HF_SLOT)
    if saved is not None and saved[0][0] == view.key:
        return saved[1], f"head-function table over {len(saved[1].prompt_names)} prompts"
    return hf.table_from_results(view.lm.name, ["prompt"], [view.result]), PROMPT_ONLY


# ---------------------------------------------------------------------------------------------
# The page


def render() -> None:
    """The whole page below its title."""
    st.caption(INTRO)
    col_prompt, col_opts = st.columns([4, 1])
    with col_prompt:
        prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="attn_prompt", height=90)
    with col_opts:
        max_tokens = int(
            st.number_input(
                "Token limit",
                min_value=4,
                value=default_of(MapOptions, "max_tokens"),
                step=8,
                key="attn_max_tokens",
                help=_help(MapOptions, "max_tokens") + access.limit_note("attention_tokens", "tokens per prompt"),
            )
        )
    if not prompt.strip():
        st.warning("Empty prompt: type some text to see its attention maps.", icon=":material/edit_note:")
        return
    lm = get_model()
    if lm is None:
        return
    key = model_key(lm)
    try:
        tokens = min(len(maps.tokenize_prompt(lm, prompt)), max_tokens)
        access.limits().check(
            "attention_tokens", tokens, "Tokens of this attention prompt (lower the Token limit to cut it)"
        )
        access.ensure_memory(lm, access.attention_forward_bytes(lm, tokens), f"the attention maps of {tokens} tokens")
        with access.queue_notice(lm), st.spinner("Forward pass..."):
            result = _forward(lm, key, prompt, max_tokens)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return
    _overview(result)
    view = _pick_head(lm, key, prompt, max_tokens, result)
    tab_all, tab_desc, tab_fn, tab_ask, tab_score = st.tabs(
        ["All heads", "Text description", "Head functions across prompts", "Ask the model", "Score explanations"]
    )
    with tab_all:
        _all_heads(view)
    with tab_desc:
        _description(view)
    with tab_fn:
        _head_functions(view)
    with tab_ask:
        template, mode = _ask(view)
    with tab_score:
        _score(view, template, mode)


def _overview(result: maps.AttentionResult) -> None:
    if result.note:
        st.warning(result.note, icon=":material/content_cut:")
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


def _pick_head(lm: LoadedModel, key: ModelKey, prompt: str, max_tokens: int, result: maps.AttentionResult) -> View:
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
        scale = st.radio("Colour scale", COLOUR_SCALES, key="attn_scale", horizontal=False)
    layer = min(int(layer), result.n_layers - 1)
    head = min(int(head), result.n_heads - 1)
    return View(lm, key, prompt, max_tokens, result, layer, head, hide_bos, scale)


def _all_heads(view: View) -> None:
    result, layer, head = view.result, view.layer, view.head
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(head_chart(result, layer, head, view.hide_bos, view.scale), key="attn_head_chart")
    with right:
        group = next(g for g in maps.kv_groups(result.n_heads, result.num_kv_heads) if head in g)
        st.markdown(
            f"**{result.layer_labels()[layer]} · {result.head_labels()[head]}**  \n"
            f"Query heads sharing its key/value head: {', '.join(f'H{h}' for h in group)}"
        )
        scores = hf.head_scores(result, layer, head)
        st.dataframe(
            pd.DataFrame(
                [{"function": hf.FUNCTION_TITLES[fn], "score on this prompt": score} for fn, score in scores.items()]
            ),
            hide_index=True,
        )
        st.caption(
            "Detector scores of this head on this prompt only; see *Head functions* for averages over many prompts."
        )
    st.subheader("Model view")
    per_head = st.checkbox("Scale each head to its own maximum", value=True, key="attn_mv_scale")
    st.caption(
        "Rows are layers (local = sliding window, global = full attention), columns heads (kvK = shared key/value "
        f"head). Long prompts are averaged into at most {MODEL_VIEW_BINS} x {MODEL_VIEW_BINS} blocks per head."
    )
    st.altair_chart(model_view_chart(result, view.result_key, view.hide_bos, per_head), key="attn_model_view")


def _description(view: View) -> None:
    layer, head = view.layer, view.head
    st.markdown(
        f"Top-{TOP_K} attended tokens for every query token of **layer {layer}, head {head}**: "
        "the text given to the model."
    )
    st.dataframe(maps.describe_head(view.result, layer, head), hide_index=True, key="attn_desc_table")
    text = maps.description_text(view.result, layer, head)
    st.code(text, language=None)
    st.download_button("Download description (txt)", text, file_name=f"head_{layer}_{head}.txt", key="attn_desc_dl")
    st.caption(
        "Markers stripped (SentencePiece ▁, byte-level Ġ); special tokens as ⟨bos⟩; repeated tokens as text@position; "
        "↵ newline, ␣ space, \\uXXXX invisible characters."
    )


def _head_functions(view: View) -> None:
    with st.expander("Formulas", expanded=False):
        st.markdown(FORMULAS)
    c1, c2 = st.columns([1, 2])
    with c1:
        use_builtin = st.checkbox(
            "Built-in texts",
            value=default_of(PromptSetOptions, "builtin"),
            key="attn_hf_builtin",
            help=_help(PromptSetOptions, "builtin"),
        )
        n_random = int(
            st.number_input(
                "Random-token sequences repeated twice",
                0,
                8,
                default_of(PromptSetOptions, "random"),
                key="attn_hf_random",
                help=_help(PromptSetOptions, "random"),
            )
        )
    with c2:
        user_text = st.text_area("Your prompts (one per line)", value="", key="attn_hf_user", height=80)
    specs = hf.builtin_prompts(view.lm.tokenizer, n_random=n_random, texts=use_builtin) + hf.user_prompts(user_text)
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
    if st.button(f"Score all heads on {len(specs)} prompts", key="attn_hf_run", disabled=not specs or over):
        try:
            need = access.head_functions_bytes(view.lm, lengths)
            access.ensure_memory(view.lm, need, f"the maps of {len(specs)} prompts (all kept)")
        except LabError as err:
            st.error(str(err), icon=":material/error:")
        else:
            bar = st.progress(0.0, text="starting")
            with access.queue_notice(view.lm):
                compute(
                    HF_SLOT,
                    inputs,
                    "Scoring every head...",
                    lambda: hf.run_prompt_set(view.lm, specs, max_tokens=view.max_tokens, progress=_progress(bar)),
                )
    if not specs:
        st.warning("No prompts: tick the built-in texts, add random sequences or type at least one prompt.")
    table = recall(HF_SLOT, inputs)
    if table is not None:
        fn = st.selectbox("Function", list(hf.FUNCTIONS), key="attn_hf_fn", format_func=lambda f: hf.FUNCTION_TITLES[f])
        st.altair_chart(function_heatmap(table, fn), key="attn_hf_chart")
        st.dataframe(table.wide().sort_values(fn, ascending=False), hide_index=True, key="attn_hf_table")
        st.download_button(
            "Download head-function table (csv)",
            table.table().to_csv(index=False),
            file_name="head_functions.csv",
            key="attn_hf_dl",
        )
        for f in HIGHLIGHTED:
            st.caption(f"Top {hf.FUNCTION_TITLES[f]} heads: {table.top_heads(f)}")
    elif latest(HF_SLOT) is not None:
        st.info("Inputs changed since the last run: press the button to score the heads again.")


def _spec_lengths(view: View, specs: list[hf.PromptSpec]) -> list[int]:
    """Tokens of each head-function prompt as it runs (cut at the page's token limit)."""
    lengths = [len(s.token_ids) if s.token_ids else access.token_count(view.lm, s.text or "") for s in specs]
    return [min(n, view.max_tokens) for n in lengths]


def _ask(view: View) -> tuple[str, ExplainMode]:
    """The "Ask the model" tab; returns the explanation template and mode (the scoring tab uses them)."""
    lm, result, layer, head = view.lm, view.result, view.layer, view.head
    st.markdown(
        f"The model reads layer {layer}, head {head}'s text description (detector scores withheld) and says what "
        "the head does. "
        + (
            "Instruction-tuned: the chat template wraps the prompt."
            if lm.is_instruction_tuned
            else "Base model: a completion-style prompt; the answer is cut at the first line break."
        )
    )
    template = st.text_area(
        "Explanation template ({description} is replaced)",
        value=se.default_template(lm),
        key=f"attn_template_{se.template_kind(lm)}",
        height=200,
    )
    mode = st.radio(
        "Show the model",
        se.EXPLAIN_MODES if lm.is_vlm else ("text",),
        key="attn_mode",
        horizontal=True,
        help="A vision-language Gemma 3 can read a PNG of the heatmap (with token labels) instead of, or beside, "
        "the text.",
    )
    if mode != "text":
        st.image(
            heatmap_png(result.head(layer, head), result.labels, title=f"layer {layer} head {head}"),
            caption="image sent to the model",
        )
    inputs = AskInputs(view.result_key, layer, head, template, mode)
    if st.button("Ask the model", key="attn_explain"):
        with access.queue_notice(lm):
            compute(
                EXPLAIN_SLOT,
                inputs,
                "Generating...",
                lambda: se.explain_head(lm, result, layer, head, template, mode),
                keep=EXPLANATIONS_KEPT,
            )
    explanation = recall(EXPLAIN_SLOT, inputs)
    if explanation is not None:
        st.success(explanation.text, icon=":material/psychology:")
        with st.expander("Prompt sent to the model"):
            st.code(explanation.prompt, language=None)
        st.caption("Whether this explanation means anything is measured in *Score explanations*.")
    return template, mode


def _chosen_heads(view: View) -> list[tuple[int, int]]:
    """The heads to score, as the scope radio asks."""
    result, layer, head = view.result, view.layer, view.head
    scope = st.radio(
        "Heads",
        SCOPES,
        key="attn_score_scope",
        horizontal=True,
        help="The selected head is the one picked above the tabs.",
    )
    if scope == "selected head":
        st.caption(f"Heads: {layer}.{head}")
        return [(layer, head)]
    if scope == "chosen heads":
        all_heads = [f"{a}.{b}" for a in range(result.n_layers) for b in range(result.n_heads)]
        chosen = st.multiselect("Heads (LAYER.HEAD)", all_heads, default=[f"{layer}.{head}"], key="attn_score_heads")
        return [maps.parse_head(h) for h in chosen]
    if scope == "all heads of a layer":
        lay = st.selectbox(
            "Layer",
            list(range(result.n_layers)),
            key="attn_score_layer",
            format_func=lambda i: result.layer_labels()[i],
        )
        return [(int(lay), b) for b in range(result.n_heads)]
    s1, s2 = st.columns(2)
    with s1:
        fn = st.selectbox("Detector", RANKABLE, key="attn_score_fn", format_func=lambda f: hf.FUNCTION_TITLES[f])
    with s2:
        top = int(st.number_input("Top", 1, 16, 3, key="attn_score_top"))
    table, source = _detector_table(view)
    if source == PROMPT_ONLY:
        st.caption("Ranked on this prompt (run *Head functions* to rank over many prompts).")
    heads = [(a, b) for a, b, _ in table.ranking(fn, top)]
    st.caption("Heads: " + ", ".join(f"{a}.{b}" for a, b in heads))
    return heads


def _score(view: View, template: str, mode: ExplainMode) -> None:
    lm, result = view.lm, view.result
    with st.expander("How explanations are scored", expanded=False):
        st.markdown(SCORING_HELP)
    heads = _chosen_heads(view)
    q1, q2 = st.columns(2)
    with q1:
        queries = int(
            st.number_input(
                "Query tokens per held-out prompt",
                2,
                20,
                default_of(ScoringOptions, "max_queries"),
                key="attn_score_queries",
                help=_help(ScoringOptions, "max_queries"),
            )
        )
    with q2:
        control = st.checkbox(
            "Control: simulator with no explanation",
            value=default_of(ScoringOptions, "control"),
            key="attn_score_control",
            help=_help(ScoringOptions, "control"),
        )
    sim_template = st.text_area(
        "Simulation template ({explanation}, {tokens}, {position}, {token})",
        value=se.SIMULATE_TEMPLATE,
        key="attn_sim_template",
        height=110,
        help="The candidate earlier token's text is scored as the next token after this prompt.",
    )
    n_heldout = len(se.heldout_prompts(lm.tokenizer))
    st.caption(
        f"About {len(heads) * (2 if control else 1) * n_heldout * queries} simulator rows plus {len(heads)} "
        f"explanation(s) of up to {MAX_NEW_TOKENS} tokens."
    )
    inputs = (view.result_key, tuple(heads), queries, control, template, mode, sim_template)

    def explain_and_score(bar: Any) -> Scored:
        table, source = _detector_table(view)
        heldout = _heldout(lm, view.key, HELDOUT_MAX_TOKENS)
        reuse = {
            (e.layer, e.head): e.text
            for k, e in entries(EXPLAIN_SLOT)
            if k.result_key == view.result_key and (k.template, k.mode) == (template, mode)
        }
        evaluations = se.explain_and_score(
            lm,
            result,
            heads,
            hf.detector_labels(table),
            heldout=heldout,
            template=template,
            mode=mode,
            max_queries=queries,
            control=control,
            explanations=reuse,
            simulate_template=sim_template,
            progress=_progress(bar),
        )
        return Scored(evaluations, source)

    if st.button("Explain, simulate and score", key="attn_score_run", disabled=not heads):
        bar = st.progress(0.0, text="held-out forward passes")
        with access.queue_notice(lm):
            compute(SCORE_SLOT, inputs, "Explaining, simulating and scoring...", lambda: explain_and_score(bar))
    scored = recall(SCORE_SLOT, inputs)
    if scored is not None:
        st.caption(f"Detector labels from: {scored.label_source}.")
        st.markdown("**Top-1 agreement with the real argmax** (per head and predictor)")
        st.dataframe(se.top1_summary(scored.evaluations), hide_index=True, key="attn_score_summary")
        st.markdown("**All scores**")
        table = se.evaluations_table(scored.evaluations)
        st.dataframe(table.drop(columns=["explanation"]), hide_index=True, key="attn_score_table")
        for e in scored.evaluations:
            st.markdown(f"- **{e.layer}.{e.head}** ({e.detector_label}): _{e.explanation}_ → {e.verdict}")
        st.download_button(
            "Download scores (csv)", table.to_csv(index=False), file_name="explanation_scores.csv", key="attn_score_dl"
        )
        st.caption(
            "Read with care: a few dozen query rows per head, one greedy explanation, and a small model as its own "
            "simulator. Top-1 agreement near the BOS baseline mostly measures the attention sink, not understanding."
        )
    elif latest(SCORE_SLOT) is not None:
        st.info("Inputs changed since the last scoring: press the button to score again.")
