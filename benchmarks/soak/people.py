"""An ordinary person of the soak: home, attention, a scan, an uncertainty run, a grokking run meanwhile,
the uncertainty results, then the run pickers and links to someone else's private runs. Reads what the
pages show, to compare with the same work done alone (reference.py)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from urllib.parse import parse_qs, urlparse

from browser import wait_idle_async

from benchmarks.soak.pages import (
    FRESH,
    LONG_MS,
    SCAN_DRAWN_JS,
    SHORT_MS,
    SUMMARY_OR_ERROR_JS,
    TOP_HEADS_JS,
    UQ_DONE_JS,
    PlaywrightTimeout,
    click,
    goto,
    keep_text,
    main_text,
    metrics,
    options,
    run_param,
    same_tab,
    set_number,
    set_text,
    tab,
    wait_shown,
)
from benchmarks.soak.plan import UQ_SEED, Seen, attention_prompt, scan_prompts, token_count
from engine.attention.config import DEFAULT_MAX_TOKENS
from ui.access import PRIVATE_NOTICE
from ui.identity import COOKIE

UQ_SHOWS = ("A1 (all)", "The tables")  # what a page shows of an uncertainty run
GROK_SHOWS = ("Summary", "Last evaluated step", "Showing:")  # what a page shows of a grokking run
CANDIDATE = re.compile(r"layer \d+ W\[\d+, \d+\]")


class Person:
    """The steps of an ordinary person (a part of session.Soak: `self` is the soak)."""

    async def person(self, context, page, seen: Seen, i: int) -> None:
        url = self.url
        seen.step = "home"
        await goto(page, url, "", seen)
        for _ in range(60):  # the app's cookie component stores the new owner key in the browser
            if any(c["name"] == COOKIE for c in await context.cookies()):
                break
            await asyncio.sleep(0.5)
        else:
            seen.problem("the owner cookie was not set within 30 s of the first page")
        await self.timed(seen, "attention", self._attention(page, seen, i))
        await self.timed(seen, "scan", self._scan(page, seen, i))
        await self.timed(seen, "uncertainty start", self._uq_start(page, seen, i))
        self.uq_started += 1
        if self.uq_started == self.plan.people:
            self.people_uq_started.set()
        start = time.monotonic()
        await self.timed(seen, "grokking", self._grok(page, seen, i))
        await self.timed(seen, "uncertainty results", self._uq_results(page, seen))
        seen.times["uncertainty run (start to results)"] = time.monotonic() - start
        seen.step = "waiting for the others"
        self.done_main(seen)
        await self.all_done.wait()
        await self.timed(seen, "privacy", self._privacy(page, seen, i))

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
        rejected = re.search(r"Minor: (\d+) weight", text)  # the detector's minor weights (`rejected` in the engine)
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
        seen.grok["step"] = shown.get("Last evaluated step")
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
