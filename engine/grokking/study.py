"""The study of issue 14: is there a connection between super weights and grokking?

`python -m engine grok-study` (`make study-grok`): the LLM-shaped model (engine.grokking.llm) over seeds x
weight decays, each as a control run and a run with super-weight suppression (same seed, same split,
same initial weights; engine.grokking.suppression), with the llm measures at every checkpoint
(engine.grokking.analysis). Runs live in the ordinary run store (cache/grokking/), so the study is
cached and resumable: a finished run reopens, a stopped or killed one resumes from its last checkpoint,
and a second invocation (or `--report-only`) only writes the report. A run that does not reach 95% test
accuracy within the step cap counts as "not grokked", never as missing.

Training runs in `workers` processes with 1 torch thread each. The report (`report_dir`, default
reports/grokking/) holds summary.md (the answer in words with numbers), runs.csv, PNG figures (Altair,
vl-convert) and study_log.json (wall time of every session that trained).

Statistics (scipy):
- onset of a measure vs the grokking step, over the control runs that grokked and show the onset:
  paired differences lag = onset - grok_95 (mean with a t 95% interval, median), Pearson r of onset vs
  grokking step with its 95% interval (Fisher z), and a two-sided sign test of "onset before grokking"
  (engine.grokking.analysis.connection);
- suppression's effect on the grokking step: paired differences d = grok_95(suppressed) - grok_95(control)
  over the (seed, weight decay) pairs where both grokked, mean with a t 95% interval, and a Wilcoxon
  signed-rank test; the pairs where only one grokked are counted separately;
- end-of-run zeroing outcome: the verdicts of llm_measures.zeroing_outcome over grokked runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.core.figures import chart_png
from engine.core.options import shell_command, to_flags
from engine.core.paths import atomic_write
from engine.core.provenance import git_commit, machine, machine_line, utc_now, versions, versions_line
from engine.grokking.analysis import connection, connection_found, run_experiment, summarize
from engine.grokking.config import (
    GROK_ACCURACY,
    LLM_MEASURE_LABELS,
    LLM_MEASURES,
    MEMORISATION_ACCURACY,
    GrokConfig,
    StudyConfig,
    validate,
    validate_sweep,
)
from engine.grokking.runs import RunSummary, run_for

ARMS = ("control", "suppression")
TRACE_COLUMNS = {  # llm_measures.csv columns drawn against the steps from grokking
    "max_ppl_ratio_train": "max perplexity ratio, train (fires >= 2)",
    "max_ppl_ratio_test": "max perplexity ratio, test (fires >= 2)",
    "bos_over_median": "BOS activation / median",
    "sink_share_max": "attention share on BOS (max layer)",
    "n_key_frequencies": "key Fourier frequencies",
    "n_scan_candidates": "super-weight scan candidates",
}


# ------------------------------------------------------------------------------------------ running


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["LAB_GROK_THREADS"] = "1"


def _run_one(config: GrokConfig, root: str | None) -> RunSummary:
    return run_experiment(config, root=Path(root) if root else None, threads=1)


def run_study(study: StudyConfig, on_run: Callable[[GrokConfig, RunSummary | None, str], None] | None = None) -> float:
    """Train every run of the study that is not finished yet (in study.workers processes); returns the
    wall seconds of this session (also appended to study_log.json)."""
    configs = study.configs()
    validate_sweep(len(configs))
    for config in configs:
        validate(config)
    root = Path(study.root) if study.root else None
    todo = [c for c in configs if not run_for(c, root).is_finished()]
    start, t0 = time.time(), time.perf_counter()
    errors = []
    if todo:
        if study.workers <= 1:
            _worker_init()
            for config in todo:
                summary = _run_one(config, study.root)
                if on_run:
                    on_run(config, summary, "")
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(study.workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = {pool.submit(_run_one, c, study.root): c for c in todo}
                for future in as_completed(futures):
                    config = futures[future]
                    try:
                        summary = future.result()
                        error = ""
                    except Exception as err:  # noqa: BLE001 - one failed run must not end the study
                        summary, error = None, f"{type(err).__name__}: {err}"
                        errors.append((config, error))
                    if on_run:
                        on_run(config, summary, error)
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


def study_table(study: StudyConfig) -> pd.DataFrame:
    """One row per run of the study: seed, weight decay, arm, events, onsets, zeroing verdict, state."""
    root = Path(study.root) if study.root else None
    rows = []
    for config in study.configs():
        run = run_for(config, root)
        summary = summarize(run) if run.is_finished() else None  # with the current onset rules
        metrics = run.metrics()
        row: dict[str, Any] = {
            "seed": config.seed,
            "weight_decay": config.weight_decay,
            "arm": ARMS[int(config.suppress)],
            "run_id": run.run_id,
            "state": run.status().get("state", "new"),
            "train_seconds": float(metrics["elapsed_s"].iloc[-1]) if len(metrics) else np.nan,
        }
        if summary is None:
            rows.append(row)
            continue
        zeroing = summary.get("zeroing") or {}
        row.update(
            {
                "loss_spike": _loss_spike(metrics),
                "memorisation_step": summary["memorisation_step"],
                "grok_95_step": summary["grok_95_step"],
                "grokked": bool(summary["grokked"]),
                "last_step": summary["last_step"],
                "final_train_acc": summary["final_train_acc"],
                "final_test_acc": summary["final_test_acc"],
                "zeroing_verdict": zeroing.get("verdict"),
                "zeroing_step": zeroing.get("step"),
                "zeroing_train_before": zeroing.get("train_acc_before"),
                "zeroing_test_before": zeroing.get("test_acc_before"),
                "zeroing_source": zeroing.get("source"),
                "zeroing_train_acc": zeroing.get("train_acc_after"),
                "zeroing_test_acc": zeroing.get("test_acc_after"),
                **{f"onset_{m}": summary["onsets"].get(m) for m in LLM_MEASURES},
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ["grokked", "grok_95_step", *[f"onset_{m}" for m in LLM_MEASURES]]:
        if column not in frame:
            frame[column] = np.nan
    return frame


def _loss_spike(metrics: pd.DataFrame) -> bool:
    """Whether train accuracy fell back below 50% after memorisation (a loss spike)."""
    memorised = metrics.loc[metrics["train_acc"] >= MEMORISATION_ACCURACY, "step"]
    return bool(len(memorised) and (metrics.loc[metrics["step"] > memorised.iloc[0], "train_acc"] < 0.5).any())


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of a t 95% interval (NaN bounds with fewer than 2 values)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else np.nan
    if len(values) < 2 or np.ptp(values) == 0:
        return mean, mean if len(values) else np.nan, mean if len(values) else np.nan
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


@dataclass
class MeasureConnection:
    """Onset of one llm measure vs the grokking step over the finished control runs."""

    measure: str
    n_runs: int
    n_grokked: int
    n_with_onset: int
    mean_lag: float
    lag_low: float
    lag_high: float
    median_lag: float | None
    n_before: int
    n_after: int
    n_same: int
    r: float | None
    r_low: float | None
    r_high: float | None
    p_sign: float | None
    found: bool
    n_not_grokked_with_onset: int
    n_not_grokked: int


def measure_connections(table: pd.DataFrame, arm: str = "control") -> list[MeasureConnection]:
    """Per llm measure, onset vs grokking step over the finished runs of one arm (see the module docstring)."""
    done = table[(table["arm"] == arm) & table["grokked"].notna()]
    out = []
    for m in LLM_MEASURES:
        sub = pd.DataFrame(
            {
                "grokked": done["grokked"].astype(bool),
                "grok_95_step": done["grok_95_step"],
                "onset_step": done[f"onset_{m}"],
            }
        )
        sub["lag"] = sub["onset_step"] - sub["grok_95_step"]
        stats_ = connection(sub)
        lags = sub.loc[sub["grokked"], "lag"].dropna().to_numpy(dtype=float)
        mean, low, high = _t_interval(lags)
        out.append(
            MeasureConnection(
                measure=m,
                n_runs=stats_.n_runs,
                n_grokked=stats_.n_grokked,
                n_with_onset=stats_.n_with_onset,
                mean_lag=mean,
                lag_low=low,
                lag_high=high,
                median_lag=stats_.median_lag,
                n_before=stats_.n_before,
                n_after=stats_.n_after,
                n_same=stats_.n_same,
                r=stats_.r,
                r_low=stats_.ci_low,
                r_high=stats_.ci_high,
                p_sign=stats_.p_sign,
                found=connection_found(stats_),
                n_not_grokked_with_onset=stats_.n_not_grokked_with_onset,
                n_not_grokked=stats_.n_not_grokked,
            )
        )
    return out


@dataclass
class SuppressionEffect:
    """Grokking step with suppression minus without, paired over (seed, weight decay)."""

    n_pairs: int  # pairs with both runs finished
    n_both_grokked: int
    n_control_only: int  # control grokked, suppressed run did not
    n_suppressed_only: int
    n_neither: int
    mean_diff: float
    diff_low: float
    diff_high: float
    median_diff: float | None
    p_wilcoxon: float | None
    diffs: list[float]
    p_mcnemar: float | None = None  # exact McNemar: control-only vs suppressed-only grokked pairs
    capped_mean: float = np.nan  # paired difference with "not grokked" set to the step cap: a lower bound
    capped_low: float = np.nan
    capped_high: float = np.nan


def suppression_effect(table: pd.DataFrame, cap: int | None = None) -> SuppressionEffect:
    """Paired differences of grok_95 (suppressed - control) over the pairs where both grokked (t 95% CI,
    Wilcoxon signed-rank); pairs where only one arm grokked are counted, not dropped silently, and enter
    an exact McNemar test (binomial test of the discordant pairs) and a capped difference (a run that did
    not grok counted at the step cap `cap`: a lower bound on the delay when suppression prevents grokking)."""
    from scipy import stats

    done = table[table["grokked"].notna()]
    keys = ["seed", "weight_decay"]
    control = done[done["arm"] == "control"][[*keys, "grokked", "grok_95_step"]]
    suppressed = done[done["arm"] == "suppression"][[*keys, "grokked", "grok_95_step"]]
    pairs = control.merge(suppressed, on=keys, suffixes=("_c", "_s"))
    if not len(pairs):
        return SuppressionEffect(0, 0, 0, 0, 0, np.nan, np.nan, np.nan, None, None, [])
    g_c = pairs["grokked_c"].astype(bool)
    g_s = pairs["grokked_s"].astype(bool)
    both = pairs[g_c & g_s]
    diffs = (both["grok_95_step_s"] - both["grok_95_step_c"]).to_numpy(dtype=float)
    mean, low, high = _t_interval(diffs)
    p = None
    if len(diffs) >= 2 and np.any(diffs != 0):
        p = float(stats.wilcoxon(diffs).pvalue)
    n_c_only, n_s_only = int((g_c & ~g_s).sum()), int((~g_c & g_s).sum())
    p_mcnemar = float(stats.binomtest(n_c_only, n_c_only + n_s_only, 0.5).pvalue) if n_c_only + n_s_only else None
    capped = (np.nan, np.nan, np.nan)
    if cap is not None:
        capped = _t_interval(
            (pairs["grok_95_step_s"].fillna(cap) - pairs["grok_95_step_c"].fillna(cap)).to_numpy(dtype=float)
        )
    return SuppressionEffect(
        n_pairs=len(pairs),
        n_both_grokked=len(both),
        n_control_only=int((g_c & ~g_s).sum()),
        n_suppressed_only=int((~g_c & g_s).sum()),
        n_neither=int((~g_c & ~g_s).sum()),
        mean_diff=mean,
        diff_low=low,
        diff_high=high,
        median_diff=float(np.median(diffs)) if len(diffs) else None,
        p_wilcoxon=p,
        diffs=diffs.tolist(),
        p_mcnemar=p_mcnemar,
        capped_mean=capped[0],
        capped_low=capped[1],
        capped_high=capped[2],
    )


# ------------------------------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def command_line(study: StudyConfig) -> str:
    """The CLI command that reproduces the study (flags only where they differ from the defaults)."""
    return shell_command("python -m engine grok-study", to_flags(study, skip=("report_only",)))


def _figures(study: StudyConfig, table: pd.DataFrame, out: Path) -> list[str]:
    """PNG figures (Altair + vl-convert): accuracy curves, onset vs grokking step, paired grokking steps."""
    import altair as alt

    root = Path(study.root) if study.root else None
    written = []

    def save(chart: alt.TopLevelMixin, name: str) -> None:
        (out / name).write_bytes(chart_png(chart))
        written.append(name)

    curves = []
    for config in study.configs():
        metrics = run_for(config, root).metrics()
        if len(metrics):
            curves.append(
                metrics[["step", "train_acc", "test_acc"]].assign(
                    seed=config.seed, weight_decay=f"wd {config.weight_decay:g}", arm=ARMS[int(config.suppress)]
                )
            )
    if curves:
        frame = pd.concat(curves).melt(
            id_vars=["step", "seed", "weight_decay", "arm"], value_vars=["train_acc", "test_acc"], var_name="split"
        )
        frame["run"] = frame["arm"] + " seed " + frame["seed"].astype(str) + " " + frame["split"]
        chart = (
            alt.Chart(frame)
            .mark_line(opacity=0.7)
            .encode(
                x=alt.X("step:Q"),
                y=alt.Y("value:Q", title="accuracy"),
                color=alt.Color("arm:N"),
                strokeDash=alt.StrokeDash("split:N"),
                detail="run:N",
            )
            .properties(width=320, height=200)
            .facet(column=alt.Column("weight_decay:N", title=None))
            .properties(title="Train (dashed) and test accuracy of every run")
        )
        save(chart, "accuracy_curves.png")

    done = table[(table["arm"] == "control") & table["grokked"].fillna(False).astype(bool)]
    points = []
    for m in LLM_MEASURES:
        part = done[["seed", "weight_decay", "grok_95_step", f"onset_{m}"]].dropna()
        for _, row in part.iterrows():
            points.append(
                {
                    "measure": LLM_MEASURE_LABELS[m],
                    "grok_95_step": row["grok_95_step"],
                    "onset": row[f"onset_{m}"],
                    "weight_decay": f"wd {row['weight_decay']:g}",
                }
            )
    if points:
        frame = pd.DataFrame(points)
        chart = (
            alt.Chart(frame)
            .mark_circle(size=60)
            .encode(
                x=alt.X("grok_95_step:Q", title="grokking step (95% test)"),
                y=alt.Y("onset:Q", title="onset step"),
                color="weight_decay:N",
            )
            .properties(width=200, height=180)
            .facet(facet=alt.Facet("measure:N", title=None), columns=4)
            .properties(title="Onset of each measure vs the grokking step (control runs)")
        )
        save(chart, "onset_vs_grokking.png")

    traces = []
    for config in study.configs():
        run = run_for(config, root)
        summary = run.summary() if run.is_finished() else None
        measures = run.llm_measures()
        if summary is None or not summary["grokked"] or not len(measures):
            continue
        part = measures[["step", *TRACE_COLUMNS]].melt("step", var_name="measure")
        traces.append(
            part.assign(
                steps_from_grokking=part["step"] - summary["grok_95_step"],
                run=f"{ARMS[int(config.suppress)]} seed {config.seed} wd {config.weight_decay:g}",
                arm=ARMS[int(config.suppress)],
            )
        )
    if traces:
        frame = pd.concat(traces)
        frame["measure"] = frame["measure"].map(TRACE_COLUMNS)
        chart = (
            alt.Chart(frame)
            .mark_line(opacity=0.6)
            .encode(
                x=alt.X("steps_from_grokking:Q", title="steps from the grokking step"),
                y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
                color="arm:N",
                detail="run:N",
            )
            .properties(width=220, height=160)
            .facet(facet=alt.Facet("measure:N", title=None), columns=3)
            .resolve_scale(y="independent")
            .properties(title="The llm measures of every grokked run, aligned at its grokking step")
        )
        save(chart, "measures_vs_grokking.png")

    finished = table[table["grokked"].notna()].copy()
    if len(finished):
        finished["grok_or_cap"] = finished["grok_95_step"].fillna(study.steps)
        finished["outcome"] = np.where(finished["grokked"].astype(bool), "grokked", f"not grokked (cap {study.steps})")
        finished["pair"] = "seed " + finished["seed"].astype(str) + " wd " + finished["weight_decay"].astype(str)
        lines = alt.Chart(finished).mark_line(color="lightgray").encode(x="arm:N", y="grok_or_cap:Q", detail="pair:N")
        dots = (
            alt.Chart(finished)
            .mark_point(size=70, filled=True)
            .encode(
                x=alt.X("arm:N", title=None),
                y=alt.Y("grok_or_cap:Q", title="grokking step (95% test)"),
                color="weight_decay:N",
                shape="outcome:N",
            )
        )
        save(
            (lines + dots).properties(width=260, height=260, title="Grokking step: control vs suppression, paired"),
            "suppression_paired.png",
        )
    return written


def write_report(study: StudyConfig, session_seconds: float | None = None) -> Path:
    """summary.md, runs.csv and the figures of the study's cached runs (unfinished runs are listed as such)."""
    out = Path(study.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = study_table(study)
    atomic_write(out / "runs.csv", table.to_csv(index=False).encode())
    connections = measure_connections(table)
    effect = suppression_effect(table, study.steps)
    figures = _figures(study, table, out)
    log_path = out / "study_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    wall = sum(entry["seconds"] for entry in log)
    finished = table["grokked"].notna()
    n_total, n_done = len(table), int(finished.sum())
    control = table[(table["arm"] == "control") & finished]
    suppressed = table[(table["arm"] == "suppression") & finished]
    base = study.base()

    lines = ["# Super weights and grokking: the study (issue 14)", ""]
    lines += ["## Answer", ""]
    lines += _answer(study, table, connections, effect, n_done, n_total)
    lines += ["", "## Setup", ""]
    lines += [
        f"- Model: {base.describe().split(', seed')[0]}; LLM-shaped Llama decoder "
        f"({base.n_layers} layers, d_model {base.d_model}, {base.n_heads} heads, d_mlp {base.d_mlp}), "
        "trained from scratch on [BOS, a, +, b, =] -> c, full batch, AdamW + Grokfast.",
        f"- Seeds {list(study.seeds)} x weight decays {list(study.weight_decays)}; each as a control run and a run "
        f"with suppression (clip every down projection's |w| to {base.suppress_factor:g} x its "
        f"{base.suppress_quantile:g}-quantile every {base.suppress_every} steps), same seed = same split and "
        "initial weights.",
        f"- Step cap {study.steps} (a run without 95% test accuracy by then is 'not grokked'); evaluation every "
        f"{study.eval_every} steps; all llm measures at every checkpoint ({study.checkpoint_every} steps).",
        f"- Runs finished: {n_done} of {n_total}" + ("." if n_done == n_total else " (the rest were not trained yet)."),
        f"- Command: `{command_line(study)}` (or `make study-grok`); report only: add `--report-only`.",
        f"- Wall time: {wall / 60:.1f} min over {len(log)} session(s) with {study.workers} worker processes "
        f"(1 torch thread each); training time summed over runs: {table['train_seconds'].sum() / 60:.1f} min.",
        f"- Machine: {machine_line(machine())}; shared with other work while the study ran.",
        f"- Versions: {versions_line(versions(), git_commit())}; report written {utc_now()}.",
        "",
        "## Onset of each measure vs the grokking step (control runs)",
        "",
        "lag = onset - grokking step (negative: the measure came first); r: Pearson correlation of onset and "
        "grokking step with its 95% interval; sign test: two-sided, of 'onset before grokking'.",
        "",
        "| measure | grokked runs with onset | mean lag [95% CI] | median lag | before / after / same | "
        "r [95% CI] | sign test p | not-grokked runs with onset |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in connections:
        r = f"{c.r:.2f} [{c.r_low:.2f}, {c.r_high:.2f}]" if c.r is not None else "n/a"
        lines.append(
            f"| {LLM_MEASURE_LABELS[c.measure]} | {c.n_with_onset} of {c.n_grokked} | {_fmt(c.mean_lag)} "
            f"[{_fmt(c.lag_low)}, {_fmt(c.lag_high)}] | {_fmt(c.median_lag)} | {c.n_before} / {c.n_after} / "
            f"{c.n_same} | {r} | {_fmt(c.p_sign, 3)} | {c.n_not_grokked_with_onset} of {c.n_not_grokked} |"
        )
    lines += [
        "",
        "## Suppression's effect on the grokking step",
        "",
        f"- Pairs (seed, weight decay) with both runs finished: {effect.n_pairs}; both grokked: "
        f"{effect.n_both_grokked}; only the control grokked: {effect.n_control_only}; only the suppressed run "
        f"grokked: {effect.n_suppressed_only}; neither: {effect.n_neither}.",
        f"- Grokked: control {int(control['grokked'].astype(bool).sum())} of {len(control)}, suppression "
        f"{int(suppressed['grokked'].astype(bool).sum())} of {len(suppressed)}.",
        f"- Grokking step, suppressed minus control (pairs where both grokked): mean {_fmt(effect.mean_diff)} steps "
        f"[95% CI {_fmt(effect.diff_low)}, {_fmt(effect.diff_high)}], median {_fmt(effect.median_diff)}, "
        f"Wilcoxon p = {_fmt(effect.p_wilcoxon, 3)}; differences: {[int(d) for d in effect.diffs]}.",
        f"- Grokked or not, paired (exact McNemar test of the {effect.n_control_only + effect.n_suppressed_only} "
        f"discordant pairs): p = {_fmt(effect.p_mcnemar, 3)}.",
        f"- Counting a run that did not grok at the cap ({study.steps} steps), suppressed minus control over all "
        f"{effect.n_pairs} pairs: mean {_fmt(effect.capped_mean)} steps [95% CI {_fmt(effect.capped_low)}, "
        f"{_fmt(effect.capped_high)}] (a lower bound on the delay where suppression kept a run from grokking).",
        "",
        "## Zeroing the super weight(s) at the end of a grokked run",
        "",
    ]
    lines += _zeroing_lines(table)
    lines += ["", "## What the measures reached (all checkpoints of the finished runs)", ""]
    lines += _reach_lines(study, table)
    lines += ["", "## Runs", "", _markdown_table(table), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    lines += [
        "## Definitions",
        "",
        "- Memorisation: train accuracy >= 99%; grokking: test accuracy >= 95% (first evaluation step).",
        "- Onset of a measure: the first checkpoint from which it stays on at every later checkpoint "
        "(engine/grokking/analysis.py, `llm_onsets`).",
        "- Super weight: a candidate of the first tab's super-weight scan (engine/superweights/detect.py, relative "
        "rule, unchanged) whose zeroing raises the split's perplexity >= 2x or drops its accuracy by > 10 points "
        "while zeroing 5 random weights of the same matrix does not (engine/grokking/llm_measures.py).",
        "- Zeroing outcome: 'memorisation' = train accuracy kept (>= 90% of before) while test accuracy falls "
        "below half; 'broken' = both fall below half; 'unaffected' = test accuracy kept; else 'partial'.",
        "",
    ]
    atomic_write(out / "summary.md", "\n".join(lines).encode())
    return out / "summary.md"


def _answer(
    study: StudyConfig,
    table: pd.DataFrame,
    connections: list[MeasureConnection],
    effect: SuppressionEffect,
    n_done: int,
    n_total: int,
) -> list[str]:
    control = table[(table["arm"] == "control") & table["grokked"].notna()]
    n_grok = int(control["grokked"].astype(bool).sum())
    out = [
        f"Of {len(control)} finished control runs, {n_grok} grokked (test accuracy >= {GROK_ACCURACY:.0%} "
        f"within {study.steps} steps)." + ("" if n_done == n_total else f" Only {n_done} of {n_total} runs finished.")
    ]
    sw = next(c for c in connections if c.measure == "super_weight")
    if sw.n_with_onset == 0:
        out.append(
            "A super weight in the first tab's sense (scan + causal test) never appeared and stayed in any grokked "
            "control run: no connection found between super weights and grokking."
        )
    else:
        out.append(
            f"A super weight (scan + causal test) appeared in {sw.n_with_onset} of {sw.n_grokked} grokked control "
            f"runs, mean lag {_fmt(sw.mean_lag)} steps [95% CI {_fmt(sw.lag_low)}, {_fmt(sw.lag_high)}] relative to "
            f"grokking (before in {sw.n_before}, after in {sw.n_after}); "
            + (
                "a connection is supported."
                if sw.found
                else "no connection found (no consistent order or correlation)."
            )
        )
    others = [c for c in connections if c.measure != "super_weight" and c.n_with_onset]
    for c in others:
        out.append(
            f"{LLM_MEASURE_LABELS[c.measure]}: onset in {c.n_with_onset} of {c.n_grokked} grokked runs, mean lag "
            f"{_fmt(c.mean_lag)} [{_fmt(c.lag_low)}, {_fmt(c.lag_high)}], before/after {c.n_before}/{c.n_after}"
            + (f", r = {c.r:.2f} [{c.r_low:.2f}, {c.r_high:.2f}]" if c.r is not None else "")
            + (f", sign test p = {c.p_sign:.3f}" if c.p_sign is not None else "")
            + ("; connected to grokking." if c.found else "; no connection found.")
        )
    silent = [LLM_MEASURE_LABELS[c.measure] for c in connections if c.measure != "super_weight" and not c.n_with_onset]
    if silent:
        out.append("No onset in any grokked control run: " + "; ".join(silent) + ".")
    if effect.n_pairs:
        if effect.n_both_grokked:
            out.append(
                f"Suppressing super weights during training changed the grokking step by {_fmt(effect.mean_diff)} "
                f"steps on average [95% CI {_fmt(effect.diff_low)}, {_fmt(effect.diff_high)}] over "
                f"{effect.n_both_grokked} pairs where both grokked"
                + (f" (Wilcoxon p = {effect.p_wilcoxon:.3f})" if effect.p_wilcoxon is not None else "")
                + f"; {effect.n_control_only} pair(s) grokked only without suppression, "
                f"{effect.n_suppressed_only} only with it."
                + (
                    " The interval includes 0: no effect of suppression found."
                    if np.isfinite(effect.diff_low) and effect.diff_low <= 0 <= effect.diff_high
                    else ""
                )
            )
        else:
            out.append(f"No pair grokked in both arms ({effect.n_pairs} finished pairs).")
        n_ctl = int(table.loc[(table["arm"] == "control") & table["grokked"].notna(), "grokked"].astype(bool).sum())
        n_sup = int(table.loc[(table["arm"] == "suppression") & table["grokked"].notna(), "grokked"].astype(bool).sum())
        out.append(
            f"Grokked within the cap: {n_ctl} control vs {n_sup} suppressed runs "
            f"(McNemar p = {_fmt(effect.p_mcnemar, 3)} over {effect.n_pairs} pairs); counting 'not grokked' at the "
            f"cap, suppression moved the grokking step by {_fmt(effect.capped_mean)} steps "
            f"[95% CI {_fmt(effect.capped_low)}, {_fmt(effect.capped_high)}], a lower bound."
        )
        if sw.n_with_onset == 0:
            out.append(
                "Since no super weight formed in the control runs, the clip removed the tails of ordinary "
                "down-projection weights: an effect of suppression on grokking is not, here, evidence that super "
                "weights drive it."
            )
    n_spiky = int(table.get("loss_spike", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    if n_spiky:
        out.append(
            f"Training was unstable: {n_spiky} of {n_done} finished runs had a loss spike (train accuracy back "
            "below 50% after memorisation), so a run's test accuracy can fall again after it grokked."
        )
    verdicts = table.loc[table["zeroing_verdict"].notna(), "zeroing_verdict"] if "zeroing_verdict" in table else []
    if len(verdicts):
        counts = pd.Series(verdicts).value_counts()
        out.append(
            "Zeroing the super weight(s) at the end of a grokked run: "
            + ", ".join(f"{n} {v}" for v, n in counts.items())
            + f" (of {len(verdicts)} grokked runs)."
        )
    return [" ".join(out)]


def _reach_lines(study: StudyConfig, table: pd.DataFrame) -> list[str]:
    """Per arm, how far each measure got over every checkpoint (how close to firing), and the training spikes."""
    root = Path(study.root) if study.root else None
    frames, spikes = [], {arm: 0 for arm in ARMS}
    for config in study.configs():
        run = run_for(config, root)
        if not run.is_finished():
            continue
        arm = ARMS[int(config.suppress)]
        measures = run.llm_measures()
        if len(measures):
            frames.append(measures.assign(arm=arm))
        spikes[arm] += _loss_spike(run.metrics())
    if not frames:
        return ["No measures yet."]
    m = pd.concat(frames)
    lines = [
        "| arm | checkpoints | max ppl ratio, one weight zeroed (train / test) | max accuracy drop (train / test) | "
        "checkpoints with scan candidates | max BOS / median activation | max attention share on BOS | "
        "fewest key Fourier frequencies | runs with a loss spike after memorisation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        part = m[m["arm"] == arm]
        if not len(part):
            continue
        lines.append(
            f"| {arm} | {len(part)} | {part['max_ppl_ratio_train'].max():.3f} / {part['max_ppl_ratio_test'].max():.3f}"
            f" | {part['max_acc_drop_train'].max():.3f} / {part['max_acc_drop_test'].max():.3f} | "
            f"{int((part['n_scan_candidates'] > 0).sum())} | {part['bos_over_median'].max():.1f} | "
            f"{part['sink_share_max'].max():.2f} | {int(part['n_key_frequencies'].min())} of {study.p // 2} | "
            f"{spikes[arm]} |"
        )
    lines += [
        "",
        "A super weight fires at a perplexity ratio >= 2 or an accuracy drop > 0.10 (with the random control below "
        "both); a loss spike = train accuracy back below 50% after memorisation.",
    ]
    return lines


def _zeroing_lines(table: pd.DataFrame) -> list[str]:
    if "zeroing_verdict" not in table or not table["zeroing_verdict"].notna().any():
        return ["No grokked run was zeroed (none grokked, or none finished)."]
    part = table[table["zeroing_verdict"].notna()]
    lines = [
        "| arm | seed | wd | checkpoint | zeroed | train acc before -> after | test acc before -> after | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in part.iterrows():
        lines.append(
            f"| {row['arm']} | {row['seed']} | {row['weight_decay']:g} | {row['zeroing_step']:.0f} | "
            f"{row['zeroing_source']} | {row['zeroing_train_before']:.2f} -> {row['zeroing_train_acc']:.2f} | "
            f"{row['zeroing_test_before']:.2f} -> {row['zeroing_test_acc']:.2f} | {row['zeroing_verdict']} |"
        )
    counts = part.groupby(["arm", "zeroing_verdict"]).size()
    lines += ["", "Counts: " + ", ".join(f"{arm} {verdict}: {n}" for (arm, verdict), n in counts.items()) + "."]
    return lines


def _markdown_table(table: pd.DataFrame) -> str:
    columns = [
        "arm",
        "seed",
        "weight_decay",
        "state",
        "memorisation_step",
        "grok_95_step",
        "final_test_acc",
        "onset_super_weight",
        "onset_fourier",
        "onset_attention_sink",
        "onset_super_activation",
        "zeroing_verdict",
        "train_seconds",
    ]
    frame = table[[c for c in columns if c in table]].copy()
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("" if not np.isfinite(value) else f"{value:.3g}" if value < 1 else f"{value:.0f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
