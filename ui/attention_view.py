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

import dataclasses
import threading
from collections.abc import Callable, Hashable
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
    VERDICT_MARGIN,
    ExplainMode,
    HeadFunction,
    MapOptions,
    PromptSetOptions,
    ScoringOptions,
)
from engine.attention.png import heatmap_png
from engine.core.architecture import layer_types
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.options import default_of, help_of
from ui import access
from ui.attention_charts import (
    COLOUR_SCALES,
    HEAD_PICK,
    MAX_LABELS,
    MODEL_VIEW_BINS,
    SCORE_METRICS,
    ColourScale,
    function_frame,
    function_heatmap,
    head_chart,
    head_from_selection,
    model_view_chart,
    scores_chart,
)
from ui.fields import between, number_field
from ui.figures import show_chart
from ui.models import get_model
from ui.progress import steps
from ui.state import ModelKey, entries, latest, model_key, recall, remember

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
STORE_KEPT = 32  # results of each kind kept per process (a reload gets them back)
LAST_TOKENS = "_att_last_good_tokens"  # the last valid token limit (shown while the field holds a bad one)
WINDOW_N = "_att_window_tokens"  # the prompt length the token window was set for
Q = "query-params"  # every input of the view lives in the URL (keys att_*)

Scope = Literal["selected head", "chosen heads", "all heads of a layer", "top heads by a detector"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
RANKABLE: tuple[HeadFunction, ...] = (*hf.PATTERN_FUNCTIONS, "bos_sink", "self")


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the layer and head pickers need, read from the model (no forward pass)."""

    layer_labels: list[str]
    head_labels: list[str]
    kv_groups: list[list[int]]

    @property
    def n_layers(self) -> int:
        return len(self.layer_labels)

    @property
    def n_heads(self) -> int:
        return len(self.head_labels)


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


class _Store:
    """Results per kind for exactly their inputs, kept per process (the last STORE_KEPT of each kind):
    a reload starts a new session, and gets back what was computed for the same inputs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, list[tuple[Hashable, Any]]] = {}

    def get(self, kind: str, inputs: Hashable) -> Any | None:
        with self.lock:
            return next((r for k, r in reversed(self.items.get(kind, [])) if k == inputs), None)

    def put(self, kind: str, inputs: Hashable, result: Any) -> None:
        with self.lock:
            kept = [(k, r) for k, r in self.items.get(kind, []) if k != inputs][-(STORE_KEPT - 1) :]
            self.items[kind] = [*kept, (inputs, result)]


@st.cache_resource(show_spinner=False)
def _store() -> _Store:
    return _Store()


def _recall(slot: str, inputs: Hashable, keep: int = 1) -> Any | None:
    """The session's result for these inputs, else the process store's (then kept in the session too)."""
    result = recall(slot, inputs)
    if result is None:
        result = _store().get(slot, inputs)
        if result is not None:
            remember(slot, inputs, result, keep)
    return result


def _run(slot: str, inputs: Hashable, fn: Callable[[], Any], keep: int = 1) -> Any | None:
    """fn() remembered for `inputs` in the session and the store; a LabError is shown, not raised."""
    try:
        result = fn()
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return None
    _store().put(slot, inputs, result)
    return remember(slot, inputs, result, keep)


def _help(cls: type, name: str) -> str:
    """An option's help text from the engine, as a sentence."""
    text = help_of(cls, name)
    return text[:1].upper() + text[1:] + "."


def _int_field(label: str, default: int, low: int, high: int, key: str, help: str | None = None) -> int | None:
    """A whole-number field bound to the URL (ui.fields): the value, or None with the reason under the field."""
    value, ok = number_field(st, label, default, key, between(label, low, high, integer=True), step=1, help=help)
    return int(value) if ok else None


def _detector_table(view: View) -> tuple[hf.HeadFunctionTable, str]:
    """The session's head-function table for this model, else the page's own forward pass scored
    (PROMPT_ONLY); and a note saying which."""
    saved = latest(HF_SLOT)
    if saved is not None and saved[0][0] == view.key:
        return saved[1], f"head-function table over {len(saved[1].prompt_names)} prompts"
    return hf.table_from_results(view.lm.name, ["prompt"], [view.result]), PROMPT_ONLY


