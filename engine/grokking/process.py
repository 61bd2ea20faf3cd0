"""Grokking training as the entry of a child process (engine.core.processes.run_in_process).

Module-level functions (a spawned child imports them by name) that run analysis.run_experiment or
analysis.run_sweep with run_in_process's `stop` and `report`: the training's callbacks become messages,
in order, that the waiting job thread applies (progress, the sweep's summaries so far):

- ("eval", row): a metrics row of the run (analysis.run_experiment's on_eval);
- ("start", done, total, text): a sweep run starts (on_start), text naming its seed and weight decay;
- ("run", summary, done, total): a sweep run ended (on_run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.grokking import analysis
from engine.grokking.config import GrokConfig
from engine.grokking.runs import RunSummary

Report = Callable[[Any], None]


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
    return analysis.run_experiment(
        config,
        on_eval=lambda row: report(("eval", row)),
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
    """A sweep (analysis.run_sweep): each run claims itself while it trains (in this child process)."""
    extra = {} if max_checkpoints is None else {"max_checkpoints": max_checkpoints}
    return analysis.run_sweep(
        base,
        list(seeds),
        list(weight_decays),
        stop=stop,
        on_start=lambda c, done, total: report(("start", done, total, f"seed {c.seed}, wd {c.weight_decay:g}")),
        on_run=lambda summary, done, total: report(("run", summary, done, total)),
        threads=threads,
        owner=owner,
        **extra,
    )
