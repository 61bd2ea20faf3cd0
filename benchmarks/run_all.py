"""Run every benchmark in benchmarks/ and write one Markdown table (machine, date, figure vs target).

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...]; writes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime
import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, markdown_table, row  # noqa: E402


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
    report = (
        "# Benchmark results\n\n"
        f"Machine: {machine()}  \nDate: {datetime.date.today().isoformat()}"
        f"{'  (quick mode)' if quick else ''}\n\n{markdown_table(rows)}\n"
    )
    (HERE / "RESULTS.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
