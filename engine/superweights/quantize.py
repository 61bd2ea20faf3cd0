"""Super-weight-aware 4-bit round-to-nearest quantization (Yu et al. 2024, Sec. 5.2).

Each weight matrix of the decoder layers is quantized blockwise: the [out, in] matrix is read row-major
in contiguous blocks of `block_size` weights, and each block is mapped to 2^bits levels between its
min and max (asymmetric min-max RTN): q = round((w - min) / s), s = (max - min) / (2^bits - 1),
w_hat = q s + min. One outlier in a block stretches s and wipes out the precision of its neighbours,
which is why plain RTN needs small blocks.

Super-weight-aware variant (the paper's "clip, quantize, restore the super weight"): the super
weight(s) and, optionally, the largest `clip_fraction` of |w| in each matrix are clipped to the largest
remaining |w| before the block statistics are computed, and are put back in full precision after
dequantization (they are "held" at 16/32 bits; the count is reported). The paper reports this keeps
quality at much larger block sizes.

Only the decoder layers' linear layers are quantized: the embedding and LM head (a 262k x 640 matrix for
Gemma 3) stay in full precision, as in the paper's weight quantization, and to keep the sweep fast on a CPU.
Matrices are read as [out, in] and written back in their stored layout through
`engine.core.architecture.out_in_weight` / `to_stored_layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from engine.core.architecture import decoder_layers, down_projections, linear_weights, out_in_weight, to_stored_layout
from engine.core.device import available_memory_bytes
from engine.core.errors import LabError
from engine.core.lm_eval import eval_windows, perplexity
from engine.core.model import LoadedModel
from engine.core.weight_edits import check_editable, replaced_weights
from engine.superweights.ablation import ticking
from engine.superweights.config import (
    CLIP_FRACTION,
    DEFAULT_BITS,
    DEFAULT_BLOCK_SIZES,
    EVAL_TOKENS,
    EVAL_WINDOW,
    METHODS,
    QuantMethod,
)
from engine.superweights.detect import Candidate, ProgressFn

OUTLIERS_HELD: QuantMethod = "rtn, super weight + outliers held"


def rtn_blockwise(
    weight: torch.Tensor, bits: int = DEFAULT_BITS, block_size: int = 128, hold: torch.Tensor | None = None
) -> torch.Tensor:
    """Dequantized asymmetric min-max RTN of `weight` ([out, in]) in row-major blocks of `block_size`.

    `hold` (bool mask like `weight`): those entries are clipped to the largest non-held |w| before the
    block min/max are taken, and get their original value back afterwards.
    """
    if bits < 1 or bits > 16:
        raise LabError(f"bits must be in 1..16 (got {bits}).")
    if block_size < 2:
        raise LabError(f"The block size must be at least 2 (got {block_size}).")
    flat = weight.detach().float().flatten()
    work = flat.clone()
    held = None
    if hold is not None and bool(hold.any()):
        held = hold.flatten()
        rest = work[~held].abs()
        limit = rest.max() if rest.numel() else work.abs().max()
        work[held] = work[held].clamp(-limit, limit)
    n = work.numel()
    pad = (-n) % block_size
    if pad:  # pad with the last value so the last block's min/max are its own
        work = torch.cat([work, work[-1:].expand(pad)])
    blocks = work.view(-1, block_size)
    lo = blocks.min(dim=1, keepdim=True).values
    hi = blocks.max(dim=1, keepdim=True).values
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((blocks - lo) / scale).clamp(0, levels)
    out = (q * scale + lo).flatten()[:n]
    if held is not None:
        out[held] = flat[held]
    return out.view_as(weight).to(weight.dtype)


def hold_mask(weight: torch.Tensor, coords: Sequence[tuple[int, int]] = (), clip_fraction: float = 0.0) -> torch.Tensor:
    """Bool mask like `weight` ([out, in]): the given (row, col) coordinates plus the top `clip_fraction`
    of |w| in the matrix."""
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    for r, c in coords:
        mask[r, c] = True
    if clip_fraction > 0:
        n = max(1, math.ceil(clip_fraction * weight.numel()))
        idx = torch.topk(weight.detach().abs().flatten().float(), n).indices
        mask.view(-1)[idx] = True
    return mask


def _uses_plain(method: QuantMethod, clip_fraction: float) -> bool:
    """Whether some matrices of `method` are plain RTN (nothing held): all but the outlier method with a
    positive fraction, which holds weights in every matrix."""
    return method != OUTLIERS_HELD or clip_fraction <= 0


def quantized_copies(
    lm: LoadedModel,
    candidates: Sequence[Candidate],
    bits: int,
    block_size: int,
    method: QuantMethod,
    clip_fraction: float,
    plain: dict[int, torch.Tensor] | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """(parameter tensor, quantized replacement in its stored layout) for every decoder linear weight,
    and the number of weights held in full precision.

    `plain` (optional, per matrix index): the plain RTN copies of this `bits` and `block_size`, filled on
    first use and reused for every matrix with nothing held, so methods share them instead of
    re-quantizing the same matrix.
    """
    if method not in METHODS:
        raise LabError(f"Unknown quantization method '{method}': choose one of {', '.join(METHODS)}.")
    downs = {id(m): i for i, m in enumerate(down_projections(lm.model))}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for c in candidates:
        by_layer.setdefault(c.layer, []).append((c.row, c.col))
    plain = {} if plain is None else plain
    pairs, held = [], 0
    for index, (_, _, module) in enumerate(linear_weights(lm.model)):
        w = out_in_weight(module)
        coords = by_layer.get(downs.get(id(module), -1), []) if method != "rtn" else []
        fraction = clip_fraction if method == OUTLIERS_HELD else 0.0
        if coords or fraction:
            mask = hold_mask(w, coords, fraction)
            held += int(mask.sum())
            q = to_stored_layout(module, rtn_blockwise(w, bits, block_size, mask))
        else:
            if index not in plain:
                plain[index] = to_stored_layout(module, rtn_blockwise(w, bits, block_size))
            q = plain[index]
        pairs.append((module.weight.data, q))
    return pairs, held


def _check_memory(lm: LoadedModel) -> None:
    """LabError when the sweep's copy of the decoder weights (and the saved originals) would not fit in RAM."""
    need = 2 * sum(m.weight.numel() * m.weight.element_size() for _, _, m in linear_weights(lm.model))
    free = available_memory_bytes()
    if free and need > free:
        raise LabError(
            f"The quantization sweep keeps a copy of the decoder weights (~{need / 2**30:.1f} GiB) but only "
            f"{free / 2**30:.1f} GiB of RAM is free: use a smaller model."
        )


