"""Load time of the embedded Gemma 3 270M: cold (from GGUF) vs warm (from the converted cache).

Target: warm <= 5 s and <= 1/8 of cold, on this 2-core CPU. Each load runs in a fresh
subprocess so nothing is shared between runs (imports included, as a user's first load would be).
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from common import ROOT, print_report, row

TIMED = "import time; t = time.perf_counter(); {call}; print(time.perf_counter() - t)"
COLD = "from engine.core.embedded import load_embedded_from_gguf as f; " + TIMED.format(call="f()")
WARM = "from engine.core.loading import load_model as f; " + TIMED.format(call="f('gemma-3-270m')")


def _time_in_subprocess(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    from engine.core.embedded import prepare_embedded

    prepare_embedded()  # make sure the cache exists, so warm loads measure loading only
    repeats = 1 if quick else 3
    cold = statistics.median(_time_in_subprocess(COLD) for _ in range(repeats))
    warm = statistics.median(_time_in_subprocess(WARM) for _ in range(repeats))
    return [
        row("model load", "cold load from GGUF (median)", cold, "s"),
        row("model load", "warm load from cache (median)", warm, "s", "<= 5 s", warm <= 5),
        row("model load", "warm / cold", warm / cold, "", "<= 0.125", warm / cold <= 0.125),
    ]


if __name__ == "__main__":
    print_report(run(quick="--quick" in sys.argv))
