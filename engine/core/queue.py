"""A fair queue for a shared model: the lock every use of a `LoadedModel` goes through.

Sessions of the lab server share one copy of each model, and hooks, in-place ablations and generation
must never interleave, so every use holds the model's lock. A plain lock lets one person's ten queued
requests run before a colleague's one; `FairLock` grants the model to the waiting person who was served
least recently (round robin over people, first come first served within a person), and can tell each
person their place in the queue. It is reentrant (a holder may acquire it again, as nested engine
calls do) and is used exactly like `threading.RLock`: `with lm.lock: ...`.

Who is asking is read from a context variable set by the server for each session (`acting_as`); job
threads inherit it (engine.core.jobs copies the context). Without one, a thread counts as "local".
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import threading
import time
import weakref
from collections.abc import Iterator

LOCAL = "local"
_owner: contextvars.ContextVar[str] = contextvars.ContextVar("lab_owner", default=LOCAL)


def current_owner() -> str:
    """The person this thread acts for (an owner id), "local" outside the server."""
    return _owner.get()


def set_current_owner(owner: str) -> None:
    """This thread (a server script run) acts for `owner` until set again."""
    _owner.set(owner or LOCAL)


@contextlib.contextmanager
def acting_as(owner: str) -> Iterator[None]:
    """Within the block, model use and jobs are attributed to `owner`."""
    token = _owner.set(owner or LOCAL)
    try:
        yield
    finally:
        _owner.reset(token)


@dataclasses.dataclass
class _Ticket:
    thread: int
    owner: str
    seq: int
    since: float


_LOCKS: weakref.WeakSet[FairLock] = weakref.WeakSet()  # every FairLock alive in this process


def all_locks() -> list[FairLock]:
    """Every FairLock alive in this process (one per loaded model): for measuring a server's queues."""
    return list(_LOCKS)


class FairLock:
    """Reentrant lock granted round robin over owners (least recently served first, then arrival)."""

    def __init__(self) -> None:
        _LOCKS.add(self)
        self._cond = threading.Condition(threading.Lock())
        self._holder: int | None = None
        self._holder_owner: str | None = None
        self._depth = 0
        self._waiting: list[_Ticket] = []
        self._last_served: dict[str, int] = {}
        self._seq = itertools.count()
        self._grants = itertools.count()
        self.longest_wait_s = 0.0  # the longest any request waited (reported by the soak test)

    def _next(self) -> _Ticket | None:
        if not self._waiting:
            return None
        return min(self._waiting, key=lambda t: (self._last_served.get(t.owner, -1), t.seq))

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._holder == me:
                self._depth += 1
                return True
            ticket = _Ticket(me, current_owner(), next(self._seq), time.monotonic())
            self._waiting.append(ticket)
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            try:
                while not (self._holder is None and self._next() is ticket):
                    if not blocking:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            else:
                self._waiting.remove(ticket)
                self._holder, self._holder_owner, self._depth = me, ticket.owner, 1
                self._last_served[ticket.owner] = next(self._grants)
                self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - ticket.since)
                return True
            finally:
                if self._holder != me and ticket in self._waiting:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            if self._holder != threading.get_ident():
                raise RuntimeError("release of a FairLock not held by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._holder = self._holder_owner = None
                self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def queue(self) -> list[str]:
        """Owners in the order they will be served: the holder first (if any), then the waiting."""
        with self._cond:
            served, waiting, order = dict(self._last_served), list(self._waiting), []
            grant = max(served.values(), default=0) + 1
            while waiting:  # replay the grant rule: least recently served owner first, then arrival
                ticket = min(waiting, key=lambda t: (served.get(t.owner, -1), t.seq))
                waiting.remove(ticket)
                order.append(ticket.owner)
                served[ticket.owner], grant = grant, grant + 1
            return ([self._holder_owner] if self._holder_owner else []) + order

    def place(self, owner: str) -> int | None:
        """1 when `owner` holds the model, n when n - 1 requests go first, None when not queued."""
        order = self.queue()
        return order.index(owner) + 1 if owner in order else None
