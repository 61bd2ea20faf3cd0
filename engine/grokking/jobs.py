"""The life of a grokking run as a background job: start (or resume, or reopen), progress, stop, and how it
ended, and finding a person's run again; the same for a sweep.

A run trains in a job of engine.core.jobs.RUNNER (key `job_key(run_id)`, one per run, shared by every session
that watches it) that holds the run's claim and waits on a child process (engine.core.processes.run_in_process
of engine.grokking.process.train_run): no GIL contention with the server's other sessions, and an
out-of-memory there does not end the server. The child's typed messages (engine.grokking.process) become the
job's progress:

- phase "starting": the child process starts and imports torch (no message yet);
- phase "loading": the child builds the data and model, or loads the checkpoint it resumes from;
- phase "training": metrics rows arrive; the time left is estimated from the seconds per step measured
  between two rows of this job (`seconds_left` is None, "estimating", before that: never from the time
  spent starting, and never from steps trained by an earlier job of the run);
- phase "stopping": a stop was asked; the child saves a checkpoint at its next step and ends.

How a job ended is read from the run's status: "finished", "stopped" (a clean stop saves a checkpoint at the
stop step; a child ended for being slow to stop, `StopTimeout`, leaves the run stopped at its last checkpoint:
the user asked for the stop), or "failed" (an error; the checkpoints are kept and Start resumes).

What the place that starts a job checks for its person (on the lab server: ownership, the person's disk quota
and jobs, ui.access; on the command line: nothing) is passed in as a `Gate`.

The command line (`python -m engine grok`, `grok-sweep`) trains in the foreground through `run_here` and
`sweep_here` (the sweep on the command's executor: this process, a local pool or Ray, engine.grokking.pool): the
same validation, the same resume (from the last checkpoint) and reopening (a finished run), a Ctrl-C that stops
like the tab's Stop, and the same words for how a run ended (`ended_text`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from engine.core.db import lab_db
from engine.core.errors import LabError
from engine.core.executor import ExecutorConfig, server_executor
from engine.core.jobs import RUNNER, Job, ctrl_c_stops
from engine.core.processes import StopTimeout, run_in_process
from engine.core.runstore import RunFolder, run_id_for
from engine.grokking import pool, process
from engine.grokking.analysis import run_experiment, sweep_configs
from engine.grokking.config import TRAIN_THREADS, GrokConfig, validate
from engine.grokking.runs import CACHE_TOPIC, GrokRun, RunSummary, get_run, open_run, run_for

Phase = Literal["starting", "loading", "training", "stopping"]
PHASES: tuple[Phase, ...] = get_args(Phase)
Writes = Callable[[], Sequence[tuple[str, RunFolder]]]
TOPIC = CACHE_TOPIC  # the runs' topic in the lab database


def _direct_start(key: str, start: Callable[[], Job], label: str, writes: Writes) -> Job:
    return start()


@dataclass(frozen=True)
class Gate:
    """What starting a job checks for the person it is started for (the defaults: the command line's nobody,
    uncapped). `admit()`: LabError when the person may not start another job now (quota, jobs); `claim(run_id,
    fresh, label)`: make the run theirs or refuse (LabError); `can_read(run_id)`: whether they may see it;
    `start_job(key, start, label, writes)`: start() counted as their job (writes(): the folders it fills);
    `owns_job(key)`: whether the running job of `key` is theirs."""

    person: str | None = None
    admit: Callable[[], None] = lambda: None
    claim: Callable[[str, bool, str], object] = lambda run_id, fresh, label: None
    can_read: Callable[[str], bool] = lambda run_id: True
    start_job: Callable[[str, Callable[[], Job], str, Writes], Job] = _direct_start
    owns_job: Callable[[str], bool] = lambda key: True
    max_checkpoints: int | None = None


# ------------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Training:
    """A job trains the run: started now (`new`), or already going (this or another session of the person)."""

    run: GrokRun
    job: Job
    new: bool


@dataclass(frozen=True)
class Reopened:
    """The run is finished and summarised: nothing to train, it is shown."""

    run: GrokRun


@dataclass(frozen=True)
class Refused:
    """Nothing started, for `reason`; `run` is the run when it may be shown anyway (else None)."""

    reason: str
    run: GrokRun | None


Started = Training | Reopened | Refused


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training job is (see the module doc for the phases). `step` of at most `total`;
    `resume_step`: the checkpoint it resumed from (None: a fresh start); `seconds_left`: None until a rate is
    measured; `elapsed`: seconds since the job started."""

    phase: Phase
    step: int
    total: int
    resume_step: int | None
    seconds_left: float | None
    elapsed: float


