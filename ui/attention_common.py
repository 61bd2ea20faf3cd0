"""What the attention page's tabs share: the view every tab reads (model, forward pass, the head picked),
the model's shape for the pickers, the cached forward passes, the head-function table a tab ranks heads
by, and the small helpers for fields and help texts. Results go through the one store (ui.state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, Literal, get_args

import pandas as pd
import streamlit as st

from engine.attention import head_functions, maps, self_explain
from engine.attention.config import (
    ExplainMode,
    HeadFunction,
)
from engine.core.architecture import layer_types
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.options import help_of
from ui.attention_charts import (
    ColourScale,
    head_from_selection,
)
from ui.fields import between, number_field
from ui.state import ModelKey, latest, remember
from ui.tables import readable

PROMPT_ONLY = "this prompt only (the same evidence the model saw); run Head functions for labels over many prompts"


HF_SLOT = "attn_head_functions"  # ui.state slots: results for exactly the inputs they came from


EXPLAIN_SLOT = "attn_explanations"


SCORE_SLOT = "attn_scores"


EXPLANATIONS_KEPT = 32  # explanations kept per session (reused when their heads are scored)


Q = "query-params"  # every input of the view lives in the URL (keys att_*)


HEAD_TAB = "All heads"  # the tab that shows the selected head (its heatmap); an atlas click opens it


Scope = Literal["selected head", "chosen heads", "all heads of a layer", "top heads by a detector"]


SCOPES: tuple[Scope, ...] = get_args(Scope)


RANKABLE: tuple[HeadFunction, ...] = (*head_functions.PATTERN_FUNCTIONS, "bos_sink", "self")


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

    evaluations: list[self_explain.HeadEvaluation]
    label_source: str


@st.cache_data(max_entries=8, show_spinner=False)
def forward(_lm: LoadedModel, key: ModelKey, prompt: str, max_tokens: int) -> maps.AttentionResult:
    """One eager forward pass: all maps of the prompt (cached by model, prompt and token limit)."""
    return maps.run_attention(_lm, prompt, max_tokens=max_tokens)


@st.cache_data(max_entries=8, show_spinner=False)
def heldout(_lm: LoadedModel, key: ModelKey, max_tokens: int) -> list[maps.AttentionResult]:
    """The held-out prompts' forward passes (shared by every head scored)."""
    return self_explain.run_heldout(_lm, self_explain.heldout_prompts(_lm.tokenizer), max_tokens=max_tokens)


def run_kept(slot: str, inputs: Hashable, fn: Callable[[], Any], keep: int = 1) -> Any | None:
    """fn() remembered for `inputs` in the session and the process (ui.state, shared: a reload gets it
    back); a LabError is shown, not raised (None then)."""
    try:
        result = fn()
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        return None
    return remember(slot, inputs, result, keep, shared=True)


def help_text(cls: type, name: str) -> str:
    """An option's help text from the engine, as a sentence."""
    text = help_of(cls, name)
    return text[:1].upper() + text[1:] + "."


def int_field(label: str, default: int, low: int, high: int, key: str, help: str | None = None) -> int | None:
    """A whole-number field bound to the URL (ui.fields): the value, or None with the reason under the field."""
    value, ok = number_field(st, label, default, key, between(label, low, high, integer=True), step=1, help=help)
    return int(value) if ok else None


def detector_table(view: View) -> tuple[head_functions.HeadFunctionTable, str]:
    """The session's head-function table for this model, else the page's own forward pass scored
    (PROMPT_ONLY); and a note saying which."""
    saved = latest(HF_SLOT)
    if saved is not None and saved[0][0] == view.key:
        return saved[1], f"head-function table over {len(saved[1].prompt_names)} prompts"
    return head_functions.table_from_results(view.lm.name, ["prompt"], [view.result]), PROMPT_ONLY


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


def on_head_click(chart_key: str, shape: Shape) -> Callable[[], None]:
    """The on_select callback of a clickable chart: the clicked head becomes the selected one."""
    return lambda: select_head(head_from_selection(st.session_state.get(chart_key)), shape)


def description_table(frame: pd.DataFrame) -> pd.DataFrame:
    """maps.describe_head's table in words: each query token's position, the r-th most attended token and its
    weight (a dash where the query has fewer than r tokens to attend to)."""
    labels = {"pos": "position", "token": "token"}
    for column in map(str, frame.columns):
        if column.startswith("top") and column[3:].isdigit():
            labels[column] = f"attended #{column[3:]}"
        elif column.startswith("w") and column[1:].isdigit():
            labels[column] = f"weight #{column[1:]}"
    return readable(frame, labels)
