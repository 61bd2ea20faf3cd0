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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from engine.core.architecture import decoder_layers, down_projections, linear_weights, out_in_weight, to_stored_layout
from engine.core.errors import LabError
from engine.core.lm_eval import eval_windows, perplexity
from engine.core.weight_edits import check_editable, replaced_weights

DEFAULT_BLOCK_SIZES = (64, 256, 1024, 4096)
METHODS = ("rtn", "rtn, super weight held", "rtn, super weight + outliers held")


def rtn_blockwise(
    weight: torch.Tensor, bits: int = 4, block_size: int = 128, hold: torch.Tensor | None = None
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
    """Bool mask: the given (row, col) coordinates plus the top `clip_fraction` of |w| in the matrix."""
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    for r, c in coords:
        mask[r, c] = True
    if clip_fraction > 0:
        n = max(1, math.ceil(clip_fraction * weight.numel()))
        idx = torch.topk(weight.detach().abs().flatten().float(), n).indices
        mask.view(-1)[idx] = True
    return mask


def quantized_copies(
    lm, candidates: Sequence, bits: int, block_size: int, method: str, clip_fraction: float
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """(parameter tensor, quantized replacement in its stored layout) for every decoder linear weight,
    and the number of weights held in full precision."""
    if method not in METHODS:
        raise LabError(f"Unknown quantization method '{method}': choose one of {', '.join(METHODS)}.")
    downs = {id(m): i for i, m in enumerate(down_projections(lm.model))}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for c in candidates:
        by_layer.setdefault(c.layer, []).append((c.row, c.col))
    pairs, held = [], 0
    for _, _, module in linear_weights(lm.model):
        w = out_in_weight(module)
        coords = by_layer.get(downs.get(id(module), -1), []) if method != "rtn" else []
        fraction = clip_fraction if method == METHODS[2] else 0.0
        mask = hold_mask(w, coords, fraction) if (coords or fraction) else None
        held += int(mask.sum()) if mask is not None else 0
        q = rtn_blockwise(w, bits, block_size, mask)
        pairs.append((module.weight.data, to_stored_layout(module, q)))
    return pairs, held


def _check_memory(lm) -> None:
    from engine.core.device import available_memory_bytes

    need = 2 * sum(m.weight.numel() * m.weight.element_size() for _, _, m in linear_weights(lm.model))
    free = available_memory_bytes()
    if free and need > free:
        raise LabError(
            f"The quantization sweep keeps a copy of the decoder weights (~{need / 2**30:.1f} GiB) but only "
            f"{free / 2**30:.1f} GiB of RAM is free: use a smaller model."
        )


def quantization_table(
    lm,
    candidates: Sequence,
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
    bits: int = 4,
    clip_fraction: float = 1e-4,
    methods: Sequence[str] = METHODS,
    eval_text: str | None = None,
    window: int = 512,
    max_tokens: int | None = 4096,
) -> pd.DataFrame:
    """Perplexity of the original model and of each (block size, method) RTN quantization of it.

    The weights are replaced in place and restored bit-for-bit (checked) after each evaluation.
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
    with lm.lock:
        base = perplexity(lm, windows)
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
        for block in block_sizes:
            for method in methods:
                pairs, held = quantized_copies(lm, candidates, bits, int(block), method, clip_fraction)
                with replaced_weights(lm, pairs):
                    ppl = perplexity(lm, windows)
                del pairs
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
    frame = pd.DataFrame(rows)
    frame.attrs["layers"] = len(decoder_layers(lm.model))
    return frame
