"""The grokking / super-weight study: does a sink, a massive activation or a super weight form, when, relative to
grokking, and does removing the super-weight candidate change when the model groks?

`python -m engine grok-study` (`make study-grok`): the LLM-shaped model (engine.grokking.llm) on the markov
context (engine.grokking.contexts: a task where attention must sometimes do nothing), arms x seeds
(config.StudyConfig, config.ARM_LABELS). Paired seeds: a seed fixes the split, the initial weights and the
minibatches of all its arms. Runs live in the ordinary run store (cache/grokking/), so the study is cached and
resumable: a finished run reopens, a stopped or killed one resumes from its last checkpoint, and `--report-only`
only writes the report. Training runs in `workers` processes with 1 torch thread each.

The report (`report_dir`): summary.md, runs.csv, PNG figures, study_log.json (wall time of every session).
1. Formation (the positive control, first): in the control arm, per seed, whether the lab's own measures see a
   sink (attention share on BOS above uniform, analysis.llm_onsets) and a massive activation (residual peak at
   BOS / median) form and stay; "formed in k of n seeds".
2. Outcomes per arm: grokked / collapsed / unconfirmed / never (analysis.grok_outcome), Kaplan-Meier of the
   grokking step with censoring, log-rank stratified by seed, paired differences of log grokking step with
   bootstrap intervals (engine.grokking.survival).
3. Manipulation checks: per arm, the massive activation, sink and train loss at the last checkpoint.
4. Onset lags within the control arm (sink, massive activation, super weight, super activation): onset minus
   grokking step, bootstrap interval, sign test; correlational, not causal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.core.executor import ExecutorConfig
from engine.core.figures import chart_png
from engine.core.options import shell_command, to_flags
from engine.core.paths import atomic_write
from engine.core.provenance import git_commit, machine, machine_line, utc_now, versions, versions_line
from engine.grokking import survival
from engine.grokking.analysis import OnsetSettings, summarize
from engine.grokking.config import (
    ARM_LABELS,
    GROK_ACCURACY,
    MEMORISATION_ACCURACY,
    GrokConfig,
    StudyConfig,
    validate_study,
)
from engine.grokking.measure_registry import REGISTRY, label, traces
from engine.grokking.pool import train_all
from engine.grokking.runs import RunSummary, run_for

LAG_MEASURES = ("attention_sink", "massive_activation", "super_weight", "super_activation")
CHECK_COLUMNS = (  # llm_measures.csv columns of the manipulation checks (runs.csv adds the registered traces)
    "resid_bos_over_median",
    "sink_excess_max",
    "sink_head_excess_max",
    "bos_over_median",
    "max_ppl_ratio_train",
)


# ------------------------------------------------------------------------------------------ running


def run_study(
    study: StudyConfig,
    on_run: Callable[[GrokConfig, RunSummary | None, str], None] | None = None,
    executor: ExecutorConfig | None = None,
) -> float:
    """Train every run of the study that is not finished yet (engine.grokking.pool.train_all: in
    study.workers processes, or on Ray workers when `executor` says ray); returns the wall seconds of this
    session (also appended to study_log.json)."""
    validate_study(study)
    configs = study.configs()
    root = Path(study.root) if study.root else None
    todo = [c for c in configs if not run_for(c, root).is_finished()]
    start, t0 = time.time(), time.perf_counter()
    errors = []
    if todo:
        trained = train_all(todo, executor=executor, workers=study.workers, root=root, threads=1, on_run=on_run)
        errors = trained.errors
    seconds = time.perf_counter() - t0
    _log_session(Path(study.report_dir), start, seconds, len(todo), len(errors))
    return seconds


def _log_session(report_dir: Path, start: float, seconds: float, n_trained: int, n_failed: int) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "study_log.json"
    log = json.loads(path.read_text()) if path.exists() else []
    log.append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) + " UTC",
            "seconds": round(seconds, 1),
            "runs_trained": n_trained,
            "runs_failed": n_failed,
        }
    )
    atomic_write(path, json.dumps(log, indent=1).encode())


# ------------------------------------------------------------------------------------------ tables


def study_table(study: StudyConfig, settings: OnsetSettings = OnsetSettings()) -> pd.DataFrame:
    """One row per run: arm, seed, outcome and survival time/event, events, onsets of every registered measure
    (measure_registry), the largest and last-checkpoint values of `_value_columns()`, the zeroing verdict, state
    and training seconds."""
    root = Path(study.root) if study.root else None
    rows = []
    for arm, config in study.runs():
        run = run_for(config, root)
        summary = summarize(run, settings) if run.is_finished() else None  # with the current onset rules
        metrics = run.metrics()
        row: dict[str, Any] = {
            "arm": arm,
            "seed": config.seed,
            "run_id": run.run_id,
            "state": run.status().get("state", "new"),
            "train_seconds": float(metrics["elapsed_s"].iloc[-1]) if len(metrics) else np.nan,
        }
        if summary is not None:
            measures = run.llm_measures()
            zeroing = summary.get("zeroing") or {}
            row.update(
                {
                    "outcome": summary["outcome"],
                    "event": summary["outcome"] == "grokked",
                    "time": summary["time"],
                    "grokked": bool(summary["grokked"]),
                    "grok_step": summary["grok_step"],
                    "grok_95_step": summary["grok_95_step"],
                    "memorisation_step": summary["memorisation_step"],
                    "last_step": summary["last_step"],
                    "final_train_acc": summary["final_train_acc"],
                    "final_test_acc": summary["final_test_acc"],
                    "min_test_acc_after_grok": summary["min_test_acc_after_grok"],
                    "dips_after_grok": summary.get("dips_after_grok", 0),
                    "dips_after_first_95": summary.get("dips_after_first_95", 0),
                    "final_train_loss": float(metrics["train_loss"].iloc[-1]),
                    "loss_spike": _loss_spike(metrics),
                    "zeroing_verdict": zeroing.get("verdict"),
                    **{f"onset_{m}": summary["onsets"].get(m) for m in REGISTRY},
                }
            )
            for column in _value_columns():
                values = measures[column] if column in measures else pd.Series(dtype=float)
                row[f"max_{column}"] = float(values.max()) if len(values) else np.nan
                row[f"last_{column}"] = float(values.iloc[-1]) if len(values) else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ["outcome", "event", "time", "grokked", "grok_step", *[f"onset_{m}" for m in REGISTRY]]:
        if column not in frame:
            frame[column] = np.nan
    return frame


def _value_columns() -> list[str]:
    """The columns whose largest and last-checkpoint values the runs table holds: CHECK_COLUMNS, then every
    registered measure's trace column (measure_registry.traces) not among them."""
    return list(dict.fromkeys([*CHECK_COLUMNS, *traces()]))


