"""When do super weights appear relative to grokking? Events of a run, a sweep, and its summary.

Events of one run (steps; None when the event does not happen within the run):
- memorisation step: first evaluation step with train accuracy >= MEMORISATION_ACCURACY (0.99);
- grokking steps: first evaluation step with test accuracy >= HALF_GROK_ACCURACY (grok_50) and
  >= GROK_ACCURACY (grok_95) (engine.grokking.config);
- onset of a measure: the first checkpoint from which the measure stays "on" at EVERY later
  checkpoint of the run (so a brief spike is not an onset), the earliest over matrices / layers:
  * max_over_median: max|w|/median|w| of a matrix >= `ratio_factor` (OnsetSettings) x its value at step 0;
  * kurtosis: excess kurtosis of a matrix >= `kurtosis_threshold` (0 for a Gaussian);
  * top_coordinate: the coordinate of a matrix's largest |w| no longer changes, counted only when
    that stretch covers >= `min_span` checkpoints;
  * massive_activation: max|a|/median|a| of a layer >= `ratio_factor` x its value at step 0;
  * super_weight: some matrix has a super weight (causal test of engine.grokking.measures).
- lag of a measure = onset - grok_95 (negative: the measure came first).

A run = `run_experiment(config)`: train (engine.grokking.training) + measures at every checkpoint +
summary.json. A sweep = seeds x weight decays, each run on its own. `connection` correlates onset with
grokking step over grokked runs (Pearson r with its 95% CI from scipy) and counts how often the
onset precedes grokking (two-sided sign test, scipy.stats.binomtest); `plain_summary` words it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from engine.core.runstore import write_json
from engine.grokking.config import (
    GROK_ACCURACY,
    HALF_GROK_ACCURACY,
    MEASURE_LABELS,
    MEASURES,
    MEMORISATION_ACCURACY,
    GrokConfig,
    validate,
)
from engine.grokking.measures import MeasureSettings, measure_checkpoint
from engine.grokking.runs import GrokRun, RunEvents, RunSummary, open_run, run_for
from engine.grokking.tasks import Dataset
from engine.grokking.training import Stop, should_stop, train


@dataclass(frozen=True)
class OnsetSettings:
    """Thresholds of the onset definitions (see the module docstring)."""

    ratio_factor: float = 2.0
    kurtosis_threshold: float = 5.0
    min_span: int = 3


def first_reaching(metrics: pd.DataFrame, column: str, level: float) -> int | None:
    """First evaluation step where metrics[column] >= level (None if never)."""
    hit = metrics.loc[metrics[column] >= level, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def stays_on_from(steps: list[int], on: list[bool]) -> int | None:
    """First step from which `on` is True at every later step (None if off at the last step)."""
    onset = None
    for step, flag in zip(steps, on):
        if flag and onset is None:
            onset = step
        elif not flag:
            onset = None
    return onset


def onsets(measures: pd.DataFrame, settings: OnsetSettings = OnsetSettings()) -> dict[str, int | None]:
    """Onset step of each measure in MEASURES from a run's measures table (earliest over matrices)."""
    out: dict[str, int | None] = {m: None for m in MEASURES}
    if measures.empty:
        return out
    measures = measures.sort_values("step")
    steps = sorted(measures["step"].unique().tolist())
    weights = measures[measures["kind"] == "weight"]
    acts = measures[measures["kind"] == "activation"]
    super_on = (
        weights.groupby("step")["is_super"].apply(lambda s: bool(s.astype(bool).any())).reindex(steps, fill_value=False)
    )
    out["super_weight"] = stays_on_from(steps, super_on.tolist())

    def earliest(frame: pd.DataFrame, make_flags) -> int | None:
        found = []
        for _, group in frame.groupby("name"):
            group = group.sort_values("step")
            onset = stays_on_from(group["step"].tolist(), make_flags(group))
            if onset is not None:
                found.append(onset)
        return min(found) if found else None

    def ratio_flags(group):
        base = group["max_over_median"].iloc[0]
        return (group["max_over_median"] >= settings.ratio_factor * base).tolist()

    out["max_over_median"] = earliest(weights, ratio_flags)
    out["kurtosis"] = earliest(weights, lambda g: (g["kurtosis"] >= settings.kurtosis_threshold).tolist())
    out["massive_activation"] = earliest(acts, ratio_flags)

    def top_flags(group):
        coords = group["argmax"].tolist()
        last = coords[-1]
        flags = [c == last for c in coords]
        run = 0
        for f in reversed(flags):
            if not f:
                break
            run += 1
        return flags if run >= settings.min_span else [False] * len(flags)

    out["top_coordinate"] = earliest(weights, top_flags)
    return out


