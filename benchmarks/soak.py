"""Soak test of the shared lab server (issue 12): `streamlit run app.py` on 127.0.0.1 under several real
browsers at once. A benchmark, not a test (not in the timed suite, not in run_all.py).

    python benchmarks/soak.py              # 6 people + 1 hostile session; ends by itself within 15 min
    python benchmarks/soak.py --quick      # 2 people + 1 hostile session, smaller runs; < 5 min
    python benchmarks/soak.py --minutes 25 # the same with more time (a slow or busy machine)

One headless Chromium (Debian's, through tests/browser.py), one browser context per person (its own cookie
jar, so its own owner key). The server runs on a fresh LAB_CACHE_DIR (the converted embedded model is linked
in). Every person, at once, a few seconds apart:
  1. the home page (the app sets their owner cookie);
  2. attention: a prompt of their own; reads the token count, the text description of head 0.0, and the
     top heads of the head-function table over the built-in prompts plus their prompt;
  3. super weights: a scan of the paper's prompt plus a sentence of their own; reads the candidates, the
     rejected spikes and the stop reason;
  4. uncertainty: a run on the bundled set (its first Plan.questions questions, K = Plan.samples, a seed of
     their own), which generates in the background;
  5. grokking meanwhile: the default run with a seed of their own (at most Plan.grok_steps steps); reads
     the final test accuracy and the summary;
  6. back to uncertainty: waits for the run and reads A1 / A2 / A3;
  7. when every person got there: the run pickers of both pages (only their own runs may be listed), and
     links to the next person's private uncertainty and grokking runs (the page must say the run is
     private and show nothing of it).
The hostile person works in three tabs at once: the longest allowed attention prompt and a scan with the
most and longest allowed prompts (it holds the model: everyone else queues behind it); the biggest allowed
upload and uploads over each per-question limit; long grokking runs up to their job limit. The heaviest scan
is pressed once every person's uncertainty run has started (so it waits in the model's queue behind them),
and the long grokking runs start while it waits or runs: the overlap that froze pages before the fixes of
2026-12-01 (training children at a lower CPU priority, no full garbage collection after every script run).
Every request over a server limit must be refused with a message naming the limit. Their disk quota is set
to 1 byte in the lab database (as an admin would) to see the quota refusal.

A watcher per page records the queue notes ("you are 3rd in the queue"), any Streamlit exception box,
"Traceback" or "Something went wrong (error ...)". The server's peak memory is its VmHWM (/proc/<pid>/status);
the longest wait in a model's queue is FairLock.longest_wait_s, and the time in garbage collection (which holds
the GIL) is counted by gc.callbacks, both read inside the server by a sitecustomize.py that this script puts on
the server's PYTHONPATH (the app itself is unchanged). A page unchanged for a whole wait makes the server write
every thread's stack to its log (faulthandler, SIGUSR1). The server log is scanned for
tracebacks afterwards. What each page showed when its numbers were read is kept in tests/artifacts/soak/.

Then the same work is done alone, by the engine functions the pages call, in this process on another fresh
cache: every person's numbers must be the same (and the uncertainty answers and grokking metrics files
identical). Writes benchmarks/soak_results.md and prints it. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from common import ROOT, machine

sys.path.insert(0, str(ROOT / "tests"))

from browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    browser_missing_reason,
    streamlit_server,
    wait_idle_async,
    wait_text_async,
)

try:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
except ImportError:  # main() says what is missing
    PlaywrightTimeout = TimeoutError

from engine.attention.config import DEFAULT_MAX_TOKENS, HIGHLIGHTED, N_RANDOM  # noqa: E402
from engine.core.db import LabDB  # noqa: E402
from engine.core.limits import ServerLimits, server_limits  # noqa: E402
from engine.superweights.config import DEFAULT_PROMPT  # noqa: E402
from engine.uq.config import FEW_SHOT_TEMPLATE  # noqa: E402
from ui.access import PRIVATE_NOTICE  # noqa: E402
from ui.identity import COOKIE  # noqa: E402

RESULTS = ROOT / "benchmarks" / "soak_results.md"
ARTIFACTS = ROOT / "tests" / "artifacts" / "soak"
VIEWPORT = {"width": 1400, "height": 1000}
WATCH_SECONDS = 3.0  # how often each page is read for queue notes and errors
STAGGER_SECONDS = 3.0  # people start this far apart
LONG_MS = 1_500_000  # a wait for a result (bounded anyway by the browser phase's deadline)
SHORT_MS = 180_000  # a wait for a page or a message (on 2 cores shared by 7 browsers, the server and its jobs)
UQ_SEED = 1000  # person i: uncertainty seed UQ_SEED + i, grokking seed i + 1
UQ_SHOWS = ("A1 (all)", "The tables")  # what a page shows of an uncertainty run
GROK_SHOWS = ("Summary", "Last step", "Showing:")  # what a page shows of a grokking run
CRASHES = ("Traceback", "exception box", "went wrong")  # what Seen.problem records of a crash on a page
FRESH = ':not([data-stale="true"])'  # an element of the page's last run, not a stale one of an earlier run
CANDIDATE = re.compile(r"layer \d+ W\[\d+, \d+\]")
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

WATCH_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const text = app ? app.innerText : '';
  const pick = sel => Array.from(document.querySelectorAll(sel)).map(e => e.innerText);
  return {
    exceptions: pick('[data-testid="stException"]').map(t => t.slice(0, 300)),
    traceback: text.includes('Traceback'),
    wrong: text.match(/Something went wrong \\(error [0-9a-f]+\\)/g) || [],
    queue: pick('[data-testid="stAlert"], [data-testid="stProgress"]').filter(t => t.includes('in the queue')),
  };
}"""
METRICS_JS = """root => Object.fromEntries(
  Array.from(document.querySelectorAll(root + ' [data-testid="stMetric"]')).map(m => {
  const label = m.querySelector('[data-testid="stMetricLabel"]');
  const value = m.querySelector('[data-testid="stMetricValue"]');
  return [label ? label.innerText.trim().split('\\n')[0].trim() : '', value ? value.innerText.trim() : ''];
}))"""
TOP_HEADS_JS = "() => /Top .+ heads: \\d+\\.\\d+/.test(document.querySelector('[data-testid=\"stMain\"]').innerText)"
SCAN_DRAWN_JS = """t => /layer \\d+ W\\[/.test((document.querySelector('.st-key-sw_ablate_cands') || {}).textContent)
  || document.querySelector('[data-testid="stMain"]').innerText.includes(t)"""
VISIBLE_H3_JS = "t => Array.from(document.querySelectorAll('h3')).some(h => h.innerText.includes(t) && h.offsetParent)"
SUMMARY_OR_ERROR_JS = """t => Array.from(document.querySelectorAll('h3')).some(
    h => h.innerText.includes(t) && h.offsetParent)
  || Array.from(document.querySelectorAll('[data-testid="stMain"] [data-testid="stAlertContentError"]')).some(
    e => e.offsetParent)"""
UQ_DONE_JS = """n => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).some(
  m => m.innerText.startsWith('Questions') && m.innerText.trim().endsWith(String(n)))
  && document.body.innerText.includes('A3 (semantic, 50%)')"""

# The server side of the measurement: FairLock.longest_wait_s and the queue lengths of every model's lock, and
# the time spent in garbage collection, written every 0.5 s to $LAB_SOAK_STATS; SIGUSR1 writes every thread's
# stack to the server log. This file becomes the server's sitecustomize.py; the server's training children load it
# too (same environment) and leave it at the FairLock tracking.
SITECUSTOMIZE = """
import faulthandler, gc, json, os, signal, sys, threading, time, weakref
from engine.core import queue as _queue
_locks = weakref.WeakSet()
_init = _queue.FairLock.__init__
def _tracked_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _locks.add(self)
_queue.FairLock.__init__ = _tracked_init
# Garbage collection holds the GIL: every thread of the server (the page scripts, the event loop that serves
# every browser) waits while one runs. Counted here: full (generation 2) collections, their seconds, the longest,
# and the most of any 30 s window spent collecting (all generations).
_gc = {"full": 0, "full_s": 0.0, "longest_s": 0.0, "windows": {}, "start": None}
def _gc_timer(phase, info):
    if phase == "start":
        _gc["start"] = time.perf_counter()
        return
    if _gc["start"] is None:
        return
    took, _gc["start"] = time.perf_counter() - _gc["start"], None
    window = int(time.monotonic() // 30)
    _gc["windows"][window] = _gc["windows"].get(window, 0.0) + took
    if info["generation"] == 2:
        _gc["full"] += 1
        _gc["full_s"] += took
        _gc["longest_s"] = max(_gc["longest_s"], took)
def _dump():
    path, longest_queue = os.environ["LAB_SOAK_STATS"], 0
    while True:
        time.sleep(0.5)
        locks = list(_locks)
        longest_queue = max([longest_queue] + [len(lock.queue()) for lock in locks])
        stats = {"locks": len(locks), "longest_wait_s": max([0.0] + [lock.longest_wait_s for lock in locks]),
                 "longest_queue": longest_queue, "gc_full": _gc["full"], "gc_full_s": _gc["full_s"],
                 "gc_longest_s": _gc["longest_s"], "gc_busiest_30s": max(list(_gc["windows"].values()) or [0.0])}
        with open(path + ".tmp", "w") as handle:
            json.dump(stats, handle)
        os.replace(path + ".tmp", path)
if "app.py" in sys.argv:  # the server, not one of its training children
    gc.callbacks.append(_gc_timer)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <server>`: a stuck page's stacks
    threading.Thread(target=_dump, name="soak-stats", daemon=True).start()
"""