def quantization_table(
    lm: LoadedModel,
    candidates: Sequence[Candidate],
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
    bits: int = DEFAULT_BITS,
    clip_fraction: float = CLIP_FRACTION,
    methods: Sequence[QuantMethod] = METHODS,
    eval_text: str | None = None,
    window: int = EVAL_WINDOW,
    max_tokens: int | None = EVAL_TOKENS,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Perplexity of the original model and of each (block size, method) RTN quantization of it.

    The weights are replaced in place and restored bit-for-bit (checked) after each evaluation. Per
    block size, the plain RTN copy of a matrix is computed once and shared by the methods that leave
    it unheld; those methods run first, so the shared copies are dropped before a method that holds
    weights in every matrix makes its own (the rows keep the order of `methods`). The settings are the
    fields of `engine.superweights.config.QuantizationConfig`. `progress(done, total, message)` counts
    evaluation windows over (1 + block sizes x methods) perplexities, called before each window (the
    quantization of a variant is part of its first window's step) and once at the end.
    """
    check_editable(lm)
    if not block_sizes:
        raise LabError("Pick at least one block size.")
    if not 0 <= clip_fraction < 0.5:
        raise LabError(f"The outlier fraction must be in [0, 0.5) (got {clip_fraction}).")
    if any(m != "rtn" for m in methods) and not candidates:
        raise LabError("No super-weight candidate to hold: run the detection first (or use plain RTN only).")
    _check_memory(lm)
    windows = eval_windows(lm, eval_text, window, max_tokens)
    rows = []
    n_w = len(windows)
    total = (1 + len(block_sizes) * len(methods)) * n_w

    def counted(step: int, what: str):
        """The windows, reporting window i of evaluation `step` (0: the original model)."""
        return ticking(
            windows, (lambda i: progress(step * n_w + i, total, f"{what}, window {i + 1}/{n_w}")) if progress else None
        )

    with lm.lock:
        base = perplexity(lm, counted(0, "original"))
        rows.append(
            {
                "block_size": None,
                "method": "original (no quantization)",
                "bits": None,
                "perplexity": base,
                "ppl_ratio": 1.0,
                "held_weights": 0,
            }
        )
        for b, block in enumerate(block_sizes):
            plain: dict[int, torch.Tensor] = {}
            order = sorted(range(len(methods)), key=lambda i: not _uses_plain(methods[i], clip_fraction))
            measured: dict[int, tuple[float, int]] = {}
            for n, i in enumerate(order):
                step = 1 + b * len(methods) + n
                if progress:
                    progress(step * n_w, total, f"block {int(block)}, {methods[i]}: quantizing")
                if not _uses_plain(methods[i], clip_fraction):
                    plain.clear()  # no later method in this block size reads them
                pairs, held = quantized_copies(lm, candidates, bits, int(block), methods[i], clip_fraction, plain)
                with replaced_weights(lm, pairs):
                    measured[i] = (perplexity(lm, counted(step, f"block {int(block)}, {methods[i]}")), held)
                del pairs
            del plain
            for i, method in enumerate(methods):
                ppl, held = measured[i]
                rows.append(
                    {
                        "block_size": int(block),
                        "method": method,
                        "bits": bits,
                        "perplexity": ppl,
                        "ppl_ratio": ppl / base,
                        "held_weights": held,
                    }
                )
    if progress:
        progress(total, total, "done")
    frame = pd.DataFrame(rows)
    frame.attrs["layers"] = len(decoder_layers(lm.model))
    return frame
