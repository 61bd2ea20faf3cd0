"""Shared output for benchmarks: each script has `run(quick=False) -> list[dict]` and prints a table.

A row: {"benchmark", "metric", "value", "unit", "target", "passed"} (`passed` None when no target).
`benchmarks/run_all.py` collects every script's rows into one Markdown table.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Before anything imports torch: the engine sets OMP_WAIT_POLICY=PASSIVE, as the app and the CLI run
# (measured without it, the ablation table was ~15% faster on an idle machine and far slower on a busy one).
import engine  # noqa: E402, F401
from engine.core import provenance  # noqa: E402


def row(
    benchmark: str, metric: str, value: float, unit: str = "", target: str = "", passed: bool | None = None
) -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "target": target, "passed": passed}


def timed(fn, repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time of `repeats` calls of fn() (seconds), and all times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> str:
    """The machine and the versions behind a benchmark's numbers, one line (engine.core.provenance)."""
    installed = provenance.versions(("torch", "transformers"))
    where = provenance.machine_line(provenance.machine())
    return f"{where}; {provenance.versions_line(installed, provenance.git_commit())}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| benchmark | metric | value | target | ok |", "|---|---|---|---|---|"]
    for r in rows:
        value = r["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        ok = "" if r["passed"] is None else ("yes" if r["passed"] else "**no**")
        lines.append(f"| {r['benchmark']} | {r['metric']} | {shown} {r['unit']} | {r['target']} | {ok} |")
    return "\n".join(lines)


def print_report(rows: list[dict]) -> None:
    print(f"Machine: {machine()}  \nDate: {provenance.utc_now()}\n")
    print(markdown_table(rows))