def model_shape(lm: LoadedModel) -> Shape:
    """Layer and head labels of the model from its config (as the forward pass will label them)."""
    cfg = lm.text_config
    types = layer_types(lm.model)
    n_heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    return Shape(
        maps.layer_labels(types, getattr(cfg, "sliding_window", None)),
        maps.head_labels(n_heads, kv),
        maps.kv_groups(n_heads, kv),
    )


def truncation_note(result: maps.AttentionResult, server_max: int) -> str:
    """The note when the prompt was cut, naming the real limit: the Token limit field while it is under
    the server's maximum, else the server's limit itself ('' when nothing was cut)."""
    if not result.truncated:
        return ""
    cut = (
        f"Prompt truncated to its first {len(result.token_ids)} of {result.n_prompt_tokens} tokens "
        f"(Token limit {result.max_tokens})"
    )
    if result.max_tokens < server_max:
        return f"{cut}: raise the Token limit (this server allows up to {server_max}) to see more."
    return (
        f"{cut}: {server_max} tokens is this server's maximum (attention_tokens); the command line "
        "(`python -m engine attention --max-tokens N`) has no such cap."
    )


def select_head(picked: tuple[int, int] | None, shape: Shape) -> bool:
    """Point the layer and head pickers at a clicked head (before they are drawn); False when none."""
    if picked is None or not (0 <= picked[0] < shape.n_layers and 0 <= picked[1] < shape.n_heads):
        return False
    st.session_state["att_layer"], st.session_state["att_head"] = picked
    return True


def _on_head_click(chart_key: str, shape: Shape) -> Callable[[], None]:
    """The on_select callback of a clickable chart: the clicked head becomes the selected one."""
    return lambda: select_head(head_from_selection(st.session_state.get(chart_key)), shape)


# ---------------------------------------------------------------------------------------------
# The page


