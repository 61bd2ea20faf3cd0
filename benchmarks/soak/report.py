"""The soak's report (benchmarks/soak_results.md), from what the sessions saw, the server's numbers and the
comparison with the same work alone."""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks.soak.plan import Plan, Seen
from benchmarks.soak.reference import compare
from engine.core.limits import ServerLimits

CRASHES = ("Traceback", "exception box", "went wrong")  # what Seen.problem records of a crash on a page


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
    people: list[Seen],
    hostile: Seen,
    refs: dict[str, dict],
    server: dict[str, Any],
    seconds: dict[str, float],
    load: tuple[float, float],
    command: str,
    when: str,
    machine: str,
) -> str:
    """benchmarks/soak_results.md: what every session did and saw, the hostile session's requests, the
    server's memory, queue and garbage collection, and the comparison with the same work alone."""
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
        f"`{command}` on {when}. Machine: {machine}.",
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
