"""Run a long computation in a child process, waited on by a job thread of the server.

A training loop in a thread of the lab server holds the GIL against every other session and shares its
process-wide settings (torch threads); an out-of-memory in it kills the server. `run_in_process` runs
`fn(**kwargs, stop=..., report=...)` in a fresh child process ("spawn": a process that has threads is
never forked) and waits on it in the calling (job) thread:

- `stop()` in the child turns True once the job's `stopping` is set (a multiprocessing Event) or the parent
  is gone, so `fn` ends cleanly at its next step; a child still alive `grace_s` seconds after the stop was
  asked is terminated;
- `report(obj)` in the child sends `obj` through a multiprocessing Queue to `on_message(obj)` in the waiting
  thread, in order;
- `fn`'s return value (picklable) is returned; a LabError in the child is raised again as LabError with
  its message, any other exception as a LabError naming its type and message (the child's traceback goes
  to the log); a child killed by a signal (the kernel's OOM killer: -9) is a LabError saying so, and one
  ended after the stop's grace a StopTimeout (a LabError).

The child runs at a lower CPU priority (`nice`, CHILD_NICENESS): it is background work, and on a small shared
server the page scripts of every session and the event loop serving their browsers must not wait behind
training loops that use every core (in a soak test, pages froze for minutes while two long trainings shared
the 2 cores with the server). A niced child may be slow to stop on a busy server: one
ended after the grace is a StopTimeout, which the caller treats as the stop it asked for.

The child acts for the same owner (engine.core.queue). `fn` must be a module-level function. A claim the
parent holds (engine.core.runstore) stays the parent's: the child writes under it and takes none itself
for that run. Whatever way the wait ends, the child is not left running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.core.errors import LabError
from engine.core.queue import current_owner, set_current_owner

if TYPE_CHECKING:
    from engine.core.jobs import Job

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # after a stop is asked, how long the child may take to end before it is terminated
CHILD_NICENESS = 5  # added to the child's nice value (os.nice): the kernel serves the server's threads first


class StopTimeout(LabError):
    """The child was ended because it had not stopped within the grace after its job's stop: the stop the
    user asked for happened, forcibly (work since the child's last save is lost); not a failure of the work."""


_CONTEXT = multiprocessing.get_context("spawn")
_MAIN_LOCK = threading.Lock()


def run_in_process(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    job: Job | None = None,
    on_message: Callable[[Any], None] | None = None,
    poll_s: float = 0.5,
    grace_s: float = GRACE_SECONDS,
    what: str = "the training process",
) -> Any:
    """`fn(**kwargs, stop=stop, report=report)` in a child process; its return value (see the module doc).

    `job`: its `stopping` is passed on to the child's `stop()`. `on_message(obj)` gets each `report(obj)` of
    the child in this thread. `what` names the child in the errors."""
    stop_event = _CONTEXT.Event()
    channel = _CONTEXT.Queue()
    process = _CONTEXT.Process(
        target=_child_main,
        args=(fn, kwargs, current_owner(), os.getpid(), stop_event, channel),
        name=f"lab-{getattr(fn, '__name__', 'work')}",
        daemon=True,  # ended with the server when it exits normally
    )
    _start(process)
    stop_asked: float | None = None
    try:
        while True:
            if stop_asked is None and job is not None and job.stopping:
                stop_event.set()
                stop_asked = time.monotonic()
            if stop_asked is not None and time.monotonic() - stop_asked > grace_s and process.is_alive():
                _end(process)  # a child that goes on reporting but ignores the stop is ended too
                raise StopTimeout(f"{what} did not stop within {grace_s:g} s of the stop and was ended.")
            try:
                kind, payload = channel.get(timeout=poll_s)
            except queue_module.Empty:
                if process.is_alive():
                    continue
                kind, payload = _last_word(channel)
                if kind is None:
                    raise LabError(_ended_without_result(process, what)) from None
            if kind == "message":
                if on_message is not None:
                    on_message(pickle.loads(payload))  # bytes our own spawned child pickled: trusted
                continue
            return _outcome(kind, payload, what)
    finally:
        if process.is_alive():
            stop_event.set()
            process.join(grace_s if stop_asked is None else max(0.0, grace_s - (time.monotonic() - stop_asked)))
        _end(process)
        channel.close()
        channel.cancel_join_thread()


def _start(process: Any) -> None:
    """Start the child without the parent's `__main__`: spawn would run it again in the child, and under
    Streamlit `__main__` is the page script being run (a whole page in the child). A bare stand-in is
    `__main__` just while the child's start data is taken (put back only if nobody replaced it meanwhile)."""
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        stand_in = types.ModuleType("__main__")
        sys.modules["__main__"] = stand_in
        try:
            process.start()
        finally:
            if sys.modules.get("__main__") is stand_in and main is not None:
                sys.modules["__main__"] = main


def _last_word(channel: Any) -> tuple[str | None, Any]:
    """After the child exited: its last message still in the pipe, or (None, None)."""
    with contextlib.suppress(queue_module.Empty, EOFError, OSError):
        return channel.get(timeout=1.0)
    return None, None


def _outcome(kind: str, payload: Any, what: str) -> Any:
    if kind == "result":
        return pickle.loads(payload)  # from our own spawned child, never from a user
    if kind == "lab_error":
        raise LabError(payload)
    name, message, trace = payload
    log.error("%s failed:\n%s", what, trace)
    raise LabError(f"{what} failed: {name}: {message}" if message else f"{what} failed: {name}")


def _ended_without_result(process: Any, what: str) -> str:
    process.join(5.0)
    code = process.exitcode
    if code is not None and code < 0:
        number = -code
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = ""
        hint = ": out of memory?" if number == signal.SIGKILL else (f", {name}" if name else "")
        return f"{what} was killed (signal {number}{hint})"
    return f"{what} ended without a result (exit code {code})."


def _end(process: Any) -> None:
    """Terminate the child if it still runs, then kill it if it ignores that."""
    if process.is_alive():
        process.terminate()
        process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join(5.0)


# ----------------------------------------------------------------------------------------- the child


def _child_main(
    fn: Callable[..., Any], kwargs: dict[str, Any], owner: str, parent: int, stop_event: Any, channel: Any
) -> None:
    set_current_owner(owner)
    if hasattr(os, "nice"):  # POSIX; a lower priority for background work (module doc)
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICENESS)

    def stop() -> bool:
        return stop_event.is_set() or os.getppid() != parent  # an orphan stops too: its claim is gone

    def report(obj: Any) -> None:
        channel.put(("message", pickle.dumps(obj)))  # pickled here: an unpicklable message fails in fn

    try:
        outcome: tuple[str, Any] = ("result", pickle.dumps(fn(**kwargs, stop=stop, report=report)))
    except LabError as err:
        outcome = ("lab_error", str(err))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent, named
        outcome = ("error", (type(err).__name__, str(err), traceback.format_exc()))
    channel.put(outcome)
    channel.close()
    channel.join_thread()  # the outcome is in the pipe before the child exits
