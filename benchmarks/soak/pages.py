"""Page helpers of the browser phase (async Playwright): open a page, type, click, wait for what a person
waits for (selecting the session's tab again when a rerun switched it back), read metrics and run pickers,
watch a page for queue notes and crashes, and record a request over a server limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from browser import wait_idle_async, wait_text_async

from benchmarks.soak.plan import Seen
from benchmarks.soak.server import server_pid

try:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the command says what is missing before any page is opened
    PlaywrightTimeout = TimeoutError

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "soak"
WATCH_SECONDS = 3.0  # how often each page is read for queue notes and errors
LONG_MS = 1_500_000  # a wait for a result (bounded anyway by the browser phase's deadline)
SHORT_MS = 180_000  # a wait for a page or a message (on 2 cores shared by 7 browsers, the server and its jobs)
FRESH = ':not([data-stale="true"])'  # an element of the page's last run, not a stale one of an earlier run
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
