"""Does a score beat another on the same questions? Paired tests that can reach their level, Holm's
adjustment, the minimal detectable effect and the verdict.

For a score s and a reference r on the same n questions (higher = more uncertain for both):
- auroc (the primary metric): AUROC of the score for wrong answers; the difference AUROC(s) - AUROC(r)
  is tested by DeLong's paired test (engine.uq.delong, Sun and Xu 2014), its 95% interval
  estimate -/+ 1.96 SE. No resampling: the p-value has no floor.
- acc50 (the seed's A3 - A2 when s is the semantic score and r the usual one): accuracy on the ceil(n/2)
  least uncertain, tie-averaged (engine.uq.metrics); paired bootstrap on B question resamples
  (metrics.resample_counts, the same for every score), d*_b = acc50_b(s) - acc50_b(r):
      95% interval = the 2.5 and 97.5 percentiles of d*;
      one-sided p ("s beats r") = (1 + #{d*_b <= 0}) / (B + 1);
      two-sided p = min(1, 2 min((1 + #{d*_b <= 0}) / (B + 1), (1 + #{d*_b >= 0}) / (B + 1))).
  The +1 keeps p above 0, so the smallest attainable p is 1 / (B + 1) (one-sided) or 2 / (B + 1).
Two identical scores give a difference of exactly 0, the interval [0, 0] and p = 1.
Holm (1979) within a family of m tests: sort p_(1) <= ... <= p_(m), then
    p_holm_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))   (NaN p-values are left out of m).
(statsmodels' multipletests(method="holm") gives the same; it is not a dependency of the lab.)
A family can reach level alpha only when its smallest attainable p times m is below alpha
(`require_reachable`); a bootstrap family that cannot is refused with the numbers, never reported as
"not significant".
Minimal detectable effect (MDE) of a test: the true difference it detects with probability `power` at
Holm's strictest step alpha / m:
    MDE = (z_{1 - alpha / (m sides)} + z_{power}) * SE,
SE = the DeLong standard error (auroc) or the bootstrap standard deviation of d* (acc50), sides = 1 for a
one-sided test, 2 for a two-sided one.
Verdict (the A3 - A2 rule on the decomposition scores against the usual score, `verdict`), the length
check (`against_length`: every semantic and decomposition score against the stronger answer-length
baseline, AUROC by DeLong, Holm over those scores).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.config import USUAL_SCORE
from engine.uq.delong import delong_paired
from engine.uq.estimators import ESTIMATORS
from engine.uq.metrics import DIFF_METRICS, _aligned_correct, _auroc, acc50_draws, resample_counts

LENGTH_SCORES = tuple(name for name, e in ESTIMATORS.items() if "answer_lengths" in e.needs)  # every length baseline
N_BOOT_TEST = 20_000  # bootstrap resamples behind every acc50 test and interval
ALPHA = 0.05
POWER = 0.8
Alternative = Literal["greater", "two-sided"]
TestMethod = Literal["delong", "bootstrap"]
TEST_METHOD: dict[str, TestMethod] = {"auroc": "delong", "acc50": "bootstrap"}


def score_kind(name: str) -> str:
    """What a score is: its estimator's kind (engine.uq.estimators: "usual", "semantic", "decomposition",
    "baseline"); "other" for a name that is no registered estimator."""
    return ESTIMATORS[name].kind if name in ESTIMATORS else "other"


@dataclasses.dataclass
class PairedDifference:
    """metric(score) - metric(reference) with its 95% interval, p-value, SE and minimal detectable effect."""

    estimate: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = float("nan")
    n_boot_used: int = 0
    se: float = float("nan")
    mde: float = float("nan")
    method: str = ""
    one_sided: bool = False

    def as_dict(self) -> dict:
        """{estimate, ci_low, ci_high, p, p_holm}: the `diff_vs_usual` entry of summary.json."""
        return {k: float(getattr(self, k)) for k in ("estimate", "ci_low", "ci_high", "p", "p_holm")}


_NAN_DIFF = PairedDifference(*(float("nan"),) * 4)


def attainable_floor(method: TestMethod, n_boot: int, alternative: Alternative) -> float:
    """The smallest p-value a test can give: 1 / (B + 1) one-sided, 2 / (B + 1) two-sided for the
    bootstrap; 0 for DeLong (a normal approximation, no resampling)."""
    if method == "delong":
        return 0.0
    return (1.0 if alternative == "greater" else 2.0) / (n_boot + 1)


def require_reachable(
    family: str, size: int, *, method: TestMethod, n_boot: int, alternative: Alternative, alpha: float = ALPHA
) -> None:
    """LabError when the family's smallest attainable p times its size is not below alpha (module docstring)."""
    floor = attainable_floor(method, n_boot, alternative)
    if size and floor * size >= alpha:
        needed = math.ceil((1.0 if alternative == "greater" else 2.0) * size / alpha)
        raise LabError(
            f"The {family} family cannot reach alpha = {alpha:g}: {size} tests with {n_boot} bootstrap resamples "
            f"give a smallest attainable p of {floor:.3g}, times {size} = {floor * size:.3g} >= {alpha:g}; use more "
            f"than {needed} resamples (--bootstrap-test)."
        )


