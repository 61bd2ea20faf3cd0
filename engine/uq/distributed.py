"""Uncertainty generation on Ray: the run's missing questions sharded across actors, each holding one copy
of the model; the records stream back to this process (the driver), which writes them to the run store
exactly as the local path does (engine.uq.generation), so no filesystem is shared with the workers.

Shards are made of whole batches of the question order: with a fixed `batch_questions` = b, batch j is
questions [j b, (j+1) b) on every executor, and a shard is questions [s, s + m b) for a batch boundary s.
A worker decodes its shard with `generate_records` (same batches, same per-question generators) at a
fixed torch thread count (`ExecutorConfig.ray_cpus`), so its records are the local path's bit for bit on
the same hardware and thread count, and `results.csv` is byte-identical. With automatic batch sizes
(`batch_questions` 0) each worker picks its own from its memory: the text is the same and the log-probs
agree to float noise (within 1e-4), as between any two batch sizes.

Faults: a record is written once, when it reaches the driver (a set of written indices guards against a
second copy); a worker that dies loses only its questions in flight, and what is left of its shard is
rerun on a fresh worker (same batches, so the same records). The driver holds the run's claim, as the
local path does; interrupted, it kills its workers, and a rerun (on either executor) generates only what
is missing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from engine.core.errors import LabError
from engine.core.executor import (
    ExecutorConfig,
    Shard,
    WorkerPlan,
    ray_module,
    run_shards,
    start_ray,
    worker_error,
)
from engine.core.options import option
from engine.uq.config import GenerationConfig
from engine.uq.records import QuestionRecord
from engine.uq.store import UqRun

WORKER_PREFIX = "lab-uq-"  # Ray actor names: lab-uq-<token>-<n>
SHARDS_PER_WORKER = 4  # automatic shard size: about this many shards per worker (load balance vs overhead)
Progress = Callable[[int, int, str], None]  # (questions done, total, message)


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    """How a run's questions are cut for Ray workers (speed only: never the text, not part of the run id)."""

    shard_questions: int = option(
        0,
        f"questions per Ray shard, rounded up to whole batches (0: about {SHARDS_PER_WORKER} shards per worker)",
    )


@dataclasses.dataclass(frozen=True)
class ShardWork:
    """What a worker decodes: the questions [start, stop) (whole batches) and which of them to return."""

    start: int
    stop: int
    wanted: frozenset[int]