def render() -> None:
    """The whole page below its title."""
    st.caption(INTRO)
    col_prompt, col_opts = st.columns([4, 1])
    with col_prompt:
        prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="att_prompt", height=90, bind=Q)
        prompt_message = st.empty()
    server_max = access.limits().attention_tokens
    with col_opts:
        asked = st.number_input(
            "Token limit",
            value=default_of(MapOptions, "max_tokens"),
            step=8,
            key="att_tokens",
            bind=Q,
            help=_help(MapOptions, "max_tokens") + access.limit_note("attention_tokens", "tokens per prompt"),
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
            result = _forward(lm, key, prompt, max_tokens)
    except LabError as err:
        prompt_message.error(str(err), icon=":material/error:")
        return
    _overview(result, server_max)
    layer, head = min(layer, result.n_layers - 1), min(head, result.n_heads - 1)
    view = View(lm, key, prompt, max_tokens, result, layer, head, hide_bos, scale)
    tab_all, tab_desc, tab_fn, tab_ask, tab_score = st.tabs(
        ["All heads", "Text description", "Head functions across prompts", "Ask the model", "Score explanations"],
        key="att_tab",
        bind=Q,
    )
    with tab_all:
        _all_heads(view, shape)
    with tab_desc:
        _description(view)
    with tab_fn:
        _head_functions(view, shape)
    with tab_ask:
        template, mode = _ask(view)
    with tab_score:
        _score(view, template, mode)


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
        scores = hf.head_scores(result, layer, head)
        st.dataframe(
            pd.DataFrame(
                [{"function": hf.FUNCTION_TITLES[fn], "score on this prompt": score} for fn, score in scores.items()]
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
        on_select=_on_head_click("att_model_view", shape),
        selection_mode=HEAD_PICK,
    )


def _description(view: View) -> None:
    layer, head = view.layer, view.head
    st.markdown(
        f"Top-{TOP_K} attended tokens for every query token of **layer {layer}, head {head}**: "
        "the text given to the model."
    )
    st.dataframe(maps.describe_head(view.result, layer, head), hide_index=True, key="att_desc_table")
    text = maps.description_text(view.result, layer, head)
    st.code(text, language=None)
    st.download_button("Download description (txt)", text, file_name=f"head_{layer}_{head}.txt", key="att_desc_dl")
    st.caption(
        "Markers stripped (SentencePiece ▁, byte-level Ġ); special tokens as ⟨bos⟩; repeated tokens as text@position; "
        "↵ newline, ␣ space, \\uXXXX invisible characters."
    )


def _head_functions(view: View, shape: Shape) -> None:
    with st.expander("Formulas", expanded=False):
        st.markdown(FORMULAS)
    c1, c2 = st.columns([1, 2])
    with c1:
        use_builtin = st.checkbox(
            "Built-in texts",
            value=default_of(PromptSetOptions, "builtin"),
            key="att_hf_builtin",
            bind=Q,
            help=_help(PromptSetOptions, "builtin"),
        )
        n_random = _int_field(
            "Random-token sequences repeated twice",
            default_of(PromptSetOptions, "random"),
            0,
            8,
            "att_hf_random",
            help=_help(PromptSetOptions, "random"),
        )
    with c2:
        user_text = st.text_area("Your prompts (one per line)", value="", key="att_hf_user", height=80, bind=Q)
    specs = []
    if n_random is not None:
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
    label = f"Score all heads on {len(specs)} prompts"
    if st.button(label, key="att_hf_run", disabled=not specs or over or n_random is None):
        try:
            need = access.head_functions_bytes(view.lm, lengths)
            access.ensure_memory(view.lm, need, f"the maps of {len(specs)} prompts (all kept)")
        except LabError as err:
            st.error(str(err), icon=":material/error:")
        else:
            with access.queue_notice(view.lm), steps("Scoring every head") as progress:
                _run(
                    HF_SLOT,
                    inputs,
                    lambda: hf.run_prompt_set(view.lm, specs, max_tokens=view.max_tokens, progress=progress),
                )
    if not specs and n_random is not None:
        st.warning("No prompts: tick the built-in texts, add random sequences or type at least one prompt.")
    table = _recall(HF_SLOT, inputs)
    if table is None and n_random is None:  # a bad field: keep the last table of this model on screen
        saved = latest(HF_SLOT)
        if saved is not None and saved[0][0] == view.key:
            table = saved[1]
            st.caption("The table below is from the last run (the field above is not valid).")
    if table is not None:
        fn = st.selectbox(
            "Function", list(hf.FUNCTIONS), key="att_hf_fn", format_func=lambda f: hf.FUNCTION_TITLES[f], bind=Q
        )
        show_chart(
            function_heatmap(table, fn, (view.layer, view.head)),
            f"head_function_{fn}",
            key="att_hf_chart",
            data=function_frame(table, fn),
            on_select=_on_head_click("att_hf_chart", shape),
            selection_mode=HEAD_PICK,
        )
        st.caption("Click a cell to select that head (framed in red).")
        for f in HIGHLIGHTED:
            st.caption(f"Top {hf.FUNCTION_TITLES[f]} heads: {table.top_heads(f)}")
        st.dataframe(table.wide().sort_values(fn, ascending=False), hide_index=True, key="att_hf_table")
        st.download_button(
            "Download head-function table (csv)",
            table.table().to_csv(index=False),
            file_name="head_functions.csv",
            key="att_hf_dl",
        )
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
        key=f"att_template_{se.template_kind(lm)}",
        height=200,
    )
    mode = st.radio(
        "Show the model",
        se.EXPLAIN_MODES if lm.is_vlm else ("text",),
        key="att_mode",
        horizontal=True,
        bind=Q,
        help="A vision-language Gemma 3 can read a PNG of the heatmap (with token labels) instead of, or beside, "
        "the text.",
    )
    if mode != "text":
        st.image(
            heatmap_png(result.head(layer, head), result.labels, title=f"layer {layer} head {head}"),
            caption="image sent to the model",
        )
    inputs = AskInputs(view.result_key, layer, head, template, mode)
    if st.button("Ask the model", key="att_explain"):
        with access.queue_notice(lm), steps("Asking the model") as progress:
            _run(
                EXPLAIN_SLOT,
                inputs,
                lambda: se.explain_head(lm, result, layer, head, template, mode, progress=progress),
                keep=EXPLANATIONS_KEPT,
            )
    explanation = _recall(EXPLAIN_SLOT, inputs, keep=EXPLANATIONS_KEPT)
    if explanation is not None:
        st.success(explanation.text, icon=":material/psychology:")
        with st.expander("Prompt sent to the model"):
            st.code(explanation.prompt, language=None)
        st.caption("Whether this explanation means anything is measured in *Score explanations*.")
    return template, mode


def _chosen_heads(view: View) -> list[tuple[int, int]] | None:
    """The heads to score, as the scope radio asks (None when a field is not valid)."""
    result, layer, head = view.result, view.layer, view.head
    scope = st.radio(
        "Heads",
        SCOPES,
        key="att_score_scope",
        horizontal=True,
        bind=Q,
        help="The selected head is the one picked above the tabs.",
    )
    if scope == "selected head":
        st.caption(f"Heads: {layer}.{head}")
        return [(layer, head)]
    if scope == "chosen heads":
        all_heads = [f"{a}.{b}" for a in range(result.n_layers) for b in range(result.n_heads)]
        chosen = st.multiselect(
            "Heads (LAYER.HEAD)", all_heads, default=[f"{layer}.{head}"], key="att_score_heads", bind=Q
        )
        return [maps.parse_head(h) for h in chosen]
    if scope == "all heads of a layer":
        lay = st.selectbox(
            "Layer",
            list(range(result.n_layers)),
            key="att_score_layer",
            format_func=str,
            bind=Q,
        )
        return [(int(lay), b) for b in range(result.n_heads)]
    s1, s2 = st.columns(2)
    with s1:
        fn = st.selectbox("Detector", RANKABLE, key="att_score_fn", format_func=lambda f: hf.FUNCTION_TITLES[f], bind=Q)
    with s2:
        top = _int_field("Top", 3, 1, result.n_layers * result.n_heads, "att_score_top")
    if top is None:
        return None
    table, source = _detector_table(view)
    if source == PROMPT_ONLY:
        st.caption("Ranked on this prompt (run *Head functions* to rank over many prompts).")
    heads = [(a, b) for a, b, _ in table.ranking(fn, top)]
    st.caption("Heads: " + ", ".join(f"{a}.{b}" for a, b in heads))
    return heads


def verdict_line(evaluations: list[se.HeadEvaluation]) -> str:
    """One short line over all scored heads: on how many the self-explanation beats the control (or,
    without it, the best trivial baseline) by VERDICT_MARGIN top-1 agreement."""
    n = len(evaluations)
    with_control = [e for e in evaluations if se.CONTROL in e.scores]
    if with_control:
        wins = sum(e.scores["self-explanation"].top1 > e.scores[se.CONTROL].top1 + VERDICT_MARGIN for e in with_control)
        return (
            f"The self-explanation beats the no-explanation control on {wins} of {len(with_control)} head(s) "
            f"(by more than {VERDICT_MARGIN} top-1 agreement)."
        )
    wins = sum(
        e.scores["self-explanation"].top1
        > max(e.scores["baseline: BOS"].top1, e.scores["baseline: uniform"].top1) + VERDICT_MARGIN
        for e in evaluations
    )
    return (
        f"The self-explanation beats the best trivial baseline on {wins} of {n} head(s) "
        f"(by more than {VERDICT_MARGIN} top-1 agreement; no control run)."
    )


def _score(view: View, template: str, mode: ExplainMode) -> None:
    lm, result = view.lm, view.result
    with st.expander("How explanations are scored", expanded=False):
        st.markdown(SCORING_HELP)
    heads = _chosen_heads(view)
    q1, q2 = st.columns(2)
    with q1:
        queries = _int_field(
            "Query tokens per held-out prompt",
            default_of(ScoringOptions, "max_queries"),
            2,
            20,
            "att_score_queries",
            help=_help(ScoringOptions, "max_queries"),
        )
    with q2:
        control = st.checkbox(
            "Control: simulator with no explanation",
            value=default_of(ScoringOptions, "control"),
            key="att_score_control",
            bind=Q,
            help=_help(ScoringOptions, "control"),
        )
    sim_template = st.text_area(
        "Simulation template ({explanation}, {tokens}, {position}, {token})",
        value=se.SIMULATE_TEMPLATE,
        key="att_sim_template",
        height=110,
        help="The candidate earlier token's text is scored as the next token after this prompt.",
    )
    valid = heads is not None and queries is not None
    n_heldout = len(se.heldout_prompts(lm.tokenizer))
    if valid:
        st.caption(
            f"About {len(heads) * (2 if control else 1) * n_heldout * queries} simulator rows plus {len(heads)} "
            f"explanation(s) of up to {MAX_NEW_TOKENS} tokens."
        )
    inputs = (view.result_key, tuple(heads or ()), queries, control, template, mode, sim_template)

    def explain_and_score() -> Scored:
        table, source = _detector_table(view)
        with st.spinner("Held-out forward passes..."):  # a few short prompts, cached per process
            heldout = _heldout(lm, view.key, HELDOUT_MAX_TOKENS)
        reuse = {
            (e.layer, e.head): e.text
            for k, e in entries(EXPLAIN_SLOT)
            if k.result_key == view.result_key and (k.template, k.mode) == (template, mode)
        }
        with steps("Explaining, simulating and scoring") as progress:
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
                progress=progress,
            )
        return Scored(evaluations, source)

    if st.button("Explain, simulate and score", key="att_score_run", disabled=not valid or not heads):
        with access.queue_notice(lm):
            _run(SCORE_SLOT, inputs, explain_and_score)
    scored = _recall(SCORE_SLOT, inputs) if valid else None
    if scored is None and not valid:  # a bad field: keep the last scores of this forward pass on screen
        saved = latest(SCORE_SLOT)
        if saved is not None and saved[0][0] == view.result_key:
            scored = saved[1]
            st.caption("The scores below are from the last run (a field above is not valid).")
    if scored is not None:
        _show_scores(scored)
    elif latest(SCORE_SLOT) is not None:
        st.info("Inputs changed since the last scoring: press the button to score again.")


