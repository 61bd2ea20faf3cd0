"""The attention study as a person's background job on the shared server, in one place for the page:
who may start one (their jobs_per_person and disk quota, engine.core.jobs), starting it (or joining the
job of exactly these settings), stopping it, and finding a person's study job again after a reload or
a closed tab.

The study itself (engine.attention.study.run_study) caches every finished head under
cache/attention_study/, so a stopped job resumes where it ended when it is started again with the same
settings. Its cache is not anyone's run: it is the deterministic result of (model, settings), shared by
everyone who asks for the same. The command line (`python -m engine attention-study`) runs it in the
foreground through `run_here`, uncapped: the same validation and resume, its first Ctrl-C the page's Stop, and
its `--executor`. With LAB_EXECUTOR=ray (engine.core.executor.server_executor) a job studies the heads on Ray
workers (engine.attention.distributed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable

from engine.attention.distributed import on_ray
from engine.attention.study import run_study
from engine.attention.study_config import StudyConfig
from engine.attention.study_result import StudyResult
from engine.core import jobs
from engine.core.errors import LabError
from engine.core.executor import ExecutorConfig, server_executor
from engine.core.jobs import RUNNER, Job, ctrl_c_stops
from engine.core.model import LoadedModel

KEY_PREFIX = "attention-study:"  # every study job's key starts with it


@dataclasses.dataclass(frozen=True)
class StudyJob:
    """What a study job runs: the model (name, quantization) and the settings."""

    model: tuple[str, str]
    config: StudyConfig


_STARTED: dict[str, StudyJob] = {}  # job key -> what it runs (process-wide, as RUNNER)
_LOCK = threading.Lock()


def job_key(model: tuple[str, str], config: StudyConfig) -> str:
    """KEY_PREFIX + a hash of the model and every setting: one job per (model, settings) per process."""
    payload = json.dumps({"model": list(model), "config": dataclasses.asdict(config)}, sort_keys=True, default=str)
    return KEY_PREFIX + hashlib.sha256(payload.encode()).hexdigest()[:16]


def study_of(job: Job) -> StudyJob | None:
    """The model and settings a study job runs (None: not a study job of this process)."""
    return _STARTED.get(job.key)


def start(lm: LoadedModel, person: str, config: StudyConfig) -> tuple[Job, bool]:
    """Start the study of `lm` with `config` for `person` in the background: (its job, whether it joined
    the job of exactly these settings that was already running, started by anyone).

    Refused (LabError, one line) for settings the study refuses (StudyConfig.validate), and when the
    person is over their disk quota or already runs jobs_per_person jobs. The job's result is the
    StudyResult, or None when it was stopped (the finished heads stay cached)."""
    config.validate()
    executor = server_executor()
    model = (lm.name, lm.quantization)
    key = job_key(model, config)
    running = RUNNER.running(key)
    if running is not None:
        return running, True
    jobs.check_quota(person)
    label = f"attention study of {lm.name}"

    def work(job: Job):
        return run_study(
            lm,
            config,
            lambda done, total, message: job.progress(done, total, message),
            job.stop_event,
            elsewhere=on_ray(executor),
        )

    with _LOCK:
        _STARTED[key] = StudyJob(model, config)
    job = jobs.start_owned(key, lambda: RUNNER.start(key, work, label=label, owner=person), person=person, label=label)
    return job, False


def stop(person: str, key: str) -> bool:
    """Ask the study job of `key` to stop after the held-out prompt in flight (finished heads stay
    cached); False when none runs. LabError when `person` did not start it."""
    job = RUNNER.running(key)
    if job is None:
        return False
    if job.owner != person:
        raise LabError("This study was started by someone else: only they can stop it.")
    job.stop()
    return True


def latest_job_of(person: str, model: tuple[str, str] | None = None) -> Job | None:
    """The newest study job `person` started in this server process (of `model` when given), running or
    ended: the job a page finds again after a reload or a closed tab."""
    mine = [
        job
        for job in RUNNER.jobs()
        if job.owner == person
        and job.key.startswith(KEY_PREFIX)
        and (model is None or (job.key in _STARTED and _STARTED[job.key].model == model))
    ]
    return max(mine, key=lambda job: job.started, default=None)


STOPPED_TEXT = "Stopped: the finished heads are cached; the same command continues from them."


def run_here(
    lm: LoadedModel,
    config: StudyConfig,
    progress: Callable[[int, int, str], None] | None = None,
    executor: ExecutorConfig | None = None,
) -> StudyResult | None:
    """The command line's study of `lm`: validated as on the page (StudyConfig.validate, ExecutorConfig.validate),
    run or resumed from the cached heads, or only read with `config.report_only` (engine.attention.study.run_study);
    the missing heads studied in this process, or on Ray workers with `executor` ray (distributed.on_ray). The
    first Ctrl-C stops it after the held-out prompt in flight (on Ray: ends the workers), as the page's Stop: None
    then (STOPPED_TEXT)."""
    config.validate()
    if executor is not None:
        executor.validate()
    with ctrl_c_stops() as stop:
        return run_study(lm, config, progress, stop, report_only=config.report_only, elsewhere=on_ray(executor))
