"""Starting a person's long job from a page: their jobs_per_person and disk quota (engine.core.jobs),
and their place in the model's queue while the job waits for it (ui.model_queue).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from engine.core import jobs
from engine.core.db import lab_db
from engine.core.jobs import Job
from engine.core.queue import FairLock
from engine.core.runstore import RunFolder
from ui.model_queue import forget_job_queue, watch_job_queue
from ui.people import me


def check_quota(person: str | None = None) -> None:
    """LabError when the person's runs take more than their disk quota (engine.core.jobs.check_quota)."""
    jobs.check_quota(person or me())


def check_jobs(person: str | None = None) -> None:
    """LabError when the person already runs jobs_per_person long jobs (engine.core.jobs.check_jobs)."""
    jobs.check_jobs(person or me())


def is_my_job(key: str) -> bool:
    """Whether the running job of `key` was started by this person (in this server process)."""
    return any(job_key == key for job_key, _ in lab_db().jobs_of(me(), pid=os.getpid()))


def start_job(
    key: str,
    start: Callable[[], Job],
    *,
    label: str,
    lock: FairLock | None = None,
    writes: Callable[[], Sequence[tuple[str, RunFolder]]] = tuple,
    person: str | None = None,
) -> Job:
    """Start a long job for this person (engine.core.jobs.start_owned: jobs_per_person, the jobs table,
    the disk usage of what `writes()` returns when it ends). `lock`: the model's queue the job waits
    in (ui.model_queue.job_queue_note tells its place)."""
    if lock is not None:
        watch_job_queue(key, lock)

    def written() -> Sequence[tuple[str, RunFolder]]:
        forget_job_queue(key)
        return writes()

    try:
        return jobs.start_owned(key, start, person=person or me(), label=label, writes=written)
    except BaseException:
        forget_job_queue(key)
        raise