def _loss_spike(metrics: pd.DataFrame) -> bool:
    """Whether train accuracy fell back below 50% after memorisation (a loss spike)."""
    memorised = metrics.loc[metrics["train_acc"] >= MEMORISATION_ACCURACY, "step"]
    return bool(len(memorised) and (metrics.loc[metrics["step"] > memorised.iloc[0], "train_acc"] < 0.5).any())


def finished(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (with an outcome), time and event typed for survival."""
    done = table[table["outcome"].notna()].copy()
    done["time"] = done["time"].astype(float)
    done["event"] = done["event"].astype(bool)
    return done


def formation_table(table: pd.DataFrame, arm: str = "control") -> pd.DataFrame:
    """Per finished run of `arm`: whether a sink and a massive activation formed (an onset: on at a checkpoint
    and at every later one), their onsets and largest values, and the run's outcome."""
    done = finished(table)
    part = done[done["arm"] == arm]
    return pd.DataFrame(
        {
            "seed": part["seed"],
            "sink_formed": part["onset_attention_sink"].notna(),
            "sink_onset": part["onset_attention_sink"],
            "max_sink_excess": part.get("max_sink_excess_max"),
            "max_head_sink_excess": part.get("max_sink_head_excess_max"),
            "massive_formed": part["onset_massive_activation"].notna(),
            "massive_onset": part["onset_massive_activation"],
            "max_resid_bos_over_median": part.get("max_resid_bos_over_median"),
            "super_weight_onset": part["onset_super_weight"],
            "outcome": part["outcome"],
            "grok_step": part["grok_step"],
        }
    ).reset_index(drop=True)


@dataclass
class ArmOutcomes:
    """Outcome counts of one arm and its Kaplan-Meier curve of P(grokked by step t)."""

    arm: str
    n: int
    counts: dict[str, int]
    km: pd.DataFrame
    median_step: float | None  # first KM step with P(grokked) >= 0.5 (None when it never gets there)


def arm_outcomes(table: pd.DataFrame) -> list[ArmOutcomes]:
    done = finished(table)
    out = []
    for arm in dict.fromkeys(done["arm"]):
        part = done[done["arm"] == arm]
        km = survival.kaplan_meier(part["time"].to_numpy(), part["event"].to_numpy())
        half = km.loc[km["grokked"] >= 0.5, "step"] if len(km) else pd.Series(dtype=float)
        counts = {o: int((part["outcome"] == o).sum()) for o in ("grokked", *survival.CENSORED_OUTCOMES)}
        out.append(ArmOutcomes(arm, len(part), counts, km, float(half.iloc[0]) if len(half) else None))
    return out


COMPARISONS = (
    ("zero_tracked", "zero_random"),
    ("zero_tracked", "control"),
    ("zero_random", "control"),
    ("nothing_forms", "control"),
)


def comparisons(table: pd.DataFrame) -> list[tuple[survival.LogRank | None, survival.PairedLogDifference]]:
    """For each pair of COMPARISONS present in the table: stratified log-rank and paired log differences."""
    done = finished(table)
    arms = set(done["arm"])
    return [
        (survival.logrank(done, a, b), survival.paired_log_differences(done, a, b))
        for a, b in COMPARISONS
        if a in arms and b in arms
    ]


def onset_lags(table: pd.DataFrame, arm: str = "control") -> list[survival.OnsetLag]:
    """Onset - grokking step of LAG_MEASURES over the grokked runs of `arm` (correlational)."""
    done = finished(table)
    grokked = done[(done["arm"] == arm) & done["event"]]
    out = []
    for m in LAG_MEASURES:
        lags = (grokked[f"onset_{m}"] - grokked["grok_step"]).dropna().to_numpy(dtype=float)
        out.append(survival.onset_lag(lags, len(grokked), m))
    return out


# ------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def command_line(study: StudyConfig) -> str:
    """The CLI command that reproduces the study (flags only where they differ from the defaults)."""
    return shell_command("python -m engine grok-study", to_flags(study, skip=("report_only",)))


def _figures(study: StudyConfig, table: pd.DataFrame, outcomes: list[ArmOutcomes], out: Path) -> list[str]:
    """PNG figures (Altair + vl-convert): test accuracy of every run per arm, Kaplan-Meier curves, measure traces."""
    import altair as alt

    root = Path(study.root) if study.root else None
    written = []

    def save(chart: alt.TopLevelMixin, name: str) -> None:
        (out / name).write_bytes(chart_png(chart))
        written.append(name)

    curves, drawn = [], []
    trace_labels = traces()  # column -> label of every registered measure's trace
    for arm, config in study.runs():
        run = run_for(config, root)
        metrics = run.metrics()
        if len(metrics):
            curves.append(metrics[["step", "train_acc", "test_acc"]].assign(seed=config.seed, arm=arm))
        measures = run.llm_measures()
        present = [c for c in trace_labels if c in measures]
        if len(measures) and present:
            part = measures[["step", *present]].melt("step", var_name="measure")
            drawn.append(part.assign(arm=arm, run=f"{arm} seed {config.seed}"))
    if curves:
        frame = pd.concat(curves).melt(id_vars=["step", "seed", "arm"], value_vars=["train_acc", "test_acc"])
        frame["run"] = "seed " + frame["seed"].astype(str) + " " + frame["variable"]
        chart = (
            alt.Chart(frame)
            .mark_line(opacity=0.7)
            .encode(
                x="step:Q",
                y=alt.Y("value:Q", title="accuracy"),
                color="seed:N",
                strokeDash=alt.StrokeDash("variable:N", title="split"),
                detail="run:N",
            )
            .properties(width=260, height=180)
            .facet(facet=alt.Facet("arm:N", title=None), columns=2)
            .properties(title="Train (dashed) and test accuracy of every run, per arm")
        )
        save(chart, "accuracy_curves.png")
    km = [o.km.assign(arm=o.arm) for o in outcomes if len(o.km)]
    if km:
        frame = pd.concat(km)
        chart = (
            alt.Chart(frame)
            .mark_line(interpolate="step-after", point=True)
            .encode(
                x=alt.X("step:Q", title="step"),
                y=alt.Y("grokked:Q", title="P(grokked and held by step), Kaplan-Meier", scale=alt.Scale(domain=[0, 1])),
                color="arm:N",
            )
            .properties(width=360, height=240, title="Grokking step with censoring, per arm")
        )
        save(chart, "kaplan_meier.png")
    if drawn:
        frame = pd.concat(drawn)
        frame["measure"] = frame["measure"].map(trace_labels)
        chart = (
            alt.Chart(frame)
            .mark_line(opacity=0.6)
            .encode(
                x="step:Q",
                y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                color="arm:N",
                detail="run:N",
            )
            .properties(width=240, height=170)
            .facet(facet=alt.Facet("measure:N", title=None), columns=2)
            .resolve_scale(y="independent")
            .properties(title="Sink, massive activation and super-weight measures at every checkpoint")
        )
        save(chart, "measures.png")
    return written


def write_report(study: StudyConfig, settings: OnsetSettings = OnsetSettings()) -> Path:
    """summary.md, runs.csv and the figures of the study's cached runs (unfinished runs are listed as such)."""
    out = Path(study.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = study_table(study, settings)
    atomic_write(out / "runs.csv", table.to_csv(index=False).encode())
    formation = formation_table(table)
    outcomes = arm_outcomes(table)
    tests = comparisons(table)
    lags = onset_lags(table)
    figures = _figures(study, table, outcomes, out)
    log_path = out / "study_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    wall = sum(entry["seconds"] for entry in log)
    n_total, n_done = len(table), int(table["outcome"].notna().sum())
    base = study.base()
    lines = ["# Sinks, massive activations, super weights and grokking: the study", ""]
    lines += ["## Answer", "", _answer(formation, tests, lags, outcomes, settings), ""]
    lines += ["## 1. Formation check (positive control): does anything form in the control arm?", ""]
    lines += _formation_lines(formation, settings)
    lines += ["", "## 2. Outcomes per arm (censored, never dropped)", ""]
    lines += _outcome_lines(outcomes, table)
    lines += ["", "## 3. Arms compared on paired seeds", ""]
    lines += _comparison_lines(tests)
    lines += ["", "## 4. Manipulation checks (last checkpoint; median over finished runs)", ""]
    lines += _manipulation_lines(table)
    lines += ["", "## 5. Onset vs grokking step in the control arm (correlational)", ""]
    lines += _lag_lines(lags)
    lines += ["", "## 6. Every registered measure: runs with an onset, per arm", ""]
    lines += _registry_lines(table)
    lines += ["", "## Setup", ""]
    lines += [
        f"- Task, model and training: {base.describe().replace(f', seed {base.seed}', '')}.",
        f"- Arms: {'; '.join(f'{a} = {ARM_LABELS[a]}' for a in study.arms)}. Seeds {list(study.seeds)}: a seed "
        "fixes the split, initial weights and minibatches of every arm (paired).",
        f"- The tracked candidate (engine/grokking/zeroing.py): every {study.zero_every} steps, on the sequence "
        "[BOS], the layer whose down projection writes the largest |y| at BOS, its row = argmax |y|, its column = "
        "argmax |x| of the down projection's input; the random arm zeroes one uniformly drawn weight of that matrix.",
        f"- Step cap {study.steps}; evaluation every {study.eval_every} steps; measures at every checkpoint "
        f"({study.checkpoint_every} steps); a run goes on {study.stop_after_grok} steps after test accuracy last rose "
        "to 95% (a dip below and a new rise restart the count; -1: to the cap).",
        f"- Runs finished: {n_done} of {n_total}" + ("." if n_done == n_total else " (the rest not trained yet)."),
        f"- Command: `{command_line(study)}` (or `make study-grok`); report only: add `--report-only`.",
        f"- Wall time: {wall / 60:.1f} min over {len(log)} session(s) with {study.workers} worker processes "
        f"(1 torch thread each); training time summed over runs: {table['train_seconds'].sum() / 60:.1f} min.",
        f"- Machine: {machine_line(machine())}; shared with other work while the study ran.",
        f"- Versions: {versions_line(versions(), git_commit())}; report written {utc_now()}.",
        "- The earlier study on the 5-token task alone: study_5token_nothing_forms.md (no sink, no massive "
        "activation, no super weight formed there).",
        "",
        "## Runs",
        "",
        _markdown_table(table),
        "",
    ]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    lines += [
        "## Definitions",
        "",
        f"- Grokked at the first evaluation from which test accuracy stays >= {GROK_ACCURACY:.0%} at every "
        f"evaluation of the next {min(200, base.stop_after_grok)} steps (the hold window). Collapsed: reached it "
        "but fell below inside every window the run observed; never: not reached by the cap; unconfirmed: the run "
        "ended inside the window of its latest rise. The three are censored at the run's last step. Dips below "
        "95% after the first rise and after grokking are counted in the outcome table, never hidden.",
        f"- Sink: attention share on BOS (mean over heads, queries 1..T-1, examples) minus the share uniform causal "
        f"attention gives, max over layers, >= {settings.sink_excess:g} and staying so at every later checkpoint.",
        f"- Massive activation: max |h| of the residual stream at BOS / median |h|, max over layers, >= "
        f"{settings.massive_ratio:g} and staying so.",
        "- Super weight: a candidate of the first tab's super-weight scan whose zeroing raises the split's "
        "perplexity >= 2x or drops its accuracy by > 10 points while zeroing 5 random weights does not.",
        "- Statistics: Kaplan-Meier (scipy.stats.ecdf on CensoredData), log-rank stratified by seed "
        "(statsmodels survdiff), paired log-step differences with BCa bootstrap intervals (scipy.stats.bootstrap), "
        "sign test (scipy.stats.binomtest).",
        "",
    ]
    atomic_write(out / "summary.md", "\n".join(lines).encode())
    return out / "summary.md"


def holm_log_rank(tests: list[tuple[survival.LogRank | None, survival.PairedLogDifference]]) -> list[float | None]:
    """Holm-adjusted stratified log-rank p of each arm comparison (the family: every comparison with a test;
    statsmodels multipletests); None where no test ran (no event)."""
    from statsmodels.stats.multitest import multipletests

    ps = [rank.p for rank, _ in tests if rank is not None and np.isfinite(rank.p)]
    adjusted = iter(multipletests(ps, method="holm")[1].tolist() if ps else [])
    return [next(adjusted) if rank is not None and np.isfinite(rank.p) else None for rank, _ in tests]


def _answer(
    formation: pd.DataFrame,
    tests: list[tuple[survival.LogRank | None, survival.PairedLogDifference]],
    lags: list[survival.OnsetLag],
    outcomes: list[ArmOutcomes],
    settings: OnsetSettings,
) -> str:
    """The verdict in words, generated from the numbers (no free text)."""
    n = len(formation)
    if not n:
        return "No control run has finished yet."
    sink, massive = int(formation["sink_formed"].sum()), int(formation["massive_formed"].sum())
    passed = n >= 4 and min(sink, massive) >= 3
    parts = [
        f"In the control arm a sink formed in {sink} of {n} seeds and a massive activation in {massive} of {n} "
        f"(formation check {'passed' if passed else 'not passed'}: >= 3 of 4 seeds needed)."
    ]
    if not passed:
        parts.append(
            "Caveat: without a sink and massive activation that form, zeroing the tracked candidate removes the "
            "weight that writes the largest BOS activation, not a formed super weight; an effect on grokking would "
            "not show that super weights drive it, and no effect would not show that they do not."
        )
    for lag in lags:
        if lag.n_with_onset:
            when = "before" if lag.high < 0 else "after" if lag.low > 0 else "with (interval includes 0)"
            parts.append(
                f"{label(lag.measure)}: formed {when} grokking, mean lag {_fmt(lag.mean)} steps "
                f"[95% CI {_fmt(lag.low)}, {_fmt(lag.high)}] over {lag.n_with_onset} of {lag.n_grokked} grokked runs."
            )
        else:
            parts.append(f"{label(lag.measure)}: no onset in any grokked control run.")
    holm = holm_log_rank(tests)
    random_vs_control = next(
        (d for _, d in tests if d.arm == "zero_random" and d.reference == "control" and d.n_both), None
    )
    for (rank, diff), p_holm in zip(tests, holm):
        if diff.arm != "zero_tracked":
            continue
        if diff.n_both:
            factor, low, high = np.exp(diff.mean), np.exp(diff.low), np.exp(diff.high)
            significant = p_holm is not None and p_holm < 0.05
            direction = "delays" if diff.low > 0 else "speeds up" if diff.high < 0 else None
            if direction and significant:
                verdict = direction
            elif direction:
                verdict = {"delays": "may delay", "speeds up": "may speed up"}[direction] + (
                    " (the interval excludes x1; the log-rank test is not significant after Holm)"
                )
            else:
                verdict = "does not measurably change"
            sentence = (
                f"Zeroing the tracked candidate {verdict} grokking against {diff.reference}: grokking step x"
                f"{factor:.2f} [95% CI x{low:.2f}, x{high:.2f}] over {diff.n_both} seeds where both grokked"
                + (f", stratified log-rank p = {rank.p:.3f} (Holm over the {len(tests)} comparisons: "
                   f"{p_holm:.3f})" if rank else "")
                + f"; {diff.n_reference_only} seed(s) grokked only in {diff.reference}, "
                f"{diff.n_arm_only} only with zeroing."
            )
            if diff.reference == "control" and random_vs_control is not None:
                sentence += (
                    f" Zeroing a random weight of the same matrix gives x{np.exp(random_vs_control.mean):.2f} "
                    f"[x{np.exp(random_vs_control.low):.2f}, x{np.exp(random_vs_control.high):.2f}] against the "
                    "control, so the matched contrast (tracked vs random) is the one that isolates the candidate."
                )
            parts.append(sentence)
        else:
            parts.append(f"Zeroing vs {diff.reference}: no seed grokked in both arms ({diff.n_pairs} pairs).")
    for o in outcomes:
        censored = {k: v for k, v in o.counts.items() if k != "grokked" and v}
        if censored:
            parts.append(
                f"{o.arm}: {o.counts['grokked']} of {o.n} grokked; censored: "
                + ", ".join(f"{v} {k}" for k, v in censored.items())
                + "."
            )
    parts.append("Onset lags are correlational: they say when things form, not that one causes the other.")
    return " ".join(parts)


def _formation_lines(formation: pd.DataFrame, settings: OnsetSettings) -> list[str]:
    if not len(formation):
        return ["No finished control run."]
    lines = [
        f"Sink = attention on BOS above uniform >= {settings.sink_excess:g}; massive activation = residual |h| at "
        f"BOS / median >= {settings.massive_ratio:g}; both must stay on at every later checkpoint.",
        "",
        "| seed | sink formed (onset) | max sink excess (one head) | massive activation formed (onset) | max residual "
        "BOS / median | super weight onset | outcome | grokking step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in formation.iterrows():
        lines.append(
            f"| {r['seed']} | {'yes' if r['sink_formed'] else 'no'} ({_fmt(r['sink_onset'])}) | "
            f"{_fmt(r['max_sink_excess'], 2)} ({_fmt(r['max_head_sink_excess'], 2)}) | "
            f"{'yes' if r['massive_formed'] else 'no'} "
            f"({_fmt(r['massive_onset'])}) | "
            f"{_fmt(r['max_resid_bos_over_median'], 1)} | {_fmt(r['super_weight_onset'])} | {r['outcome']} | "
            f"{_fmt(r['grok_step'])} |"
        )
    lines += [
        "",
        f"Formed: sink in {int(formation['sink_formed'].sum())} of {len(formation)} seeds, massive activation in "
        f"{int(formation['massive_formed'].sum())} of {len(formation)}.",
    ]
    return lines


def _outcome_lines(outcomes: list[ArmOutcomes], table: pd.DataFrame) -> list[str]:
    lines = [
        "| arm | runs | grokked (held) | collapsed | never | unconfirmed | KM median grokking step | "
        "P(grokked by the last event) | runs that dipped below 95% after first reaching it | "
        "grokked runs that dipped after grokking | lowest test accuracy after grokking |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        last = float(o.km["grokked"].iloc[-1]) if len(o.km) else 0.0
        part = table[(table["arm"] == o.arm) & table["outcome"].notna()]
        dipped = int((part.get("dips_after_first_95", pd.Series(dtype=float)).fillna(0) > 0).sum())
        grokked = part[part["outcome"] == "grokked"]
        dipped_after = int((grokked.get("dips_after_grok", pd.Series(dtype=float)).fillna(0) > 0).sum())
        lowest = grokked.get("min_test_acc_after_grok", pd.Series(dtype=float)).min()
        lines.append(
            f"| {o.arm} | {o.n} | {o.counts['grokked']} | {o.counts['collapsed']} | {o.counts['never']} | "
            f"{o.counts['unconfirmed']} | {_fmt(o.median_step)} | {last:.2f} | {dipped} | {dipped_after} | "
            f"{_fmt(lowest, 3)} |"
        )
    return lines


def _comparison_lines(tests: list[tuple[survival.LogRank | None, survival.PairedLogDifference]]) -> list[str]:
    if not tests:
        return ["Fewer than two arms finished."]
    lines = [
        "Log-rank stratified by seed (censored runs in the risk sets); paired difference d = log(step in arm) - "
        "log(step in reference) over seeds where both grokked, shown as a factor exp(d) with a BCa bootstrap 95% "
        "interval (with 5-6 pairs the BCa interval is approximate; the log-rank test, Holm-adjusted over the "
        "comparisons shown, decides the verdict words); the other pairs counted.",
        "",
        "| arm vs reference | log-rank chi2 (p) | p, Holm over the comparisons | factor on the grokking step "
        "[95% CI] | both grokked | only arm | only reference | neither |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (rank, d), p_holm in zip(tests, holm_log_rank(tests)):
        lr = f"{rank.chi2:.2f} ({rank.p:.3f}) | {_fmt(p_holm, 3)}" if rank else "n/a (no event) | n/a"
        factor = (
            f"x{np.exp(d.mean):.2f} [x{np.exp(d.low):.2f}, x{np.exp(d.high):.2f}]" if np.isfinite(d.mean) else "n/a"
        )
        lines.append(
            f"| {d.arm} vs {d.reference} | {lr} | {factor} | {d.n_both} | {d.n_arm_only} | {d.n_reference_only} | "
            f"{d.n_neither} |"
        )
    return lines


def _manipulation_lines(table: pd.DataFrame) -> list[str]:
    done = finished(table)
    if not len(done):
        return ["No finished run."]
    lines = [
        "Does zeroing remove the massive activation / sink, and does the train loss otherwise track the control?",
        "",
        "| arm | residual BOS / median | sink excess | down-proj BOS / median | final train loss | final train acc |",
        "|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(done["arm"]):
        part = done[done["arm"] == arm]
        med = {c: part[f"last_{c}"].median() if f"last_{c}" in part else np.nan for c in CHECK_COLUMNS}
        lines.append(
            f"| {arm} | {_fmt(med['resid_bos_over_median'], 1)} | {_fmt(med['sink_excess_max'], 2)} | "
            f"{_fmt(med['bos_over_median'], 1)} | {_fmt(part['final_train_loss'].median(), 3)} | "
            f"{_fmt(part['final_train_acc'].median(), 3)} |"
        )
    return lines


def _lag_lines(lags: list[survival.OnsetLag]) -> list[str]:
    lines = [
        "lag = onset - grokking step (negative: formed first); bootstrap 95% interval of the mean; sign test of "
        "before vs after (two-sided). A lag says when, not why.",
        "",
        "| measure | grokked runs with onset | mean lag [95% CI] | median | before / after / same | sign test p |",
        "|---|---|---|---|---|---|",
    ]
    for lag in lags:
        lines.append(
            f"| {_cell(label(lag.measure))} | {lag.n_with_onset} of {lag.n_grokked} | {_fmt(lag.mean)} "
            f"[{_fmt(lag.low)}, {_fmt(lag.high)}] | {_fmt(lag.median)} | {lag.n_before} / {lag.n_after} / "
            f"{lag.n_same} | {_fmt(lag.p_sign, 3)} |"
        )
    return lines


def _cell(text: str) -> str:
    """Text for a markdown table cell (a | inside it would split the cell)."""
    return text.replace("|", "\\|")


def _registry_lines(table: pd.DataFrame) -> list[str]:
    """Per registered measure (engine.grokking.measure_registry) and arm: finished runs with an onset, median onset."""
    done = finished(table)
    arms = list(dict.fromkeys(done["arm"]))
    lines = ["| measure | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in REGISTRY:
        cells = []
        for arm in arms:
            onsets = done.loc[done["arm"] == arm, f"onset_{name}"].dropna()
            n = int((done["arm"] == arm).sum())
            cells.append(f"{len(onsets)} of {n}" + (f" (median {onsets.median():.0f})" if len(onsets) else ""))
        lines.append(f"| {_cell(label(name))} | " + " | ".join(cells) + " |")
    return lines


RUN_COLUMNS = (  # the report's runs table: these, then per measure with a trace its onset and largest value
    "arm",
    "seed",
    "state",
    "outcome",
    "memorisation_step",
    "grok_95_step",
    "time",
    "final_test_acc",
    "min_test_acc_after_grok",
)


def _markdown_table(table: pd.DataFrame) -> str:
    """The report's runs table: RUN_COLUMNS, the onset of every registered measure with a trace and its trace
    column's largest value (measure_registry), and the training seconds."""
    traced = [spec for spec in REGISTRY.values() if spec.trace is not None]
    columns = [
        *RUN_COLUMNS,
        *[f"onset_{spec.name}" for spec in traced],
        *[f"max_{spec.trace[0]}" for spec in traced if spec.trace is not None],
        "train_seconds",
    ]
    frame = table[[c for c in columns if c in table]].copy()
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("" if not np.isfinite(value) else f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
