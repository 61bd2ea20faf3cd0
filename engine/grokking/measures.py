"""Super-weight measures of a small model at one checkpoint (Yu et al. 2024, arXiv 2411.07191).

Three kinds of rows, all in one long table (one row per matrix or layer):
- "weight": per 2-D weight matrix W, max|w| / median|w|, excess kurtosis, the coordinate of the
  largest |w| (from `engine.core.weight_stats`, shared with the super-weight scan of a pretrained LLM);
- "activation": per layer, max|a| / median|a| of its output on the test inputs (massive
  activations, Sun et al. 2024, arXiv 2402.17762);
- "causal" (columns on the weight rows): test accuracy and loss after zeroing the single
  largest-|w| weight of the matrix (top-1), after zeroing its k largest, and after zeroing k random
  weights of the same matrix (drawn from outside its top k, averaged over `n_random` draws). A
  weight is "super" when drop_top1 = acc_base - acc_top1 > threshold (default 0.10 = 10 points of
  test accuracy) while drop_random <= threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.core import weight_stats
from engine.grokking.models import evaluate, weight_matrices

MEASURE_COLUMNS = [
    "step",
    "kind",
    "name",
    "max_over_median",
    "kurtosis",
    "argmax",
    "max_abs",
    "acc_base",
    "loss_base",
    "acc_top1",
    "loss_top1",
    "acc_topk",
    "loss_topk",
    "acc_random",
    "loss_random",
    "drop_top1",
    "drop_topk",
    "drop_random",
    "is_super",
]


@dataclass(frozen=True)
class MeasureSettings:
    """k: weights zeroed in the top-k and random-k ablations; threshold: accuracy drop (fraction)
    that makes a top-1 weight "super"; n_random: random draws averaged; max_examples: test examples
    used by the causal test and the activation measure (a fixed seeded subset when larger)."""

    k: int = 5
    threshold: float = 0.10
    n_random: int = 3
    max_examples: int = 2048
    seed: int = 0


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(y) <= n:
        return x, y
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(y), n, replace=False))
    return x[idx], y[idx]


@torch.no_grad()
def _ablated(
    model: nn.Module, weight: torch.Tensor, coords: list[tuple[int, ...]], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(test loss, test accuracy) on x [n, ...], y [n] with W[coords] set to 0, restored afterwards."""
    saved = [weight[c].clone() for c in coords]
    for c in coords:
        weight[c] = 0.0
    try:
        loss, acc = evaluate(model, x, y)
    finally:
        for c, v in zip(coords, saved):
            weight[c] = v
    return loss, acc


@torch.no_grad()
def causal_test(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: MeasureSettings = MeasureSettings()
) -> pd.DataFrame:
    """Per 2-D weight matrix: accuracy/loss on (x [n, ...], y [n]) after zeroing its top-1, its top-k and
    k random weights.

    drop_* = acc_base - acc_*; is_super = drop_top1 > threshold and drop_random <= threshold.
    Works for any module whose forward is model(x) -> logits.
    """
    model.eval()
    x, y = _subset(x, y, settings.max_examples, settings.seed)
    loss_base, acc_base = evaluate(model, x, y)
    rng = np.random.default_rng(settings.seed)
    rows = []
    for name, weight in weight_matrices(model).items():
        top = weight_stats.top_k_coordinates(weight, settings.k)
        loss1, acc1 = _ablated(model, weight, top[:1], x, y)
        lossk, acck = _ablated(model, weight, top, x, y)
        excluded = {np.ravel_multi_index(c, weight.shape) for c in top}
        pool = np.setdiff1d(np.arange(weight.numel()), np.fromiter(excluded, dtype=np.int64))
        rand_losses, rand_accs = [], []
        for _ in range(settings.n_random):
            pick = rng.choice(pool, min(settings.k, len(pool)), replace=False) if len(pool) else []
            coords = [tuple(int(i) for i in np.unravel_index(j, weight.shape)) for j in pick]
            loss_r, acc_r = _ablated(model, weight, coords, x, y)
            rand_losses.append(loss_r)
            rand_accs.append(acc_r)
        acc_r, loss_r = float(np.mean(rand_accs)), float(np.mean(rand_losses))
        rows.append(
            {
                "name": name,
                "acc_base": acc_base,
                "loss_base": loss_base,
                "acc_top1": acc1,
                "loss_top1": loss1,
                "acc_topk": acck,
                "loss_topk": lossk,
                "acc_random": acc_r,
                "loss_random": loss_r,
                "drop_top1": acc_base - acc1,
                "drop_topk": acc_base - acck,
                "drop_random": acc_base - acc_r,
                "is_super": bool(acc_base - acc1 > settings.threshold and acc_base - acc_r <= settings.threshold),
            }
        )
    return pd.DataFrame(rows)


def weight_measures(model: nn.Module) -> pd.DataFrame:
    """Per 2-D weight matrix: max/median, kurtosis, max|w| and its coordinate (engine.core.weight_stats)."""
    rows = []
    for name, weight in weight_matrices(model).items():
        stats = weight_stats.matrix_stats(weight)
        rows.append(
            {
                "name": name,
                "max_over_median": stats["max_over_median"],
                "kurtosis": stats["kurtosis"],
                "argmax": "(" + ",".join(str(i) for i in stats["argmax"]) + ")",
                "max_abs": stats["max_abs"],
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def activation_measures(model: nn.Module, x: torch.Tensor) -> pd.DataFrame:
    """Per layer: max|a| / median|a| of the layer's output over all inputs x [n, ...] (and positions)."""
    model.eval()
    acts: dict[str, torch.Tensor] = {}
    model(x, acts=acts)
    rows = []
    for name, a in acts.items():
        rows.append({"name": name, "max_over_median": weight_stats.max_over_median(a), "max_abs": a.abs().max().item()})
    return pd.DataFrame(rows)


def measure_checkpoint(
    step: int,
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    settings: MeasureSettings = MeasureSettings(),
) -> pd.DataFrame:
    """All measures of one checkpoint as rows with MEASURE_COLUMNS (kind "weight" or "activation")."""
    weights = weight_measures(model).merge(causal_test(model, x_test, y_test, settings), on="name")
    weights["kind"] = "weight"
    xs, _ = _subset(x_test, y_test, settings.max_examples, settings.seed)
    acts = activation_measures(model, xs)
    acts["kind"] = "activation"
    frame = pd.concat([weights, acts], ignore_index=True)
    frame["step"] = step
    return frame.reindex(columns=MEASURE_COLUMNS)
