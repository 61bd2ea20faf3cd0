"""Grokking runs on Ray: one actor task per run; the run folder comes back to this process (the driver),
which writes it into the run store where the local pool writes it, so no filesystem is shared.

A worker trains the run in a folder of its own (a temporary run store) with `ray_cpus` torch threads and
streams the run's files back: a snapshot whenever a new checkpoint (resume.pt) was written, taken at the
next evaluation, when the folder is consistent (metrics up to the checkpoint's step and beyond, the
checkpoint's measures, the checkpoint itself), and the whole folder when the run ends. A snapshot is
{relative path: bytes} of the files that changed since the last one, plus the list of every file the
folder holds (a checkpoint the training thinned out is deleted on the driver too).

Faults: the driver holds each run's claim while its worker trains it. A worker that dies (killed, out of
memory, node lost) loses what did not reach the driver; the run goes to a fresh worker with the files
the driver has, so training resumes from the last checkpoint that came back (engine.grokking.training
truncates the metrics after it), or starts from scratch when none did. Files are replaced, never
appended on the driver, so nothing is written twice. An error of the training itself ends only that
run (reported to `on_run`), as in the local pool.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.executor import ExecutorConfig, Shard, WorkerPlan, ray_module, run_shards, start_ray
from engine.core.paths import atomic_write
from engine.core.runstore import CLAIM_FILE
from engine.grokking.analysis import summarize
from engine.grokking.config import MAX_CHECKPOINTS, GrokConfig
from engine.grokking.runs import GrokRun, RunSummary, open_run, run_for
from engine.grokking.training import Stop, should_stop

WORKER_PREFIX = "lab-grok-"  # Ray actor names: lab-grok-<token>-<n>
STOP_POLL_S = 1.0  # with a `stop`, how often the driver looks at it while no snapshot arrives
OnRun = Callable[[GrokConfig, RunSummary | None, str], None]
Files = dict[str, bytes]


@dataclass(frozen=True)
class Snapshot:
    """Files of a run folder that changed since the last snapshot, and every file it holds now.
    `summary` and `error` are set on the last one of a run (the run ended)."""

    changed: Files
    present: tuple[str, ...]
    final: bool = False
    summary: RunSummary | None = None
    error: str = ""


@dataclass
class RayTraining:
    """What `train_runs` did: the (config, error) of each failed run, the runs rerun after a worker died,
    and the summary of each run a `stop` ended mid-way (as far as it reached the driver)."""

    errors: list[tuple[GrokConfig, str]]
    reruns: int
    stopped: dict[GrokConfig, RunSummary] = field(default_factory=dict)


@dataclass
class _FolderWatch:
    """What a snapshot of `path` must send: files whose (size, mtime) changed since the last one."""

    path: Path
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)

    def snapshot(self, **extra: Any) -> Snapshot:
        changed, present = {}, []
        for file in sorted(self.path.rglob("*")):
            if not file.is_file() or file.name == CLAIM_FILE:
                continue
            rel = file.relative_to(self.path).as_posix()
            stat = file.stat()
            present.append(rel)
            if self.seen.get(rel) != (stat.st_size, stat.st_mtime_ns):
                changed[rel] = file.read_bytes()
                self.seen[rel] = (stat.st_size, stat.st_mtime_ns)
        return Snapshot(changed, tuple(present), **extra)


def resume_files(run: GrokRun) -> Files:
    """Every file of a run folder (its claim excepted), as a worker needs it to resume from its last
    checkpoint; nothing (a fresh start) when no checkpoint after step 0 reached the driver, where a
    fresh start is the same run."""
    if not run.resume_path.exists() or max(run.checkpoint_steps(), default=0) == 0:
        return {}
    return _FolderWatch(run.path).snapshot().changed


def apply_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Write a snapshot into the run folder `path`: changed files atomically, files the worker no longer
    has (thinned checkpoints) deleted."""
    for rel, data in snapshot.changed.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    keep = set(snapshot.present)
    for file in path.rglob("*"):
        if file.is_file() and file.name != CLAIM_FILE and file.relative_to(path).as_posix() not in keep:
            file.unlink()


