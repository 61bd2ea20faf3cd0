"""The shared server's limits (engine.core.limits, config/server_limits.toml) as the pages apply them: a
request over a limit is refused with a message naming the limit, never clamped in silence. The
command line, on a person's own machine, is not capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from engine.core.errors import LabError
from engine.core.limits import ServerLimits, server_limits
from engine.core.model import LoadedModel


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


def question_set_problems(frame: Any) -> list[str]:
    """Every question of an uploaded set over a server limit, one message each: a question longer than
    question_chars, more references than references_per_question, a reference longer than reference_chars
    (frame: columns id, question, references as engine.uq.questions makes them)."""
    limit, problems = limits(), []
    for qid, question, references in zip(frame["id"], frame["question"], frame["references"]):
        checks = [("question_chars", len(question), f"Characters of question {qid}")]
        checks.append(("references_per_question", len(references), f"References of question {qid}"))
        checks += [("reference_chars", len(r), f"Characters of a reference of question {qid}") for r in references]
        for name, value, what in checks:
            try:
                limit.check(name, value, what)
            except LabError as err:
                problems.append(str(err))
    return problems


def check_question_set(frame: Any) -> None:
    """LabError naming the limit for the first question of an uploaded set over one (`question_set_problems`)."""
    problems = question_set_problems(frame)
    if problems:
        raise LabError(problems[0])
