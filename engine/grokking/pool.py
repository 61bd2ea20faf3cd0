"""Where a set of grokking runs trains: one after another in this process, in a local pool of processes
(1 torch thread each), or on Ray workers (engine.grokking.distributed). The study (engine.grokking.study)
and the sweep (`run_sweep`) both train through `train_all`, so a run is trained the same way, row for row,
whichever of them asks and wherever it runs:

    sequential   workers <= 1 on the local executor: each run in this process at `threads` torch threads
    processes    workers > 1 on the local executor: a spawned pool of `workers` processes, 1 thread each
    ray          the ray executor: one Ray actor task per run, at `--ray-cpus` threads (docs/cluster.md)

One task per run on every executor, never two for the same run: a run is trained under its claim (held by
the process that trains it, or by the driver for a Ray worker). Resumable on any executor: a finished run
reopens from its cache, a stopped or killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.core.errors import LabError
from engine.core.executor import ExecutorConfig
from engine.grokking.analysis import run_experiment, sweep_configs
from engine.grokking.config import MAX_CHECKPOINTS, GrokConfig, validate, validate_sweep
from engine.grokking.runs import RunSummary, run_for
from engine.grokking.training import Stop, should_stop

Where = Literal["sequential", "processes", "ray"]
OnStart = Callable[[GrokConfig], None]
OnRun = Callable[[GrokConfig, RunSummary | None, str], None]  # (config, summary, error): error "" when it ended


@dataclass
class Trained:
    """What `train_all` did: the summary of every run that ended (finished, or stopped by `stop`), by
    configuration, and the (config, error) of each run that failed."""

    summaries: dict[GrokConfig, RunSummary] = field(default_factory=dict)
    errors: list[tuple[GrokConfig, str]] = field(default_factory=list)


def where(executor: ExecutorConfig | None, workers: int) -> Where:
    """Where `train_all` trains with this executor and local worker count."""
    if executor is not None and executor.executor == "ray":
        return "ray"
    return "processes" if workers > 1 else "sequential"


def _worker_init() -> None:
    """A pool worker: one torch thread; Ctrl-C ignored (the terminal sends it to the whole process group, and the
    driver's first Ctrl-C is a stop that lets the runs in flight finish: engine.core.jobs.ctrl_c_stops)."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    os.environ["LAB_GROK_THREADS"] = "1"


def _train_one(config: GrokConfig, root: str | None, owner: str | None, max_checkpoints: int) -> RunSummary:
    root_path = Path(root) if root else None
    return run_experiment(config, root=root_path, threads=1, owner=owner, max_checkpoints=max_checkpoints)


def train_all(
    configs: Sequence[GrokConfig],
    *,
    executor: ExecutorConfig | None = None,
    workers: int = 1,
    root: Path | None = None,
    threads: int | None = None,
    owner: str | None = None,
    max_checkpoints: int = MAX_CHECKPOINTS,
    stop: Stop = None,
    on_start: OnStart | None = None,
    on_run: OnRun | None = None,
) -> Trained:
    """Train (or resume, or reopen) every run of `configs` (module doc for where).

    `on_start(config)` when a run's task starts (in the pool: when it is handed out), `on_run(config,
    summary, error)` when it ends. `stop`: in this process, the run in flight stops at its next step and
    the rest are skipped; in the pool, the runs not started yet are skipped and those in flight finish;
    on Ray, the runs in flight stop at the last checkpoint that reached the driver. Sequentially an error
    of a run ends the call (as one run does); in the pool and on Ray it fails that run only (`errors`)."""
    out = Trained()

    def ended(config: GrokConfig, summary: RunSummary | None, error: str) -> None:
        if summary is not None:
            out.summaries[config] = summary
        if error:
            out.errors.append((config, error))
        if on_run is not None:
            on_run(config, summary, error)

    place = where(executor, workers)
    if place == "ray":
        from engine.grokking.distributed import train_runs

        assert executor is not None
        todo = []
        for config in configs:  # a finished run reopens from its cache here: no worker for it
            run = run_for(config, root, owner)
            cached = run.summary() if run.is_finished() else None
            if cached is None:
                todo.append(config)
            else:
                if on_start is not None:
                    on_start(config)
                ended(config, cached, "")
        if not todo or should_stop(stop):
            return out
        trained = train_runs(
            todo,
            executor,
            root,
            ended,
            owner=owner,
            max_checkpoints=max_checkpoints,
            stop=stop,
            on_start=on_start,
        )
        for config, summary in trained.stopped.items():  # the runs `stop` ended mid-way, as far as they got
            out.summaries[config] = summary
        return out
    if place == "sequential":
        for config in configs:
            if should_stop(stop):
                break
            if on_start is not None:
                on_start(config)
            summary = run_experiment(
                config, root=root, stop=stop, threads=threads, owner=owner, max_checkpoints=max_checkpoints
            )
            ended(config, summary, "")
        return out
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    root_text = str(root) if root else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        todo = list(configs)
        running = {}
        while todo or running:
            while todo and len(running) < workers and not should_stop(stop):
                config = todo.pop(0)
                if on_start is not None:
                    on_start(config)
                running[pool.submit(_train_one, config, root_text, owner, max_checkpoints)] = config
            if should_stop(stop):
                todo.clear()
            if not running:
                break
            done, _ = wait(running, timeout=1.0 if stop is not None else None, return_when=FIRST_COMPLETED)
            for future in done:
                config = running.pop(future)
                try:
                    summary, error = future.result(), ""
                except Exception as err:  # noqa: BLE001 - one failed run must not end the others
                    summary, error = None, f"{type(err).__name__}: {err}"
                ended(config, summary, error)
    return out


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
    owner: str | None = None,
    max_checkpoints: int = MAX_CHECKPOINTS,
    executor: ExecutorConfig | None = None,
    workers: int = 1,
) -> list[RunSummary]:
    """Run (or reopen) every seed x weight decay configuration, each a run of its own, through `train_all`
    (this process by default; `workers` > 1: the local pool; `executor` ray: Ray workers).

    on_start(config, done, total) before each run, on_run(summary, done, total) after it (done: runs ended
    so far); `stop` ends the runs in flight (`train_all`) and skips the rest. Returns the summaries in the
    sweep's order, of the runs that ended (finished, or stopped: then with state "stopped"). A stopped
    sweep resumes: finished runs reopen from their cache and a stopped run from its last checkpoint.
    LabError naming the runs that failed in the pool or on Ray, after the others ended."""
    configs = sweep_configs(base, seeds, weight_decays)
    validate_sweep(len(configs))
    for config in configs:
        validate(config)
    total, count = len(configs), [0]

    def started(config: GrokConfig) -> None:
        if on_start is not None:
            on_start(config, count[0], total)

    def ended(config: GrokConfig, summary: RunSummary | None, error: str) -> None:
        count[0] += 1
        if summary is not None and on_run is not None:
            on_run(summary, count[0], total)

    trained = train_all(
        configs,
        executor=executor,
        workers=workers,
        root=root,
        threads=threads,
        owner=owner,
        max_checkpoints=max_checkpoints,
        stop=stop,
        on_start=started,
        on_run=ended,
    )
    if trained.errors:
        failed = "; ".join(f"seed {c.seed}, wd {c.weight_decay:g}: {e}" for c, e in trained.errors)
        raise LabError(f"{len(trained.errors)} run(s) of the sweep failed ({failed}); rerun the sweep to retry them.")
    return [trained.summaries[c] for c in configs if c in trained.summaries]
