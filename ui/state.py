"""The one store of results every view shows: "the result computed for exactly these inputs", and the
key that tells models apart in caches.

Two levels. Per session, a slot holds the last `keep` (inputs, result) pairs of one kind of computation
(`st.session_state`): what this session computed or was shown. Per process (`shared=True`), the last
PROCESS_KEPT results of every slot by exact inputs, so a reload (a new session) or a colleague's link
gets them back without recomputing. `recall` returns a result only when its inputs equal the ones
asked for; `shown` says what a view draws: that result, or, when the fields changed since (a valid
change too), the session's last result marked as from other settings until the person runs again.
`compute` / `compute_steps` run a computation (under a spinner, or a progress bar with an ETA), remember
it, and turn a `LabError` into a message next to the view instead of an exception.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from ui.progress import ProgressFn, steps

ModelKey = tuple[str, str]
PROCESS_KEPT = 64  # results kept per process, every slot together (the oldest used is dropped first)


def model_key(lm: LoadedModel) -> ModelKey:
    """(name, quantization): the same model at another precision gives other numbers, so caches key on both."""
    return (lm.name, lm.quantization)


class _ProcessStore:
    """The process's results by (slot, inputs), least recently used dropped first; safe across sessions."""

    def __init__(self, keep: int) -> None:
        self._items: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, slot: str, inputs: Hashable) -> Any | None:
        with self._lock:
            key = (slot, inputs)
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, slot: str, inputs: Hashable, result: Any) -> None:
        with self._lock:
            self._items[(slot, inputs)] = result
            self._items.move_to_end((slot, inputs))
            while len(self._items) > self._keep:
                self._items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _process_store() -> _ProcessStore:
    """One store per process, shared by sessions (st.cache_data cannot hold these: a cached function that
    draws into a progress bar made outside it fails on replay)."""
    return _ProcessStore(PROCESS_KEPT)


def process_result(slot: str, inputs: Hashable) -> Any | None:
    """The process's result of `slot` for exactly these inputs (any session's), or None."""
    return _process_store().get(slot, inputs)


def _entries(slot: str) -> list[tuple[Hashable, Any]]:
    return st.session_state.setdefault(f"_lab_slot_{slot}", [])


def remember(slot: str, inputs: Hashable, result: Any, keep: int = 1, *, shared: bool = False) -> Any:
    """Keep `result` as the slot's result for `inputs` (the session keeps the last `keep` pairs; `shared`:
    the process too, for a reload or a link); returns it."""
    entries = [e for e in _entries(slot) if e[0] != inputs][-(keep - 1) :] if keep > 1 else []
    entries.append((inputs, result))
    st.session_state[f"_lab_slot_{slot}"] = entries
    if shared:
        _process_store().put(slot, inputs, result)
    return result


def recall(slot: str, inputs: Hashable, keep: int = 1, *, shared: bool = False) -> Any | None:
    """The slot's result for exactly these inputs, or None: the session's, else (`shared`) the process's,
    which the session then keeps as its own (its last `keep`)."""
    found = next((result for key, result in reversed(_entries(slot)) if key == inputs), None)
    if found is None and shared:
        found = process_result(slot, inputs)
        if found is not None:
            remember(slot, inputs, found, keep)
    return found


def latest(slot: str) -> tuple[Hashable, Any] | None:
    """The slot's most recent (inputs, result) in this session, whatever its inputs were."""
    entries = _entries(slot)
    return entries[-1] if entries else None


def entries(slot: str) -> list[tuple[Hashable, Any]]:
    """Every kept (inputs, result) of the slot in this session, oldest first."""
    return list(_entries(slot))


def forget(slot: str) -> None:
    """Drop the session's results of the slot (the process keeps its own)."""
    st.session_state.pop(f"_lab_slot_{slot}", None)


@dataclasses.dataclass(frozen=True)
class Shown:
    """What a view draws for a slot: a result, the inputs it was computed for, and whether those are
    exactly the inputs the fields ask for now (`current`; otherwise the view says it is from other settings)."""

    result: Any
    inputs: Hashable
    current: bool


def shown(slot: str, inputs: Hashable | None, *, shared: bool = False) -> Shown | None:
    """The result for exactly `inputs` (None: a field is invalid), else the session's last result of the
    slot marked as not current, else None. A changed field, valid or not, never wipes what is on screen."""
    if inputs is not None:
        result = recall(slot, inputs, shared=shared)
        if result is not None:
            return Shown(result, inputs, True)
    last = latest(slot)
    return Shown(last[1], last[0], False) if last is not None else None


def compute(
    slot: str, inputs: Hashable, message: str, fn: Callable[[], Any], keep: int = 1, *, shared: bool = False
) -> Any | None:
    """Run fn() under a spinner and remember its result for `inputs`; a LabError is shown, not raised
    (returns None then, and the slot keeps what it had)."""
    try:
        with st.spinner(message):
            return remember(slot, inputs, fn(), keep, shared=shared)
    except LabError as err:
        st.error(str(err))
        return None


def compute_steps(slot: str, inputs: Hashable, label: str, fn: Callable[[ProgressFn], Any]) -> Any | None:
    """fn(progress) under a progress bar with steps and an ETA (ui.progress.steps), or the process's result
    for exactly these inputs when it was computed before (a reload, a shared link); remembered for the
    session and the process. A LabError is shown, not raised (None then)."""
    try:
        result = process_result(slot, inputs)
        if result is None:
            with steps(label) as progress:
                result = fn(progress)
        return remember(slot, inputs, result, shared=True)
    except LabError as err:
        st.error(str(err))
        return None


def keeper(slot: str, inputs: Hashable) -> Callable[[Any], Any]:
    """A function that puts a result into the process's store for (slot, inputs), for a background job to
    call when it is done (a job's thread has no session: the page then `recall`s it with `shared=True`)."""
    store = _process_store()

    def keep(result: Any) -> Any:
        store.put(slot, inputs, result)
        return result

    return keep
