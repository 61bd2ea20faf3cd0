"""The attention study on Ray: the heads missing from the cache cut into groups, one Ray actor task per
group; each worker loads the model once (at `ray_cpus` torch threads) and studies its heads with the local
code (study.study_head, the model as the self-explainer), and each head's record comes back to this
process (the driver), which writes it to the cache exactly as the local path does (study.save_record).
The no-explanation control is one more task (study.simulate_control), written by the driver too.

The driver runs every prompt once (study.prepare) and sends the attention maps to the workers through
Ray's object store (put once, shared by every task), so every worker studies the same maps as the local
path; no filesystem is shared. With the same torch build and thread count the records are the local
ones: the same explanations, rule choices, fits and predictions (only `seconds`, wall time, differs).

Faults: a head's record is written once, when it reaches the driver (heads already in `records` are
skipped); a worker that dies loses only the head it was studying, and what is left of its group goes to
a fresh worker. A stop (checked as records arrive, and every second) ends the workers; the finished heads
stay cached, and a rerun (either executor) studies only the missing ones.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.attention.maps import AttentionResult
from engine.attention.study import (
    HeadRecord,
    HeadsElsewhere,
    SelfExplainer,
    StudyRun,
    load_control,
    save_control,
    save_record,
    simulate_control,
    study_head,
)
from engine.attention.study_config import StudyConfig
from engine.core.executor import ExecutorConfig, Shard, ray_module, run_shards, start_ray

WORKER_PREFIX = "lab-attention-"  # Ray actor names: lab-attention-<token>-<n>
GROUPS_PER_WORKER = 2  # heads are cut into about this many groups per worker (load balance vs model loads)
STOP_POLL_S = 1.0  # with a `stop`, how often the driver looks at it while no record arrives
Heads = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class HeadGroup:
    """What one task studies: the control (no explanation) when `control`, then each of `heads`."""

    heads: Heads
    control: bool = False


@dataclass(frozen=True)
class Maps:
    """The prepared prompts' attention maps a worker needs (study.prepare's train, held-out, description)."""

    train: list[AttentionResult]
    heldout: list[AttentionResult]
    description: AttentionResult


def head_groups(heads: Sequence[tuple[int, int]], workers: int) -> list[Heads]:
    """`heads` in order, cut into about GROUPS_PER_WORKER groups per worker (never an empty group)."""
    size = max(1, math.ceil(len(heads) / max(1, workers * GROUPS_PER_WORKER)))
    return [tuple(heads[k : k + size]) for k in range(0, len(heads), size)]


class HeadWorker:
    """A Ray actor's body: one copy of the model (loaded once, `threads` torch threads), head groups on demand."""

    def __init__(self, model_name: str, quantization: str, threads: int) -> None:
        import torch

        from engine.core.loading import load_model

        torch.set_num_threads(threads)
        self.lm = load_model(model_name, quantization=quantization)

    def ready(self) -> str:
        return self.lm.name

    def study(self, maps: Maps, config: StudyConfig, mode: str, group: HeadGroup) -> Iterator[tuple[str, Any]]:
        """("control", (predictions, seconds)) first when asked, then ("head", HeadRecord) per head of the group."""
        speaker = SelfExplainer.for_model(self.lm, mode, config.max_new_tokens)
        if group.control:
            yield "control", simulate_control(maps.heldout, config.queries, speaker, lambda _message: None)
        for layer, head in group.heads:
            start = time.perf_counter()
            record = study_head(layer, head, maps.train, maps.heldout, maps.description, config.queries, speaker)
            record.seconds = time.perf_counter() - start
            yield "head", record


def on_ray(executor: ExecutorConfig | None) -> HeadsElsewhere | None:
    """study.run_study's `elsewhere` for this executor: Ray workers (`study_on_ray`), or None (this process)."""
    if executor is None or executor.executor != "ray":
        return None
    return lambda run, records, came_back, stop: study_on_ray(run, records, executor, came_back, stop)


def study_on_ray(
    run: StudyRun,
    records: dict[tuple[int, int], HeadRecord],
    executor: ExecutorConfig,
    came_back: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Study the heads of `run` missing from `records` (and the control, when not cached) on Ray workers;
    each record is saved to the run's cache folder and added to `records` as it arrives. `came_back(message)`
    after each. False when `stop` ended it first (what arrived stays cached). LabError before any work when
    the cluster cannot be reached or lacks the resources a worker asks for."""
    if run.lm is None:
        raise ValueError("study_on_ray needs the prepared run's model (its name) for the workers")
    missing = [key for key in run.heads if key not in records]
    need_control = load_control(run) is None
    if not missing and not need_control:
        return True
    plan = start_ray(executor, shards=max(1, len(missing)))
    groups = [HeadGroup(heads) for heads in head_groups(missing, plan.workers)]
    if need_control:
        groups.insert(0, HeadGroup((), control=True))
    ray = ray_module()
    actor_class = ray.remote(HeadWorker)
    options = {"num_cpus": plan.cpus, "num_gpus": plan.gpus, "max_restarts": 0}
    token = uuid.uuid4().hex[:8]
    maps = ray.put(Maps(run.train, run.heldout, run.description))
    control_done = [not need_control]

    def make_worker(index: int):
        """A fresh actor, named `lab-attention-<token>-<n>` (`ray list actors` shows whose it is)."""
        name = f"{WORKER_PREFIX}{token}-{index}"
        return actor_class.options(name=name, **options).remote(run.lm.name, run.lm.quantization, plan.cpus)

    def call(actor, shard: Shard):
        return actor.study.options(num_returns="streaming").remote(maps, run.config, run.mode, shard.payload)

    def on_item(shard: Shard, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "control":
            if not control_done[0]:
                save_control(run.folder, *value)
                control_done[0] = True
            message = "control (no explanation) done"
        else:
            record: HeadRecord = value
            if record.key in records:
                return  # already written (never twice)
            save_record(run.folder, record)
            records[record.key] = record
            message = f"head {record.layer}.{record.head} done ({len(records)} of {len(run.heads)})"
        if came_back is not None:
            came_back(message)

    def retry(shard: Shard) -> HeadGroup | None:
        group: HeadGroup = shard.payload
        left = tuple(key for key in group.heads if key not in records)
        control = group.control and not control_done[0]
        return HeadGroup(left, control) if left or control else None

    shards = [
        Shard("control" if g.control else f"heads {g.heads[0][0]}.{g.heads[0][1]}-{g.heads[-1][0]}.{g.heads[-1][1]}", g)
        for g in groups
    ]
    run_shards(  # no pool: the workers left idle at the end are ended, nothing stays running
        plan,
        make_worker,
        call,
        shards,
        on_item,
        retry,
        stop=stop.is_set if stop is not None else None,
        poll_s=STOP_POLL_S if stop is not None else None,
    )
    return control_done[0] and all(key in records for key in run.heads)
