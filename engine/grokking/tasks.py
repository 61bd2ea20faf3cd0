"""The data of a grokking task: every pair (a, b) with its label c = (a o b) mod p, split by a seeded
permutation into a training and a test set (Power et al. 2022, arXiv 2201.02177)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.grokking.config import INVERSE_TASKS, GrokConfig


def _divide(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """a * b^-1 mod p with b^-1 = b^(p-2) mod p (Fermat; p prime, b != 0)."""
    inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
    return (a * inverse[b]) % p


# task -> c of int64 tensors a, b [n] and p (the tasks' labels are in config.TASK_LABELS)
OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": _divide,
    "sq_sum": lambda a, b, p: (a * a + b * b) % p,
    "cube_ab": lambda a, b, p: (a * a % p * a + a * b) % p,
}


@dataclass
class Dataset:
    """All pairs (a, b) of the task, split by a seeded permutation. x: int64 [n, 2], y: int64 [n]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    p: int


def make_dataset(config: GrokConfig) -> Dataset:
    """Every pair (b != 0 for tasks that divide), labelled, the first round(train_frac * n) of a
    permutation seeded by config.seed for training."""
    p = config.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if config.task in INVERSE_TASKS:
        keep = b != 0
        a, b = a[keep], b[keep]
    y = OPERATIONS[config.task](a, b, p)
    x = torch.stack([a, b], dim=1)
    perm = torch.from_numpy(np.random.default_rng(config.seed).permutation(len(y)))
    n_train = int(round(config.train_frac * len(y)))
    tr, te = perm[:n_train], perm[n_train:]
    return Dataset(x[tr], y[tr], x[te], y[te], p)
