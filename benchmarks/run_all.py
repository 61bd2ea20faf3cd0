"""Run every benchmark in benchmarks/ and write one Markdown table (machine, date, figure vs target).

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...]; writes benchmarks/RESULTS.md.
With --only, the rows of the benchmarks that were rerun replace theirs in the existing file and the
other rows are kept (with a line saying which rows are newer).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

from common import machine, markdown_table, row

from engine.core.provenance import utc_now

HERE = Path(__file__).resolve().parent

RESULTS = HERE / "RESULTS.md"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def merged_table(old_report: str, new_table: str) -> tuple[str, str]:
    """The old report's table with the rows of each benchmark in `new_table` replaced (in place;
    benchmarks new to the file go last), and the old header lines (machine, date, earlier reruns)."""
    lines = old_report.splitlines()
    old_rows = [line for line in lines if line.startswith("| ") and not line.startswith("| benchmark |")]
    header = "\n".join(line for line in lines if line and not line.startswith("|") and not line.startswith("# "))
    new_lines = new_table.splitlines()
    new_rows = new_lines[2:]
    groups: dict[str, list[str]] = {}
    for line in new_rows:
        groups.setdefault(_cells(line)[0], []).append(line)
    out, placed = [], set()
    for line in old_rows:
        name = _cells(line)[0]
        if name not in groups:
            out.append(line)
        elif name not in placed:
            out.extend(groups[name])
            placed.add(name)
    out.extend(line for name, ls in groups.items() if name not in placed for line in ls)
    return "\n".join(new_lines[:2] + out), header


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    only = argv[argv.index("--only") + 1 :] if "--only" in argv else None
    rows: list[dict] = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem
        if only and name not in only and name.removeprefix("bench_") not in only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            rows.extend(importlib.import_module(name).run(quick=quick))
        except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            rows.append(row(name, "FAILED (see log)", float("nan")))
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    today = utc_now()
    table = markdown_table(rows)
    header = f"Machine: {machine()}  \nDate: {today}{'  (quick mode)' if quick else ''}"
    if only and RESULTS.exists():
        table, kept_header = merged_table(RESULTS.read_text(), table)
        rerun = ", ".join(sorted({r["benchmark"] for r in rows}))
        header = f"{kept_header}  \nRerun on {today}{' (quick mode)' if quick else ''}: {rerun}"
    report = f"# Benchmark results\n\n{header}\n\n{table}\n"
    RESULTS.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
