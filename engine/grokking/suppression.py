"""Suppression of super weights during training: clip each MLP down projection's |w| to c x its q-quantile.

The causal test of a super-weight / grokking connection: if super weights matter for grokking, keeping
them from forming should change when (or whether) a model groks. Every `every` steps (default 10),
after the optimiser step, each decoder layer's down projection W [out, in] is clipped in place:

    tau = c x quantile_q(|W|)        (defaults q = 0.999, c = 1; torch.quantile, linear interpolation)
    W <- sign(W) x min(|W|, tau)

so right after a clip max|W| <= tau and max|W| / median|W| <= c x quantile_q(|W|) / median|W| (the
median is unchanged: only weights above tau >= the median move, and they stay >= tau). With c >= 1
at most about (1 - q) of a matrix is touched; a setting that would clip more than MAX_CLIP_FRACTION
(1%) of any matrix's weights is refused with a LabError before any weight is changed (c <= 0 would
remove every weight and is refused up front).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.core.architecture import down_projections, out_in_weight
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.grokking.config import (
    MAX_CLIP_FRACTION,
    SUPPRESS_EVERY,
    SUPPRESS_FACTOR,
    SUPPRESS_QUANTILE,
    GrokConfig,
    validate_suppression,
)

DEFAULT_QUANTILE = SUPPRESS_QUANTILE
DEFAULT_FACTOR = SUPPRESS_FACTOR
DEFAULT_EVERY = SUPPRESS_EVERY


def _quantile(values: torch.Tensor, q: float) -> float:
    """quantile_q of a 1-D float tensor (linear interpolation, as torch.quantile; any size)."""
    if values.numel() <= 16_000_000:  # torch.quantile's input limit
        return float(torch.quantile(values, q).item())
    position = q * (values.numel() - 1)
    low = int(position)
    lo = torch.kthvalue(values, low + 1).values.item()
    hi = torch.kthvalue(values, min(low + 2, values.numel())).values.item()
    return float(lo + (hi - lo) * (position - low))


@dataclass
class ClipPlan:
    """What clipping one down projection would do: threshold tau and how many |w| exceed it."""

    layer: int
    threshold: float  # tau = c x quantile_q(|W|)
    n_clipped: int  # |w| > tau
    n_weights: int
    max_abs: float  # before clipping
    median_abs: float

    @property
    def fraction(self) -> float:
        return self.n_clipped / self.n_weights if self.n_weights else 0.0


def _hf_model(model: Any) -> Any:
    """The transformers model inside a GrokLlama (.lm) or a LoadedModel (.model), or the model itself."""
    if isinstance(model, LoadedModel):
        return model.model
    return getattr(model, "lm", model)


@torch.no_grad()
def clip_plan(model: Any, quantile: float = DEFAULT_QUANTILE, factor: float = DEFAULT_FACTOR) -> list[ClipPlan]:
    """Per decoder layer, what `clip_down_projections` would do (nothing is changed)."""
    plans = []
    for layer, module in enumerate(down_projections(_hf_model(model))):
        a = out_in_weight(module).detach().float().abs().flatten()
        tau = factor * _quantile(a, quantile)
        plans.append(
            ClipPlan(layer, tau, int((a > tau).sum().item()), a.numel(), float(a.max().item()), float(a.median()))
        )
    return plans


@torch.no_grad()
def clip_down_projections(
    model: Any,
    quantile: float = DEFAULT_QUANTILE,
    factor: float = DEFAULT_FACTOR,
    max_fraction: float = MAX_CLIP_FRACTION,
) -> int:
    """Clip every down projection's |w| to factor x its quantile-q of |w| in place; the number of weights clipped.

    All matrices are checked first: LabError, and no weight changed, when any would lose more than
    `max_fraction` of its weights to the clip.
    """
    validate_suppression(quantile, factor)
    plans = clip_plan(model, quantile, factor)
    worst = max(plans, key=lambda plan: plan.fraction)
    if worst.fraction > max_fraction:
        raise LabError(
            f"Clipping |w| to {factor:g} x the {quantile:g}-quantile would clip {worst.n_clipped} of "
            f"{worst.n_weights} weights ({worst.fraction:.1%}) of layer {worst.layer}'s down projection, over the "
            f"{max_fraction:.0%} limit: raise q or c."
        )
    total = 0
    for plan, module in zip(plans, down_projections(_hf_model(model))):
        if plan.n_clipped:
            out_in_weight(module).clamp_(-plan.threshold, plan.threshold)
            total += plan.n_clipped
    return total


@dataclass(frozen=True)
class Suppression:
    """A suppression setting for a training run: clip every `every` steps (see the module docstring).

    In the training loop, after `optimizer.step()` has made step s -> s + 1:
        if suppression.due(s + 1): n_clipped = suppression.apply(model)
    """

    quantile: float = DEFAULT_QUANTILE
    factor: float = DEFAULT_FACTOR
    every: int = DEFAULT_EVERY

    def validate(self) -> None:
        validate_suppression(self.quantile, self.factor, self.every)

    def due(self, step: int) -> bool:
        """Whether to clip after the update that reached `step` (steps every, 2 x every, ...)."""
        return step > 0 and step % self.every == 0

    def apply(self, model: Any) -> int:
        return clip_down_projections(model, self.quantile, self.factor)

    def describe(self) -> str:
        return f"clip |W_down| to {self.factor:g} x its {self.quantile:g}-quantile every {self.every} steps"

    @classmethod
    def of(cls, config: GrokConfig) -> Suppression | None:
        """The suppression of a run's configuration, or None when it has none."""
        if not config.suppress:
            return None
        return cls(config.suppress_quantile, config.suppress_factor, config.suppress_every)
