"""Targeted zeroing of the tracked super-weight candidate during training, against zeroing a random weight of
the same matrix (the intervention arm (d) of the grokking study).

How the candidate is tracked (Yu et al. 2024, arXiv 2411.07191, their activation route): every `every` steps,
after the optimiser step, the model reads one sequence [BOS] (the BOS row is the same for every input:
causal attention lets BOS see only itself). For each decoder layer l, with x_l [I] the down projection's input
and y_l [D] its output at BOS:

    layer = argmax_l max|y_l|,   row = argmax_d |y_layer[d]|,   col = argmax_i |x_layer[i]|

so W_down[layer][row, col] is the weight that writes the largest BOS activation (the super activation) from
the largest input (the paper's super weight). "tracked" zeroes that weight; "random" zeroes one weight of the
same matrix W_down[layer], drawn uniformly from a generator seeded by (seed, step), so the two arms of a seed
differ only in which weight of the matrix is zeroed. Every zeroing is logged (step, layer, row, col, value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.core.architecture import down_projections, out_in_weight
from engine.core.capture import capture

ZEROING_COLUMNS = ["step", "mode", "layer", "row", "col", "value", "bos_max_abs"]


@dataclass(frozen=True)
class Candidate:
    """The tracked candidate: W_down[layer][row, col], and max|y| at BOS of that layer's down projection."""

    layer: int
    row: int
    col: int
    bos_max_abs: float


@torch.no_grad()
def tracked_candidate(lm: Any, bos_id: int) -> Candidate:
    """The candidate of a transformers causal LM (see the module docstring): one forward pass on [BOS]."""
    modules = down_projections(lm)
    with capture(lm, modules, inputs=True) as acts:
        lm.base_model(input_ids=torch.tensor([[bos_id]], device=lm.device), use_cache=False)
    seen = {i: (acts.inputs[i][0, 0].float(), acts[i][0, 0].float()) for i in acts}  # [I], [D]
    peaks = [float(seen[i][1].abs().max()) for i in range(len(modules))]
    layer = max(range(len(peaks)), key=peaks.__getitem__)
    x, y = seen[layer]
    return Candidate(layer, int(y.abs().argmax()), int(x.abs().argmax()), peaks[layer])


@dataclass(frozen=True)
class Zeroing:
    """A zeroing setting of a training run: mode "tracked" or "random", every `every` steps."""

    mode: str
    every: int
    seed: int

    def due(self, step: int) -> bool:
        """Whether to zero after the update that reached `step` (steps every, 2 x every, ...)."""
        return step > 0 and step % self.every == 0

    @torch.no_grad()
    def apply(self, lm: Any, bos_id: int, step: int) -> dict:
        """Zero one weight in place; the row of the log (ZEROING_COLUMNS)."""
        c = tracked_candidate(lm, bos_id)
        weight = out_in_weight(down_projections(lm)[c.layer])
        row, col = c.row, c.col
        if self.mode == "random":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            flat = int(torch.randint(weight.numel(), (1,), generator=gen))
            row, col = divmod(flat, weight.shape[1])
        value = float(weight[row, col])
        weight[row, col] = 0.0
        return {
            "step": step,
            "mode": self.mode,
            "layer": c.layer,
            "row": row,
            "col": col,
            "value": value,
            "bos_max_abs": c.bos_max_abs,
        }

    @classmethod
    def of(cls, config: Any) -> Zeroing | None:
        """The zeroing of a run's configuration (a GrokConfig), or None when it has none."""
        if getattr(config, "zero_weight", "off") == "off":
            return None
        return cls(config.zero_weight, config.zero_every, config.seed)
