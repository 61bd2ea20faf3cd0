"""A run's generation on the executor a command or job chose: in this process with a loaded model
(`local`), or sharded across Ray workers that each hold a copy of it (`ray`, engine.uq.distributed).

    with Generator(model, executor, total=..., batch_questions=b) as generator:
        run = generator.open_run(questions, generation, source)
        generator.generate(run, limit, progress)

Both write the same run folders (a run is keyed by model, generation settings and questions, never by
the executor), so a run started on one executor resumes on the other; with a fixed `batch_questions`
the records are the same bit for bit (docs/cluster.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from engine.core.executor import ExecutorConfig
from engine.core.model import LoadedModel
from engine.uq.config import GenerationConfig
from engine.uq.store import UqRun, open_run

Progress = Callable[[int, int, str], None]  # (questions done, total, message)


class Generator:
    """Generates runs' missing records on `executor` (None or local: this process). `facts`: the model's
    name, layer count, prompt template and device (on Ray the first worker tells them: this process does
    not load the model); `lm`: the model when it is loaded here (local), else None; `where`: one line."""

    def __init__(
        self,
        model: str,
        executor: ExecutorConfig | None = None,
        *,
        total: int = 1,
        batch_questions: int = 0,
        shard_questions: int = 0,
        lm: LoadedModel | None = None,
    ) -> None:
        from engine.uq.generation import default_template, n_layers_of

        self.batch_questions = batch_questions
        self.shard_questions = shard_questions
        self.ray = None
        self.lm: LoadedModel | None = None
        if executor is not None and executor.executor == "ray":
            from engine.uq.distributed import RayGeneration

            self.ray = RayGeneration(executor, model, max(1, total), batch_questions)
            self.facts: dict[str, Any] = dict(self.ray.facts)
            self.where = f"{self.ray.plan.describe()}; model on {self.facts['device']}"
        else:
            from engine.core.loading import load_model

            self.lm = lm if lm is not None else load_model(model)
            self.facts = {
                "name": self.lm.name,
                "n_layers": n_layers_of(self.lm),
                "template": default_template(self.lm),
                "device": str(self.lm.device),
            }
            self.where = f"this process, model on {self.facts['device']}"

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the Ray workers (each holds a copy of the model); nothing to end locally."""
        if self.ray is not None:
            self.ray.close()

    def open_run(self, questions: pd.DataFrame, generation: GenerationConfig, source: str = "") -> UqRun:
        """The run of these inputs for this model (store.open_run), created when new."""
        return open_run(self.facts["name"], questions, generation, source=source, n_layers=self.facts["n_layers"])

    def generate(
        self,
        run: UqRun,
        limit: int | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """The missing records of the run's first `limit` questions; returns how many were written.
        `progress(done, total, message)` after each record (and, on Ray, each shard); `stop` ends it
        between records (the run stays resumable)."""
        if self.ray is not None:
            return self.ray.generate(
                run,
                limit=limit,
                batch_questions=self.batch_questions,
                shard_questions=self.shard_questions,
                progress=progress,
                stop=stop,
            )
        from engine.uq.generation import generate_run

        def each(done: int, total: int, _seconds: float) -> None:
            if progress is not None:
                progress(done, total, f"{done}/{total} questions")

        assert self.lm is not None
        return generate_run(self.lm, run, limit=limit, progress=each, stop=stop, batch_questions=self.batch_questions)
