"""When do super weights appear relative to grokking? Events of a run, a sweep, and its summary.

Events of one run (steps; None when the event does not happen within the run):
- memorisation step: first evaluation step with train accuracy >= MEMORISATION_ACCURACY (0.99);
- grokking steps: first evaluation step with test accuracy >= HALF_GROK_ACCURACY (grok_50) and
  >= GROK_ACCURACY (grok_95) (engine.grokking.config);
- outcome (`grok_outcome`): "grokked" at the first evaluation from which test accuracy stays >= GROK_ACCURACY at
  every evaluation of the hold window (GROK_HOLD_STEPS, or stop_after_grok when smaller; stated as hold_steps);
  "unconfirmed" when the run ended inside the window of its latest rise with accuracy still there; "collapsed"
  when it reached GROK_ACCURACY but fell below inside every window it observed; "never" when it did not reach
  it. Only "grokked" runs count as grokked (grok_step); the rest are censored (engine.grokking.survival),
  counted, never dropped. Dips below GROK_ACCURACY after the first rise and after the grokking step are
  counted (dips_after_first_95, dips_after_grok) and reported with the lowest accuracy after grokking;
- onset of a measure: the first checkpoint from which the measure stays "on" at EVERY later
  checkpoint of the run (so a brief spike is not an onset), the earliest over matrices / layers:
  * max_over_median: max|w|/median|w| of a matrix >= `ratio_factor` (OnsetSettings) x its value at step 0;
  * kurtosis: excess kurtosis of a matrix >= `kurtosis_threshold` (0 for a Gaussian);
  * top_coordinate: the coordinate of a matrix's largest |w| no longer changes, counted only when
    that stretch covers >= `min_span` checkpoints;
  * massive_activation: max|a|/median|a| of a layer >= `ratio_factor` x its value at step 0;
  * super_weight: some matrix has a super weight (causal test of engine.grokking.measures).
- lag of a measure = onset - grok_95 (negative: the measure came first).

For the LLM-shaped model (config.model == "llm") the measures are those of engine.grokking.llm_measures
(llm_measures.csv, one row per checkpoint), and the onsets are those of the registered measures
(engine.grokking.measure_registry; the built-in ones are config.LLM_MEASURES):
  * super_weight (_train / _test): a candidate of the first tab's super-weight scan
    (engine.superweights.detect, relative rule, unchanged) fires in the causal test on train or test
    (zeroing it raises perplexity >= 2x or drops accuracy > 10 points while k random weights do not);
  * top_weight_causal: any candidate (scan or top-|w| of a down projection) fires;
  * super_activation: max |y| at BOS / median |y| of a down projection >= ratio_factor x its step-0 value;
  * persisting_activation: the BOS spike persists in >= 2 layers of the residual stream;
  * fourier: the number of key Fourier frequencies <= its step-0 value / ratio_factor (Nanda et al. 2023);
  * attention_sink: the largest per-layer attention share on BOS minus what uniform causal attention gives
    (sink_excess_max) >= `sink_excess` (runs measured before that column: the share minus the 5-token uniform
    share 0.32);
  * massive_activation: the residual stream's peak at BOS / its median (resid_bos_over_median, max over
    layers) >= `massive_ratio`.
At the end of a grokked llm run the scan's super weights (else the top-|w| of each down projection) are
zeroed together (llm_measures.zeroing_outcome): does the model fall back to memorisation or break?

A run = `run_experiment(config)`: train (engine.grokking.training) + measures at every checkpoint +
summary.json. A sweep = seeds x weight decays, each run on its own. `connection` correlates onset with
grokking step over grokked runs (Pearson r with its 95% CI from scipy) and counts how often the
onset precedes grokking (two-sided sign test, scipy.stats.binomtest); `plain_summary` words it.
"""

from __future__ import annotations

import time
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
    GROK_HOLD_STEPS,
    HALF_GROK_ACCURACY,
    LLM_MEASURE_LABELS,
    MAX_CHECKPOINTS,
    MEASURE_LABELS,
    MEASURES,
    MEMORISATION_ACCURACY,
    GrokConfig,
    validate,
)
from engine.grokking.llm import GrokLlama, LlmData, llm_data
from engine.grokking.llm_measures import LlmMeasureSettings, candidate_weights, measure_llm_checkpoint, zeroing_outcome
from engine.grokking.measures import MeasureSettings, measure_checkpoint
from engine.grokking.runs import GrokRun, RunEvents, RunSummary, open_run, run_for
from engine.grokking.tasks import Dataset
from engine.grokking.training import Stop, train

