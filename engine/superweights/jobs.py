"""The super-weights study's long computations as background jobs (engine.core.jobs.RUNNER): the ablation of
the super weight(s) and the super-weight-aware quantization, each a job keyed by a hash of its exact inputs
(one job per inputs in a process, whoever watches it).

A job reports `progress(done, total, message)` as the engine's functions count their steps (the numbers are
the functions' own: a job only runs them). A stop asked through the job ends it at the next step: the step's
callback raises `Stopped`, the weight edits in flight are undone on the way out (engine.core.weight_edits),
and the job ends "stopped" without a result. A finished job's result is also handed to `keep` (the page's
store of results for exactly these inputs).

`find_mine(person)` is the person's latest job of this study in the process, running or ended: a tab opened
again without its link shows it (its progress, or its result).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, get_args

from engine.core.jobs import RUNNER, Job
from engine.core.model import LoadedModel
from engine.superweights import ablation, quantize
from engine.superweights.detect import Candidate, ProgressFn

Kind = Literal["ablation", "quantization"]
KINDS: tuple[Kind, ...] = get_args(Kind)
KEY_PREFIX = "sw-"  # every job key of this study starts with it: f"sw-{kind}-{hash of the inputs}"


class Stopped(Exception):
    """Raised from a job's progress callback once a stop was asked: the computation ends at that step."""


def job_key(kind: Kind, inputs: Hashable) -> str:
    """The job key of the `kind` computation of exactly these inputs."""
    return f"{KEY_PREFIX}{kind}-" + hashlib.sha256(repr(inputs).encode()).hexdigest()[:16]


def kind_of(key: str) -> Kind | None:
    """The kind of computation a job key names (None: not one of this study's)."""
    return next((kind for kind in KINDS if key.startswith(f"{KEY_PREFIX}{kind}-")), None)


def _stoppable(job: Job) -> ProgressFn:
    """The job's progress callback: counts the steps, and raises Stopped at the first step after a stop."""

    def progress(done: int, total: int, message: str = "") -> None:
        if job.stopping:
            raise Stopped
        job.progress(done, total, message)

    return progress


def _job_work(compute: Callable[[ProgressFn], Any], keep: Callable[[Any], Any]) -> Callable[[Job], Any]:
    def work(job: Job) -> Any:
        try:
            return keep(compute(_stoppable(job)))
        except Stopped:
            return None  # job.state: "stopped" (a stop was asked, no error)

    return work


def start_ablation(
    lm: LoadedModel,
    inputs: Hashable,
    candidates: Sequence[Candidate],
    *,
    k: int,
    scale: float,
    max_tokens: int,
    keep: Callable[[Any], Any] = lambda result: result,
    start: Callable[[str, Callable[[], Job]], Job] = lambda key, begin: begin(),
) -> Job:
    """The ablation (engine.superweights.ablation.ablation_table, k 0: the paper's fraction) as a job; the
    running job of these inputs when there is one. `start(key, begin)`: how the caller counts it as a person's
    job (begin() starts it; the default starts it uncounted)."""
    key = job_key("ablation", inputs)
    work = _job_work(
        lambda progress: ablation.ablation_table(
            lm, list(candidates), k=k or None, scales=[scale], max_tokens=max_tokens, progress=progress
        ),
        keep,
    )
    label = (
        f"{lm.name}: ablation of {len(candidates)} super weight(s), k = {k or 'the paper'}, s = {scale:g}, "
        f"{max_tokens} tokens"
    )
    return start(key, lambda: RUNNER.start(key, work, label=label))


def start_quantization(
    lm: LoadedModel,
    inputs: Hashable,
    candidates: Sequence[Candidate],
    *,
    block_sizes: Sequence[int],
    methods: Sequence[str],
    clip_fraction: float,
    max_tokens: int,
    keep: Callable[[Any], Any] = lambda result: result,
    start: Callable[[str, Callable[[], Job]], Job] = lambda key, begin: begin(),
) -> Job:
    """The quantization table (engine.superweights.quantize.quantization_table) as a job, as start_ablation."""
    key = job_key("quantization", inputs)
    work = _job_work(
        lambda progress: quantize.quantization_table(
            lm,
            list(candidates),
            list(block_sizes),
            clip_fraction=clip_fraction,
            methods=list(methods),
            max_tokens=max_tokens,
            progress=progress,
        ),
        keep,
    )
    label = f"{lm.name}: quantization, block sizes {', '.join(map(str, block_sizes))}, {max_tokens} tokens"
    return start(key, lambda: RUNNER.start(key, work, label=label))


def find_mine(person: str) -> Job | None:
    """The person's latest ablation or quantization job in this process (running or ended), or None."""
    return RUNNER.latest_of(person, KEY_PREFIX)