class GrokWorker:
    """A Ray actor's body: trains runs at `threads` torch threads, each in a temporary run store."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        os.environ["LAB_GROK_THREADS"] = str(threads)
        self.threads = threads

    def train(
        self, config: GrokConfig, files: Files, owner: str | None = None, max_checkpoints: int = MAX_CHECKPOINTS
    ) -> Iterator[Snapshot]:
        """Snapshots of the run (see the module doc); `files`: the run folder as the driver has it."""
        from engine.grokking.analysis import run_experiment

        with tempfile.TemporaryDirectory(prefix="lab-grok-") as root:
            run = run_for(config, Path(root), owner)
            for rel, data in files.items():
                (run.path / rel).parent.mkdir(parents=True, exist_ok=True)
                (run.path / rel).write_bytes(data)
            watch = _FolderWatch(run.path)
            watch.snapshot()  # what the driver has already
            out: queue.Queue = queue.Queue()
            last_resume: list[int | None] = [self._resume_mtime(run.resume_path)]

            def on_eval(_row: dict[str, Any]) -> None:
                mtime = self._resume_mtime(run.resume_path)
                if mtime != last_resume[0]:  # a checkpoint since the last snapshot: send it with its measures
                    last_resume[0] = mtime
                    out.put(watch.snapshot())

            def train() -> None:
                try:
                    summary = run_experiment(
                        config,
                        root=Path(root),
                        on_eval=on_eval,
                        threads=self.threads,
                        owner=owner,
                        max_checkpoints=max_checkpoints,
                    )
                    out.put(watch.snapshot(final=True, summary=summary))
                except Exception as err:  # noqa: BLE001 - one failed run must not end the study
                    out.put(watch.snapshot(final=True, error=f"{type(err).__name__}: {err}"))

            thread = threading.Thread(target=train, daemon=True)
            thread.start()
            while True:
                snapshot = out.get()
                yield snapshot
                if snapshot.final:
                    break
            thread.join()

    @staticmethod
    def _resume_mtime(path: Path) -> int | None:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return None


def train_runs(
    configs: Sequence[GrokConfig],
    executor: ExecutorConfig,
    root: Path | None = None,
    on_run: OnRun | None = None,
    plan: WorkerPlan | None = None,
    *,
    owner: str | None = None,
    max_checkpoints: int = MAX_CHECKPOINTS,
    stop: Stop = None,
    on_start: Callable[[GrokConfig], None] | None = None,
) -> RayTraining:
    """Train `configs` on Ray workers (one actor task per run), writing each run's folder into the run
    store (under `root`, the runs of `owner`); returns the failed runs and how many runs were rerun after a
    worker died. `plan`: from `start_ray` (called here when None: LabError before any work when the cluster
    is unreachable or too small). `on_start(config)` when a run is handed to a worker. `stop` (checked as
    snapshots arrive, at least every STOP_POLL_S seconds) ends the runs in flight: their workers end, each
    keeps what reached the driver and is marked stopped at its last checkpoint there (a rerun resumes it);
    the runs not started are skipped."""
    plan = plan or start_ray(executor, shards=len(configs))
    ray = ray_module()
    actor_class = ray.remote(GrokWorker)
    options = {"num_cpus": plan.cpus, "num_gpus": plan.gpus, "max_restarts": 0}
    token = uuid.uuid4().hex[:8]
    runs = [open_run(config, root, owner=owner) for config in configs]
    errors: list[tuple[GrokConfig, str]] = []
    ended: set[int] = set()
    handed: set[int] = set()  # runs given to a worker in this call

    def make_worker(index: int):
        """A fresh actor, named `lab-grok-<token>-<n>` (tests kill one by name)."""
        return actor_class.options(name=f"{WORKER_PREFIX}{token}-{index}", **options).remote(plan.cpus)

    def call(actor, shard: Shard):
        index, files = shard.payload
        if on_start is not None and index not in handed:
            on_start(configs[index])
        handed.add(index)
        return actor.train.options(num_returns="streaming").remote(configs[index], files, owner, max_checkpoints)

    def on_item(shard: Shard, snapshot: Snapshot) -> None:
        index = shard.payload[0]
        if index in ended:
            return  # the run already ended on the driver: never written twice
        apply_snapshot(runs[index].path, snapshot)
        if snapshot.final:
            ended.add(index)
            if snapshot.error:
                errors.append((configs[index], snapshot.error))
            if on_run is not None:
                on_run(configs[index], snapshot.summary, snapshot.error)

    def retry(shard: Shard) -> tuple[int, Files] | None:
        index = shard.payload[0]
        return None if index in ended else (index, resume_files(runs[index]))

    with contextlib.ExitStack() as claims:
        for run in runs:
            claims.enter_context(run.claim("trained"))
        shards = [Shard(f"run {run.run_id}", (i, resume_files(run))) for i, run in enumerate(runs)]
        reruns = run_shards(  # no pool: the workers left idle at the end are ended, nothing stays running
            plan,
            make_worker,
            call,
            shards,
            on_item,
            retry,
            stop=(lambda: should_stop(stop)) if stop is not None else None,
            poll_s=STOP_POLL_S if stop is not None else None,
        )
        stopped = {}
        for index in sorted(handed - ended):
            run = runs[index]
            if run.metrics_path.exists():
                step = max(run.checkpoint_steps(), default=0)
                run.set_status("stopped", step, f"stopped at step {step} (its last checkpoint; it resumes from there)")
                stopped[configs[index]] = summarize(run)
    return RayTraining(errors, reruns, stopped)