def mde(
    se: float, *, family_size: int = 1, alternative: Alternative = "greater", alpha: float = ALPHA, power: float = POWER
) -> float:
    """(z_{1 - alpha / (m sides)} + z_power) * SE: the minimal detectable effect (module docstring)."""
    from scipy.stats import norm

    if not np.isfinite(se):
        return float("nan")
    sides = 1 if alternative == "greater" else 2
    return float((norm.ppf(1 - alpha / (max(family_size, 1) * sides)) + norm.ppf(power)) * se)


def bootstrap_p(draws: np.ndarray, alternative: Alternative) -> float:
    """The percentile-bootstrap p of "no difference" from the differences d* (module docstring)."""
    b = draws.size
    below, above = (1 + np.sum(draws <= 0)) / (b + 1), (1 + np.sum(draws >= 0)) / (b + 1)
    return float(below if alternative == "greater" else min(1.0, 2 * min(below, above)))


def bootstrap_difference(point: float, draws: np.ndarray, alternative: Alternative = "two-sided") -> PairedDifference:
    """A PairedDifference from the point difference and its bootstrap differences d* (NaN ones dropped)."""
    draws = draws[~np.isnan(draws)]
    if math.isnan(point) or draws.size == 0:
        return dataclasses.replace(_NAN_DIFF, estimate=point, method="bootstrap")
    if np.all(draws == 0) and point == 0:  # identical orderings: no difference in any resample
        return PairedDifference(
            0.0,
            0.0,
            0.0,
            1.0,
            n_boot_used=int(draws.size),
            se=0.0,
            method="bootstrap",
            one_sided=alternative == "greater",
        )
    low, high = np.percentile(draws, [2.5, 97.5])
    return PairedDifference(
        float(point),
        float(low),
        float(high),
        bootstrap_p(draws, alternative),
        n_boot_used=int(draws.size),
        se=float(np.std(draws, ddof=1)) if draws.size > 1 else float("nan"),
        method="bootstrap",
        one_sided=alternative == "greater",
    )


def delong_difference(score, reference, correct, alternative: Alternative = "two-sided") -> PairedDifference:
    """AUROC(score) - AUROC(reference) for wrong answers by DeLong's paired test."""
    r = delong_paired(score, reference, 1.0 - np.asarray(correct, dtype=np.float64), alternative=alternative)
    return PairedDifference(
        r.estimate, r.ci_low, r.ci_high, r.p, se=r.se, method="delong", one_sided=alternative == "greater"
    )