# the llm measures at every checkpoint: 256 examples per split and 2 random draws keep them under 20% of
# training time at checkpoint_every = 50 (benchmarks/bench_grokking.py)
LLM_MEASURE_SETTINGS = LlmMeasureSettings(max_examples=256, n_random=2)


@dataclass(frozen=True)
class OnsetSettings:
    """Thresholds of the onset definitions (see the module docstring)."""

    ratio_factor: float = 2.0
    kurtosis_threshold: float = 5.0
    min_span: int = 3
    sink_excess: float = 0.2
    massive_ratio: float = 20.0


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


def llm_onsets(measures: pd.DataFrame, settings: OnsetSettings = OnsetSettings()) -> dict[str, int | None]:
    """Onset step of every registered measure (engine.grokking.measure_registry: LLM_MEASURES and any added)
    from an llm run's llm_measures.csv (see the module docstring)."""
    from engine.grokking.measure_registry import REGISTRY

    out: dict[str, int | None] = {m: None for m in REGISTRY}
    if measures.empty or "step" not in measures or len(measures) == 0:
        return out
    m = measures.sort_values("step").reset_index(drop=True)
    steps = m["step"].astype(int).tolist()
    for name, spec in REGISTRY.items():
        if spec.compute is not None and not all(c in m for c in spec.columns):
            continue  # registered after this run was measured
        out[name] = stays_on_from(steps, spec.onset(m, settings).tolist())
    return out


def hold_steps_of(stop_after_grok: int) -> int:
    """The hold window of a run: GROK_HOLD_STEPS, or stop_after_grok when that is smaller (and >= 0)."""
    return GROK_HOLD_STEPS if stop_after_grok < 0 else min(GROK_HOLD_STEPS, stop_after_grok)


def grok_outcome(metrics: pd.DataFrame, hold_steps: int = GROK_HOLD_STEPS) -> tuple[str, int | None, int]:
    """(outcome, grokking step or None, time) of a run's metrics (see the module docstring).

    The grokking step is the first evaluation s with test accuracy >= GROK_ACCURACY at every evaluation of
    [s, s + hold_steps], the window fully observed. Without one: "unconfirmed" when the run ended inside the
    window of its latest rise to GROK_ACCURACY with accuracy still there, "collapsed" when accuracy reached it
    but fell below in every window the run observed, "never" when it never reached it.

    time: the grokking step of a grokked run; the last step of every other run (censored there)."""
    last = int(metrics["step"].iloc[-1]) if len(metrics) else 0
    first = first_reaching(metrics, "test_acc", GROK_ACCURACY)
    if first is None:
        return "never", None, last
    steps = metrics["step"].to_numpy()
    above = (metrics["test_acc"] >= GROK_ACCURACY).to_numpy()
    for i in np.flatnonzero(above):
        start = int(steps[i])
        if start + hold_steps > last:
            break
        window = (steps >= start) & (steps <= start + hold_steps)
        if above[window].all():
            return "grokked", start, start
    return ("unconfirmed" if above[-1] else "collapsed"), None, last


def dips_after_grokking(metrics: pd.DataFrame, grok_step: int | None) -> tuple[int, float | None]:
    """(evaluations below GROK_ACCURACY after the grokking step, lowest test accuracy after it) of a grokked
    run; (0, None) for a run that did not grok. A held grokking step followed by dips is reported, not hidden."""
    if grok_step is None:
        return 0, None
    after = metrics.loc[metrics["step"] >= grok_step, "test_acc"]
    return int((after < GROK_ACCURACY).sum()), float(after.min())


