"""The grokking step as a censored time: Kaplan-Meier per arm, a log-rank test stratified by seed, paired
differences of log grokking step with bootstrap intervals, and onset lags of a measure (correlational).

A run's outcome (engine.grokking.analysis.grok_outcome) gives its time and event:
- "grokked": event at the grokking step (the first evaluation from which test accuracy stays >= 95% for the
  stated window);
- "never" (not reached by the step cap), "unconfirmed" (the run ended inside the window of its latest rise) and
  "collapsed" (reached 95% but fell below inside every window it observed): censored at the run's last step.
No run is dropped: a censored run stays in the risk set up to its censoring time.

Libraries: scipy.stats.ecdf on scipy.stats.CensoredData (Kaplan-Meier with a Greenwood interval),
statsmodels.duration.survdiff (log-rank with strata), scipy.stats.bootstrap and scipy.stats.binomtest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CENSORED_OUTCOMES = ("never", "unconfirmed", "collapsed")


def kaplan_meier(times: np.ndarray, events: np.ndarray) -> pd.DataFrame:
    """Kaplan-Meier estimate of P(grokked by step t) from times [n] and events [n] (1 = grokked, 0 = censored).

    Columns: step (each event time), grokked = 1 - S(t), low / high (95% interval, Greenwood, from
    scipy's ecdf), at_risk. Empty frame when there is no event."""
    from scipy import stats

    times, events = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    columns = ["step", "grokked", "low", "high", "at_risk"]
    if not events.any():
        return pd.DataFrame(columns=columns)
    data = stats.CensoredData(uncensored=times[events], right=times[~events])
    sf = stats.ecdf(data).sf
    ci = sf.confidence_interval(0.95)
    steps = sf.quantiles
    return pd.DataFrame(
        {
            "step": steps,
            "grokked": 1 - sf.probabilities,
            "low": 1 - ci.high.probabilities,
            "high": 1 - ci.low.probabilities,
            "at_risk": [int((times >= t).sum()) for t in steps],
        },
        columns=columns,
    )


@dataclass(frozen=True)
class LogRank:
    """Log-rank test of two arms (chi-square with 1 degree of freedom), stratified by `strata`."""

    arm: str
    reference: str
    n: int
    events: int
    chi2: float
    p: float
    stratified_by: str


def logrank(table: pd.DataFrame, arm: str, reference: str, strata: str | None = "seed") -> LogRank | None:
    """Log-rank test of `arm` against `reference` on the rows of `table` (columns arm, time, event and the
    strata column), by statsmodels.duration.survdiff; None when either arm has no row or there is no event.
    With strata, the observed-minus-expected counts and their variances are summed over strata (the stratified
    test): a seed's split and initial weights are shared by its arms, so seeds are compared only with themselves."""
    from statsmodels.duration.survfunc import survdiff

    part = table[table["arm"].isin([arm, reference])]
    if part["arm"].nunique() < 2 or not part["event"].astype(bool).any():
        return None
    kwargs = {"strata": part[strata].to_numpy()} if strata else {}
    chi2, p = survdiff(
        part["time"].to_numpy(dtype=float),
        part["event"].astype(int).to_numpy(),
        (part["arm"] == arm).astype(int).to_numpy(),
        **kwargs,
    )
    return LogRank(
        arm, reference, len(part), int(part["event"].astype(bool).sum()), float(chi2), float(p), strata or ""
    )


@dataclass(frozen=True)
class PairedLogDifference:
    """log(grokking step of `arm`) - log(that of `reference`) over seeds where both grokked (a ratio of steps:
    exp(mean) = geometric-mean factor), with a bootstrap 95% interval of the mean; the other pairs counted."""

    arm: str
    reference: str
    n_pairs: int
    n_both: int
    n_arm_only: int
    n_reference_only: int
    n_neither: int
    mean: float
    low: float
    high: float
    diffs: list[float]


def paired_log_differences(
    table: pd.DataFrame, arm: str, reference: str, seed: int = 0, n_resamples: int = 9999
) -> PairedLogDifference:
    """Paired by seed (same split, same initial weights): see PairedLogDifference. Bootstrap: scipy.stats.bootstrap
    of the mean (BCa; percentile when all differences are equal), 95%."""
    from scipy import stats

    keys = ["seed"]
    a = table[table["arm"] == arm][[*keys, "event", "time"]]
    r = table[table["arm"] == reference][[*keys, "event", "time"]]
    pairs = a.merge(r, on=keys, suffixes=("_a", "_r"))
    ea, er = pairs["event_a"].astype(bool), pairs["event_r"].astype(bool)
    both = pairs[ea & er]
    diffs = (np.log(both["time_a"].astype(float)) - np.log(both["time_r"].astype(float))).to_numpy()
    mean, low, high = (float(diffs.mean()) if len(diffs) else np.nan), np.nan, np.nan
    if len(diffs) >= 2 and np.ptp(diffs) > 0:
        res = stats.bootstrap(
            (diffs,), np.mean, n_resamples=n_resamples, confidence_level=0.95, random_state=seed, method="BCa"
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    elif len(diffs) >= 1:
        low = high = mean
    return PairedLogDifference(
        arm,
        reference,
        len(pairs),
        len(both),
        int((ea & ~er).sum()),
        int((~ea & er).sum()),
        int((~ea & ~er).sum()),
        mean,
        low,
        high,
        diffs.tolist(),
    )


@dataclass(frozen=True)
class OnsetLag:
    """Onset of a measure minus the grokking step over the grokked runs of one arm (correlational)."""

    measure: str
    n_grokked: int
    n_with_onset: int
    median: float
    mean: float
    low: float
    high: float
    n_before: int
    n_after: int
    n_same: int
    p_sign: float | None


def onset_lag(lags: np.ndarray, n_grokked: int, measure: str, seed: int = 0) -> OnsetLag:
    """lags [n] = onset - grokking step (runs that grokked and show the onset; n_grokked counts all that
    grokked): mean with a bootstrap 95% interval (percentile), median, and a two-sided sign test of
    "before" against "after" (scipy.stats.binomtest, ties left out)."""
    from scipy import stats

    lags = np.asarray(lags, dtype=float)
    before, after = int((lags < 0).sum()), int((lags > 0).sum())
    low = high = float(lags.mean()) if len(lags) else np.nan
    if len(lags) >= 2 and np.ptp(lags) > 0:
        res = stats.bootstrap((lags,), np.mean, n_resamples=9999, random_state=seed, method="percentile")
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return OnsetLag(
        measure,
        n_grokked,
        len(lags),
        float(np.median(lags)) if len(lags) else np.nan,
        float(lags.mean()) if len(lags) else np.nan,
        low,
        high,
        before,
        after,
        int((lags == 0).sum()),
        float(stats.binomtest(before, before + after, 0.5).pvalue) if before + after else None,
    )
