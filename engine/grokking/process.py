"""Grokking training as the entry of a child process (engine.core.processes.run_in_process).

Module-level functions (a spawned child imports them by name) that run analysis.run_experiment or
pool.run_sweep with run_in_process's `stop` and `report`: the training's callbacks become typed messages,
in order, that the waiting job thread applies (engine.grokking.jobs: progress, the sweep's summaries so far):

- Loading(resume_step): the child is up (torch imported) and builds the data and model, or loads the
  checkpoint `resume_step` it resumes from (None: a fresh start);
- Evaluated(row): a metrics row of the run (analysis.run_experiment's on_eval);
- SweepRunStarted(done, total, text): a sweep run starts (on_start), text naming its seed and weight decay;
- SweepRunEnded(summary, done, total): a sweep run ended (on_run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.grokking import analysis, pool
from engine.grokking.config import GrokConfig
from engine.grokking.runs import RunSummary, run_for

Report = Callable[[Any], None]


@dataclass(frozen=True)
class Loading:
    """The child runs: it builds the run (resume_step None) or loads the checkpoint it resumes from."""

    resume_step: int | None


@dataclass(frozen=True)
class Evaluated:
    """One metrics row (engine.grokking.runs.METRIC_COLUMNS) just written to metrics.csv."""

    row: dict[str, Any]


@dataclass(frozen=True)
class SweepRunStarted:
    done: int
    total: int
    text: str


@dataclass(frozen=True)
class SweepRunEnded:
    summary: RunSummary
    done: int
    total: int


Message = Loading | Evaluated | SweepRunStarted | SweepRunEnded


def resume_step(config: GrokConfig, owner: str | None = None) -> int | None:
    """The checkpoint a new training of this run starts from (its last one), or None for a fresh start."""
    run = run_for(config, owner=owner)
    steps = run.checkpoint_steps() if run.resume_path.exists() else []
    return steps[-1] if steps else None


def train_run(
    config: GrokConfig,
    *,
    stop: Callable[[], bool],
    report: Report,
    owner: str | None = None,
    threads: int | None = None,
    claim: bool = False,
    max_checkpoints: int | None = None,
) -> RunSummary:
    """One run (analysis.run_experiment); claim=False by default: the parent job holds the run's claim."""
    extra = {} if max_checkpoints is None else {"max_checkpoints": max_checkpoints}
    report(Loading(resume_step(config, owner)))
    return analysis.run_experiment(
        config,
        on_eval=lambda row: report(Evaluated(row)),
        stop=stop,
        threads=threads,
        claim=claim,
        owner=owner,
        **extra,
    )


def train_sweep(
    base: GrokConfig,
    seeds: Sequence[int],
    weight_decays: Sequence[float],
    *,
    stop: Callable[[], bool],
    report: Report,
    owner: str | None = None,
    threads: int | None = None,
    max_checkpoints: int | None = None,
) -> list[RunSummary]:
    """A sweep (pool.run_sweep, in this process): each run claims itself while it trains (in this child process)."""
    extra = {} if max_checkpoints is None else {"max_checkpoints": max_checkpoints}
    return pool.run_sweep(
        base,
        list(seeds),
        list(weight_decays),
        stop=stop,
        on_start=lambda c, done, total: report(SweepRunStarted(done, total, f"seed {c.seed}, wd {c.weight_decay:g}")),
        on_run=lambda summary, done, total: report(SweepRunEnded(summary, done, total)),
        threads=threads,
        owner=owner,
        **extra,
    )
