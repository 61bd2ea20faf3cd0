"""`python -m engine grok ...` (one grokking run), `python -m engine grok-sweep ...` (seeds x weight decays) and
`python -m engine grok-study` (the study: LLM-shaped model on the markov context, arms x paired seeds, report).

Every flag comes from a config dataclass of engine.grokking.config (GrokConfig, SweepConfig, RunOptions,
StudyConfig): defaults and help are written there once. Building the parser imports no torch.
`--model llm` takes the LLM-shaped preset (config.LLM_PRESET) for the layer/width flags not given."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from engine.core.executor import ExecutorConfig
from engine.core.options import add_options, from_args
from engine.grokking.config import LLM_PRESET, GrokConfig, RunOptions, StudyConfig, SweepConfig

if TYPE_CHECKING:
    from engine.grokking.runs import GrokRun, RunSummary

STOPPED = 130  # exit code of a run or sweep stopped with Ctrl-C (resumable), as a shell reports an interrupt


def register(subparsers: Any) -> None:
    one = subparsers.add_parser(
        "grok", help="train a small model until it groks modular arithmetic, with super-weight measures"
    )
    add_options(one, GrokConfig)
    add_options(one, RunOptions)
    one.set_defaults(func=run)
    sweep = subparsers.add_parser("grok-sweep", help="grokking runs over seeds x weight decays: onset vs grokking step")
    add_options(sweep, GrokConfig, skip=("seed", "weight_decay"))
    add_options(sweep, SweepConfig)
    add_options(sweep, RunOptions)
    add_options(sweep, ExecutorConfig)
    sweep.set_defaults(func=run_sweep)
    study = subparsers.add_parser(
        "grok-study",
        help="the sink / super-weight / grokking study: LLM-shaped model on a task that needs a sink, arms x seeds",
    )
    add_options(study, StudyConfig)
    add_options(study, ExecutorConfig)
    study.set_defaults(func=run_study)


def _config(args: argparse.Namespace, **overrides: Any) -> GrokConfig:
    """GrokConfig of the flags; with --model llm the preset's sizes for the size flags left at their defaults."""
    config: GrokConfig = from_args(GrokConfig, args, **overrides)
    if config.model == "llm":
        default = GrokConfig()
        preset = {k: v for k, v in LLM_PRESET.items() if getattr(config, k) == getattr(default, k)}
        config = config.replace(**preset)
    return config


def run(args: argparse.Namespace) -> int:
    """One run through engine.grokking.jobs.run_here (validation, resume, Ctrl-C as a stop, as on the tab)."""
    from engine.grokking import jobs
    from engine.grokking.analysis import run_summary_text

    config = _config(args)
    options: RunOptions = from_args(RunOptions, args)

    def on_open(run: GrokRun) -> None:
        print(f"{config.describe()}\nrun folder: {run.path}", file=sys.stderr)

    def on_eval(row: dict[str, Any]) -> None:
        print(
            f"step {row['step']:>6}  train acc {row['train_acc']:.3f}  test acc {row['test_acc']:.3f}  "
            f"test loss {row['test_loss']:.3f}  |w| {row['weight_norm']:.1f}",
            file=sys.stderr,
        )

    run, summary = jobs.run_here(config, run_dir=options.out, on_open=on_open, on_eval=on_eval, threads=options.threads)
    print(run_summary_text(summary))
    print(f"wrote {run.metrics_path}, {run.summary_path}, {len(run.checkpoint_steps())} checkpoints")
    ended = jobs.ended_text(run, jobs.COMMAND_RESUMES)
    if ended:
        print(ended, file=sys.stderr)
        return STOPPED
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Seeds x weight decays through engine.grokking.jobs.sweep_here (validation, resume, Ctrl-C as a stop), on
    the executor of --executor / --workers (this process, the local pool or Ray: engine.grokking.pool)."""
    from engine.grokking import jobs
    from engine.grokking.analysis import connection, plain_summary, sweep_table

    base = _config(args)
    plan: SweepConfig = from_args(SweepConfig, args)
    options: RunOptions = from_args(RunOptions, args)
    executor: ExecutorConfig = from_args(ExecutorConfig, args)

    def on_run(summary: RunSummary, done: int, total: int) -> None:
        print(
            f"[{done}/{total}] seed {summary['config']['seed']} wd {summary['config']['weight_decay']:g}: "
            f"grok_95 {summary['grok_95_step']}, {plan.measure} onset {summary['onsets'][plan.measure]}",
            file=sys.stderr,
        )

    summaries = jobs.sweep_here(
        base,
        plan.seeds,
        plan.weight_decays,
        root=options.out,
        on_run=on_run,
        threads=options.threads,
        executor=executor,
        workers=plan.workers,
    )
    table = sweep_table(summaries, plan.measure)
    print(table.drop(columns=["key"]).to_string(index=False))
    print()
    print(plain_summary(connection(table), plan.measure))
    stopped = [s for s in summaries if s.get("state") == "stopped"]
    if stopped or len(summaries) < len(plan.seeds) * len(plan.weight_decays):
        print(f"Stopped after {len(summaries)} run(s): {jobs.COMMAND_RESUMES} resumes the sweep.", file=sys.stderr)
        return STOPPED
    return 0


def run_study(args: argparse.Namespace) -> int:
    from engine.grokking.config import validate_study
    from engine.grokking.study import run_study as study_runs
    from engine.grokking.study import write_report

    study: StudyConfig = from_args(StudyConfig, args)
    executor: ExecutorConfig = from_args(ExecutorConfig, args)
    validate_study(study)
    executor.validate()
    arms = {config: arm for arm, config in study.runs()}
    if not study.report_only:
        print(
            f"{len(arms)} runs ({len(study.arms)} arms x {len(study.seeds)} seeds): {study.base().describe()}",
            file=sys.stderr,
            flush=True,
        )

        def on_run(config: GrokConfig, summary: Any, error: str) -> None:
            what = error or (
                f"{summary['outcome']} (first 95% at {summary['grok_95_step']}), sink onset "
                f"{summary['onsets'].get('attention_sink')}, massive activation onset "
                f"{summary['onsets'].get('massive_activation')}"
            )
            print(f"seed {config.seed} {arms[config]}: {what}", file=sys.stderr, flush=True)

        seconds = study_runs(study, on_run, executor)
        print(f"trained for {seconds / 60:.1f} min", file=sys.stderr)
    path = write_report(study)
    print(f"wrote {path}")
    return 0
