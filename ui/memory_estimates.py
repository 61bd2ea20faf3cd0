"""The memory a page's computation needs, estimated from the model's shape before it starts, and
refused with the numbers (engine.core.memory.ensure_fits) when it would not fit where the model runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.core.memory import ensure_fits
from engine.core.model import LoadedModel

ACTIVATION_COPIES = 4  # [rows, T, D] tensors alive at once in a layer: residual, norm, attention out, q/k/v
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes the estimates need, from the model's text config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    value_bytes: int  # bytes of one activation in the model's dtype


def model_shape(lm: LoadedModel) -> ModelShape:
    """The model's sizes (GPT-2's n_layer / n_head / n_embd / n_inner names too; kv_heads = heads without GQA)."""
    cfg = lm.text_config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    return ModelShape(
        layers=int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 1)),
        heads=heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or hidden // max(heads, 1)),
        hidden=hidden,
        intermediate=int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden),
        vocab=int(getattr(cfg, "vocab_size", 0)),
        value_bytes=DTYPE_BYTES.get(lm.dtype, 4),
    )


def activation_bytes(shape: ModelShape, tokens: int, rows: int = 1) -> int:
    """One forward pass over [rows, T] tokens: ACTIVATION_COPIES x [rows, T, D] plus the MLP's 2 x [rows, T, I]
    (gate and up projections) in the model's dtype, the [rows, H, T, T] attention scores of one layer in
    float32, and the float32 logits [rows, V] of the last position."""
    per_token = ACTIVATION_COPIES * shape.hidden + 2 * shape.intermediate
    scores = shape.heads * tokens * tokens * 4
    return rows * (tokens * per_token * shape.value_bytes + scores + shape.vocab * 4)


def attention_maps_bytes(shape: ModelShape, tokens: int) -> int:
    """All attention maps of one prompt kept as float32 numpy: [L, H, T, T] x 4 bytes."""
    return shape.layers * shape.heads * tokens * tokens * 4


def attention_forward_bytes(lm: LoadedModel, tokens: int) -> int:
    """An eager forward that returns every map (engine.attention.maps.forward_attentions): the model's
    [L, H, T, T] maps in its dtype, their stacked copy and the float32 result, plus the forward's
    activations."""
    shape = model_shape(lm)
    maps_in_dtype = shape.layers * shape.heads * tokens * tokens * shape.value_bytes
    return 2 * maps_in_dtype + attention_maps_bytes(shape, tokens) + activation_bytes(shape, tokens)


def head_functions_bytes(lm: LoadedModel, tokens: Sequence[int]) -> int:
    """Head functions over N prompts of T_1..T_N tokens: every prompt's [L, H, T_i, T_i] float32 maps are
    kept until the table is built, on top of one forward at the longest prompt."""
    shape = model_shape(lm)
    kept = sum(attention_maps_bytes(shape, t) for t in tokens)
    return kept + (attention_forward_bytes(lm, max(tokens)) if tokens else 0)


def scan_bytes(lm: LoadedModel, tokens: int) -> int:
    """A super-weight scan at its longest prompt of T tokens: one prompt at a time, the hooks keep maxima only."""
    return activation_bytes(model_shape(lm), tokens)


def ensure_memory(lm: LoadedModel, need_bytes: float, what: str) -> None:
    """LabError with the numbers when `need_bytes` would not fit in the memory free where the model runs."""
    ensure_fits(need_bytes, lm.device, what)
