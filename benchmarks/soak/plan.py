"""What the soak does: its size (Plan: FULL, QUICK), what each session typed and saw (Seen), and the inputs
(each person's prompts, texts of an exact token count, the hostile session's question files)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from engine.core.limits import ServerLimits
from engine.superweights.config import DEFAULT_PROMPT

UQ_SEED = 1000  # person i: uncertainty seed UQ_SEED + i, grokking seed i + 1
WORDS = (
    "time person year way day thing world life hand part child eye woman place work week case point company "
    "number group problem fact river mountain garden window table paper music letter train station morning "
    "evening summer winter bridge forest island market school doctor teacher student kitchen bottle"
).split()
ANIMALS = ("cat", "dog", "fox", "owl", "bee", "cow", "hen", "elk")
THINGS = ("ball", "kite", "leaf", "coin", "shoe", "drum", "rope", "cake")
PLACES = ("yard", "barn", "pond", "hill", "park", "shed", "lake", "farm")
NAMES = ("Maria", "Kenji", "Amara", "Lukas", "Priya", "Tomas", "Ines", "Olu")
CITIES = ("Lisbon", "Osaka", "Lagos", "Vienna", "Pune", "Quito", "Oslo", "Accra")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The size of a soak: how many people, how much work each, how long it may take."""

    people: int  # ordinary sessions (the hostile one comes on top)
    questions: int  # uncertainty questions per person
    samples: int  # K
    hostile_scan_prompts: int  # prompts of the hostile scan, each of prompt_tokens tokens
    max_new_tokens: int  # "Max new tokens" of each person's uncertainty run (answers stop at a newline anyway)
    grok_steps: int  # "Max steps" of each person's grokking run (the default settings grok at step 1150)
    browser_s: float  # the browser phase ends by itself after this
    total_s: float  # the whole soak ends by itself after this (the "alone" runs are cut short if needed)


FULL = Plan(
    6, questions=20, samples=3, max_new_tokens=12, hostile_scan_prompts=16, grok_steps=600, browser_s=780, total_s=895
)
QUICK = Plan(
    2, questions=5, samples=3, max_new_tokens=12, hostile_scan_prompts=1, grok_steps=300, browser_s=215, total_s=295
)


@dataclasses.dataclass
class Seen:
    """What one browser session did and saw."""

    name: str
    step: str = "not started"
    owners: list[str] = dataclasses.field(default_factory=list)  # owner id shown in the sidebar, per page
    attention: dict[str, Any] = dataclasses.field(default_factory=dict)
    scan: dict[str, Any] = dataclasses.field(default_factory=dict)
    uq: dict[str, Any] = dataclasses.field(default_factory=dict)
    grok: dict[str, Any] = dataclasses.field(default_factory=dict)
    pickers: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # run picker -> option labels
    links: dict[str, bool] = dataclasses.field(default_factory=dict)  # someone else's run link -> refused
    limits: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # hostile: one row per request
    notes: list[str] = dataclasses.field(default_factory=list)
    queue_notes: set[str] = dataclasses.field(default_factory=set)
    max_place: int = 0
    longest_busy_s: float = 0.0  # longest time a queue note stayed on this person's page
    problems: list[str] = dataclasses.field(default_factory=list)
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    finished: bool = False
    tabs: dict[int, str | None] = dataclasses.field(default_factory=dict)  # id(page) -> the tab selected last
    tab_resets: int = 0  # times a rerun switched the page back to its first tab
    retyped: int = 0  # times a late rerun put a widget's old value back after it was typed
    failed_parts: list[str] = dataclasses.field(default_factory=list)  # hostile: the tabs that failed
    resubmitted: list[str] = dataclasses.field(default_factory=list)  # widgets whose Enter had to be pressed again

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


# ------------------------------------------------------------------------------------------------
# Inputs


def attention_prompt(i: int) -> str:
    a, t, p = ANIMALS[i % 8], THINGS[i % 8], PLACES[i % 8]
    return f"The {a} chased the {t} around the {p}. Then the {a} chased the {t} around the {p} again."


def scan_prompts(i: int) -> list[str]:
    return [DEFAULT_PROMPT, f"{NAMES[i % 8]} bought {i + 3} {THINGS[i % 8]}s in {CITIES[i % 8]} last week."]


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens as the pages count them (with BOS): ui.access.token_count."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def fitted_text(tokenizer: Any, tokens: int, seed: int, words: tuple[str, ...] | list[str] = WORDS) -> str:
    """Words (one line) of exactly `tokens` tokens with BOS, or the closest count below."""
    rng = random.Random(seed)
    picked: list[str] = []
    while token_count(tokenizer, " ".join(picked)) < tokens:
        picked.extend(rng.choice(words) for _ in range(max(1, (tokens - len(picked)) // 4)))
    while token_count(tokenizer, " ".join(picked)) > tokens:
        picked.pop()
    text = " ".join(picked)
    while token_count(tokenizer, text + " the") <= tokens:
        text += " the"
    return text


def question_csv(rows: list[tuple[str, str, str]]) -> str:
    return "id,question,answer\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)


def upload_files(folder: Path, limits: ServerLimits) -> dict[str, Path]:
    """The hostile session's question files: the biggest allowed, one over the byte limit and one over each
    per-question limit, and a small valid one."""
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)

    def words(chars: int) -> str:
        text = ""
        while len(text) < chars:
            text += rng.choice(WORDS) + " "
        return text[: chars - 1] + "x"  # exactly `chars` characters, no trailing space to be stripped

    def sized(target: int) -> str:
        head, rows = "id,question,answer\n", []
        size = len(head)
        while True:
            row = f"h{len(rows):06d},{words(min(1900, limits.question_chars))}?,answer {len(rows)}\n"
            if size + len(row) > target:
                break
            rows.append(row)
            size += len(row)
        return head + "".join(rows)

    small = [("s1", "What is the capital of France?", "Paris"), ("s2", "How many legs does a spider have?", "eight|8")]
    texts = {
        "biggest": sized(limits.upload_bytes - 2_000),
        "too_big": sized(limits.upload_bytes + 5_000),
        "long_question": question_csv([*small, ("s3", words(limits.question_chars + 1), "yes")]),
        "many_references": question_csv(
            [*small, ("s3", "Name a number.", "|".join(str(n) for n in range(limits.references_per_question + 1)))]
        ),
        "long_reference": question_csv([*small, ("s3", "Say something long.", words(limits.reference_chars + 1))]),
        "small": question_csv(small),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.csv"
        paths[name].write_text(text, encoding="utf-8")
    return paths