def run_events(metrics: pd.DataFrame, measures: pd.DataFrame, settings: OnsetSettings = OnsetSettings()) -> RunEvents:
    """Memorisation and grokking steps, onsets and lags (onset - grok_95) of one run."""
    mem = first_reaching(metrics, "train_acc", MEMORISATION_ACCURACY)
    grok = first_reaching(metrics, "test_acc", GROK_ACCURACY)
    found = onsets(measures, settings)
    return {
        "memorisation_step": mem,
        "grok_50_step": first_reaching(metrics, "test_acc", HALF_GROK_ACCURACY),
        "grok_95_step": grok,
        "final_train_acc": float(metrics["train_acc"].iloc[-1]) if len(metrics) else None,
        "final_test_acc": float(metrics["test_acc"].iloc[-1]) if len(metrics) else None,
        "last_step": int(metrics["step"].iloc[-1]) if len(metrics) else 0,
        "grokked": grok is not None,
        "grokking_delay": None if mem is None or grok is None else grok - mem,
        "onsets": found,
        "lags": {m: (None if s is None or grok is None else s - grok) for m, s in found.items()},
    }


def summarize(run: GrokRun, settings: OnsetSettings = OnsetSettings()) -> RunSummary:
    """summary.json of a run: config, key, state, events (written next to metrics.csv)."""
    status = run.status()
    summary: RunSummary = {
        "key": run.grok_config.key(),
        "config": asdict(run.grok_config),
        "state": status.get("state"),
        "message": status.get("message", ""),
        "onset_settings": asdict(settings),
        **run_events(run.metrics(), run.measures(), settings),
    }
    write_json(run.summary_path, summary)
    return summary


def run_experiment(
    config: GrokConfig,
    *,
    root: Path | None = None,
    run_dir: Path | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    stop: Stop = None,
    measure: bool = True,
    measure_settings: MeasureSettings = MeasureSettings(),
    threads: int | None = None,
    claim: bool = True,
) -> RunSummary:
    """Train (or resume, or reopen) one run with the measures at every checkpoint.

    Files go to engine.grokking.runs.open_run(config, root, run_dir). Returns the summary (also in
    summary.json); measure=False skips the measures (for timing). claim: see training.train.
    """
    validate(config)
    run = open_run(config, root, run_dir)
    cached = run.summary() if run.is_finished() else None
    if cached is not None:
        return cached

    def on_checkpoint(step: int, model: nn.Module, data: Dataset) -> None:
        if not measure:
            return
        rows = measure_checkpoint(step, model, data.x_test, data.y_test, measure_settings)
        header = not run.measures_path.exists()
        rows.to_csv(run.measures_path, mode="a", header=header, index=False)

    result = train(
        config,
        root=root,
        run_dir=run_dir,
        on_eval=on_eval,
        on_checkpoint=on_checkpoint,
        stop=stop,
        threads=threads,
        claim=claim,
    )
    summary = summarize(result.run)
    summary["seconds"] = result.seconds
    return summary


def load_run(config: GrokConfig, root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, RunSummary | None]:
    """(metrics, measures, summary) of a saved run, as far as it got (empty when there is none)."""
    run = run_for(config, root)
    return run.metrics(), run.measures(), run.summary()


# ----------------------------------------------------------------------------------------- sweep


def sweep_configs(base: GrokConfig, seeds: Sequence[int], weight_decays: Sequence[float]) -> list[GrokConfig]:
    return [base.replace(seed=int(s), weight_decay=float(wd)) for wd in weight_decays for s in seeds]


