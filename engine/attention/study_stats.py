"""Scores and statistics of the attention study: per-prompt sufficient statistics, a bootstrap over
prompts shared by all heads, paired contrasts over heads, Holm's adjustment.

Scores (as self_explain.pooled_score) of one explainer on one head over a set of prompts: with c_p the
summed top-1 credit and r_p the number of query rows of prompt p, and x / y the predicted / real weights
of all pairs (i, j <= i) of its scored rows,
    top-1 = Σ_p c_p / Σ_p r_p,
    r     = (n Sxy - Sx Sy) / sqrt((n Sxx - Sx²)(n Syy - Sy²)), sums pooled over the prompts,
so one prompt contributes the vector STATS = (c, r, n, Sx, Sy, Sxx, Syy, Sxy) and any weighting of the
prompts (a bootstrap resample: prompt counts w_p) gives the scores from Σ_p w_p stats_p.

Bootstrap: B resamples of the held-out prompts (multinomial counts [B, P], numpy default_rng(seed)), the
same resamples for every head and explainer, so the dependence between heads (they read the same
prompts) is kept. A contrast is a statistic of the per-head scores, e.g. the mean over heads of
top-1(self-text) - top-1(reference); its 95% interval is the 2.5 / 97.5 percentiles of its B draws and
    two-sided p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))
(smallest attainable p = 2 / (B + 1)). Holm (1979) over the family: sort p_(1) <= ... <= p_(m), then
    p_holm_(i) = min(1, max_{k <= i} (m - k + 1) p_(k)).
Agreement of the self-rule pick with the detector's rule: a = share of heads where they agree; chance
= Σ_r f_self(r) f_det(r) (agreement expected if the picks were independent of the heads, with the
observed shares f of each rule); one-sided permutation p = (1 + #{a* >= a}) / (N + 1) over N random
permutations of the picks among the heads.

Shapes: E explainers, K heads, P prompts, B resamples, S = len(STATS).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

STATS = ("credit", "rows", "n", "sx", "sy", "sxx", "syy", "sxy")


def _credit(real: np.ndarray, predicted: np.ndarray) -> float:
    """1/k when the real argmax is among the k tied predicted maxima (self_explain._top1_credit)."""
    best = np.flatnonzero(np.isclose(predicted, predicted.max(), rtol=0, atol=1e-9))
    return 1.0 / len(best) if int(np.argmax(real)) in best else 0.0


def prompt_stats(pattern: np.ndarray, preds: dict[int, np.ndarray]) -> np.ndarray:
    """STATS [S] of one prediction ({i: weights [i + 1]}) against one head's pattern [T, T]."""
    out = np.zeros(len(STATS))
    for i, p in preds.items():
        real = np.asarray(pattern[i, : i + 1], dtype=np.float64)
        pred = np.asarray(p, dtype=np.float64)
        out += (
            _credit(real, pred),
            1.0,
            len(real),
            pred.sum(),
            real.sum(),
            (pred * pred).sum(),
            (real * real).sum(),
            (pred * real).sum(),
        )
    return out


def scores_from_stats(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1, correlation) from summed STATS [..., S]; NaN where undefined (no rows; a constant side)."""
    s = np.moveaxis(np.asarray(stats, dtype=np.float64), -1, 0)
    credit, rows, n, sx, sy, sxx, syy, sxy = s
    with np.errstate(divide="ignore", invalid="ignore"):
        top1 = np.where(rows > 0, credit / rows, np.nan)
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        scale = np.maximum(np.abs(n * sxx), 1.0) * 1e-12
        ok = (vx > scale) & (vy > np.maximum(np.abs(n * syy), 1.0) * 1e-12)
        corr = np.where(ok, (n * sxy - sx * sy) / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)
    return top1, np.clip(corr, -1.0, 1.0)


def resample_counts(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap prompt counts [B, P]: each row a multinomial draw of P prompts with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot).astype(np.float64)


def boot_scores(stats: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top-1, correlation) [B, E, K] of every resample, from per-prompt stats [E, K, P, S] and counts [B, P]."""
    summed = np.einsum("bp,ekps->beks", counts, stats)
    return scores_from_stats(summed)


@dataclasses.dataclass
class Contrast:
    """A statistic's point estimate, 95% bootstrap interval, two-sided p and Holm-adjusted p."""

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = float("nan")
    n_boot: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bootstrap_contrast(name: str, estimate: float, draws: np.ndarray) -> Contrast:
    """Percentile interval and the two-sided bootstrap p of "no difference" (module docstring)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[~np.isnan(d)]
    if math.isnan(estimate) or d.size == 0:
        return Contrast(name, estimate, float("nan"), float("nan"), float("nan"))
    low, high = np.percentile(d, [2.5, 97.5])
    b = d.size
    p = min(1.0, 2 * min((1 + np.sum(d <= 0)) / (b + 1), (1 + np.sum(d >= 0)) / (b + 1)))
    return Contrast(name, float(estimate), float(low), float(high), float(p), n_boot=int(b))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values in input order (NaN stays NaN and is not counted in m)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m:
        order = finite[np.argsort(p[finite], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def adjust(contrasts: list[Contrast]) -> list[Contrast]:
    """The family's contrasts with p_holm filled in (Holm over their p)."""
    for c, p in zip(contrasts, holm([c.p for c in contrasts])):
        c.p_holm = float(p)
    return contrasts


def agreement_vs_chance(picks: Sequence[str], truth: Sequence[str], n_perm: int, seed: int) -> dict:
    """Share of heads where the pick equals the truth, the chance level Σ_r f_pick(r) f_truth(r) and the
    one-sided permutation p over `n_perm` shuffles of the picks among the heads (module docstring)."""
    picks_a, truth_a = np.asarray(picks), np.asarray(truth)
    k = len(picks_a)
    if k == 0:
        return {"agreement": float("nan"), "chance": float("nan"), "p": float("nan"), "n_heads": 0}
    observed = float(np.mean(picks_a == truth_a))
    rules = sorted(set(picks_a) | set(truth_a))
    chance = float(sum(np.mean(picks_a == r) * np.mean(truth_a == r) for r in rules))
    rng = np.random.default_rng(seed)
    hits = sum(float(np.mean(rng.permutation(picks_a) == truth_a)) >= observed - 1e-12 for _ in range(n_perm))
    return {"agreement": observed, "chance": chance, "p": (1 + hits) / (n_perm + 1), "n_heads": k}