@dataclass(frozen=True)
class StopNote:
    """A stopped run: the step it stopped at, the last checkpoint kept (Start resumes from it; None: none) and
    the last evaluation (the curves and the summary end there; one every `eval_every` steps)."""

    step: int
    checkpoint: int | None
    last_evaluation: int | None
    eval_every: int

    def text(self, resume: str = "Start") -> str:
        """The stop in words; `resume`: what resumes the run (the tab's Start, or the command run again)."""
        if self.checkpoint is None:
            kept = f"no checkpoint was kept yet, so {resume} trains it from the beginning"
        else:
            kept = f"checkpoint {self.checkpoint} is the last kept, and {resume} resumes from it"
        if self.last_evaluation is None:
            curves = "no evaluation was made yet"
        else:
            curves = f"the curves and the summary end at step {self.last_evaluation}, the last evaluation" + (
                "" if self.last_evaluation == self.step else f" (one every {self.eval_every} steps)"
            )
            if self.checkpoint is not None and self.last_evaluation > self.checkpoint:
                curves += f"; the evaluations after checkpoint {self.checkpoint} are redone when it resumes"
        return f"Stopped at step {self.step}: {kept}; {curves}."


# ------------------------------------------------------------------------------------------ one run


def job_key(run_id: str) -> str:
    """The job runner's key of a run's training."""
    return f"grokking:{run_id}"


def run_of(config: GrokConfig, person: str | None) -> GrokRun:
    """The run of this configuration that belongs to `person` (their owner id in its key; None: the CLI's)."""
    return run_for(config, owner=person)


def running_job(run: GrokRun) -> Job | None:
    """The job training this run in this process, while it runs."""
    return RUNNER.running(job_key(run.run_id))


def last_job(run: GrokRun) -> Job | None:
    """The latest job of this run in this process (running or ended), or None."""
    return RUNNER.get(job_key(run.run_id))


def is_live(run: GrokRun) -> bool:
    """Whether the run is being trained now: by a job here, or by another process (it holds the claim)."""
    return running_job(run) is not None or run.is_claimed()


def stop(run: GrokRun) -> bool:
    """Ask the run's job to stop at its next step (the child saves a checkpoint there); False when none runs."""
    return RUNNER.stop(job_key(run.run_id))


def progress(run: GrokRun) -> TrainingProgress | None:
    """The run's training job's progress (module doc), or None when no job of this process trains it."""
    job = running_job(run)
    if job is None:
        return None
    phase: Phase = "stopping" if job.stopping else next((p for p in PHASES if p == job.message), "starting")
    resume = job.result.resume_step if isinstance(job.result, _Started) else None
    seconds_left = None
    if phase == "training" and job.step_seconds and job.total is not None:
        recent = job.step_seconds[-20:]
        seconds_left = sum(recent) / len(recent) * max(job.total - job.done, 0)
    return TrainingProgress(phase, job.done, int(job.total or 0), resume, seconds_left, time.time() - job.started)


@dataclass
class _Started:
    """job.result while the job trains: what the child said when it came up."""

    resume_step: int | None = None


