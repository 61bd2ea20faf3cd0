"""Outlier statistics of weight matrices, shared by the super-weight scan and the grokking lab.

For a matrix W: max|w| / median|w| (how far the largest weight stands out), the excess kurtosis of
its entries (Fisher; 0 for a Gaussian, large for heavy tails, as in Yu et al. 2024 and the
massive-activation literature), and the coordinates of its k largest |w|.
"""

from __future__ import annotations

import numpy as np
import torch


def _flat_abs(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs().flatten()


def max_over_median(weight: torch.Tensor) -> float:
    """max|w| / median|w| (inf when the median is 0)."""
    a = _flat_abs(weight)
    median = a.median().item()
    return float("inf") if median == 0 else a.max().item() / median


def kurtosis(weight: torch.Tensor) -> float:
    """Excess (Fisher) kurtosis of the entries: E[(w-mu)^4] / var^2 - 3, via scipy.stats."""
    from scipy.stats import kurtosis as scipy_kurtosis

    return float(scipy_kurtosis(weight.detach().float().flatten().cpu().numpy(), fisher=True, bias=True))


def top_k_coordinates(weight: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Coordinates (row, col) of the k largest |w|, largest first."""
    a = weight.detach().float().abs()
    k = min(k, a.numel())
    idx = torch.topk(a.flatten(), k).indices.cpu().numpy()
    return [tuple(int(i) for i in np.unravel_index(j, tuple(a.shape))) for j in idx]


def rank_by_magnitude(weight: torch.Tensor, coord: tuple[int, ...]) -> int:
    """1-based rank of |W[coord]| among all |w| of the matrix (1 = largest)."""
    a = weight.detach().float().abs()
    return int((a > a[coord]).sum().item()) + 1


def matrix_stats(weight: torch.Tensor) -> dict[str, float | tuple[int, ...]]:
    """max/median, kurtosis, the largest |w| and its coordinate, for one matrix."""
    coord = top_k_coordinates(weight, 1)[0]
    return {
        "max_over_median": max_over_median(weight),
        "kurtosis": kurtosis(weight),
        "max_abs": float(weight.detach().float().abs()[coord].item()),
        "argmax": coord,
    }