@dataclasses.dataclass(frozen=True)
class Plan:
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


# ------------------------------------------------------------------------------------------------
# Page helpers (async Playwright)


def run_param(page) -> str | None:
    """The run in the page's link: `uq_run` on the uncertainty page, `run` on the grokking tab."""
    query = parse_qs(urlparse(page.url).query)
    return (query.get("uq_run") or query.get("run") or [None])[0]


async def owner_of(page) -> str:
    text = await page.locator('[data-testid="stSidebar"]').inner_text()
    match = re.search(r"You: .*? · ([0-9a-f]{8})", text)
    return match.group(1) if match else "?"


async def goto(page, url: str, path: str, seen: Seen) -> None:
    """Open a page (a new Streamlit session) and wait until its frame (the identity in the sidebar) is drawn."""
    await page.goto(f"{url}/{path}")
    await page.wait_for_function(
        "() => /You: .* · [0-9a-f]{8}/.test((document.querySelector('[data-testid=\"stSidebar\"]') || {}).innerText)",
        timeout=SHORT_MS,
        polling=250,
    )
    await wait_idle_async(page, SHORT_MS)
    seen.owners.append(await owner_of(page))
    seen.tabs[id(page)] = None


def keep_text(seen: Seen, what: str, text: str) -> None:
    """Keep what a page showed when its numbers were read (tests/artifacts/soak/, for a later look)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{seen.name.split()[0]}-{what}.txt").write_text(text, encoding="utf-8")


async def main_text(page) -> str:
    return await page.locator('[data-testid="stMain"]').inner_text()


async def same_tab(page, seen: Seen) -> None:
    """Select the tab this session chose last again when a rerun switched the page back to its first tab."""
    name = seen.tabs.get(id(page))
    if name is None:
        return
    for _ in range(3):
        if await page.get_by_role("tab", name=name, selected=True).filter(visible=True).count():
            return
        seen.tab_resets += 1
        await page.get_by_role("tab", name=name).filter(visible=True).first.click()
        await wait_idle_async(page, SHORT_MS)


async def retrying(page, seen: Seen, act: Callable[[int], Awaitable[Any]], timeout_ms: int = SHORT_MS) -> Any:
    """`act(timeout_ms)` on an element of this session's tab, again (with its tab selected again) until it
    works or `timeout_ms` passed: a rerun may switch the page back to its first tab at any time."""
    end = time.monotonic() + timeout_ms / 1000
    while True:
        await same_tab(page, seen)
        try:
            return await act(3_000)
        except PlaywrightTimeout:
            if time.monotonic() > end:
                dump_server_stacks(page, seen, f"an action on the page ({seen.step})")
                raise


async def set_text(page, seen: Seen, key: str, value: str) -> None:
    """Type `value` into a widget and submit it; typed again when a late rerun put the old value back, and
    submitted again while the widget still says "Press Enter to apply" (the key press did not apply it)."""
    box = page.locator(f".st-key-{key}{FRESH} textarea, .st-key-{key}{FRESH} input").filter(visible=True).first
    pending = page.locator(f".st-key-{key}{FRESH} [data-testid='InputInstructions']").filter(visible=True)
    for _ in range(3):
        await retrying(page, seen, lambda ms: box.fill(value, timeout=ms))
        submit = "Control+Enter" if await box.evaluate("e => e.tagName") == "TEXTAREA" else "Enter"
        await box.press(submit)
        await wait_idle_async(page, SHORT_MS)
        await same_tab(page, seen)
        for _ in range(3):
            if not await pending.count():
                break
            seen.resubmitted.append(key)
            await box.press(submit)
            await wait_idle_async(page, SHORT_MS)
        if same_value(await retrying(page, seen, lambda ms: box.input_value(timeout=ms)), value):
            if await pending.count():
                seen.problem(f"the value typed into {key} was shown but not applied after 4 key presses")
            return
        seen.retyped += 1
    seen.problem(f"the page did not keep the value typed into {key}")


def same_value(shown: str, typed: str) -> bool:
    """Whether a widget shows what was typed (a number input may format it: 0 -> 0.00)."""
    if shown == typed:
        return True
    try:
        return float(shown.replace(",", "")) == float(typed)
    except ValueError:
        return False


async def set_number(page, seen: Seen, key: str, value: float) -> None:
    await set_text(page, seen, key, str(value))


async def click(page, seen: Seen, key: str) -> None:
    button = page.locator(f".st-key-{key}{FRESH} button").filter(visible=True).first
    try:
        await retrying(page, seen, lambda ms: button.click(timeout=ms))
    except PlaywrightTimeout as err:  # say what kept the button from being clicked
        count = await page.locator(f".st-key-{key}{FRESH} button").count()
        stale = await page.locator(f".st-key-{key}[data-stale='true'] button").count()
        state = "absent" if not count else "disabled" if not await button.is_enabled() else "enabled"
        alerts = [" ".join(t.split()) for t in await page.locator(f'[data-testid="stAlert"]{FRESH}').all_inner_texts()]
        raise RuntimeError(
            f"the button {key} could not be clicked within {SHORT_MS / 1000:.0f} s ({state}; "
            f"{count} on the page, {stale} stale; tab {seen.tabs.get(id(page))!r}; the page says: "
            f"{' | '.join(alerts) or 'no message'}): {str(err).splitlines()[0]}"
        ) from err


async def wait_shown(page, seen: Seen, text: str, timeout_ms: int = LONG_MS, js: str | None = None) -> None:
    """Wait until the main area shows `text` (or the predicate `js(text)` holds), selecting this session's
    tab again whenever a rerun switched the page back to its first tab."""
    end = time.monotonic() + timeout_ms / 1000
    while True:
        await same_tab(page, seen)
        try:
            if js is None:
                await wait_text_async(page, text, 3_000)
            else:
                await page.wait_for_function(js, arg=text, timeout=3_000, polling=500)
            return
        except PlaywrightTimeout:
            if time.monotonic() > end:
                dump_server_stacks(page, seen, f"waiting for {text!r}")
                raise


_DUMPS: list[str] = []


def dump_server_stacks(page, seen: Seen, why: str) -> None:
    """Write every thread's stack of the server (the process on the page's port) to its log, for a page that
    did not change for minutes: the log then shows what its script thread was doing (first 3 times)."""
    if len(_DUMPS) >= 3:
        return
    with contextlib.suppress(Exception):
        os.kill(server_pid(urlparse(page.url).port), signal.SIGUSR1)
        _DUMPS.append(why)
        seen.notes.append(f"{why}: timed out; the server's thread stacks at {time.strftime('%H:%M:%S')} are in its log")


async def tab(page, seen: Seen, name: str) -> None:
    await page.get_by_role("tab", name=name).filter(visible=True).first.click()
    await wait_idle_async(page, SHORT_MS)
    seen.tabs[id(page)] = name


async def options(page, key: str) -> list[str]:
    """The option labels of a selectbox (opened, read, closed); [] when the page has none."""
    opener = page.locator(f".st-key-{key} button[aria-haspopup='listbox']")
    if not await opener.count():
        return []
    listed = page.locator('[role="listbox"] [role="option"]')
    for attempt in range(5):  # a rerun may redraw the box while it opens
        await opener.first.click()
        try:
            await listed.first.wait_for(timeout=5_000)
            break
        except PlaywrightTimeout:
            if attempt == 4:
                raise
            await wait_idle_async(page, SHORT_MS)
    labels = [" ".join(t.split()) for t in await listed.all_inner_texts()]
    await page.keyboard.press("Escape")
    return labels


async def metrics(page, root: str = "") -> dict[str, str]:
    """Label -> value of the metrics under the CSS selector `root` (the whole page when empty)."""
    return await page.evaluate(METRICS_JS, root)


async def watch(page, seen: Seen) -> None:
    """Every WATCH_SECONDS: queue notes (their place, how long they stay) and anything that looks like a crash."""
    busy_since = None
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        try:
            found = await page.evaluate(WATCH_JS)
        except Exception:  # noqa: BLE001 - the page is navigating
            continue
        where = f"on {urlparse(page.url).path or '/'}"
        for text in found["exceptions"]:
            seen.problem(f"a Streamlit exception box {where}: {' '.join(text.split())[:160]}")
        if found["traceback"]:
            seen.problem(f"'Traceback' {where}")
        for text in found["wrong"]:
            seen.problem(f"{text} {where}")
        now = time.monotonic()
        if found["queue"]:
            busy_since = busy_since or now
            seen.longest_busy_s = max(seen.longest_busy_s, now - busy_since)
            for note in found["queue"]:
                seen.queue_notes.add(" ".join(note.split())[-90:])
                for place in re.findall(r"(\d+)(?:st|nd|rd|th) in the queue", note):
                    seen.max_place = max(seen.max_place, int(place))
        else:
            busy_since = None


async def expect_limit(page, seen: Seen, name: str, request: str, act: Callable[[], Awaitable[None]]) -> None:
    """Do `act` (a request over limit `name`) and record whether the page names the limit."""
    seen.step = f"over {name}: {request}"
    shown = ""
    try:
        await act()
        await wait_shown(page, seen, f"({name} in ", SHORT_MS)
        ok = True
        shown = next(
            (" ".join(t.split()) for t in await page.locator('[data-testid="stAlert"]').all_inner_texts() if name in t),
            "",
        )
    except Exception as err:  # noqa: BLE001 - recorded as a failed expectation
        ok = False
        shown = f"{type(err).__name__}: " + " ".join((await main_text(page))[-300:].split())
    seen.limits.append(
        {"limit": name, "request": request, "expect": "refused, naming the limit", "ok": ok, "seen": shown}
    )


async def expect_accepted(page, seen: Seen, name: str, request: str, act: Callable[[], Awaitable[str]]) -> None:
    """Do `act` (a request at limit `name`) and record that it was served (`act` returns what it saw)."""
    seen.step = f"at {name}: {request}"
    start = time.monotonic()
    try:
        shown = await act()
        await wait_idle_async(page, SHORT_MS)  # read after the rerun ended: a running one still shows old elements
        ok = f"({name} in " not in await main_text(page)
    except Exception as err:  # noqa: BLE001
        ok, shown = False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    seconds = time.monotonic() - start
    seen.limits.append(
        {"limit": name, "request": request, "expect": "served", "ok": ok, "seen": f"{shown} ({seconds:.0f} s)"}
    )


# ------------------------------------------------------------------------------------------------
# A person and the hostile session


class Soak:
    """The browser phase: one Chromium, one context per session, all at once."""

    def __init__(self, url: str, plan: Plan, tokenizer: Any, files: dict[str, Path], cache: Path):
        self.url, self.plan, self.tokenizer, self.files, self.cache = url, plan, tokenizer, files, cache
        self.limits = server_limits()
        self.people = [Seen(f"P{i + 1}") for i in range(plan.people)]
        self.hostile = Seen("H (hostile)")
        self.hostile_key = "soak-hostile-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:24]
        self.hostile_owner = hashlib.sha256(self.hostile_key.encode()).hexdigest()[:16]  # ui.identity.owner_id
        self._left = plan.people  # the privacy checks wait for every person's runs (not for the hostile session)
        self._watchers: dict[str, list[asyncio.Task]] = {}
        self._all_done = asyncio.Event()
        # The hostile's heaviest scan is pressed once every person's uncertainty run has started, so it waits in
        # the model's queue behind them; its long grokking runs start while that scan waits or runs. Harsher than
        # either alone: the two soak runs that froze the grokking tab (2026-12-01) had exactly this overlap.
        self._uq_started = 0
        self._people_uq_started = asyncio.Event()
        self._heavy_scan_pressed = asyncio.Event()

    def _done_main(self, seen: Seen) -> None:
        if not seen.finished:
            seen.finished = True
            self._left -= seen is not self.hostile
            if self._left == 0:
                self._all_done.set()

    async def run(self) -> None:
        from playwright.async_api import async_playwright

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tasks = [
                asyncio.create_task(self._session(browser, seen, self._person, i * STAGGER_SECONDS, i))
                for i, seen in enumerate(self.people)
            ]
            tasks.append(asyncio.create_task(self._session(browser, self.hostile, self._hostile, 1.5, -1)))
            _, pending = await asyncio.wait(tasks, timeout=self.plan.browser_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for seen in [*self.people, self.hostile]:
                if not seen.step.startswith("done"):
                    seen.problem(f"did not finish within the soak's {self.plan.browser_s:.0f} s: was at {seen.step}")
            await browser.close()

    async def _session(self, browser, seen: Seen, body, delay: float, index: int) -> None:
        await asyncio.sleep(delay)
        context = await browser.new_context(viewport=VIEWPORT)
        if index < 0:  # the hostile person's owner key is known, so an admin can set their quota
            await context.add_cookies([{"name": COOKIE, "value": self.hostile_key, "url": self.url}])
        page = await self._page(context, seen)
        try:
            await body(context, page, seen, index)
            seen.step = "done"
        except asyncio.CancelledError:  # cut at the deadline: keep what its page showed
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._keep_screen(page, seen, "cut", seen.step), 20)
            raise
        except Exception as err:  # noqa: BLE001 - recorded; the soak goes on with the others
            seen.problem(f"failed during {seen.step}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            with contextlib.suppress(Exception):
                await self._keep_screen(page, seen, "failed", f"{seen.step}\n{err}")
        finally:
            self._done_main(seen)
            for watcher in self._watchers.pop(seen.name, []):
                watcher.cancel()
            with contextlib.suppress(Exception):
                await context.close()

    @staticmethod
    async def _keep_screen(page, seen: Seen, what: str, why: str) -> None:
        """tests/artifacts/soak/<who>-<what>.txt (why, the URL, the main area's text) and .png (the page)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = ARTIFACTS / f"{seen.name.split()[0]}-{what}"
        text = await main_text(page)
        running = await page.locator('[data-testid="stStatusWidget"]').count()
        stale = await page.locator('[data-stale="true"]').count()
        state = f"script {'running' if running else 'idle'} in the browser's view; {stale} stale elements"
        stem.with_suffix(".txt").write_text(f"{why}\n{page.url}\n{state}\n\n{text}\n", encoding="utf-8")
        await page.screenshot(path=str(stem.with_suffix(".png")), full_page=True)

    async def _page(self, context, seen: Seen):
        """A new tab of this session's browser context, watched."""
        page = await context.new_page()
        page.set_default_timeout(SHORT_MS)
        page.on("pageerror", lambda err: seen.problem(f"JavaScript error: {str(err)[:200]}"))
        self._watchers.setdefault(seen.name, []).append(asyncio.create_task(watch(page, seen)))
        return page

    async def _timed(self, seen: Seen, step: str, work: Awaitable[None]) -> None:
        seen.step = step
        start = time.monotonic()
        await work
        seen.times[step] = time.monotonic() - start
        print(f"soak: {seen.name}: {step} done in {seen.times[step]:.0f} s", flush=True)

    # -- an ordinary person
    async def _person(self, context, page, seen: Seen, i: int) -> None:
        url = self.url
        seen.step = "home"
        await goto(page, url, "", seen)
        for _ in range(60):  # the app's cookie component stores the new owner key in the browser
            if any(c["name"] == COOKIE for c in await context.cookies()):
                break
            await asyncio.sleep(0.5)
        else:
            seen.problem("the owner cookie was not set within 30 s of the first page")
        await self._timed(seen, "attention", self._attention(page, seen, i))
        await self._timed(seen, "scan", self._scan(page, seen, i))
        await self._timed(seen, "uncertainty start", self._uq_start(page, seen, i))
        self._uq_started += 1
        if self._uq_started == self.plan.people:
            self._people_uq_started.set()
        start = time.monotonic()
        await self._timed(seen, "grokking", self._grok(page, seen, i))
        await self._timed(seen, "uncertainty results", self._uq_results(page, seen))
        seen.times["uncertainty run (start to results)"] = time.monotonic() - start
        seen.step = "waiting for the others"
        self._done_main(seen)
        await self._all_done.wait()
        await self._timed(seen, "privacy", self._privacy(page, seen, i))

    async def _attention(self, page, seen: Seen, i: int) -> None:
        prompt = attention_prompt(i)
        await goto(page, self.url, "Attention_self_interpretation", seen)
        await set_text(page, seen, "att_prompt", prompt)
        tokens = min(token_count(self.tokenizer, prompt), DEFAULT_MAX_TOKENS)
        await wait_shown(page, seen, f"{tokens} tokens ·")
        await wait_idle_async(page, LONG_MS)
        seen.attention["tokens"] = tokens
        await tab(page, seen, "Text description")
        seen.attention["description"] = (
            await page.locator(
                f'[data-testid="stElementContainer"]{FRESH} [data-testid="stCode"]:visible'
            ).first.text_content()
        ).strip()
        lines = len(seen.attention["description"].splitlines())
        if lines != tokens:  # a line per token: the description is of another prompt than the one typed
            box = page.locator(".st-key-att_prompt textarea").first
            in_box = await box.input_value() if await box.count() else "(no text area)"
            in_url = parse_qs(urlparse(page.url).query).get("att_prompt", ["(none)"])[0]
            keep_text(seen, "attention-other-prompt", await main_text(page))
            seen.problem(
                f"the text description has {lines} lines for a prompt of {tokens} tokens; the text area holds "
                f"{in_box[:40]!r}, the link's att_prompt {in_url[:40]!r} (typed {prompt[:40]!r})"
            )
        await tab(page, seen, "Head functions across prompts")
        await set_text(page, seen, "att_hf_user", prompt)
        await click(page, seen, "att_hf_run")
        await wait_shown(page, seen, "Top ", js=TOP_HEADS_JS)
        await wait_idle_async(page, LONG_MS)
        await same_tab(page, seen)
        captions = await page.locator('[data-testid="stCaptionContainer"]:visible').all_inner_texts()
        seen.attention["top_heads"] = [" ".join(c.split()) for c in captions if c.startswith("Top ")]

    async def _scan(self, page, seen: Seen, i: int) -> None:
        await goto(page, self.url, "Super_weights_and_grokking", seen)
        await set_text(page, seen, "sw_prompts", "\n".join(scan_prompts(i)))
        await click(page, seen, "sw_scan")
        await wait_shown(page, seen, "2. Detected super-weight candidates")
        await wait_shown(page, seen, "Super-weight-aware")  # the last section
        try:  # the candidates' widgets drawn (or the note that there is none)
            await wait_shown(page, seen, "stands out", SHORT_MS, js=SCAN_DRAWN_JS)
        except PlaywrightTimeout:
            seen.notes.append(f"the scan's candidate widgets were not drawn within {SHORT_MS / 1000:.0f} s of the scan")
        await wait_idle_async(page, LONG_MS)
        text = await main_text(page)
        keep_text(seen, "scan", text)
        chosen = page.locator(".st-key-sw_ablate_cands")
        seen.scan["candidates"] = CANDIDATE.findall(await chosen.text_content() or "") if await chosen.count() else []
        rejected = re.search(r"Rejected: (\d+) spike", text)
        seen.scan["rejected"] = int(rejected.group(1)) if rejected else 0
        rule = re.search(r"Rule: .*", text)
        seen.scan["caption"] = rule.group(0) if rule else ""

    async def _uq_start(self, page, seen: Seen, i: int) -> None:
        await goto(page, self.url, "Semantic_uncertainty", seen)
        await set_number(page, seen, "uq_limit", self.plan.questions)
        await set_number(page, seen, "uq_k", self.plan.samples)
        await set_number(page, seen, "uq_seed", UQ_SEED + i)
        await set_number(page, seen, "uq_max_new", self.plan.max_new_tokens)
        await click(page, seen, "uq_start")
        await page.wait_for_function("() => location.search.includes('run=')", timeout=LONG_MS, polling=500)
        seen.uq["run_id"] = run_param(page)

    async def _grok(self, page, seen: Seen, i: int) -> None:
        await goto(page, self.url, "Super_weights_and_grokking", seen)
        await tab(page, seen, "Grokking lab")
        await set_number(page, seen, "grok_seed", i + 1)
        await set_number(page, seen, "grok_steps", self.plan.grok_steps)
        await click(page, seen, "grok_start")
        await wait_shown(page, seen, "Summary", js=SUMMARY_OR_ERROR_JS)
        errors = await page.locator(
            '[data-testid="stMain"] [data-testid="stAlertContentError"]:visible'
        ).all_inner_texts()
        if errors:
            raise RuntimeError(f"the grokking tab showed an error: {' '.join(errors[0].split())[:200]}")
        await wait_idle_async(page, LONG_MS)
        shown = await metrics(page, ".st-key-grok_last")  # the run's last values (not a checkpoint's)
        text = await main_text(page)
        keep_text(seen, "grokking", text)
        seen.grok["test_acc"] = shown.get("Test accuracy")
        seen.grok["step"] = shown.get("Last step")
        detail = re.search(r"Checkpoint at step (\d+)", text)
        if detail and detail.group(1) != seen.grok["step"]:  # the picker follows the newest unless one is picked
            seen.problem(f"the finished run's checkpoint detail shows step {detail.group(1)}, not {seen.grok['step']}")
        summary = page.locator('[data-testid="stMain"] [data-testid="stAlertContentSuccess"]:visible')
        seen.grok["summary"] = " ".join((await summary.first.inner_text()).split()) if await summary.count() else ""
        seen.grok["run_id"] = run_param(page)

    async def _uq_results(self, page, seen: Seen) -> None:
        await goto(page, self.url, "Semantic_uncertainty", seen)
        await page.wait_for_function(UQ_DONE_JS, arg=self.plan.questions, timeout=LONG_MS, polling=1000)
        await wait_idle_async(page, LONG_MS)
        shown = await metrics(page)
        keep_text(seen, "uncertainty", await main_text(page))
        seen.uq.update(
            n=shown.get("Questions"),
            A1=shown.get("A1 (all)"),
            A2=shown.get("A2 (usual, 50%)"),
            A3=shown.get("A3 (semantic, 50%)"),
        )
        seen.uq["shown_run_id"] = run_param(page)

    async def _privacy(self, page, seen: Seen, i: int) -> None:
        """The run pickers list only this person's runs; links to someone else's private runs show nothing."""
        await goto(page, self.url, "Semantic_uncertainty", seen)
        seen.pickers["uncertainty"] = await options(page, "uq_run_pick")
        await goto(page, self.url, "Super_weights_and_grokking", seen)
        await tab(page, seen, "Grokking lab")
        seen.pickers["grokking"] = [o for o in await options(page, "grok_reopen") if o != "—"]
        others = [p for p in self.people if p is not seen and p.uq.get("run_id") and p.grok.get("run_id")]
        if not others:
            return
        other = others[(i if i >= 0 else 0) % len(others)]
        for what, path, shows in (
            ("uncertainty", f"Semantic_uncertainty?uq_run={other.uq['run_id']}", UQ_SHOWS),
            ("grokking", f"Super_weights_and_grokking?sw_tab=Grokking+lab&run={other.grok['run_id']}", GROK_SHOWS),
        ):
            await goto(page, self.url, path, seen)
            with contextlib.suppress(PlaywrightTimeout):
                await wait_shown(page, seen, PRIVATE_NOTICE, SHORT_MS)
            await wait_idle_async(page, SHORT_MS)
            text = await main_text(page)
            keep_text(seen, f"private-{what}", text)
            leaked = [marker for marker in shows if marker in text]
            seen.links[f"{what} run of {other.name}"] = PRIVATE_NOTICE in text and not leaked
            if leaked:
                seen.problem(f"a link to {other.name}'s private {what} run showed {', '.join(leaked)}")
            elif PRIVATE_NOTICE not in text:
                seen.problem(f"a link to {other.name}'s private {what} run did not say it is private")

    # -- the hostile session
    async def _hostile(self, context, page, seen: Seen, index: int) -> None:
        """Three tabs of the same person at once: attention then a scan, uncertainty, grokking."""

        async def attention_then_scan() -> None:
            await self._timed(seen, "hostile attention", self._hostile_attention(page, seen))
            await self._timed(seen, "hostile scan", self._hostile_scan(page, seen))

        async def part(name: str, tab_page, work: Awaitable[None]) -> None:
            """One of the three tabs: its failure is recorded under its name, with what its tab showed
            (tests/artifacts/soak/H-failed-<tab>.txt and .png); the other two go on."""
            try:
                await work
            except Exception as err:  # noqa: BLE001 - recorded; the soak goes on
                seen.problem(f"{name} failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                seen.failed_parts.append(name)
                with contextlib.suppress(Exception):
                    await self._keep_screen(tab_page, seen, f"failed-{name.split()[1]}", f"{seen.step}\n{err}")

        uq_page, grok_page = await self._page(context, seen), await self._page(context, seen)
        await asyncio.gather(
            part("hostile attention and scan", page, attention_then_scan()),
            part(
                "hostile uncertainty",
                uq_page,
                self._timed(seen, "hostile uncertainty", self._hostile_uq(uq_page, seen)),
            ),
            part(
                "hostile grokking",
                grok_page,
                self._timed(seen, "hostile grokking", self._hostile_grok(grok_page, seen)),
            ),
        )
        if seen.failed_parts:
            raise RuntimeError(f"{', '.join(seen.failed_parts)} did not finish (above)")
        seen.step = "waiting for the others"
        self._done_main(seen)
        await self._all_done.wait()
        await self._timed(seen, "privacy", self._privacy(page, seen, -1))

    async def _hostile_attention(self, page, seen: Seen) -> None:
        limit = self.limits.attention_tokens
        await goto(page, self.url, "Attention_self_interpretation", seen)

        async def longest() -> str:
            await set_number(page, seen, "att_tokens", limit)
            await set_text(page, seen, "att_prompt", fitted_text(self.tokenizer, limit, 1))
            await wait_shown(page, seen, f"{limit} tokens ·")
            await wait_idle_async(page, LONG_MS)
            return f"page shows {limit} tokens"

        await expect_accepted(page, seen, "attention_tokens", f"a prompt of {limit} tokens", longest)

        async def over() -> None:
            await set_number(page, seen, "att_tokens", limit + 64)
            await set_text(page, seen, "att_prompt", fitted_text(self.tokenizer, limit + 40, 2))

        await expect_limit(page, seen, "attention_tokens", f"a prompt of {limit + 40} tokens", over)
        await set_text(page, seen, "att_prompt", attention_prompt(0))
        await tab(page, seen, "Head functions across prompts")
        n = self.limits.prompts_per_request + 1
        lines = "\n".join(f"Prompt number {k} of the hostile person." for k in range(n))
        await expect_limit(
            page,
            seen,
            "prompts_per_request",
            f"{n} own prompts for head functions",
            lambda: set_text(page, seen, "att_hf_user", lines),
        )

    async def _hostile_scan(self, page, seen: Seen) -> None:
        limits = self.limits
        await goto(page, self.url, "Super_weights_and_grokking", seen)

        async def scan(text: str) -> None:
            await set_text(page, seen, "sw_prompts", text)
            await click(page, seen, "sw_scan")

        n = limits.prompts_per_request + 1
        many = "\n".join(f"Short prompt {k}." for k in range(n))
        await expect_limit(page, seen, "prompts_per_request", f"a scan of {n} prompts", lambda: scan(many))
        tokens = limits.prompt_tokens + 40
        long_one = fitted_text(self.tokenizer, tokens, 3)
        await expect_limit(page, seen, "prompt_tokens", f"a scan prompt of {tokens} tokens", lambda: scan(long_one))
        count = self.plan.hostile_scan_prompts
        biggest = "\n".join(fitted_text(self.tokenizer, limits.prompt_tokens, 10 + k) for k in range(count))

        async def heaviest() -> str:
            seen.step = "hostile: its heaviest scan waits until every person's uncertainty run has started"
            with contextlib.suppress(asyncio.TimeoutError):  # someone failed before: scan anyway
                await asyncio.wait_for(self._people_uq_started.wait(), 2 * SHORT_MS / 1000)
            seen.step = "hostile: its heaviest scan"
            await set_number(page, seen, "sw_iters", 1)  # one pass of the iterative procedure (the page allows 10)
            await scan(biggest)
            self._heavy_scan_pressed.set()
            await wait_shown(page, seen, "2. Detected super-weight candidates")
            await wait_idle_async(page, LONG_MS)
            return "scan finished"

        what = f"a scan of {count} prompts of {limits.prompt_tokens} tokens, 1 iteration"
        if count < limits.prompts_per_request:
            what += f" (--quick: {limits.prompts_per_request} allowed)"
        await expect_accepted(page, seen, "prompts_per_request", what, heaviest)

    async def _hostile_uq(self, page, seen: Seen) -> None:
        limits = self.limits
        await goto(page, self.url, "Semantic_uncertainty", seen)
        over_chars = "{question} " + "a " * (limits.template_chars // 2 + 1)
        await expect_limit(
            page,
            seen,
            "template_chars",
            f"a template of {len(over_chars)} characters",
            lambda: set_text(page, seen, "uq_prompt", over_chars),
        )
        many_tokens = "{question}\n" + fitted_text(self.tokenizer, limits.prompt_tokens + 60, 4, "abcdefghijklmnop")

        async def long_template() -> None:
            await set_text(page, seen, "uq_prompt", many_tokens)
            await click(page, seen, "uq_start")

        await expect_limit(
            page, seen, "prompt_tokens", f"a template of {len(many_tokens)} characters, over 512 tokens", long_template
        )
        await set_text(page, seen, "uq_prompt", FEW_SHOT_TEMPLATE)
        await expect_limit(
            page,
            seen,
            "samples",
            f"K = {limits.samples + 1}",
            lambda: set_number(page, seen, "uq_k", limits.samples + 1),
        )
        await set_number(page, seen, "uq_k", self.plan.samples)
        await expect_limit(
            page,
            seen,
            "new_tokens",
            f"{limits.new_tokens + 1} new tokens",
            lambda: set_number(page, seen, "uq_max_new", limits.new_tokens + 1),
        )
        await set_number(page, seen, "uq_max_new", 24)
        await page.locator(".st-key-uq_source").get_by_text("Upload a file").click()
        await wait_idle_async(page, SHORT_MS)
        dropzone = page.locator('[data-testid="stFileUploaderDropzoneInput"]')

        async def upload(name: str) -> None:
            await dropzone.set_input_files(str(self.files[name]))
            await wait_idle_async(page, LONG_MS)

        size = self.files["biggest"].stat().st_size

        async def biggest() -> str:
            await upload("biggest")
            await page.wait_for_function(
                "() => /[0-9,]+ questions\\./.test(document.body.innerText)", timeout=LONG_MS, polling=1000
            )
            found = re.search(r"([0-9,]+) questions\.", await main_text(page))
            return f"page shows {found.group(0) if found else '?'}"

        await expect_accepted(page, seen, "upload_bytes", f"a CSV of {size:,} bytes", biggest)
        n = limits.questions_per_run + 1
        await expect_limit(
            page,
            seen,
            "questions_per_run",
            f"run the first {n} questions",
            lambda: set_number(page, seen, "uq_limit", n),
        )

        async def small_after_big() -> str:
            await upload("small")
            await wait_shown(page, seen, "2 questions.", SHORT_MS)
            return "page shows 2 questions."

        await expect_accepted(
            page,
            seen,
            "questions_per_run",
            f"a 2-question file right after asking for {n:,} questions of the big one",
            small_after_big,
        )
        too_big = self.files["too_big"].stat().st_size
        await expect_limit(page, seen, "upload_bytes", f"a CSV of {too_big:,} bytes", lambda: upload("too_big"))
        for limit, name, what in (
            ("question_chars", "long_question", f"a question of {limits.question_chars + 1} characters"),
            ("references_per_question", "many_references", f"{limits.references_per_question + 1} references"),
            ("reference_chars", "long_reference", f"a reference of {limits.reference_chars + 1} characters"),
        ):
            await expect_limit(page, seen, limit, what, lambda name=name: upload(name))

    async def _hostile_grok(self, page, seen: Seen) -> None:
        limits = self.limits
        await goto(page, self.url, "Super_weights_and_grokking", seen)
        await tab(page, seen, "Grokking lab")
        steps = limits.grok_steps + 1
        await expect_limit(
            page, seen, "grok_steps", f"{steps:,} steps", lambda: set_number(page, seen, "grok_steps", steps)
        )
        await set_number(page, seen, "grok_steps", limits.grok_steps)
        await set_number(page, seen, "grok_wd", 0)  # does not grok: trains until stopped

        async def sweep() -> None:
            await set_text(page, seen, "grok_sweep_seeds", "1,2,3,4,5")
            await set_text(page, seen, "grok_sweep_wds", "0.1,0.3,0.5,1,2")

        await expect_limit(page, seen, "sweep_runs", "a sweep of 5 seeds x 5 weight decays", sweep)

        async def start(seed: int) -> None:
            await set_number(page, seen, "grok_seed", seed)
            await click(page, seen, "grok_start")
            await wait_idle_async(page, SHORT_MS)

        db = LabDB(self.cache / "lab.sqlite")
        seen.step = "hostile: waiting for its heaviest scan to be pressed"
        with contextlib.suppress(asyncio.TimeoutError):  # the attention tab failed: start anyway
            await asyncio.wait_for(self._heavy_scan_pressed.wait(), LONG_MS / 1000)
        seeds = [201 + k for k in range(limits.jobs_per_person)]
        for seed in seeds:
            seen.step = f"hostile: a long grokking run, seed {seed}"
            await start(seed)
            await wait_shown(page, seen, f"seed {seed}, MLP", SHORT_MS)  # "Showing: ..." the run of this seed
            await wait_shown(page, seen, "Training: step", SHORT_MS)
        extra = seeds[-1] + 1
        await expect_limit(page, seen, "jobs_per_person", f"long job {len(seeds) + 1} at once", lambda: start(extra))
        if len(db.jobs_of(self.hostile_owner)) > len(seeds):
            seeds.append(extra)  # it started after all: stop it too
        for seed in seeds:
            seen.step = f"hostile: stop the run of seed {seed}"
            await start(seed)
            await wait_shown(page, seen, f"seed {seed}, MLP", SHORT_MS)
            if "jobs_per_person" in await main_text(page):
                seen.notes.append(
                    f"Pressing Start to reopen their own running run (seed {seed}) shows the jobs_per_person "
                    "refusal, although nothing new would start (ui/grokking_view.py _start_training calls "
                    "access.check_jobs before it knows the job runs already)."
                )
            await click(page, seen, "grok_stop")
            await wait_shown(page, seen, "Press Start to resume", SHORT_MS)
        seen.step = "hostile: quota"
        deadline = time.monotonic() + 60
        while (db.jobs_of(self.hostile_owner) or not db.usage(self.hostile_owner)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        with db.transaction() as conn:  # an admin gives this person a 1-byte quota
            conn.execute(
                "INSERT OR IGNORE INTO owners (owner, created) VALUES (?, ?)", (self.hostile_owner, time.time())
            )
            conn.execute("UPDATE owners SET quota_bytes = 1 WHERE owner = ?", (self.hostile_owner,))
        used = db.usage(self.hostile_owner)

        async def new_run() -> None:
            await set_number(page, seen, "grok_steps", 100)
            await start(extra + 1)

        await expect_limit(page, seen, "disk_quota_bytes", f"a new run with {used:,} bytes used, quota 1 byte", new_run)


# ------------------------------------------------------------------------------------------------
# Server side: memory and the model queue


class MemorySampler(threading.Thread):
    """Reads the server's VmHWM (peak resident set) and VmRSS once a second, and the resident memory of the
    server with its child processes (the grokking trainings run in children: engine.core.processes)."""

    def __init__(self, pid: int):
        super().__init__(name="soak-memory", daemon=True)
        self.pid, self.hwm_kb, self.rss_kb, self.samples = pid, 0, 0, 0
        self.tree_kb, self.children = 0, 0  # peak RSS of the server + its children at one sample; most children
        self._halt = threading.Event()

    def read(self) -> None:
        import psutil

        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.hwm_kb = max(self.hwm_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:"):
                    self.rss_kb = max(self.rss_kb, int(line.split()[1]))
            self.samples += 1
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(self.pid)
            children = server.children(recursive=True)
            total = server.memory_info().rss
            for child in children:
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.tree_kb = max(self.tree_kb, total // 1024)
            self.children = max(self.children, len(children))

    def run(self) -> None:
        while not self._halt.wait(1.0):
            self.read()

    def stop(self) -> None:
        self._halt.set()
        self.read()


def server_pid(port: int) -> int:
    """The `streamlit run` process this script started (a child of this process, on `port`)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "streamlit" in " ".join(cmd) and str(port) in cmd:
                return child.pid
    raise RuntimeError(f"no streamlit process on port {port} among this process's children")


def log_problems(log: str) -> tuple[list[str], list[str]]:
    """(errors, disconnects) in the server log: every error shown to a user with an id ("error <id>: ...")
    and every other traceback, by its last line; and the tracebacks of websockets that a closing or
    navigating browser left (the web server's own noise, not the lab's)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()  # Streamlit colours its tracebacks
    errors, disconnects, ids = [], [], set()
    for n, line in enumerate(lines):
        shown = re.match(r"error ([0-9a-f]{8}): (.*)", line)
        if shown:
            ids.add(shown.group(1))
            errors.append(f"error {shown.group(1)} (shown to a user): {shown.group(2)[:200]}")
        elif line.startswith("Traceback"):
            last = next((x for x in lines[n + 1 :] if x and not x[0].isspace()), "")
            before = " ".join(lines[max(0, n - 3) : n])
            if any(f"error {i}" in before for i in ids) or "exception" in before:
                continue  # the trace of an error listed by its id, or the next link of a chained trace
            target = disconnects if "WebSocket" in last else errors
            if last.strip() and f"traceback: {last.strip()[:200]}" not in target:
                target.append(f"traceback: {last.strip()[:200]}")
    return errors, disconnects


# ------------------------------------------------------------------------------------------------
# The same work alone (the engine functions the pages call, on a fresh cache)


@contextlib.contextmanager
def cache_root(path: Path) -> Iterator[None]:
    before = os.environ.get("LAB_CACHE_DIR")
    os.environ["LAB_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LAB_CACHE_DIR", None)
        else:
            os.environ["LAB_CACHE_DIR"] = before


def alone(plan: Plan, people: list[Seen], ref_cache: Path, soak_cache: Path, deadline: float) -> dict[str, dict]:
    """Per person and feature they finished on a page: the same work done alone (the engine functions the
    pages call, on a fresh cache), cheapest features first, until `deadline`; and whether the files the
    server wrote for them are the same as those written alone."""
    import pandas as pd

    from engine.attention import head_functions as hf
    from engine.attention import maps
    from engine.core.embedded import EMBEDDED_LM
    from engine.core.embedder import load_embedder
    from engine.core.loading import load_model
    from engine.grokking import analysis as ga
    from engine.grokking import runs
    from engine.grokking.config import TRAIN_THREADS, GrokConfig
    from engine.superweights import detect as sw
    from engine.superweights.config import DetectionConfig
    from engine.uq import correctness, store
    from engine.uq.config import EvalOptions, GenerationConfig
    from engine.uq.evaluation import evaluate_run
    from engine.uq.generation import default_template, generate_run, open_run_for
    from engine.uq.questions import default_questions

    out: dict[str, dict] = {p.name: {} for p in people}

    def attention(i: int, person: Seen, ref: dict) -> None:  # ui/attention_view.py _forward, _head_functions
        prompt = attention_prompt(i)
        result = maps.run_attention(lm, prompt, max_tokens=DEFAULT_MAX_TOKENS)
        specs = hf.builtin_prompts(lm.tokenizer, n_random=N_RANDOM, texts=True) + hf.user_prompts(prompt)
        table = hf.run_prompt_set(lm, specs, max_tokens=DEFAULT_MAX_TOKENS)
        ref["attention"] = {
            "tokens": len(result.token_ids),
            "description": maps.description_text(result, 0, 0).strip(),
            "top_heads": [f"Top {hf.FUNCTION_TITLES[f]} heads: {table.top_heads(f)}" for f in HIGHLIGHTED],
        }

    def scan(i: int, person: Seen, ref: dict) -> None:  # ui/superweights_view.py _detect, the widgets' defaults
        detection = sw.detect(lm, scan_prompts(i), **dataclasses.asdict(DetectionConfig()))
        ref["scan"] = {
            "candidates": [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates],
            "rejected": len(detection.rejected),
            "stop": detection.stop_reason,
        }

    def grok(i: int, person: Seen, ref: dict) -> None:  # ui/grokking_view.py: the form's defaults, own seed
        with cache_root(soak_cache):
            served = runs.get_run(person.grok["run_id"])
            served_metrics = pd.read_csv(served.path / "metrics.csv")
        config = GrokConfig().replace(seed=i + 1, steps=plan.grok_steps)
        summary = ga.run_experiment(config, threads=TRAIN_THREADS)  # a run of no one, as the command line makes
        metrics = pd.read_csv(runs.run_for(config).path / "metrics.csv")
        keep = [c for c in metrics.columns if "elapsed" not in c and "second" not in c]
        ref["grok"] = {
            "config_same": served.grok_config == config,
            "test_acc": f"{metrics.iloc[-1]['test_acc']:.1%}",
            "summary": ga.run_summary_text(summary),
            "files_same": set(keep) <= set(served_metrics.columns) and served_metrics[keep].equals(metrics[keep]),
            "seconds": (served_metrics.iloc[-1].get("elapsed_s"), metrics.iloc[-1].get("elapsed_s")),  # server, alone
        }

    def uq(i: int, person: Seen, ref: dict) -> None:  # ui/uq_new_run.py _start, ui/uq_results.py _evaluation
        with cache_root(soak_cache):
            served = store.get_run(person.uq["run_id"])
            served_config = served.generation_config()
            served_records = served.load_records()
            served_answers = [(r.id, r.answer, tuple(r.samples)) for r in served_records]
        config = GenerationConfig(
            prompt_template=default_template(lm),
            samples=plan.samples,
            max_new_tokens=plan.max_new_tokens,
            seed=UQ_SEED + i,
        )
        run = open_run_for(lm, qset.frame, config, source=qset.source or "default")
        generate_run(lm, run, limit=plan.questions)
        options = EvalOptions(judge=next(iter(correctness.JUDGES)), judge_model=run.model, seed=config.seed)
        summary = evaluate_run(run, embedder, options).summary
        records = run.load_records()
        answers = [(r.id, r.answer, tuple(r.samples)) for r in records]
        ref["uq"] = {
            "seconds": (sum(r.seconds for r in served_records), sum(r.seconds for r in records)),  # server, alone
            "config_same": served_config == run.generation_config(),  # hidden layers resolved as the page's
            "n": f"{summary.n}",
            "files_same": served_answers == answers,
        } | {name: f"{getattr(summary, name):.3f}" for name in ("A1", "A2", "A3")}

    with cache_root(ref_cache):
        lm = load_model(EMBEDDED_LM)
        embedder = load_embedder()
        qset = default_questions()
        longest: dict[str, float] = {}  # the longest time one comparison of a feature took (none starts past deadline)
        for feature, work, shown in (
            ("attention", attention, lambda p: p.attention.get("top_heads")),
            ("scan", scan, lambda p: p.scan.get("caption")),
            ("grok", grok, lambda p: p.grok.get("summary")),
            ("uq", uq, lambda p: p.uq.get("A1")),
        ):
            for i, person in enumerate(people):
                ref = out[person.name]
                if not shown(person):
                    continue  # never finished on its page: nothing to compare
                if time.monotonic() + longest.get(feature, 0.0) > deadline:
                    ref.setdefault("cut", []).append(feature)
                    continue
                start = time.monotonic()
                try:
                    work(i, person, ref)
                except Exception as err:  # noqa: BLE001 - recorded, the other comparisons go on
                    ref.setdefault("errors", []).append(f"{feature}: {type(err).__name__}: {err}")
                ref[f"{feature}_s"] = time.monotonic() - start
                longest[feature] = max(longest.get(feature, 0.0), ref[f"{feature}_s"])
    return out


def compare(person: Seen, ref: dict) -> dict[str, bool | None]:
    """Per feature: True when the page showed the same numbers as the work done alone (and the server's files
    are the same); None when not compared (not finished on the page, or the soak's time ran out)."""
    att, scan, uq, grok = (ref.get(k) for k in ("attention", "scan", "uq", "grok"))
    return {
        "attention": None
        if att is None
        else (
            person.attention.get("tokens") == att["tokens"]
            and person.attention.get("description") == att["description"]
            and person.attention.get("top_heads") == att["top_heads"]
        ),
        "scan": None
        if scan is None
        else (
            person.scan.get("candidates") == scan["candidates"]
            and person.scan.get("rejected") == scan["rejected"]
            and scan["stop"] in person.scan.get("caption", "")
        ),
        "uq": None
        if uq is None
        else all(person.uq.get(k) == uq[k] for k in ("n", "A1", "A2", "A3")) and uq["config_same"] and uq["files_same"],
        "grok": None
        if grok is None
        else (
            grok["config_same"]
            and person.grok.get("test_acc") == grok["test_acc"]
            and grok["summary"] in person.grok.get("summary", "")
            and grok["files_same"]
        ),
    }


# ------------------------------------------------------------------------------------------------
# Report


def seconds_pair(ref: dict | None) -> str:
    """'server / alone' seconds of a comparison, '-' when there is none."""
    pair = (ref or {}).get("seconds")
    if not pair or any(v is None for v in pair):
        return "-"
    return f"{float(pair[0]):.1f} / {float(pair[1]):.1f}"


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**NO**")


def report(
    plan: Plan,
    soak: Soak,
    refs: dict[str, dict],
    server: dict[str, Any],
    seconds: dict[str, float],
    load: tuple[float, float],
) -> str:
    people, hostile = soak.people, soak.hostile
    everyone = [*people, hostile]
    same = {p.name: compare(p, refs.get(p.name, {})) for p in people}
    verdicts = [ok for s in same.values() for ok in s.values() if ok is not None]
    compared, agreed = len(verdicts), sum(verdicts)
    owners = [p.owners[-1] for p in people if p.owners]
    checked = [p for p in everyone if p.pickers and p.links]  # sessions that reached the privacy checks
    private = bool(checked) and len(set(owners)) == len(owners)
    for p in checked:
        private &= all(p.links.values()) and all("yours" in o for labels in p.pickers.values() for o in labels)
    crashed = sum(any(crash in x for crash in CRASHES for x in p.problems) for p in everyone)
    lines = [
        "# Soak test: the shared lab server under several real browsers",
        "",
        f"`python {' '.join(sys.argv)}` on "
        f"{datetime.datetime.now().isoformat(timespec='minutes')}. Machine: {machine()}.",
        "",
        f"{plan.people} people and 1 hostile session at once (one headless Chromium, one browser context each), "
        f"against `streamlit run app.py` on 127.0.0.1 with a fresh LAB_CACHE_DIR. Each person: an attention "
        f"prompt and head functions, a super-weight scan, an uncertainty run (bundled set, first {plan.questions} "
        f"questions, K = {plan.samples}, at most {plan.max_new_tokens} new tokens, own seed) and a grokking run "
        f"(default settings, own seed, at most {plan.grok_steps} steps), then the run pickers and links to someone "
        'else\'s runs. "Alone": the same inputs through the engine functions the pages call, in one process on a '
        "fresh cache, after the server stopped.",
        "",
        f"**Timings are noisy**: this machine (2 cores) is shared with other agents' work; load average "
        f"{load[0]:.1f} before the soak, {load[1]:.1f} after it. Wall times: browser phase "
        f"{seconds.get('browser', 0):.0f} s, alone {seconds.get('alone', 0):.0f} s, whole soak "
        f"{seconds.get('total', 0):.0f} s.",
        "",
        "## Summary",
        "",
        "| question | answer |",
        "|---|---|",
        f"| every session finished its work | {sum(x.step == 'done' for x in everyone)} of {len(everyone)} |",
        f"| the same numbers as alone (compared / same) | {compared} / {agreed} |",
        f"| no session saw another person's run (run pickers, links to private runs, distinct owner ids) | "
        f"{mark(private)} ({len(checked)} of {len(everyone)} sessions checked) |",
        f"| the server's peak memory (VmHWM; with its training processes) | {server.get('hwm_kb', 0) / 2**20:.2f} GiB; "
        f"{server.get('tree_kb', 0) / 2**20:.2f} GiB |",
        f"| the longest wait in a model's queue | {server.get('longest_wait_s', float('nan')):.1f} s |",
        f"| tracebacks: pages showing one, or an error id / server log | {crashed} / "
        f"{len(server.get('log_problems', []))} |",
        f"| the hostile session's requests answered as expected | {sum(r['ok'] for r in hostile.limits)} of "
        f"{len(hostile.limits)} |",
        "",
        "## Every person",
        "",
        "| person | owner id (pages) | attention: tokens, description, top heads | scan: candidates, rejected | "
        "uncertainty: A1 / A2 / A3 | grokking: final test acc. | same as alone (attn / scan / uq / grok) | "
        "run pickers: own / others' | someone's private links refused | max queue place seen | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in people:
        s = same[p.name]
        owners = sorted(set(p.owners))
        pickers = [label for labels in p.pickers.values() for label in labels]
        own = sum("yours" in label for label in pickers)
        links = list(p.links.values())
        att = p.attention
        lines.append(
            f"| {p.name} | {', '.join(owners) or '?'}{' (**changed**)' if len(owners) > 1 else ''} | "
            f"{att.get('tokens', '?')} tokens, {len(att.get('description', '').splitlines())} lines, "
            f"{'; '.join(h.split(': ', 1)[-1] for h in att.get('top_heads', [])) or '?'} | "
            f"{', '.join(p.scan.get('candidates', [])) or 'none'}; {p.scan.get('rejected', '?')} rejected | "
            f"{p.uq.get('A1', '?')} / {p.uq.get('A2', '?')} / {p.uq.get('A3', '?')} (n = {p.uq.get('n', '?')}) | "
            f"{p.grok.get('test_acc', '?')} at step {p.grok.get('step', '?')} | "
            f"{' / '.join(mark(s[k]) for k in ('attention', 'scan', 'uq', 'grok'))} | "
            f"{own} / {len(pickers) - own} | {sum(links)} of {len(links)} | {p.max_place or '-'} | "
            f"{len(p.problems) or 'none'} |"
        )
    lines += [
        "",
        "Same as alone means: attention token count, the text description of head 0.0 and the top induction / "
        "previous-token heads identical; the scan's candidates, rejected spikes and stop reason identical; the "
        "uncertainty run's settings, question count and A1 / A2 / A3 identical and every answer and sample "
        "identical in the run files; the grokking run's settings, final test accuracy and summary identical and its "
        "metrics file identical (times excepted). n/a: not finished on the page, or not compared in time.",
        "",
        "## The hostile session",
        "",
        "| limit | request | expected | ok | the page showed |",
        "|---|---|---|---|---|",
    ]
    tried = {row["limit"] for row in hostile.limits}
    for row in hostile.limits:
        seen_text = row["seen"].replace("|", "/")[:220]
        lines.append(f"| {row['limit']} | {row['request']} | {row['expect']} | {mark(row['ok'])} | {seen_text} |")
    for field in dataclasses.fields(ServerLimits):
        if field.name not in tried:
            lines.append(f"| {field.name} | not requested: no page control can ask for more | - | n/a | |")
    hostile_links = list(hostile.links.values())
    lines += [
        "",
        f"Hostile session's run pickers: {sum('yours' in o for v in hostile.pickers.values() for o in v)} own, "
        f"{sum('yours' not in o for v in hostile.pickers.values() for o in v)} others'; private links refused: "
        f"{sum(hostile_links)} of {len(hostile_links)}.",
        "",
        "## The server",
        "",
        "| measure | value |",
        "|---|---|",
        f"| peak resident memory of the server process (VmHWM) | {server.get('hwm_kb', 0) / 2**20:.2f} GiB |",
        f"| peak resident memory of the server and its child processes at one sample | "
        f"{server.get('tree_kb', 0) / 2**20:.2f} GiB (up to {server.get('children', 0)} children at once) |",
        f"| memory samples taken (1 s apart) | {server.get('samples', 0)} |",
        f"| longest wait in a model's queue (FairLock.longest_wait_s, in the server) | "
        f"{server.get('longest_wait_s', float('nan')):.1f} s |",
        f"| longest queue of a model (people holding or waiting) | {server.get('longest_queue', '?')} |",
        f"| full garbage collections in the server (each holds the GIL: every thread waits) | "
        f"{server.get('gc_full', '?')}, {server.get('gc_full_s', float('nan')):.0f} s in all, the longest "
        f"{server.get('gc_longest_s', float('nan')):.2f} s |",
        f"| the most of any 30 s the server spent collecting garbage | "
        f"{server.get('gc_busiest_30s', float('nan')):.1f} s |",
        f"| highest place in the queue a page showed | {max((p.max_place for p in everyone), default=0) or '-'} |",
        f"| longest time a queue note stayed on one page | {max(p.longest_busy_s for p in everyone):.0f} s |",
        f"| errors in the server log (shown with an id, or other tracebacks) | {len(server.get('log_problems', []))} |",
        f"| websocket tracebacks in the server log (browsers closing or leaving a page) | "
        f"{len(server.get('disconnects', []))} |",
        f"| times a rerun switched a page back to its first tab (the soak selected its tab again) | "
        f"{sum(p.tab_resets for p in everyone)} |",
        f"| times a late rerun put back a widget's old value after it was typed (the soak typed it again) | "
        f"{sum(p.retyped for p in everyone)} |",
        '| times a typed value still said "Press Enter to apply" after its key press (the soak pressed it again; '
        f"widgets) | {sum(len(p.resubmitted) for p in everyone)} "
        f"({', '.join(sorted({k for p in everyone for k in p.resubmitted})) or '-'}) |",
        f'| pages that showed a traceback, an exception box or "Something went wrong" | {crashed} |',
        "",
        "Queue notes seen on the pages: "
        + ("; ".join(sorted({n for p in everyone for n in p.queue_notes}))[:1500] or "none")
        + ".",
        "",
        "## Compute time of the same work on the server and alone",
        "",
        "| person | grokking run: server / alone (s) | uncertainty generation, sum per question: server / alone (s) |",
        "|---|---|---|",
        *(
            f"| {p.name} | {seconds_pair(refs.get(p.name, {}).get('grok'))} | "
            f"{seconds_pair(refs.get(p.name, {}).get('uq'))} |"
            for p in people
        ),
        "",
        "On the server each grokking run trains in a child process of the server (engine.core.processes), "
        "beside the uncertainty jobs (threads of the server, sharing the model), the other people's runs and "
        "the page scripts, all on the same cores; alone each runs by itself.",
        "",
        "## Step times (s, wall clock, per session)",
        "",
        "| session | " + " | ".join(sorted({k for p in everyone for k in p.times})) + " |",
        "|---|" + "---|" * len({k for p in everyone for k in p.times}),
    ]
    keys = sorted({k for p in everyone for k in p.times})
    for p in everyone:
        lines.append(f"| {p.name} | " + " | ".join(f"{p.times[k]:.0f}" if k in p.times else "" for k in keys) + " |")
    problems = [(p.name, x) for p in everyone for x in p.problems] + [
        ("server log", x) for x in server.get("log_problems", [])
    ]
    notes = [(p.name, x) for p in everyone for x in p.notes]
    lines += ["", "## Problems", ""]
    start = len(lines)
    lines += [f"- {who}: {what}" for who, what in problems]
    for p in people:
        s, ref = same[p.name], refs.get(p.name, {})
        for feature, ok in s.items():
            if ok is False:
                page = {"attention": p.attention, "scan": p.scan, "uq": p.uq, "grok": p.grok}[feature]
                lines.append(f"- {p.name}: {feature} differs from alone. Page: {page}. Alone: {ref.get(feature)}")
        for feature in ref.get("cut", []):
            lines.append(f"- {p.name}: {feature} not compared with alone (the soak's time ran out first)")
        for error in ref.get("errors", []):
            lines.append(f"- {p.name}: the work alone failed: {error}")
    if len(lines) == start:
        lines.append("none")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {who}: {what}" for who, what in notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 people + 1 hostile session, a lighter hostile scan")
    parser.add_argument("--keep", action="store_true", help="keep the temporary caches (printed)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="end the whole soak after this many minutes (a slow machine)"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.minutes:  # the browser phase keeps its share of the whole
        share = plan.browser_s / plan.total_s
        plan = dataclasses.replace(plan, total_s=60 * args.minutes, browser_s=60 * args.minutes * share)
    reason = browser_missing_reason()
    if reason:
        print(f"soak: cannot run: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + plan.total_s
    load_before = os.getloadavg()[0]
    from transformers import AutoTokenizer

    from engine.core.embedded import prepare_embedded

    models = prepare_embedded()
    tokenizer = AutoTokenizer.from_pretrained(str(models))
    tmp = Path(tempfile.mkdtemp(prefix="lab_soak_"))
    soak_cache, ref_cache, site = tmp / "served", tmp / "alone", tmp / "site"
    for folder in (soak_cache, ref_cache, site):
        folder.mkdir()
        if folder is not site:
            (folder / "models").symlink_to(models.parent)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    stats_path = tmp / "server_stats.json"
    files = upload_files(tmp / "uploads", server_limits())
    env = {
        "LAB_CACHE_DIR": str(soak_cache),
        "LAB_SOAK_STATS": str(stats_path),
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    seconds: dict[str, float] = {}
    server: dict[str, Any] = {}
    with streamlit_server(env) as url:
        port = urlparse(url).port
        sampler = MemorySampler(server_pid(port))
        sampler.start()
        soak = Soak(url, plan, tokenizer, files, soak_cache)
        print(f"soak: {url}, {plan.people} people + 1 hostile session, cache {soak_cache}", flush=True)
        phase = time.monotonic()
        asyncio.run(soak.run())
        seconds["browser"] = time.monotonic() - phase
        sampler.stop()
        server.update(
            hwm_kb=sampler.hwm_kb,
            rss_kb=sampler.rss_kb,
            samples=sampler.samples,
            tree_kb=sampler.tree_kb,
            children=sampler.children,
        )
        with contextlib.suppress(OSError, ValueError):
            server.update(json.loads(stats_path.read_text()))
    log_path = ROOT / "tests" / "artifacts" / f"streamlit-{port}.log"
    if log_path.exists():
        server["log_problems"], server["disconnects"] = log_problems(log_path.read_text(errors="replace"))
    print(f"soak: browser phase done in {seconds['browser']:.0f} s; the same work alone...", flush=True)
    phase = time.monotonic()
    try:
        refs = alone(plan, soak.people, ref_cache, soak_cache, deadline - 10)
    except Exception as err:  # noqa: BLE001 - the report still says what the browsers saw
        refs = {}
        soak.hostile.problem(f"the work alone failed: {type(err).__name__}: {err}")
    seconds["alone"] = time.monotonic() - phase
    seconds["total"] = time.monotonic() - started
    text = report(plan, soak, refs, server, seconds, (load_before, os.getloadavg()[0]))
    text += f"\nServer log: `{log_path.relative_to(ROOT)}`.\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    if args.keep:
        print(f"soak: caches kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