def _reporter(job: Job, total: int) -> Callable[[process.Message], None]:
    """on_message of a training child: its messages as the job's phase, step and seconds per step (measured
    between two rows of this job only)."""
    last: dict[str, float] = {}
    started = _Started()
    job.result = started

    def on_message(message: process.Message) -> None:
        if isinstance(message, process.Loading):
            started.resume_step = message.resume_step
            job.progress(message.resume_step or 0, total, "loading")
        elif isinstance(message, process.Evaluated):
            row = message.row
            seconds = None
            if last:
                seconds = (row["elapsed_s"] - last["elapsed_s"]) / max(row["step"] - last["step"], 1)
            last.update(step=row["step"], elapsed_s=row["elapsed_s"])
            job.progress(row["step"], total, "training", seconds=seconds)

    return on_message


def stopped_if_running(run: GrokRun) -> None:
    """After a training child was ended for being slow to stop (StopTimeout): a run it left saying "running"
    is stopped at its last checkpoint (where Start resumes it), as the user asked."""
    if run.status().get("state") == "running":
        step = max(run.checkpoint_steps(), default=0)
        run.set_status("stopped", step, f"stopped at step {step} (its last checkpoint; it resumes from there)")


def stop_note(run: GrokRun) -> StopNote | None:
    """What a stopped run kept (StopNote), or None when the run is not stopped."""
    status = run.status()
    if status.get("state") != "stopped":
        return None
    metrics = run.metrics()
    checkpoints = run.checkpoint_steps()
    return StopNote(
        step=int(status.get("step", 0)),
        checkpoint=checkpoints[-1] if checkpoints else None,
        last_evaluation=int(metrics["step"].iloc[-1]) if len(metrics) else None,
        eval_every=run.grok_config.eval_every,
    )


def ended_text(run: GrokRun, resume: str = "Start") -> str | None:
    """How the run ended when it did not finish, in words (None: finished, running or new): stopped (StopNote) or
    failed (its error; the checkpoints are kept). `resume`: what resumes it (the tab's Start, or the command)."""
    note = stop_note(run)
    if note is not None:
        return note.text(resume)
    status = run.status()
    if status.get("state") == "failed":
        return f"Run failed: {str(status.get('message')).rstrip('.')}. Its checkpoints are kept; {resume} resumes it."
    return None


def _work(run: GrokRun, config: GrokConfig, max_checkpoints: int | None) -> Callable[[Job], RunSummary | None]:
    def work(job: Job) -> RunSummary | None:
        """In a child process, under this job's claim of the run (claim=False there). A child ended because it
        was slow to stop (StopTimeout: a busy server, a niced child) leaves the run stopped at its last
        checkpoint, as the user asked, not failed."""
        kwargs = dict(config=config, threads=TRAIN_THREADS, claim=False, owner=run.owner)
        if max_checkpoints is not None:
            kwargs["max_checkpoints"] = max_checkpoints
        try:
            return run_in_process(process.train_run, kwargs, job=job, on_message=_reporter(job, config.steps))
        except StopTimeout:
            stopped_if_running(run)
            return None
        except LabError as err:
            if run.status().get("state") == "running":  # the child could not say how it ended (killed)
                run.set_status("failed", run.status().get("step", 0), str(err))
            raise

    return work


def start(config: GrokConfig, gate: Gate = Gate()) -> Started:
    """Start (or resume) the person's run of `config` unless it is finished and summarised (Reopened), or
    already training (Training, new=False). Refused with its reason: someone else's run (shown when
    readable), the person's jobs or disk quota over the limits, a run another process writes (shown)."""
    run = run_of(config, gate.person)
    fresh = not run.exists()
    job = running_job(run)
    if not fresh and job is not None and gate.can_read(run.run_id):
        return Training(run, job, new=False)
    try:
        if not fresh and run.is_finished() and run.summary():
            if not gate.can_read(run.run_id):
                gate.claim(run.run_id, False, config.describe())  # raises: someone else's, private
            return Reopened(run)
        gate.admit()
        gate.claim(run.run_id, fresh, config.describe())
        run = open_run(config, owner=gate.person)
    except LabError as err:
        return Refused(str(err), run if not fresh and gate.can_read(run.run_id) else None)
    key = job_key(run.run_id)
    resume = max(run.checkpoint_steps(), default=0) if run.resume_path.exists() else 0
    try:
        job = gate.start_job(
            key,
            lambda: RUNNER.start(
                key,
                _work(run, config, gate.max_checkpoints),
                label=config.describe(),
                run=run,
                total=config.steps,
                done=resume,
            ),
            f"grokking run {run.run_id}",
            lambda: [(TOPIC, run)],
        )
    except LabError as err:
        return Refused(str(err), run)
    return Training(run, job, new=True)


