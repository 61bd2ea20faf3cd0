"""The shared server's limits (engine.core.limits, config/server_limits.toml) as the pages apply them: a
request over a limit is refused with a message naming the limit, never clamped in silence. The
command line, on a person's own machine, is not capped.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.core.errors import LabError
from engine.core.limits import ServerLimits, limits_file, server_limits
from engine.core.model import LoadedModel
from engine.uq.questions import RowLimits


def limits() -> ServerLimits:
    return server_limits()


def over_limit(name: str, value: float, what: str | None = None) -> str | None:
    """The message naming limit `name` when `value` exceeds it, else None."""
    try:
        limits().check(name, value, what)
    except LabError as err:
        return str(err)
    return None


def refuse_over(name: str, value: float, what: str | None = None) -> bool:
    """Show the message naming limit `name` (where this is called: next to its field or button) when
    `value` is over it; True when it was."""
    message = over_limit(name, value, what)
    if message:
        st.error(message, icon=":material/block:")
    return message is not None


def limit_note(name: str, unit: str = "") -> str:
    """The sentence " This server allows at most N <unit> (name)." for a help text (N from the limits file)."""
    return f" This server allows at most {getattr(limits(), name):,}{f' {unit}' if unit else ''} ({name})."


def token_count(lm: LoadedModel, text: str) -> int:
    """Tokens of `text` as the model reads it (with the tokenizer's special tokens, e.g. BOS)."""
    ids = lm.tokenizer(str(text), add_special_tokens=True)["input_ids"]
    return len(ids[0]) if ids and isinstance(ids[0], list) else len(ids)


def check_prompt_count(n: int) -> None:
    """LabError naming prompts_per_request when a request has more prompts."""
    limits().check("prompts_per_request", n, "Prompts in this request")


def prompt_count_problem(n: int) -> str | None:
    """The message naming prompts_per_request when a request has more prompts (shown under the field
    before anything runs), else None."""
    return over_limit("prompts_per_request", n, "Prompts in this request")


def prompt_lengths(lm: LoadedModel, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt as the model reads it."""
    return [token_count(lm, prompt) for prompt in prompts]


def check_prompt_tokens(lengths: Sequence[int], names: Sequence[str]) -> None:
    """LabError naming prompt_tokens for the first prompt longer than it."""
    limit = limits()
    for name, n in zip(names, lengths):
        limit.check("prompt_tokens", n, f"Tokens of {name}")


def question_row_limits() -> RowLimits:
    """This server's limits on an uploaded question set's rows: a row over one is skipped and named."""
    limit = limits()
    return RowLimits(limit.question_chars, limit.references_per_question, limit.reference_chars, limits_file().name)
