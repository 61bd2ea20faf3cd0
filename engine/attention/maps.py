"""All attention maps of a prompt from one eager forward pass, readable tokens, text descriptions.

`run_attention()` runs the model once with `output_attentions=True` and returns every layer x head
pattern A[l, h, i, j] = softmax_j(q_i . k_j * scale + mask) as a float32 numpy array [L, H, T, T]
(rows are query positions, columns key positions, each row sums to 1). `describe_head()` gives, for
each query token, its top-k (TOP_K) attended tokens with their weights (the seed's textual
description), as a DataFrame and as the plain text that is handed to the model on the
self-interpretation page.

Shapes: L layers, H query heads, T tokens of the prompt.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections import Counter
from typing import Any, Literal

import numpy as np
import pandas as pd

from engine.attention.config import DEFAULT_MAX_TOKENS, TOP_K
from engine.core.architecture import layer_types
from engine.core.errors import LabError
from engine.core.model import LoadedModel

_MARKERS = ("\u2581", "\u0120")  # SentencePiece '▁' and byte-level BPE 'Ġ' (a leading space)
_VISIBLE = {"\n": "\u21b5", "\u010a": "\u21b5", "\t": "\u21e5", "\u0109": "\u21e5", "\r": "\u240d"}


@dataclasses.dataclass
class AttentionResult:
    """Everything one forward pass gives the attention page (plain data, picklable for caching)."""

    model_name: str
    prompt: str
    token_ids: list[int]
    raw_tokens: list[str]
    tokens: list[str]  # readable text of each token
    labels: list[str]  # unique per position: repeated tokens get '@position'
    maps: np.ndarray  # [L, H, T, T] float32
    layer_types: list[str]
    num_kv_heads: int
    sliding_window: int | None
    n_prompt_tokens: int  # before truncation
    max_tokens: int

    @property
    def truncated(self) -> bool:
        return self.n_prompt_tokens > len(self.token_ids)

    @property
    def note(self) -> str:
        """Visible note when the prompt was cut to the token limit ('' otherwise)."""
        if not self.truncated:
            return ""
        return (
            f"Prompt truncated to its first {len(self.token_ids)} of {self.n_prompt_tokens} tokens "
            f"(token limit {self.max_tokens}; raise it to see more)."
        )

    @property
    def n_layers(self) -> int:
        return self.maps.shape[0]

    @property
    def n_heads(self) -> int:
        return self.maps.shape[1]

    def head(self, layer: int, head: int) -> np.ndarray:
        """One head's pattern [T, T] (LabError for a head the model does not have)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise LabError(f"No head {layer}.{head}: the model has {self.n_layers} layers x {self.n_heads} heads.")
        return self.maps[layer, head]

    def layer_labels(self) -> list[str]:
        return layer_labels(self.layer_types, self.sliding_window)

    def head_labels(self) -> list[str]:
        return head_labels(self.n_heads, self.num_kv_heads)


# ---------------------------------------------------------------------------------------------
# Readable tokens


def readable_token(raw: str, special: bool = False) -> str:
    """Token text for people: '▁'/'Ġ' markers stripped, specials as ⟨bos⟩, invisible chars shown.

    Newlines become ↵, tabs ⇥, a token that is only a space ␣, other control / format characters
    (zero-width joiners, direction marks) their code point, e.g. \\u200b.
    """
    if special:
        inner = raw.strip("<>[]|").strip() or raw
        return f"\u27e8{inner}\u27e9"
    if raw.startswith("<0x") and raw.endswith(">") and len(raw) == 6:  # SentencePiece byte fallback
        try:
            raw = bytes([int(raw[3:5], 16)]).decode("latin-1")
        except ValueError:
            pass
    text = raw
    for marker in _MARKERS:
        text = text.replace(marker, " ")
    stripped = text.strip(" ")
    if not stripped:
        return "\u2423" * max(1, len(text))
    out = []
    for ch in stripped:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch)[0] in "CZ" and ch != " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def readable_tokens(tokenizer: Any, token_ids: list[int]) -> tuple[list[str], list[str]]:
    """(raw tokens, readable tokens) for token ids; specials (bos, eos, pad, ...) marked ⟨...⟩."""
    raw = tokenizer.convert_ids_to_tokens(list(token_ids))
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    readable = []
    for tid, tok in zip(token_ids, raw):
        tok = tok if isinstance(tok, str) else str(tok)
        text = tok
        if tid not in special_ids:
            try:  # byte-level BPE pieces ('Ċ', 'Ã©') decode to their text; partial UTF-8 keeps the raw piece
                decoded = tokenizer.convert_tokens_to_string([tok])
                text = decoded if decoded and "\ufffd" not in decoded else tok
            except Exception:  # noqa: BLE001 - a tokenizer without a string converter keeps the raw piece
                text = tok
        readable.append(readable_token(text, special=tid in special_ids))
    return list(raw), readable