def run_events(
    metrics: pd.DataFrame,
    measures: pd.DataFrame,
    settings: OnsetSettings = OnsetSettings(),
    llm_measures: pd.DataFrame | None = None,
    hold_steps: int = GROK_HOLD_STEPS,
) -> RunEvents:
    """Memorisation and grokking steps, outcome, onsets and lags (onset - grokking step) of one run (of
    LLM_MEASURES from `llm_measures` when given: an llm run)."""
    mem = first_reaching(metrics, "train_acc", MEMORISATION_ACCURACY)
    outcome, grok, time_ = grok_outcome(metrics, hold_steps)
    first = first_reaching(metrics, "test_acc", GROK_ACCURACY)
    dips, lowest = dips_after_grokking(metrics, grok)
    reached = metrics.loc[metrics["step"] >= first, "test_acc"] if first is not None else pd.Series(dtype=float)
    found = onsets(measures, settings) if llm_measures is None else llm_onsets(llm_measures, settings)
    return {
        "memorisation_step": mem,
        "grok_50_step": first_reaching(metrics, "test_acc", HALF_GROK_ACCURACY),
        "grok_95_step": first,
        "final_train_acc": float(metrics["train_acc"].iloc[-1]) if len(metrics) else None,
        "final_test_acc": float(metrics["test_acc"].iloc[-1]) if len(metrics) else None,
        "last_step": int(metrics["step"].iloc[-1]) if len(metrics) else 0,
        "grokked": outcome == "grokked",
        "grokking_delay": None if mem is None or grok is None else grok - mem,
        "onsets": found,
        "lags": {m: (None if s is None or grok is None else s - grok) for m, s in found.items()},
        "outcome": outcome,
        "grok_step": grok,
        "time": time_,
        "hold_steps": hold_steps,
        "min_test_acc_after_grok": lowest,
        "dips_after_grok": dips,
        "dips_after_first_95": int((reached < GROK_ACCURACY).sum()),
    }


def summarize(run: GrokRun, settings: OnsetSettings = OnsetSettings()) -> RunSummary:
    """summary.json of a run: config, key, state, events (written next to metrics.csv); for a finished llm
    run that grokked also the end-of-run zeroing outcome (`end_zeroing`)."""
    status = run.status()
    is_llm = run.grok_config.model == "llm"
    summary: RunSummary = {
        "key": run.grok_config.key(run.owner),
        "config": asdict(run.grok_config),
        "state": status.get("state"),
        "message": status.get("message", ""),
        "onset_settings": asdict(settings),
        "owner": run.owner,
        **run_events(
            run.metrics(),
            run.measures(),
            settings,
            run.llm_measures() if is_llm else None,
            hold_steps_of(run.grok_config.stop_after_grok),
        ),
    }
    if is_llm:
        summary["zeroing"] = (
            end_zeroing(run)
            if summary["grokked"] and status.get("state") == "finished" and run.checkpoint_steps()
            else None
        )
    write_json(run.summary_path, summary)
    return summary


def end_zeroing(run: GrokRun, step: int | None = None) -> dict[str, Any]:
    """Zero the super weight(s) of an llm run's checkpoint together, on the full splits: the scan's candidates
    (engine.superweights.detect, as in the first tab), or, when the scan finds none, the top-|w| weight of
    each down projection. llm_measures.zeroing_outcome + "source" and "step". Default checkpoint: of those
    from the grokking step on, the one with the highest test accuracy (a run can spike and lose what it
    learned before it ends), else the last."""
    if step is None:
        metrics = run.metrics()
        saved = run.checkpoint_steps()
        grok = first_reaching(metrics, "test_acc", GROK_ACCURACY)
        acc = metrics.set_index("step")["test_acc"]
        after = [s for s in saved if grok is not None and s >= grok and s in acc.index]
        step = max(after, key=lambda s: (acc[s], s)) if after else saved[-1]
    model = run.load_model(step)
    assert isinstance(model, GrokLlama)
    data = llm_data(run.grok_config)
    candidates, _ = candidate_weights(model, data.prompts(LLM_MEASURE_SETTINGS.scan_prompts), LLM_MEASURE_SETTINGS)
    scan = [c.coord for c in candidates if c.source.startswith("scan")]
    coords, source = (scan, "scan") if scan else ([c.coord for c in candidates], "top|w|")
    return {**zeroing_outcome(model, data, coords), "source": source, "step": step}


