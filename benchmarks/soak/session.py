"""The browser phase: one headless Chromium, one browser context per session (its own cookies, so its own
owner key), every person and the hostile session at once, a few seconds apart (`Soak.run`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from browser import CHROMIUM, CHROMIUM_ARGS

from benchmarks.soak.hostile import HostileSession
from benchmarks.soak.pages import ARTIFACTS, SHORT_MS, main_text, watch
from benchmarks.soak.people import Person
from benchmarks.soak.plan import Plan, Seen
from engine.core.limits import server_limits
from ui.identity import COOKIE

VIEWPORT = {"width": 1400, "height": 1000}
STAGGER_SECONDS = 3.0  # people start this far apart


class Soak(Person, HostileSession):
    """The browser phase: one Chromium, one context per session, all at once (a person's steps in
    people.Person, the hostile session's in hostile.HostileSession)."""

    def __init__(self, url: str, plan: Plan, tokenizer: Any, files: dict[str, Path], cache: Path):
        self.url, self.plan, self.tokenizer, self.files, self.cache = url, plan, tokenizer, files, cache
        self.limits = server_limits()
        self.people = [Seen(f"P{i + 1}") for i in range(plan.people)]
        self.hostile = Seen("H (hostile)")
        self.hostile_key = "soak-hostile-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:24]
        self.hostile_owner = hashlib.sha256(self.hostile_key.encode()).hexdigest()[:16]  # ui.identity.owner_id
        self._left = plan.people  # the privacy checks wait for every person's runs (not for the hostile session)
        self._watchers: dict[str, list[asyncio.Task]] = {}
        self.all_done = asyncio.Event()
        # The hostile's heaviest scan is pressed once every person's uncertainty run has started, so it waits in
        # the model's queue behind them; its long grokking runs start while that scan waits or runs. Harsher than
        # either alone: the two soak runs that froze the grokking tab had exactly this overlap.
        self.uq_started = 0
        self.people_uq_started = asyncio.Event()
        self.heavy_scan_pressed = asyncio.Event()

    def done_main(self, seen: Seen) -> None:
        if not seen.finished:
            seen.finished = True
            self._left -= seen is not self.hostile
            if self._left == 0:
                self.all_done.set()

    async def run(self) -> None:
        from playwright.async_api import async_playwright

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tasks = [
                asyncio.create_task(self._session(browser, seen, self.person, i * STAGGER_SECONDS, i))
                for i, seen in enumerate(self.people)
            ]
            tasks.append(asyncio.create_task(self._session(browser, self.hostile, self.hostile_session, 1.5, -1)))
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
        page = await self.new_page(context, seen)
        try:
            await body(context, page, seen, index)
            seen.step = "done"
        except asyncio.CancelledError:  # cut at the deadline: keep what its page showed
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.keep_screen(page, seen, "cut", seen.step), 20)
            raise
        except Exception as err:  # noqa: BLE001 - recorded; the soak goes on with the others
            seen.problem(f"failed during {seen.step}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            with contextlib.suppress(Exception):
                await self.keep_screen(page, seen, "failed", f"{seen.step}\n{err}")
        finally:
            self.done_main(seen)
            for watcher in self._watchers.pop(seen.name, []):
                watcher.cancel()
            with contextlib.suppress(Exception):
                await context.close()

    @staticmethod
    async def keep_screen(page, seen: Seen, what: str, why: str) -> None:
        """tests/artifacts/soak/<who>-<what>.txt (why, the URL, the main area's text) and .png (the page)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = ARTIFACTS / f"{seen.name.split()[0]}-{what}"
        text = await main_text(page)
        running = await page.locator('[data-testid="stStatusWidget"]').count()
        stale = await page.locator('[data-stale="true"]').count()
        state = f"script {'running' if running else 'idle'} in the browser's view; {stale} stale elements"
        stem.with_suffix(".txt").write_text(f"{why}\n{page.url}\n{state}\n\n{text}\n", encoding="utf-8")
        await page.screenshot(path=str(stem.with_suffix(".png")), full_page=True)

    async def new_page(self, context, seen: Seen):
        """A new tab of this session's browser context, watched."""
        page = await context.new_page()
        page.set_default_timeout(SHORT_MS)
        page.on("pageerror", lambda err: seen.problem(f"JavaScript error: {str(err)[:200]}"))
        self._watchers.setdefault(seen.name, []).append(asyncio.create_task(watch(page, seen)))
        return page

    async def timed(self, seen: Seen, step: str, work: Awaitable[None]) -> None:
        seen.step = step
        start = time.monotonic()
        await work
        seen.times[step] = time.monotonic() - start
        print(f"soak: {seen.name}: {step} done in {seen.times[step]:.0f} s", flush=True)
