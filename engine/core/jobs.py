"""One job runner for every long task (a grokking run or sweep, an uncertainty run's generation, an
LLM judge): a background thread per job key, with progress, ETA, stop and status.

One job per key per process: starting a key whose job is alive returns that job. A job that writes a
run holds the run's claim (`RunFolder.claim`) for as long as it works, so a second process (the CLI,
another server) cannot write the same run at once. `work(job)` reports through `job.progress(...)`
and checks `job.stopping` between steps; whatever it returns is `job.result`; a `LabError` becomes
`job.error` as its one line, any other exception its type and message (the run stays resumable).

On the shared server a job belongs to the person who started it (`Job.owner`, `start_owned`): it
counts against their jobs_per_person and disk quota, and `JobRunner.latest_of` finds it again for them
after a reload or a closed tab.

On the command line a feature's job module runs the same work in the foreground; `ctrl_c_stops` turns the
first Ctrl-C into the stop a page's Stop button asks for (the work ends cleanly at its next step, resumable).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from engine.core.db import RunAccess, lab_db
from engine.core.errors import LabError
from engine.core.limits import limits_file, server_limits
from engine.core.queue import current_owner
from engine.core.runstore import RunFolder

JobState = Literal["running", "stopping", "finished", "stopped", "failed"]
log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Job:
    """A background task: who started it is the caller's business; the runner keeps its state."""

    key: str
    label: str = ""
    owner: str | None = None  # the person who started it (engine.core.db owner id); None: the CLI, a test
    done: int = 0
    total: int | None = None
    message: str = ""
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    result: Any = None
    first_done: int = 0  # units already done when it started (a resumed run)
    step_seconds: list[float] = dataclasses.field(default_factory=list)
    stop_event: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = dataclasses.field(default=None, repr=False)

    def progress(self, done: int, total: int | None = None, message: str = "", seconds: float | None = None) -> None:
        """Report progress: `done` of `total` units, an optional message, the last unit's seconds."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if message:
            self.message = message
        if seconds is not None:
            self.step_seconds.append(float(seconds))

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked: work should end at its next step."""
        return self.stop_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def state(self) -> JobState:
        if self.running:
            return "stopping" if self.stopping else "running"
        if self.error:
            return "failed"
        return "stopped" if self.stopping else "finished"

    @property
    def rate_measured(self) -> bool:
        """Whether a unit of work finished since the job started, so a pace (and an ETA) is known."""
        return bool(self.step_seconds) or (self.done > self.first_done)

    def eta_seconds(self) -> float | None:
        """Remaining seconds from the mean of the last 20 units' times; before any unit of this job ended
        (a resumed job starts at `first_done`), None: there is no pace yet."""
        if self.total is None:
            return None
        remaining = max(self.total - self.done, 0)
        if self.step_seconds:
            recent = self.step_seconds[-20:]
            return sum(recent) / len(recent) * remaining
        worked = self.done - self.first_done
        return (time.time() - self.started) / worked * remaining if worked > 0 else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or the timeout passes (False)."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running


class JobRunner:
    """Background jobs by key, process-wide (shared by every session of the lab server)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self,
        key: str,
        work: Callable[[Job], Any],
        *,
        label: str = "",
        run: RunFolder | None = None,
        total: int | None = None,
        done: int = 0,
        owner: str | None = None,
    ) -> Job:
        """Run `work(job)` in a daemon thread unless the job of `key` is alive (then return that one).

        With `run`, the run's claim is taken before the thread starts (a LabError here if another
        process writes it) and held until the work ends."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            owner = owner if owner is not None else current_owner()
            job = Job(key=key, label=label, owner=owner, total=total, done=done, first_done=done)
            claim = run.claim() if run is not None else contextlib.nullcontext()
            claim.__enter__()  # raises LabError when another writer holds the run

            def target() -> None:
                try:
                    job.result = work(job)
                except LabError as err:
                    job.error = str(err)
                except Exception as err:  # noqa: BLE001 - one line for the user, the trace in the server log
                    log.exception("job %s failed", key)
                    job.error = f"{type(err).__name__}: {err}"
                finally:
                    job.ended = time.time()
                    claim.__exit__(None, None, None)

            context = contextvars.copy_context()  # the job acts for whoever started it (engine.core.queue)
            job.thread = threading.Thread(target=context.run, args=(target,), name=f"lab-job-{key}", daemon=True)
            self._jobs[key] = job
            try:
                job.thread.start()
            except BaseException:
                claim.__exit__(None, None, None)
                raise
            return job

    def get(self, key: str) -> Job | None:
        """The latest job of this key (running or ended), or None."""
        return self._jobs.get(key)

    def running(self, key: str) -> Job | None:
        """The job of this key if it is alive."""
        job = self._jobs.get(key)
        return job if job is not None and job.running else None

    def stop(self, key: str) -> bool:
        """Ask the job of this key to stop; False when none is running."""
        job = self.running(key)
        if job is None:
            return False
        job.stop()
        return True

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def latest_of(self, owner: str, prefix: str = "") -> Job | None:
        """The newest job `owner` started in this process whose key starts with `prefix` (running or
        ended): how a person finds their job again after a reload or a closed tab."""
        mine = [job for job in self.jobs() if job.owner == owner and job.key.startswith(prefix)]
        return max(mine, key=lambda job: job.started, default=None)


