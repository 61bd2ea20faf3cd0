"""Session-state idioms every view shares: "the result computed for exactly these inputs" (never a stale
one), and the key that tells models apart in caches.

A slot holds the last `keep` (inputs, result) pairs of one kind of computation in `st.session_state`;
`recall` returns a result only when its inputs equal the ones asked for, so a changed input never
shows an old result. `compute` runs a computation under a spinner, remembers it, and turns a
`LabError` into a message next to the view instead of an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st

from engine.core.errors import LabError
from engine.core.model import LoadedModel

ModelKey = tuple[str, str]


def model_key(lm: LoadedModel) -> ModelKey:
    """(name, quantization): the same model at another precision gives other numbers, so caches key on both."""
    return (lm.name, lm.quantization)


def _entries(slot: str) -> list[tuple[Hashable, Any]]:
    return st.session_state.setdefault(f"_lab_slot_{slot}", [])


def remember(slot: str, inputs: Hashable, result: Any, keep: int = 1) -> Any:
    """Keep `result` as the slot's result for `inputs` (the last `keep` pairs are kept); returns it."""
    entries = [e for e in _entries(slot) if e[0] != inputs][-(keep - 1) :] if keep > 1 else []
    entries.append((inputs, result))
    st.session_state[f"_lab_slot_{slot}"] = entries
    return result


def recall(slot: str, inputs: Hashable) -> Any | None:
    """The slot's result for exactly these inputs, or None."""
    return next((result for key, result in reversed(_entries(slot)) if key == inputs), None)


def latest(slot: str) -> tuple[Hashable, Any] | None:
    """The slot's most recent (inputs, result), whatever its inputs were."""
    entries = _entries(slot)
    return entries[-1] if entries else None


def entries(slot: str) -> list[tuple[Hashable, Any]]:
    """Every kept (inputs, result) of the slot, oldest first."""
    return list(_entries(slot))


def forget(slot: str) -> None:
    st.session_state.pop(f"_lab_slot_{slot}", None)


def compute(slot: str, inputs: Hashable, message: str, fn: Callable[[], Any], keep: int = 1) -> Any | None:
    """Run fn() under a spinner and remember its result for `inputs`; a LabError is shown, not raised
    (returns None then, and the slot keeps what it had)."""
    try:
        with st.spinner(message):
            return remember(slot, inputs, fn(), keep)
    except LabError as err:
        st.error(str(err))
        return None
