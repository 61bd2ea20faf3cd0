"""Soak test of the shared lab server: `streamlit run app.py` on 127.0.0.1 under several real
browsers at once. A benchmark, not a test (not in the timed suite, not in run_all.py).

    python -m benchmarks.soak              # 6 people + 1 hostile session; ends by itself within 15 min
    python -m benchmarks.soak --quick      # 2 people + 1 hostile session, smaller runs; < 5 min
    python -m benchmarks.soak --minutes 25 # the same with more time (a slow or busy machine)
    python benchmarks/soak --quick         # the same as a folder run as a script

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
and the long grokking runs start while it waits or runs: the overlap that froze pages before training children
ran at a lower CPU priority and the server stopped a full garbage collection after every script run.
Every request over a server limit must be refused with a message naming the limit. Their disk quota is set
to 1 byte in the lab database (as an admin would) to see the quota refusal.

A watcher per page records the queue notes ("you are 3rd in the queue"), any Streamlit exception box,
"Traceback" or "Something went wrong (error ...)". The server's peak memory is its VmHWM (/proc/<pid>/status);
the longest wait in a model's queue is FairLock.longest_wait_s, and the time in garbage collection (which holds
the GIL) is counted by gc.callbacks, both read inside the server by server.install(), which a sitecustomize.py on
the server's PYTHONPATH calls (the app itself is unchanged). A page unchanged for a whole wait makes the server write
every thread's stack to its log (faulthandler, SIGUSR1). The server log is scanned for
tracebacks afterwards. What each page showed when its numbers were read is kept in tests/artifacts/soak/.

Then the same work is done alone, by the engine functions the pages' jobs run, in this process on another
fresh cache: every person's numbers must be the same (and the uncertainty answers and grokking metrics files
identical). Writes benchmarks/soak_results.md and prints it. Loopback only.

The modules: plan (its size, the inputs, what a session saw), pages (Playwright helpers), people and
hostile (what the sessions do), session (the browser phase), server (the measurement in and of the server),
reference (the same work alone), report (soak_results.md), __main__ (the command).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The browser harness is the browser test's (tests/browser.py); the lab's packages are at the root.
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