RUNNER = JobRunner()  # the process's runner: every page and session starts its jobs here


# ------------------------------------------------------------------------------------------------
# A person's jobs on the shared server: their runs, their disk quota, how many jobs they run at once

LARGEST_LISTED = 5  # runs named when a person is over their disk quota


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    for file in Path(path).rglob("*"):
        with contextlib.suppress(OSError):
            if file.is_file():
                total += file.stat().st_size
    return total


def size_text(n: float) -> str:
    """12_300_000 -> '12.3 MB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_quota(person: str) -> None:
    """LabError when the person's runs take more than their disk quota, listing their largest runs
    (nothing is deleted for them: they choose)."""
    db = lab_db()
    quota = db.quota_of(person, server_limits().disk_quota_bytes)
    used = db.usage(person)
    if used <= quota:
        return
    largest = "; ".join(
        f"{topic} run {run_id}{f' ({label})' if label else ''}: {size_text(nbytes)}"
        for topic, run_id, label, nbytes in db.runs_of(person)[:LARGEST_LISTED]
    )
    raise LabError(
        f"Your runs take {size_text(used)}, over your disk quota of {size_text(quota)} on this server "
        f"(disk_quota_bytes in {limits_file().name}): delete some to start a new one. Your largest runs: {largest}."
    )


def check_jobs(person: str) -> None:
    """LabError when the person already runs jobs_per_person long jobs in this server process."""
    running = lab_db().jobs_of(person, pid=os.getpid())
    limit = server_limits().jobs_per_person
    if len(running) >= limit:
        names = ", ".join(label or key for key, label in running)
        raise LabError(
            f"You already run {len(running)} long job(s) ({names}); this server allows {limit} at once per "
            f"person (jobs_per_person in {limits_file().name}). Wait for one to end, or stop one."
        )


def owner_text(access: RunAccess, person: str) -> str:
    """Whose a run is, as `person` sees it: "yours, private", "shared by Ada (read-only)", ..."""
    if access.owner is None:
        return "made outside the server (read-only)"
    if access.owner == person:
        return "yours, shared with the group" if access.shared else "yours, private"
    name = lab_db().name_of(access.owner) or f"person {access.owner[:8]}"
    return f"shared by {name} (read-only)"


def claim_started_run(topic: str, run_id: str, person: str, fresh: bool, label: str = "") -> RunAccess:
    """Make the person who starts a run its owner, or refuse.

    `fresh`: the run's folder did not exist before this start; it becomes theirs (a row left by a folder
    deleted outside the server is dropped first). An existing run must be theirs already: run ids hash
    their inputs, so someone else's run with exactly these inputs is refused with a reason, never taken."""
    db = lab_db()
    if fresh:
        db.forget_run(topic, run_id)
        return db.claim_run(topic, run_id, person, label)
    access = db.access(topic, run_id)
    if access.writable_by(person):
        return access
    if not access.readable_by(person):
        raise LabError(
            "Someone else already has a private run with exactly these settings (a run's id is a hash of its "
            "inputs). Change the seed to start your own."
        )
    raise LabError(
        f"A run with exactly these settings already exists and is {owner_text(access, person)}: open it from the "
        "list to look at it, or change the seed to start your own."
    )


def start_owned(
    key: str,
    start: Callable[[], Job],
    *,
    person: str,
    label: str,
    writes: Callable[[], Sequence[tuple[str, RunFolder]]] = tuple,
) -> Job:
    """Start a long job for `person`: `start()` starts it on RUNNER under `key` (the running job of `key`
    is returned instead, uncounted, when there is one).

    Refused (LabError) when they already run jobs_per_person jobs. While it runs, the database lists it
    as theirs (jobs table, with this process's pid); when it ends, the size of every (topic, run folder)
    that `writes()` returns is recorded against their disk quota."""
    running = RUNNER.running(key)
    if running is not None:
        return running
    check_jobs(person)
    db = lab_db()
    db.job_started(key, person, label, os.getpid())

    def ended() -> None:
        db.job_ended(key)
        for topic, folder in writes():
            if folder.path.is_dir():
                db.set_bytes(topic, folder.run_id, folder_bytes(folder.path))

    try:
        job = start()
    except BaseException:
        ended()
        raise
    job.owner = person

    def watch() -> None:
        job.wait()
        ended()

    threading.Thread(target=watch, name=f"lab-job-end-{key}", daemon=True).start()
    return job


@contextlib.contextmanager
def ctrl_c_stops() -> Iterator[threading.Event]:
    """Foreground work on the command line: the first Ctrl-C (SIGINT) sets the yielded event, which the work reads
    as a stop (it ends cleanly at its next step, as after a page's Stop); a second Ctrl-C interrupts at once
    (KeyboardInterrupt). Outside the main thread, where no signal handler can be set, nothing is installed."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_ctrl_c(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping at the next step (Ctrl-C again to interrupt now).", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
