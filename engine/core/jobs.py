"""One job runner for every long task (a grokking run or sweep, an uncertainty run's generation, an
LLM judge): a background thread per job key, with progress, ETA, stop and status.

One job per key per process: starting a key whose job is alive returns that job. A job that writes a
run holds the run's claim (`RunFolder.claim`) for as long as it works, so a second process (the CLI,
another server) cannot write the same run at once. `work(job)` reports through `job.progress(...)`
and checks `job.stopping` between steps; whatever it returns is `job.result`; a `LabError` becomes
`job.error` as its one line, any other exception its type and message (the run stays resumable).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from engine.core.errors import LabError
from engine.core.runstore import RunFolder

JobState = Literal["running", "stopping", "finished", "stopped", "failed"]
log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Job:
    """A background task: who started it is the caller's business; the runner keeps its state."""

    key: str
    label: str = ""
    done: int = 0
    total: int | None = None
    message: str = ""
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    result: Any = None
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

    def eta_seconds(self) -> float | None:
        """Remaining seconds from the mean of the last 20 units' times (None before the first)."""
        if self.total is None:
            return None
        remaining = max(self.total - self.done, 0)
        if self.step_seconds:
            recent = self.step_seconds[-20:]
            return sum(recent) / len(recent) * remaining
        elapsed = time.time() - self.started
        return elapsed / self.done * remaining if self.done else None

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
    ) -> Job:
        """Run `work(job)` in a daemon thread unless the job of `key` is alive (then return that one).

        With `run`, the run's claim is taken before the thread starts (a LabError here if another
        process writes it) and held until the work ends."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            job = Job(key=key, label=label, total=total, done=done)
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


RUNNER = JobRunner()  # the process's runner: every page and session starts its jobs here
