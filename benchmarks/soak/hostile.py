"""The hostile session: one person in three tabs at once, asking for the most each server limit allows and
for more (every request over a limit must be refused with a message naming it): the longest attention
prompt, the heaviest scan (pressed once every person's uncertainty run has started, so it waits in the
model's queue behind them), the biggest upload and uploads over each per-question limit, long grokking runs
up to the job limit while that scan waits or runs, and a 1-byte disk quota set as an admin would."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable

from browser import wait_idle_async

from benchmarks.soak.pages import (
    LONG_MS,
    SHORT_MS,
    click,
    expect_accepted,
    expect_limit,
    goto,
    main_text,
    set_number,
    set_text,
    tab,
    wait_shown,
)
from benchmarks.soak.plan import Seen, attention_prompt, fitted_text
from engine.core.db import LabDB
from engine.uq.config import FEW_SHOT_TEMPLATE


class HostileSession:
    """The hostile session's steps (a part of session.Soak: `self` is the soak)."""

    async def hostile_session(self, context, page, seen: Seen, index: int) -> None:
        """Three tabs of the same person at once: attention then a scan, uncertainty, grokking."""

        async def attention_then_scan() -> None:
            await self.timed(seen, "hostile attention", self._hostile_attention(page, seen))
            await self.timed(seen, "hostile scan", self._hostile_scan(page, seen))

        async def part(name: str, tab_page, work: Awaitable[None]) -> None:
            """One of the three tabs: its failure is recorded under its name, with what its tab showed
            (tests/artifacts/soak/H-failed-<tab>.txt and .png); the other two go on."""
            try:
                await work
            except Exception as err:  # noqa: BLE001 - recorded; the soak goes on
                seen.problem(f"{name} failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                seen.failed_parts.append(name)
                with contextlib.suppress(Exception):
                    await self.keep_screen(tab_page, seen, f"failed-{name.split()[1]}", f"{seen.step}\n{err}")

        uq_page, grok_page = await self.new_page(context, seen), await self.new_page(context, seen)
        await asyncio.gather(
            part("hostile attention and scan", page, attention_then_scan()),
            part(
                "hostile uncertainty",
                uq_page,
                self.timed(seen, "hostile uncertainty", self._hostile_uq(uq_page, seen)),
            ),
            part(
                "hostile grokking",
                grok_page,
                self.timed(seen, "hostile grokking", self._hostile_grok(grok_page, seen)),
            ),
        )
        if seen.failed_parts:
            raise RuntimeError(f"{', '.join(seen.failed_parts)} did not finish (above)")
        seen.step = "waiting for the others"
        self.done_main(seen)
        await self.all_done.wait()
        await self.timed(seen, "privacy", self._privacy(page, seen, -1))

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
            await wait_idle_async(page, SHORT_MS)
            button = page.locator(".st-key-sw_scan button").filter(visible=True).first
            if await button.count() and not await button.is_enabled():
                return  # refused as typed: the field's error names the limit and Scan is off, nothing to press
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
                await asyncio.wait_for(self.people_uq_started.wait(), 2 * SHORT_MS / 1000)
            seen.step = "hostile: its heaviest scan"
            await set_number(page, seen, "sw_iters", 1)  # one pass of the iterative procedure (the page allows 10)
            await scan(biggest)
            self.heavy_scan_pressed.set()
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
            await asyncio.wait_for(self.heavy_scan_pressed.wait(), LONG_MS / 1000)
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
                    "refusal, although nothing new would start (engine/grokking/jobs.py start calls the gate's admit "
                    "before it knows the job runs already)."
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