def paired_differences(
    score,
    reference,
    correct,
    *,
    metrics: Sequence[str] = DIFF_METRICS,
    n_boot: int = N_BOOT_TEST,
    seed: int = 0,
    alternative: Alternative = "two-sided",
) -> dict[str, PairedDifference]:
    """metric(score) - metric(reference) for each metric (module docstring), one test each (family of 1)."""
    unc_s, unc_r = np.asarray(score, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if not (unc_s.shape == unc_r.shape == y.shape) or y.ndim != 1:
        raise LabError(f"Scores ({unc_s.shape}, {unc_r.shape}) and correctness ({y.shape}) must have equal length.")
    frame = pd.DataFrame({"score": unc_s, "reference": unc_r})
    return differences_vs(
        frame, y, reference="reference", metrics=metrics, n_boot=n_boot, seed=seed, alternative=alternative
    )["score"]


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


class Acc50Bootstrap:
    """Tie-averaged acc50 of any score on one fixed set of seeded question resamples (paired tests)."""

    def __init__(self, correct, n_boot: int = N_BOOT_TEST, seed: int = 0):
        self.correct = np.asarray(correct, dtype=np.float64)
        self.n_boot = int(n_boot)
        self.counts = resample_counts(self.correct.size, self.n_boot, seed)
        self._memo: dict[str, tuple[float, np.ndarray]] = {}

    def draws(self, name: str, unc) -> tuple[float, np.ndarray]:
        """(acc50 on the data, acc50 on each resample [B]) of the score `unc`, remembered by `name`."""
        if name not in self._memo:
            unc = np.asarray(unc, dtype=np.float64)
            point = acc50_draws(unc, self.correct, np.ones((1, unc.size), dtype=np.uint16))[0]
            self._memo[name] = (float(point), acc50_draws(unc, self.correct, self.counts))
        return self._memo[name]

    def difference(self, name_s: str, unc_s, name_r: str, unc_r, alternative: Alternative) -> PairedDifference:
        (point_s, boot_s), (point_r, boot_r) = self.draws(name_s, unc_s), self.draws(name_r, unc_r)
        return bootstrap_difference(point_s - point_r, boot_s - boot_r, alternative)


def differences_vs(
    scores_df: pd.DataFrame,
    correct,
    *,
    reference: str,
    names: Sequence[str] | None = None,
    metrics: Sequence[str] = DIFF_METRICS,
    n_boot: int = N_BOOT_TEST,
    seed: int = 0,
    alternative: Alternative = "two-sided",
    alpha: float = ALPHA,
    boot: Acc50Bootstrap | None = None,
    family: str = "comparison",
) -> dict[str, dict[str, PairedDifference]]:
    """Each of `names` (default: every other column) against the column `reference`: {score: {metric:
    PairedDifference}}, p_holm adjusted over those scores (one family per metric), each with its MDE.
    `correct`: as metrics.comparison takes it; `boot`: the acc50 resamples to share (made here otherwise).
    A bootstrap family that cannot reach `alpha` is refused (`require_reachable`)."""
    if reference not in scores_df.columns:
        raise LabError(f"The reference score '{reference}' is not among the scores: {list(scores_df.columns)}.")
    y = _aligned_correct(scores_df, correct)
    unc_r = scores_df[reference].to_numpy(dtype=np.float64)
    names = [n for n in (names if names is not None else scores_df.columns) if n != reference]
    if "acc50" in metrics and names:
        require_reachable(
            family,
            len(names),
            method="bootstrap",
            n_boot=boot.n_boot if boot else n_boot,
            alternative=alternative,
            alpha=alpha,
        )
    if boot is None and "acc50" in metrics and names:
        boot = Acc50Bootstrap(y, n_boot, seed)
    out: dict[str, dict[str, PairedDifference]] = {}
    for name in names:
        unc_s = scores_df[name].to_numpy(dtype=np.float64)
        if np.isnan(unc_s).all() or np.isnan(unc_r).all():
            out[name] = {m: dataclasses.replace(_NAN_DIFF, method=TEST_METHOD.get(m, "")) for m in metrics}
            continue
        row = {}
        for m in metrics:
            if m == "auroc":
                row[m] = delong_difference(unc_s, unc_r, y, alternative)
            elif m == "acc50":
                row[m] = boot.difference(name, unc_s, reference, unc_r, alternative)
            else:
                raise LabError(f"No paired test for the metric '{m}': choose from {list(TEST_METHOD)}.")
        out[name] = row
    for m in metrics:
        adjusted = holm([out[n][m].p for n in out])
        for n, p_adj in zip(out, adjusted):
            out[n][m].p_holm = float(p_adj)
            out[n][m].mde = mde(out[n][m].se, family_size=len(out), alternative=alternative, alpha=alpha)
    return out


def differences_vs_usual(
    scores_df: pd.DataFrame,
    correct,
    *,
    usual: str = USUAL_SCORE,
    metrics: Sequence[str] = DIFF_METRICS,
    n_boot: int = N_BOOT_TEST,
    seed: int = 0,
    boot: Acc50Bootstrap | None = None,
) -> dict[str, dict[str, PairedDifference]]:
    """Every other column of `scores_df` against `usual` (two-sided): {score: {metric: PairedDifference}},
    with p_holm adjusted over all compared scores (one family per metric, labelled exploratory in the
    report). `correct`: as metrics.comparison takes it."""
    if usual not in scores_df.columns:
        raise LabError(f"The usual score '{usual}' is not among the scores: {list(scores_df.columns)}.")
    return differences_vs(
        scores_df,
        correct,
        reference=usual,
        metrics=metrics,
        n_boot=n_boot,
        seed=seed,
        boot=boot,
        family="exploratory (against the usual score)",
    )


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
    alpha: float = ALPHA,
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
    aurocs = {n: _auroc(scores_df[n].to_numpy(dtype=np.float64), y) for n in lengths}
    reference = max(lengths, key=lambda n: np.nan_to_num(aurocs[n], nan=-1.0))
    diffs = differences_vs(
        scores_df, y, reference=reference, names=candidates, metrics=("auroc",), alternative="greater", alpha=alpha
    )
    rows = {n: d["auroc"] for n, d in diffs.items() if not math.isnan(d["auroc"].estimate)}
    if not rows:
        return LengthCheck(False, "No length check: no AUROC could be computed (one class of answers).", reference)
    auroc_length = aurocs[reference]
    winners = {n: d for n, d in rows.items() if d.estimate > 0 and d.p_holm < alpha}
    if winners:
        best = max(winners, key=lambda n: winners[n].estimate)
        d = winners[best]
        sentence = (
            f"{len(winners)} semantic / decomposition score(s) beat answer length (`{reference}`, AUROC "
            f"{auroc_length:.3f}); the best, `{best}`: AUROC {d.estimate:+.3f} (95% CI [{d.ci_low:+.3f}, "
            f"{d.ci_high:+.3f}], one-sided DeLong, Holm-adjusted p = {d.p_holm:.3g})."
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
    usual: str = USUAL_SCORE,
    alpha: float = 0.05,
    margin: float = 0.02,
    n_right: int | None = None,
) -> Verdict:
    """The decision rule on the A3 - A2 ("acc50") differences of the decomposition scores (module docstring).

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
