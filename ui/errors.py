"""Users never see a traceback: an unexpected error becomes a short message with an id, and the
server log gets the full trace under that id."""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
from collections.abc import Callable, Iterator

import streamlit as st

from engine.core.errors import LabError

log = logging.getLogger("lab")


def report(err: BaseException) -> str:
    """Log `err` with a new error id and show the user a one-line message naming that id."""
    error_id = secrets.token_hex(4)
    log.error("error %s: %s", error_id, err, exc_info=err)
    if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: free the cache, keep serving
        import torch

        torch.cuda.empty_cache()
        st.error(
            f"The GPU ran out of memory for this request (error {error_id}); the model is still loaded. "
            "Try a shorter input or fewer samples."
        )
    else:
        st.error(
            f"Something went wrong (error {error_id}). The server log has the details; what you had on "
            "screen is kept. If it happens again, tell the lab's maintainer this error id."
        )
    return error_id


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Run a page's body: a LabError shows its one line, anything else `report`s with an error id.
    Streamlit's own control flow (st.rerun, st.stop) passes through."""
    try:
        yield
    except LabError as err:
        st.error(str(err))
    except Exception as err:  # noqa: BLE001 - the page must never show a traceback
        report(err)


def lab_fragment(run_every: float | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """`@lab_fragment(run_every=2)` instead of `@st.fragment(...)`: a fragment reruns on its own, outside the
    page's `guarded()` block, so its body gets its own (a LabError is one line, anything else an error id)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def body(*args, **kwargs) -> None:
            with guarded():
                fn(*args, **kwargs)

        return st.fragment(body, run_every=run_every)

    return wrap