def unique_labels(tokens: list[str]) -> list[str]:
    """Labels unique per position: a token text seen more than once becomes 'text@position'."""
    counts = Counter(tokens)
    labels = [f"{t}@{i}" if counts[t] > 1 else t for i, t in enumerate(tokens)]
    seen: set[str] = set()
    for i, label in enumerate(labels):  # a literal 'x@3' token colliding with a made-up label
        if label in seen:
            labels[i] = f"{label}@{i}"
        seen.add(labels[i])
    return labels


# ---------------------------------------------------------------------------------------------
# Architecture labels


def kv_groups(num_heads: int, num_kv_heads: int | None) -> list[list[int]]:
    """Query heads sharing each key/value head (grouped-query attention, as HF `repeat_kv`).

    Query head h reads KV head h // (num_heads / num_kv_heads). Multi-head attention gives
    one group per head; multi-query attention (1 KV head) one group of all heads.
    """
    kv = num_kv_heads or num_heads
    if kv <= 0 or num_heads % kv:
        raise LabError(f"{num_heads} query heads cannot share {kv} key/value heads evenly.")
    size = num_heads // kv
    return [list(range(k * size, (k + 1) * size)) for k in range(kv)]


def head_labels(num_heads: int, num_kv_heads: int | None) -> list[str]:
    """'H0' for multi-head attention; 'H0 kv0' when heads share key/value heads (GQA / MQA)."""
    groups = kv_groups(num_heads, num_kv_heads)
    if len(groups) == num_heads:
        return [f"H{h}" for h in range(num_heads)]
    return [f"H{h} kv{k}" for k, group in enumerate(groups) for h in group]


LayerKind = Literal["local", "global"]


def layer_kind(layer_type: str) -> LayerKind:
    """'local' for a sliding-window layer ('sliding_attention'), 'global' for a full-attention one."""
    return "local" if layer_type == "sliding_attention" else "global"


def layer_labels(types: list[str], sliding_window: int | None = None) -> list[str]:
    """'L0 local(512)' for sliding-window layers, 'L5 global' for full-attention layers."""
    out = []
    for i, layer_type in enumerate(types):
        kind = layer_kind(layer_type)
        out.append(f"L{i} {kind}({sliding_window})" if kind == "local" and sliding_window else f"L{i} {kind}")
    return out


# ---------------------------------------------------------------------------------------------
# Forward pass