def _append_csv(path: Path, frame: pd.DataFrame) -> None:
    """Append rows; to an existing file in its own columns (a run resumed by a newer version stays readable)."""
    if path.exists():
        with open(path) as handle:
            columns = handle.readline().strip().split(",")
        frame.reindex(columns=columns).to_csv(path, mode="a", header=False, index=False)
    else:
        frame.to_csv(path, index=False)


def measure_llm(run: GrokRun, step: int, model: GrokLlama, data: LlmData) -> None:
    """The llm measures of one checkpoint (and the columns of every registered measure with a compute),
    appended to llm_measures.csv (one row, with the seconds they took) and llm_causal.csv."""
    from engine.grokking.measure_registry import REGISTRY

    start = time.perf_counter()
    result = measure_llm_checkpoint(step, model, data, LLM_MEASURE_SETTINGS)
    row = result.summary()
    for spec in REGISTRY.values():
        if spec.compute is not None:
            row.update(spec.compute(model, data, LLM_MEASURE_SETTINGS))
    row["measure_seconds"] = time.perf_counter() - start
    _append_csv(run.llm_measures_path, pd.DataFrame([row]))
    _append_csv(run.llm_causal_path, result.causal.assign(step=step))


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
    owner: str | None = None,
    max_checkpoints: int = MAX_CHECKPOINTS,
) -> RunSummary:
    """Train (or resume, or reopen) one run with the measures at every checkpoint.

    Files go to engine.grokking.runs.open_run(config, root, run_dir, owner). Returns the summary (also in
    summary.json); measure=False skips the measures (for timing). claim: see training.train. An llm run
    gets the llm measures (measure_llm) instead of the small models' ones. At most `max_checkpoints`
    checkpoints stay on disk (training.train).
    """
    validate(config)
    run = open_run(config, root, run_dir, owner)
    cached = run.summary() if run.is_finished() else None
    if cached is not None:
        return cached
    llm_split: list[LlmData] = []

    def on_checkpoint(step: int, model: nn.Module, data: Dataset) -> None:
        if not measure:
            return
        if isinstance(model, GrokLlama):
            if not llm_split:
                llm_split.append(llm_data(config).to(model.device))
            measure_llm(run, step, model, llm_split[0])
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
        owner=owner,
        max_checkpoints=max_checkpoints,
    )
    summary = summarize(result.run)
    summary["seconds"] = result.seconds
    return summary


def load_run(
    config: GrokConfig, root: Path | None = None, owner: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, RunSummary | None]:
    """(metrics, measures, summary) of a saved run, as far as it got (empty when there is none); the
    measures of an llm run are its llm_measures.csv."""
    run = run_for(config, root, owner)
    if config.model == "llm":
        return run.metrics(), run.llm_measures(), run.summary()
    return run.metrics(), run.measures(), run.summary()


# ----------------------------------------------------------------------------------------- sweep


def sweep_configs(base: GrokConfig, seeds: Sequence[int], weight_decays: Sequence[float]) -> list[GrokConfig]:
    return [base.replace(seed=int(s), weight_decay=float(wd)) for wd in weight_decays for s in seeds]


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
    label = MEASURE_LABELS.get(measure, LLM_MEASURE_LABELS.get(measure, measure))
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
    labels = LLM_MEASURE_LABELS if summary["config"].get("model") == "llm" else MEASURE_LABELS
    for m in labels:
        onset, lag = summary["onsets"].get(m), summary["lags"].get(m)
        if onset is None:
            parts.append(f"{labels[m]}: no onset.")
        elif lag is None:
            parts.append(f"{labels[m]}: onset at step {onset}.")
        else:
            parts.append(
                f"{labels[m]}: onset at step {onset}, "
                + (
                    f"{-lag} steps before grokking."
                    if lag < 0
                    else f"{lag} steps after grokking."
                    if lag > 0
                    else "at the grokking step."
                )
            )
    zeroing = summary.get("zeroing")
    if zeroing:
        parts.append(
            f"Zeroing the {zeroing['source']} super weight(s) {zeroing['coords']} at step {zeroing['step']}: "
            f"train accuracy {zeroing['train_acc_before']:.0%} -> {zeroing['train_acc_after']:.0%}, test "
            f"{zeroing['test_acc_before']:.0%} -> {zeroing['test_acc_after']:.0%} ({zeroing['verdict']})."
        )
    return " ".join(parts)
