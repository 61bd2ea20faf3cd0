"""Does a score beat the usual one? Paired bootstrap differences, Holm's adjustment and the verdict.

For a score s and the usual score u behind A2, on the same n questions (higher = better for all three):
    acc50: accuracy on the ceil(n/2) least uncertain (metrics.retained_mask: ties by question order),
           so diff = acc50(s) - acc50(u) = A3 - A2 when s is the semantic score;
    auroc: AUROC of the score for wrong answers;  auarc: area under the accuracy-rejection curve.
Paired bootstrap: the same `n_boot` question resamples that metrics.method_metrics draws
(numpy default_rng(seed).integers(0, n, (n_boot, n))); each resample scores s and u on the same
questions, giving d*_b = metric_b(s) - metric_b(u). Resamples where either metric is undefined (AUROC
with one class) are left out (B = those kept).
    95% interval = the 2.5 and 97.5 percentiles of d*;
    two-sided p = min(1, 2 min((1 + #{d*_b <= 0}) / (B + 1), (1 + #{d*_b >= 0}) / (B + 1)))
(the percentile-bootstrap test of "no difference": about the smallest level at which the equal-tailed
interval excludes 0; the +1 keeps it above 0). Two identical scores give d* = 0 and p = 1.
Holm (1979), one family per metric over all scores compared with u: sort p_(1) <= ... <= p_(m), then
    p_holm_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))   (NaN p-values are left out of m).
Verdict (issue 15), on A3 - A2 of the decomposition scores:
    "useful"                 some decomposition score has A3 - A2 > 0 with p_holm < 0.05;
    "not useful"             every decomposition score's 95% interval lies below +0.02 (a gain of 2
                             points or more is ruled out);
    "inconclusive at n = N"  otherwise.
Length check (arXiv 2508.08285: length heuristics rival semantic entropy): every semantic and
decomposition score against the stronger answer-length baseline (higher AUROC), paired AUROC differences
Holm-adjusted over those scores; a score "beats answer length" when its difference is > 0 with p_holm < 0.05.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.estimators import ESTIMATORS
from engine.uq.metrics import DIFF_METRICS, _aligned_correct, metric_draws, resamples

LENGTH_SCORES = ("answer_length_tokens", "answer_length_chars")


def score_kind(name: str) -> str:
    """What a score is: its estimator's kind (engine.uq.estimators: "usual", "semantic", "decomposition",
    "baseline"); "other" for a name that is no registered estimator."""
    return ESTIMATORS[name].kind if name in ESTIMATORS else "other"


@dataclasses.dataclass
class PairedDifference:
    """metric(score) - metric(reference) with its 95% bootstrap interval and two-sided p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = float("nan")
    n_boot_used: int = 0

    def as_dict(self) -> dict:
        """{estimate, ci_low, ci_high, p, p_holm}: the `diff_vs_usual` entry of summary.json."""
        return {k: float(getattr(self, k)) for k in ("estimate", "ci_low", "ci_high", "p", "p_holm")}


_NAN_DIFF = PairedDifference(*(float("nan"),) * 4)


def _difference(point_s: float, point_r: float, boot_s: np.ndarray, boot_r: np.ndarray) -> PairedDifference:
    estimate = point_s - point_r
    draws = boot_s - boot_r
    draws = draws[~np.isnan(draws)]
    if math.isnan(estimate) or draws.size == 0:
        return dataclasses.replace(_NAN_DIFF, estimate=estimate)
    low, high = np.percentile(draws, [2.5, 97.5])
    b = draws.size
    p = min(1.0, 2 * min((1 + np.sum(draws <= 0)) / (b + 1), (1 + np.sum(draws >= 0)) / (b + 1)))
    return PairedDifference(float(estimate), float(low), float(high), float(p), n_boot_used=int(b))