def run_sweep(
    base: GrokConfig,
    seeds: Sequence[int],
    weight_decays: Sequence[float],
    *,
    root: Path | None = None,
    stop: Stop = None,
    on_start: Callable[[GrokConfig, int, int], None] | None = None,
    on_run: Callable[[RunSummary, int, int], None] | None = None,
    threads: int | None = None,
) -> list[RunSummary]:
    """Run (or reopen) every seed x weight decay configuration, each a run of its own.

    on_start(config, done, total) before each run, on_run(summary, done, total) after it; `stop`
    ends the current run at its next step and skips the rest."""
    configs = sweep_configs(base, seeds, weight_decays)
    summaries: list[RunSummary] = []
    for config in configs:
        if should_stop(stop):
            break
        if on_start:
            on_start(config, len(summaries), len(configs))
        summaries.append(run_experiment(config, root=root, stop=stop, threads=threads))
        if on_run:
            on_run(summaries[-1], len(summaries), len(configs))
    return summaries


def sweep_table(summaries: Sequence[RunSummary], measure: str = "super_weight") -> pd.DataFrame:
    """One row per run: seed, weight decay, memorisation / grokking steps, onset and lag of `measure`."""
    rows = []
    for s in summaries:
        rows.append(
            {
                "seed": s["config"]["seed"],
                "weight_decay": s["config"]["weight_decay"],
                "state": s.get("state"),
                "memorisation_step": s["memorisation_step"],
                "grok_50_step": s["grok_50_step"],
                "grok_95_step": s["grok_95_step"],
                "grokked": s["grokked"],
                "onset_step": s["onsets"].get(measure),
                "lag": s["lags"].get(measure),
                "final_test_acc": s["final_test_acc"],
                "key": s["key"],
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ConnectionStats:
    """Onset vs grokking step over the runs of a sweep (see `connection`)."""

    n_runs: int
    n_grokked: int
    n_with_onset: int
    n_not_grokked: int
    n_not_grokked_with_onset: int
    n_before: int
    n_after: int
    n_same: int
    median_lag: float | None
    r: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_r: float | None = None
    p_sign: float | None = None


def connection(table: pd.DataFrame) -> ConnectionStats:
    """Onset vs grokking step over grokked runs with an onset: Pearson r, its 95% CI, sign test.

    n_before / n_after / n_same: runs whose onset precedes / follows / coincides with grok_95.
    Pearson's CI (Fisher z, scipy) needs >= 4 runs with both events and non-constant values.
    The sign test (binomtest of n_before among n_before + n_after, p = 0.5) asks whether the onset
    comes first more (or less) often than chance.
    """
    from scipy import stats

    grokked = table[table["grokked"].astype(bool)]
    both = grokked.dropna(subset=["onset_step"])
    n_before, n_after = int((both["lag"] < 0).sum()), int((both["lag"] > 0).sum())
    pearson: dict[str, float] = {}
    x, y = both["onset_step"].astype(float).to_numpy(), both["grok_95_step"].astype(float).to_numpy()
    if len(both) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        res = stats.pearsonr(x, y)
        ci = res.confidence_interval(0.95)
        pearson = {
            "r": float(res.statistic),
            "ci_low": float(ci.low),
            "ci_high": float(ci.high),
            "p_r": float(res.pvalue),
        }
    decided = n_before + n_after
    return ConnectionStats(
        n_runs=len(table),
        n_grokked=len(grokked),
        n_with_onset=len(both),
        n_not_grokked=len(table) - len(grokked),
        n_not_grokked_with_onset=int(table[~table["grokked"].astype(bool)]["onset_step"].notna().sum()),
        n_before=n_before,
        n_after=n_after,
        n_same=int((both["lag"] == 0).sum()),
        median_lag=float(both["lag"].median()) if len(both) else None,
        p_sign=float(stats.binomtest(n_before, decided, 0.5).pvalue) if decided else None,
        **pearson,
    )


def connection_found(stats_: ConnectionStats, alpha: float = 0.05) -> bool:
    """A connection = the CI of r excludes 0, or the onset precedes grokking in significantly many runs."""
    ci = stats_.ci_low is not None and stats_.ci_high is not None and (stats_.ci_low > 0 or stats_.ci_high < 0)
    sign = stats_.p_sign is not None and stats_.p_sign < alpha and stats_.n_before > stats_.n_after
    return bool(ci or sign)


def plain_summary(stats_: ConnectionStats, measure: str = "super_weight") -> str:
    """A few sentences generated from the numbers of `connection` (reproducible: no free text)."""
    label = MEASURE_LABELS.get(measure, measure)
    n, g, w = stats_.n_runs, stats_.n_grokked, stats_.n_with_onset
    parts = [f"{g} of {n} runs grokked (test accuracy >= {GROK_ACCURACY:.0%})."]
    if g == 0:
        parts.append(
            f"With no grokked run there is nothing to compare: no connection found between {label} and grokking."
        )
        return " ".join(parts)
    if w == 0:
        parts.append(f"In none of them did a {label} appear (and stay): no connection found.")
    else:
        lag = stats_.median_lag
        when = (
            f"a median of {abs(lag):.0f} steps {'before' if lag < 0 else 'after'} grokking"
            if lag
            else "at the grokking step (median)"
        )
        parts.append(
            f"In {w} of {g} grokked runs a {label} appeared, {when} "
            f"(before in {stats_.n_before}, after in {stats_.n_after}, same checkpoint in {stats_.n_same})."
        )
        if stats_.r is not None:
            parts.append(
                f"Onset vs grokking step: Pearson r = {stats_.r:.2f} "
                f"(95% CI {stats_.ci_low:.2f} to {stats_.ci_high:.2f}, n = {w})."
            )
        else:
            parts.append(f"Too few runs with both events (n = {w}, need >= 4 with varying steps) for a correlation.")
        if stats_.p_sign is not None:
            parts.append(f"Sign test of 'onset before grokking': p = {stats_.p_sign:.2g}.")
        parts.append(
            "A connection is supported by these numbers."
            if connection_found(stats_)
            else "No connection found: the correlation's CI includes 0 and the order is not consistent beyond chance."
        )
    if stats_.n_not_grokked:
        parts.append(
            f"Contrast: {stats_.n_not_grokked_with_onset} of {stats_.n_not_grokked} runs that did not grok "
            f"also showed a {label}."
        )
    return " ".join(parts)


def run_summary_text(summary: RunSummary) -> str:
    """One run in words: memorisation, grokking, and which measure came first and by how much."""
    mem, g50, g95 = summary["memorisation_step"], summary["grok_50_step"], summary["grok_95_step"]
    parts = [
        f"Train accuracy reached {MEMORISATION_ACCURACY:.0%} at step {mem}."
        if mem is not None
        else f"Train accuracy never reached {MEMORISATION_ACCURACY:.0%}."
    ]
    if g95 is not None:
        delay = summary["grokking_delay"]
        parts.append(
            f"Test accuracy crossed {HALF_GROK_ACCURACY:.0%} at step {g50} and {GROK_ACCURACY:.0%} at step {g95}"
            + (f", {delay} steps after memorisation." if delay is not None else ".")
        )
    else:
        parts.append(
            f"The run did not grok by step {summary['last_step']} "
            f"(final test accuracy {summary['final_test_acc']:.1%})."
        )
    for m in MEASURES:
        onset, lag = summary["onsets"].get(m), summary["lags"].get(m)
        if onset is None:
            parts.append(f"{MEASURE_LABELS[m]}: no onset.")
        elif lag is None:
            parts.append(f"{MEASURE_LABELS[m]}: onset at step {onset}.")
        else:
            parts.append(
                f"{MEASURE_LABELS[m]}: onset at step {onset}, "
                + (
                    f"{-lag} steps before grokking."
                    if lag < 0
                    else f"{lag} steps after grokking."
                    if lag > 0
                    else "at the grokking step."
                )
            )
    return " ".join(parts)