def _show_scores(scored: Scored) -> None:
    """Figure first (scores per head against the control and baselines), one short verdict line, the
    tables, and the explanations with their verdicts in an expander."""
    table = se.evaluations_table(scored.evaluations)
    metric = st.radio(
        "Score",
        list(SCORE_METRICS),
        format_func=lambda m: SCORE_METRICS[m],
        key="att_score_metric",
        horizontal=True,
        bind=Q,
    )
    show_chart(
        scores_chart(table, metric), "explanation_scores", key="att_score_chart", data=table.drop(columns=["verdict"])
    )
    st.markdown(f"**{verdict_line(scored.evaluations)}** Detector labels from: {scored.label_source}.")
    with st.expander("Explanations and verdicts per head", expanded=False):
        for e in scored.evaluations:
            st.markdown(f"- **{e.layer}.{e.head}** ({e.detector_label}): _{e.explanation}_ → {e.verdict}")
    st.markdown("**Top-1 agreement with the real argmax** (per head and predictor)")
    st.dataframe(se.top1_summary(scored.evaluations), hide_index=True, key="att_score_summary")
    st.markdown("**All scores**")
    st.dataframe(table.drop(columns=["explanation"]), hide_index=True, key="att_score_table")
    st.download_button(
        "Download scores (csv)", table.to_csv(index=False), file_name="explanation_scores.csv", key="att_score_dl"
    )
    st.caption(
        "Read with care: a few dozen query rows per head, one greedy explanation, and a small model as its own "
        "simulator. Top-1 agreement near the BOS baseline mostly measures the attention sink, not understanding."
    )