def shard_bounds(total: int, batch_questions: int, workers: int, shard_questions: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of each shard of questions [0, total): `shard_questions` (auto: total / (4 workers))
    rounded up to a multiple of `batch_questions` (when fixed), so every shard holds whole batches of the
    local path's batching `range(0, total, batch_questions)`."""
    size = shard_questions or math.ceil(total / max(1, workers * SHARDS_PER_WORKER))
    if batch_questions > 0:
        size = math.ceil(size / batch_questions) * batch_questions
    size = max(1, size)
    return [(start, min(start + size, total)) for start in range(0, total, size)]


class GenerationWorker:
    """A Ray actor's body: one copy of the model, `threads` torch threads, the run's questions decoded on demand."""

    def __init__(self, model_name: str, threads: int) -> None:
        import torch

        from engine.core.loading import load_model

        torch.set_num_threads(threads)
        self.lm = load_model(model_name)

    def describe(self) -> dict[str, Any]:
        """What the driver needs to open the run without loading the model: name, layer count, template."""
        from engine.uq.generation import default_template, n_layers_of

        return {
            "name": self.lm.name,
            "n_layers": n_layers_of(self.lm),
            "template": default_template(self.lm),
            "device": str(self.lm.device),
        }

    def generate(
        self, items: Sequence[Any], config: GenerationConfig, batch_questions: int, wanted: frozenset[int]
    ) -> Iterator[tuple[int, QuestionRecord]]:
        """(index, record) of each wanted question of `items`, as `generate_records` yields them."""
        from engine.uq.generation import generate_records

        yield from generate_records(self.lm, items, config, batch_questions=batch_questions, wanted=wanted)


class RayGeneration:
    """The Ray side of a run's generation: the workers' plan and the first worker, started before the run
    is opened (it tells the driver the model's facts), then `generate` for the run's missing questions,
    then `close()` (or use it as a context manager)."""

    def __init__(self, config: ExecutorConfig, model_name: str, total: int, batch_questions: int) -> None:
        batches = math.ceil(total / batch_questions) if batch_questions > 0 else total
        self.plan: WorkerPlan = start_ray(config, shards=batches)
        self.model_name = model_name
        ray = ray_module()
        self._actor_class = ray.remote(GenerationWorker)
        self._options = {"num_cpus": self.plan.cpus, "num_gpus": self.plan.gpus, "max_restarts": 0}
        self._token = uuid.uuid4().hex[:8]
        self._started = 0
        self._ready = [self._new_worker()]
        try:
            self.facts: dict[str, Any] = ray.get(self._ready[0].describe.remote())
        except Exception as err:  # noqa: BLE001 - the worker's LabError (model missing on that node) stays one line
            ray.kill(self._ready[0])
            raise worker_error(err, f"model {model_name}") from err

    def _new_worker(self):
        """A fresh actor, named `lab-uq-<token>-<n>` (`ray list actors` shows whose it is; tests kill one by name)."""
        self._started += 1
        name = f"{WORKER_PREFIX}{self._token}-{self._started - 1}"
        return self._actor_class.options(name=name, **self._options).remote(self.model_name, self.plan.cpus)

    def __enter__(self) -> RayGeneration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the idle workers (each holds a copy of the model); the next `generate` starts fresh ones."""
        ray = ray_module()
        for actor in self._ready:
            ray.kill(actor)
        self._ready.clear()

    def generate(
        self,
        run: UqRun,
        *,
        limit: int | None = None,
        batch_questions: int = 0,
        shard_questions: int = 0,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Generate the missing records of the run's first `limit` questions on the workers; returns how
        many were written. Holds the run's claim throughout, as `generation.generate_run` does. The workers
        stay loaded for the next call until `close()`; on an error or an interrupt they all end here."""
        from engine.uq.generation import question_items

        if run.model != self.facts["name"]:
            raise LabError(f"This run was made with {run.model}, not {self.facts['name']}.")
        with run.claim("generated"):
            total = run.total(limit)
            config = run.generation_config()
            items = question_items(run, total)
            done = {i for i in run.done_indices() if i < total}
            shards = []
            for start, end in shard_bounds(total, batch_questions, self.plan.workers, shard_questions):
                wanted = frozenset(range(start, end)) - done
                if wanted:
                    shards.append(Shard(f"{start}-{end - 1}", ShardWork(start, end, wanted)))
            written = 0
            shard_note = [""]

            def on_item(shard: Shard, item: tuple[int, QuestionRecord]) -> None:
                nonlocal written
                index, record = item
                if index in done or index not in shard.payload.wanted:
                    return  # a copy already written (never twice)
                run.write_record(index, record)
                written += 1
                done.add(index)
                run.set_status("running", len(done), f"{len(done)}/{total} questions")
                if progress is not None:
                    progress(len(done), total, f"{len(done)}/{total} questions{shard_note[0]}")

            def shard_progress(finished: int, count: int, message: str) -> None:
                shard_note[0] = f" · {message}"
                if progress is not None:
                    progress(len(done), total, f"{len(done)}/{total} questions · {message}")

            def call(actor, shard: Shard):
                work: ShardWork = shard.payload
                return actor.generate.remote(items[work.start : work.stop], config, batch_questions, work.wanted)

            def retry(shard: Shard) -> ShardWork | None:
                work: ShardWork = shard.payload
                left = work.wanted - done
                return dataclasses.replace(work, wanted=frozenset(left)) if left else None

            try:
                if shards:
                    run_shards(
                        self.plan,
                        lambda _index: self._new_worker(),
                        call,
                        shards,
                        on_item,
                        retry,
                        pool=self._ready,
                        progress=shard_progress,
                        stop=(stop.is_set if stop is not None else None),
                    )
            except BaseException:
                self.close()
                raise
            run.set_status("finished" if len(done) == total else "stopped", len(done), f"{len(done)}/{total} questions")
            return written
