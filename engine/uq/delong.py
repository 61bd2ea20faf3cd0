"""DeLong's test for two correlated AUROCs on the same questions, in the fast form of Sun and Xu (2014).

Positives are the wrong answers (m of them), negatives the right ones (n); a score ranks positives
high (higher = more uncertain). For score k with values x_i on positives and y_j on negatives:
    AUC_k = (1 / (m n)) sum_i sum_j psi(x_i, y_j),   psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise.
Structural components (DeLong, DeLong and Clarke-Pearson 1988), from midranks (Sun and Xu 2014):
    T_z = midranks of all m + n values, T_x = midranks among the positives, T_y = among the negatives;
    V10_i = (T_z(x_i) - T_x(x_i)) / n          (the share of negatives below positive i, ties 1/2)
    V01_j = 1 - (T_z(y_j) - T_y(y_j)) / m      (the share of positives above negative j, ties 1/2)
    AUC_k = mean_i V10_i = mean_j V01_j,
    S = S10 / m + S01 / n,  S10 = sample covariance (ddof 1) of V10 over positives (scores as variables),
                            S01 = the same of V01 over negatives.
For the paired difference D = AUC_a - AUC_b: Var(D) = S_aa + S_bb - 2 S_ab, z = D / sqrt(Var(D)).
p-values from the standard normal: one-sided ("greater": AUC_a > AUC_b) p = 1 - Phi(z); two-sided
p = 2 (1 - Phi(|z|)). A 95% interval: D -/+ 1.959964 sqrt(Var(D)). Two scores that order every pair
alike have Var(D) = 0 and D = 0: p = 1 and the interval [0, 0].
A NaN score counts as the most uncertain (as in engine.uq.metrics).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Alternative = Literal["greater", "two-sided"]


@dataclasses.dataclass(frozen=True)
class DeLongResult:
    """AUC_a, AUC_b, their difference with its DeLong standard error, 95% interval and p-value."""

    auc_a: float
    auc_b: float
    estimate: float  # AUC_a - AUC_b
    se: float
    ci_low: float
    ci_high: float
    p: float
    alternative: Alternative


def _midranks(values: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties averaged) along the last axis of [k, N]."""
    from scipy.stats import rankdata

    return rankdata(values, method="average", axis=-1)


def structural_components(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC [k], V10 [k, m], V01 [k, n]) of k scores [k, N] for the 0/1 labels `wrong` [N] (module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), np.inf, scores)
    pos = np.asarray(wrong, dtype=bool)
    x, y = scores[:, pos], scores[:, ~pos]
    m, n = x.shape[1], y.shape[1]
    t_z = _midranks(np.concatenate([x, y], axis=1))  # [k, m + n]
    v10 = (t_z[:, :m] - _midranks(x)) / n
    v01 = 1.0 - (t_z[:, m:] - _midranks(y)) / m
    return v10.mean(axis=1), v10, v01


def delong_paired(score_a, score_b, wrong, *, alternative: Alternative = "greater") -> DeLongResult:
    """DeLong's paired test of AUC(score_a) - AUC(score_b) for detecting wrong answers (module docstring).

    `wrong`: 1 for a wrong answer (the positive class), 0 for a right one. NaN everywhere when one class
    is empty."""
    from scipy.stats import norm

    wrong = np.asarray(wrong, dtype=np.float64)
    m = int(wrong.sum())
    n = wrong.size - m
    if m == 0 or n == 0:
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan, alternative)
    auc, v10, v01 = structural_components(np.stack([score_a, score_b]), wrong)
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    s = s10 / m + s01 / n
    contrast = np.array([1.0, -1.0])
    var = float(max(contrast @ s @ contrast, 0.0))
    estimate = float(auc[0] - auc[1])
    se = float(np.sqrt(var))
    if se <= 1e-15:
        p = 1.0 if abs(estimate) <= 1e-15 else 0.0
    else:
        z = estimate / se
        p = float(norm.sf(z)) if alternative == "greater" else float(2 * norm.sf(abs(z)))
    half = float(norm.ppf(0.975)) * se
    return DeLongResult(float(auc[0]), float(auc[1]), estimate, se, estimate - half, estimate + half, p, alternative)