def paired_differences(
    score, reference, correct, *, metrics: Sequence[str] = DIFF_METRICS, n_boot: int = 1000, seed: int = 0
) -> dict[str, PairedDifference]:
    """metric(score) - metric(reference) for each metric, on the same bootstrap resamples (module docstring)."""
    unc_s, unc_r = np.asarray(score, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if not (unc_s.shape == unc_r.shape == y.shape) or y.ndim != 1:
        raise LabError(f"Scores ({unc_s.shape}, {unc_r.shape}) and correctness ({y.shape}) must have equal length.")
    frame = pd.DataFrame({"score": unc_s, "reference": unc_r})
    return differences_vs(frame, y, reference="reference", metrics=metrics, n_boot=n_boot, seed=seed)["score"]


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values in the input order (module docstring); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def differences_vs(
    scores_df: pd.DataFrame,
    correct,
    *,
    reference: str,
    names: Sequence[str] | None = None,
    metrics: Sequence[str] = DIFF_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    draws: dict | None = None,
) -> dict[str, dict[str, PairedDifference]]:
    """Each of `names` (default: every other column) against the column `reference`: {score: {metric:
    PairedDifference}}, p_holm adjusted over those scores (one family per metric). `correct`: as
    metrics.comparison takes it; `draws`: metrics.comparison's per-score draws on the same resamples."""
    if reference not in scores_df.columns:
        raise LabError(f"The reference score '{reference}' is not among the scores: {list(scores_df.columns)}.")
    y = _aligned_correct(scores_df, correct)
    draws = {} if draws is None else draws
    idx = None

    def drawn(name: str, unc: np.ndarray):
        nonlocal idx
        if name not in draws:
            idx = resamples(y.size, n_boot, seed) if idx is None else idx
            draws[name] = metric_draws(unc, y, idx)
        return draws[name]

    unc_r = scores_df[reference].to_numpy(dtype=np.float64)
    names = [n for n in (names if names is not None else scores_df.columns) if n != reference]
    out: dict[str, dict[str, PairedDifference]] = {}
    for name in names:
        unc_s = scores_df[name].to_numpy(dtype=np.float64)
        if np.isnan(unc_s).all() or np.isnan(unc_r).all():
            out[name] = {m: dataclasses.replace(_NAN_DIFF) for m in metrics}
            continue
        (point_s, boot_s), (point_r, boot_r) = drawn(name, unc_s), drawn(reference, unc_r)
        out[name] = {m: _difference(point_s[m], point_r[m], boot_s[m], boot_r[m]) for m in metrics}
    for m in metrics:
        adjusted = holm([out[n][m].p for n in out])
        for n, p_adj in zip(out, adjusted):
            out[n][m].p_holm = float(p_adj)
    return out


def differences_vs_usual(
    scores_df: pd.DataFrame,
    correct,
    *,
    usual: str = "mean_token_nll",
    metrics: Sequence[str] = DIFF_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    draws: dict | None = None,
) -> dict[str, dict[str, PairedDifference]]:
    """Every other column of `scores_df` against `usual`: {score: {metric: PairedDifference}}, with p_holm
    adjusted over all compared scores (one family per metric). `correct`: as metrics.comparison takes it."""
    if usual not in scores_df.columns:
        raise LabError(f"The usual score '{usual}' is not among the scores: {list(scores_df.columns)}.")
    return differences_vs(scores_df, correct, reference=usual, metrics=metrics, n_boot=n_boot, seed=seed, draws=draws)


@dataclasses.dataclass
class LengthCheck:
    """Does any semantic or decomposition score beat answer length (AUROC, paired, Holm)? (module docstring)"""

    beaten: bool
    sentence: str
    length_score: str | None = None  # the stronger length baseline
    best: str | None = None  # the semantic / decomposition score the sentence quotes
    difference: PairedDifference | None = None  # AUROC(best) - AUROC(length_score)


def against_length(
    scores_df: pd.DataFrame,
    correct,
    *,
    kinds: dict[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    draws: dict | None = None,
    alpha: float = 0.05,
) -> LengthCheck:
    """The length check of the module docstring on the columns of `scores_df` (kinds: as in `verdict`)."""
    kinds = kinds or {}
    y = _aligned_correct(scores_df, correct)
    lengths = [n for n in LENGTH_SCORES if n in scores_df.columns and not scores_df[n].isna().all()]
    candidates = [
        n
        for n in scores_df.columns
        if (kinds.get(n) or score_kind(n)) in ("semantic", "decomposition") and not scores_df[n].isna().all()
    ]
    if not lengths or not candidates:
        missing = "answer length was not computed" if not lengths else "no semantic score was computed"
        return LengthCheck(False, f"No length check: {missing}.")
    draws = {} if draws is None else draws
    idx = resamples(y.size, n_boot, seed)
    for n in lengths:
        if n not in draws:
            draws[n] = metric_draws(scores_df[n].to_numpy(dtype=np.float64), y, idx)
    reference = max(lengths, key=lambda n: np.nan_to_num(draws[n][0]["auroc"], nan=-1.0))
    diffs = differences_vs(
        scores_df, y, reference=reference, names=candidates, metrics=("auroc",), n_boot=n_boot, seed=seed, draws=draws
    )
    rows = {n: d["auroc"] for n, d in diffs.items() if not math.isnan(d["auroc"].estimate)}
    if not rows:
        return LengthCheck(False, "No length check: no AUROC could be computed (one class of answers).", reference)
    auroc_length = draws[reference][0]["auroc"]
    winners = {n: d for n, d in rows.items() if d.estimate > 0 and d.p_holm < alpha}
    if winners:
        best = max(winners, key=lambda n: winners[n].estimate)
        d = winners[best]
        sentence = (
            f"{len(winners)} semantic / decomposition score(s) beat answer length (`{reference}`, AUROC "
            f"{auroc_length:.3f}); the best, `{best}`: AUROC {d.estimate:+.3f} (95% CI [{d.ci_low:+.3f}, "
            f"{d.ci_high:+.3f}], Holm-adjusted p = {d.p_holm:.3g})."
        )
        return LengthCheck(True, sentence, reference, best, d)
    best = max(rows, key=lambda n: rows[n].estimate)
    d = rows[best]
    sentence = (
        f"No semantic method beats answer length: no semantic or decomposition score has a higher AUROC than "
        f"`{reference}` ({auroc_length:.3f}) after Holm adjustment; the closest, `{best}`: {d.estimate:+.3f} "
        f"(95% CI [{d.ci_low:+.3f}, {d.ci_high:+.3f}], Holm-adjusted p = {d.p_holm:.3g})."
    )
    return LengthCheck(False, sentence, reference, best, d)


@dataclasses.dataclass
class Verdict:
    """The answer to "is the decomposition useful for reducing errors?" and the sentence that states it."""

    answer: str  # "useful" | "not useful" | "inconclusive at n = N"
    sentence: str
    n: int
    best: str | None = None  # the decomposition score the sentence quotes


def _interval(d: PairedDifference) -> str:
    return f"A3 − A2 = {d.estimate:+.3f} (95% CI [{d.ci_low:+.3f}, {d.ci_high:+.3f}], Holm-adjusted p = {d.p_holm:.3g})"


def verdict(
    differences: dict[str, dict[str, PairedDifference]],
    n: int,
    *,
    kinds: dict[str, str] | None = None,
    usual: str = "mean_token_nll",
    alpha: float = 0.05,
    margin: float = 0.02,
    n_right: int | None = None,
) -> Verdict:
    """The issue's rule on the A3 - A2 ("acc50") differences of the decomposition scores (module docstring).

    `differences`: differences_vs_usual's output; `kinds`: score -> kind (default: score_kind); scores
    whose difference is NaN (not computed) do not count. `n_right`: right answers among the n; when all or
    none are right no score can separate them (every difference is 0): inconclusive, not "not useful".
    """
    if n_right is not None and n_right in (0, n):
        which = "right" if n_right else "wrong"
        sentence = (
            f"Inconclusive at n = {n}: every graded answer is {which}, so no score can separate right from wrong."
        )
        return Verdict(f"inconclusive at n = {n}", sentence, n)
    kinds = kinds or {}
    rows = {
        name: diffs["acc50"]
        for name, diffs in differences.items()
        if (kinds.get(name) or score_kind(name)) == "decomposition"
        and "acc50" in diffs
        and not math.isnan(diffs["acc50"].estimate)
        and not math.isnan(diffs["acc50"].ci_high)
    }
    if not rows:
        return Verdict(f"inconclusive at n = {n}", f"Inconclusive at n = {n}: no decomposition score was computed.", n)
    winners = {k: d for k, d in rows.items() if d.estimate > 0 and d.p_holm < alpha}
    if winners:
        best = max(winners, key=lambda k: winners[k].estimate)
        sentence = f"Useful: `{best}` beats `{usual}` at 50% coverage: {_interval(winners[best])}, n = {n}."
        return Verdict("useful", sentence, n, best)
    highest = max(rows, key=lambda k: rows[k].ci_high)
    points = f"{100 * margin:g} points"
    if rows[highest].ci_high < margin:
        sentence = (
            f"Not useful at n = {n}: for every decomposition score the 95% interval of A3 − A2 lies below "
            f"+{margin:g} (highest upper bound {rows[highest].ci_high:+.3f}, `{highest}`), so a gain of {points} "
            f"or more over `{usual}` is ruled out."
        )
        return Verdict("not useful", sentence, n, highest)
    best = max(rows, key=lambda k: rows[k].estimate)
    sentence = (
        f"Inconclusive at n = {n}: no decomposition score beats `{usual}` after Holm adjustment (best `{best}`: "
        f"{_interval(rows[best])}), and a gain of {points} or more is not ruled out (`{highest}`'s interval "
        f"reaches {rows[highest].ci_high:+.3f})."
    )
    return Verdict(f"inconclusive at n = {n}", sentence, n, best)