def find_mine(config: GrokConfig | None, person: str | None) -> GrokRun | None:
    """The person's run to show again when nothing is shown (a new tab, a reload): their run of `config` when it
    exists (training, stopped, failed or finished: its progress or its result), else the run of a training job
    of theirs still going in this server process (engine.core.db's jobs table), else None."""
    if config is not None:
        run = run_of(config, person)
        if run.exists():
            return run
    if person is None:
        return None
    for key, _ in reversed(lab_db().jobs_of(person, pid=os.getpid())):
        if key.startswith("grokking:") and RUNNER.running(key) is not None:
            try:
                run = get_run(key.removeprefix("grokking:"))
            except LabError:
                continue
            if run.owner == person:
                return run
    return None


# ------------------------------------------------------------------------------------------ on the command line

COMMAND_RESUMES = "the same command"  # what resumes a run the command line stopped (ended_text's `resume`)


def run_here(
    config: GrokConfig,
    *,
    run_dir: Path | None = None,
    on_open: Callable[[GrokRun], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> tuple[GrokRun, RunSummary]:
    """The command line's run of `config` in this process (a person's own machine: no gate, no child process):
    validated (a refused setting raises FieldError, naming its flag), opened (`on_open(run)`: where it is), then
    trained, resumed from its last checkpoint, or reopened when finished (analysis.run_experiment, under the
    run's claim: LabError when another process trains it). The first Ctrl-C stops it at its next step with a
    checkpoint, as the tab's Stop does (`ended_text` then says where it stopped). Returns (run, summary)."""
    validate(config)
    run = open_run(config, run_dir=run_dir)
    if on_open is not None:
        on_open(run)
    with ctrl_c_stops() as stop:
        summary = run_experiment(config, run_dir=run_dir, on_eval=on_eval, stop=stop, threads=threads)
    return run, summary


def sweep_here(
    base: GrokConfig,
    seeds: Sequence[int],
    weight_decays: Sequence[float],
    *,
    root: Path | None = None,
    on_run: Callable[[RunSummary, int, int], None] | None = None,
    threads: int | None = None,
    executor: ExecutorConfig | None = None,
    workers: int = 1,
) -> list[RunSummary]:
    """The command line's sweep of seeds x weight decays: the executor, the worker count and every weight decay
    validated before anything trains, then each run trained, resumed or reopened (pool.run_sweep: in this process,
    in `workers` local processes, or on Ray with `executor` ray; `on_run(summary, done, total)` after each). The
    first Ctrl-C is a stop: the rest are skipped, and the run in flight stops at its next step (in this process),
    finishes (in the pool) or stops at its last checkpoint that came back (on Ray); the same command resumes."""
    if executor is not None:
        executor.validate()
    if workers < 1:
        raise LabError("--workers must be at least 1.")
    for wd in weight_decays:
        validate(base.replace(weight_decay=wd))
    with ctrl_c_stops() as stop:
        return pool.run_sweep(
            base,
            seeds,
            weight_decays,
            root=root,
            stop=stop,
            on_run=on_run,
            threads=threads,
            executor=executor,
            workers=workers,
        )


# ------------------------------------------------------------------------------------------ sweeps


def sweep_key(configs: Sequence[GrokConfig], person: str | None) -> str:
    """The job runner's key of the person's sweep of these configurations."""
    return "grokking-sweep:" + run_id_for({"runs": [c.key(person) for c in configs]})


def running_sweep(person: str | None) -> str | None:
    """The job key of a sweep of this person still running in this server process (engine.core.db's jobs
    table), to show it again when its inputs are not on the page (a new tab), or None."""
    if person is None:
        return None
    for key, _ in reversed(lab_db().jobs_of(person, pid=os.getpid())):
        if key.startswith("grokking-sweep:") and RUNNER.running(key) is not None:
            return key
    return None


def _claim_sweep(configs: Sequence[GrokConfig], gate: Gate) -> None:
    """Before a sweep starts: the person's quota and jobs, then every run of it made theirs (a new one is created
    at once, so nobody else can take it while the sweep goes); someone else's finished run is only read, an
    unfinished one refuses the sweep."""
    gate.admit()
    for config in configs:
        run = run_of(config, gate.person)
        fresh = not run.exists()
        if not fresh and run.is_finished() and run.summary() and gate.can_read(run.run_id):
            continue
        gate.claim(run.run_id, fresh, config.describe())
        open_run(config, owner=gate.person)


def start_sweep(base: GrokConfig, seeds: Sequence[int], weight_decays: Sequence[float], gate: Gate = Gate()) -> Job:
    """The person's sweep of seeds x weight decays as one job (the running one when it already goes and is
    theirs). job.result: the summaries so far; job.message: the run now training. LabError when refused."""
    configs = sweep_configs(base, seeds, weight_decays)
    key = sweep_key(configs, gate.person)
    person = gate.person
    executor = server_executor()

    def work(job: Job) -> list[RunSummary]:
        summaries: list[RunSummary] = []
        job.result = summaries  # the summaries so far, for every session watching the sweep
        if executor.executor == "ray":
            return _sweep_on_ray(job, summaries)

        def on_message(message: process.Message) -> None:
            if isinstance(message, process.SweepRunStarted):
                job.progress(message.done, message.total, message.text)
            elif isinstance(message, process.SweepRunEnded):
                summaries.append(message.summary)
                job.progress(message.done, message.total)

        kwargs = dict(base=base, seeds=list(seeds), weight_decays=list(weight_decays), threads=TRAIN_THREADS)
        kwargs |= {"owner": person} | (
            {} if gate.max_checkpoints is None else {"max_checkpoints": gate.max_checkpoints}
        )
        try:
            run_in_process(process.train_sweep, kwargs, job=job, on_message=on_message)  # each run in the child
        except StopTimeout:  # stopped as asked, forcibly: the run it was training is stopped, not failed
            for run in (run_of(config, person) for config in configs):
                if not run.is_claimed():  # the ended child's claims are gone; a claimed run trains elsewhere
                    stopped_if_running(run)
        return summaries

    def _sweep_on_ray(job: Job, summaries: list[RunSummary]) -> list[RunSummary]:
        """The sweep's runs on Ray workers, one task per run (engine.grokking.pool): this job's thread is
        the driver, which writes each run's folder as it comes back; a stop ends the runs in flight at
        the last checkpoint that reached it."""
        job.progress(0, len(configs), "starting the Ray workers")

        def on_start(config: GrokConfig, done: int, total: int) -> None:
            job.progress(done, total, f"seed {config.seed}, wd {config.weight_decay:g} on Ray")

        def on_run(summary: RunSummary, done: int, total: int) -> None:
            summaries.append(summary)
            job.progress(done, total)

        extra = {} if gate.max_checkpoints is None else {"max_checkpoints": gate.max_checkpoints}
        pool.run_sweep(
            base,
            list(seeds),
            list(weight_decays),
            stop=job.stop_event,
            on_start=on_start,
            on_run=on_run,
            owner=person,
            executor=executor,
            **extra,
        )
        return summaries

    label = f"grokking sweep of {len(configs)} runs"
    if RUNNER.running(key) is None:
        _claim_sweep(configs, gate)
    elif not gate.owns_job(key):
        raise LabError("This sweep is already running in another of your sessions: wait until it ends.")
    return gate.start_job(
        key,
        lambda: RUNNER.start(key, work, label=label, total=len(configs)),
        label,
        lambda: [(TOPIC, run_of(c, person)) for c in configs],
    )