def tokenize_prompt(lm: LoadedModel, prompt: str) -> list[int]:
    """Token ids of a prompt as the model sees it (with its BOS when the tokenizer adds one)."""
    if prompt is None or not str(prompt).strip():
        raise LabError("Empty prompt: type some text to see its attention maps.")
    ids = lm.tokenizer(str(prompt), add_special_tokens=True)["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    if not ids:
        raise LabError("The prompt gives no tokens.")
    return list(ids)


def _no_weights_error(lm: LoadedModel, detail: str = "") -> LabError:
    impl = getattr(lm.model.config, "_attn_implementation", None) or "unknown"
    return LabError(
        f"Model '{lm.name}' returns no attention weights with attn_implementation='{impl}'"
        f"{' (' + detail + ')' if detail else ''}: load it with eager attention to read its maps."
    )


def forward_attentions(lm: LoadedModel, token_ids: list[int]) -> np.ndarray:
    """One eager forward pass -> all attention patterns [L, H, T, T] (float32 numpy).

    Only the last position's logits are computed (`logits_to_keep=1`): the 262k-row unembedding
    is the costliest part of a small Gemma forward and the maps do not need it.
    """
    import torch

    ids = torch.tensor([token_ids], dtype=torch.long, device=lm.device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    try:
        with lm.lock, torch.no_grad():
            out = lm.model(**kwargs, logits_to_keep=1)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise LabError(f"Out of memory running '{lm.name}' on {len(token_ids)} tokens: lower the token limit.") from err
    # An attention implementation that cannot return weights may refuse with an error naming attention
    # (most, e.g. sdpa in transformers 5, return none instead: checked below). Anything else is a real
    # error and keeps its traceback.
    except (ValueError, NotImplementedError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        if "attention" in first.lower() or "attn" in first.lower():
            raise _no_weights_error(lm, first) from err
        raise
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise _no_weights_error(lm)
    maps = torch.stack([a[0] for a in attentions]).float().cpu().numpy()
    if maps.ndim != 4 or maps.shape[-1] != len(token_ids):
        raise _no_weights_error(lm, f"unexpected attention shape {tuple(maps.shape)}")
    return maps


def run_attention(
    lm: LoadedModel, prompt: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, token_ids: list[int] | None = None
) -> AttentionResult:
    """Tokenize (or take `token_ids`), truncate to `max_tokens`, run once, return all maps.

    Raises LabError for an empty prompt, a limit below 2, or a model that gives no weights.
    """
    if max_tokens is None or int(max_tokens) < 2:
        raise LabError("The token limit must be at least 2.")
    max_tokens = int(max_tokens)
    ids = list(token_ids) if token_ids is not None else tokenize_prompt(lm, prompt)
    if not ids:
        raise LabError("Empty prompt: type some text to see its attention maps.")
    n_total = len(ids)
    ids = ids[:max_tokens]
    maps = forward_attentions(lm, ids)
    raw, readable = readable_tokens(lm.tokenizer, ids)
    cfg = lm.text_config
    types = layer_types(lm.model)
    if len(types) != maps.shape[0]:
        types = ["full_attention"] * maps.shape[0]
    return AttentionResult(
        model_name=lm.name,
        prompt=prompt if prompt is not None else "",
        token_ids=ids,
        raw_tokens=raw,
        tokens=readable,
        labels=unique_labels(readable),
        maps=maps,
        layer_types=types,
        num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or maps.shape[1]),
        sliding_window=getattr(cfg, "sliding_window", None),
        n_prompt_tokens=n_total,
        max_tokens=max_tokens,
    )


# ---------------------------------------------------------------------------------------------
# Text descriptions (top-k attended tokens per query token)


def top_k(pattern: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights [..., T, k] of the k largest entries of each row of [..., T, T], largest first.

    Ties go to the earlier key position (stable sort), so results are reproducible.
    """
    k = min(k, pattern.shape[-1])
    order = np.argsort(-pattern, axis=-1, kind="stable")[..., :k]
    return order, np.take_along_axis(pattern, order, axis=-1)


def describe_head(result: AttentionResult, layer: int, head: int, k: int = TOP_K) -> pd.DataFrame:
    """Per query token: its k most-attended (earlier or same) tokens and weights, one row each.

    Columns: pos, token, then top1, w1, ..., topk, wk (empty where a query has fewer keys).
    """
    pattern = result.head(layer, head)
    idx, w = top_k(pattern, k)
    rows = []
    for i in range(pattern.shape[0]):
        row: dict[str, Any] = {"pos": i, "token": result.labels[i]}
        for r in range(idx.shape[1]):
            valid = idx[i, r] <= i
            row[f"top{r + 1}"] = result.labels[idx[i, r]] if valid else ""
            row[f"w{r + 1}"] = round(float(w[i, r]), 3) if valid else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def description_lines(labels: list[str], idx: np.ndarray, w: np.ndarray, max_queries: int | None = None) -> list[str]:
    """Plain-text lines 'pos token -> key1 (w1), key2 (w2), ...' from top-k indices and weights [T, k]
    (causal: keys j <= i only)."""
    n = idx.shape[0] if max_queries is None else min(idx.shape[0], max_queries)
    lines = []
    for i in range(n):
        parts = [f"{labels[j]} ({wt:.2f})" for j, wt in zip(idx[i], w[i]) if j <= i]
        lines.append(f"{i} {labels[i]} -> " + ", ".join(parts))
    return lines


def description_text(
    result: AttentionResult, layer: int, head: int, k: int = TOP_K, max_queries: int | None = None
) -> str:
    """The head's description as the plain text given to the model (one line per query token)."""
    idx, w = top_k(result.head(layer, head), k)
    return "\n".join(description_lines(result.labels, idx, w, max_queries))


def all_descriptions(result: AttentionResult, k: int = TOP_K) -> dict[str, str]:
    """Text description of every head, keyed 'layer.head' (one vectorised top-k for all heads)."""
    idx, w = top_k(result.maps, k)
    return {
        f"{layer}.{head}": "\n".join(description_lines(result.labels, idx[layer, head], w[layer, head]))
        for layer in range(result.n_layers)
        for head in range(result.n_heads)
    }


def parse_head(spec: str, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """'LAYER.HEAD' -> (layer, head); LabError naming the bad spec."""
    try:
        layer_s, head_s = str(spec).strip().split(".")
        layer, head = int(layer_s), int(head_s)
    except ValueError as err:
        raise LabError(f"Bad head '{spec}': write LAYER.HEAD, e.g. 3.1.") from err
    if (
        layer < 0
        or head < 0
        or (n_layers is not None and layer >= n_layers)
        or (n_heads is not None and head >= n_heads)
    ):
        raise LabError(f"No head {spec}: the model has {n_layers} layers x {n_heads} heads (0-based).")
    return layer, head


# ---------------------------------------------------------------------------------------------
# Overview of long maps


def block_mean(pattern: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """A [T, T] pattern averaged into at most bins x bins blocks [b, b] (NaN above the diagonal, where
    causality masks every entry), and the block edges [b + 1] (token positions)."""
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
