"""A person's place in a model's queue (engine.core.queue.FairLock), said on the page while their
computation or job waits for someone else's use of the model.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import streamlit as st

from engine.core.model import LoadedModel
from engine.core.queue import FairLock, current_owner

QUEUE_POLL_SECONDS = 0.3  # how often a waiting request's place in the queue is redrawn
_JOB_QUEUES: dict[str, tuple[FairLock, str]] = {}  # job key -> (the model's lock it waits on, its person)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def busy_text(place: int) -> str:
    return f"The model is busy: you are {ordinal(place)} in the queue."


def watch_job_queue(key: str, lock: FairLock) -> None:
    """Job `key`, started by the person this thread acts for, waits in `lock`'s queue (`job_queue_note`)."""
    _JOB_QUEUES[key] = (lock, current_owner())


def forget_job_queue(key: str) -> None:
    _JOB_QUEUES.pop(key, None)


def job_queue_note(key: str) -> str:
    """The suffix " · waiting for the model: 3rd in the queue" while job `key` waits for its model, else ""."""
    entry = _JOB_QUEUES.get(key)
    if entry is None:
        return ""
    lock, person = entry
    place = lock.place(person)
    return f" · waiting for the model: {ordinal(place)} in the queue" if place and place > 1 else ""


@contextlib.contextmanager
def queue_notice(lm: LoadedModel) -> Iterator[None]:
    """Around a page computation that uses the model: while it waits for someone else's use of the model,
    a note above it says the person's place in the queue (redrawn as the queue moves)."""
    lock, person = lm.lock, current_owner()
    if not lock.queue():
        yield
        return
    slot = st.empty()
    slot.info(busy_text(len(lock.queue()) + 1), icon=":material/hourglass_top:")
    done = threading.Event()
    try:
        from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

        ctx = get_script_run_ctx()
    except ImportError:  # pragma: no cover - streamlit moved it
        ctx = None

    def watch() -> None:
        shown = None
        while not done.wait(QUEUE_POLL_SECONDS):
            place = lock.place(person)
            if place != shown and place is not None and place > 1:
                with contextlib.suppress(Exception):  # the page may have moved on: a stale note is harmless
                    slot.info(busy_text(place), icon=":material/hourglass_top:")
                shown = place

    watcher = threading.Thread(target=watch, name="lab-queue-note", daemon=True)
    if ctx is not None:
        add_script_run_ctx(watcher, ctx)
        watcher.start()
    try:
        yield
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        slot.empty()
