"""The server side of the soak's measurement.

In the server (`install()`, run by the sitecustomize.py that `site_dir()` writes onto the server's
PYTHONPATH; the app itself is unchanged): the longest wait in any model's queue and the longest queue
(engine.core.queue.all_locks), and the time spent in garbage collection (gc.callbacks: a collection holds
the GIL, so every thread of the server waits), written every 0.5 s as JSON to $LAB_SOAK_STATS; SIGUSR1
writes every thread's stack to the server log (a page that did not change for minutes). The server's
training children load the same sitecustomize and do nothing.

In the soak's process: the server's memory (`MemorySampler`), its pid, and the problems in its log.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

STATS_ENV = "LAB_SOAK_STATS"
SITECUSTOMIZE = "from benchmarks.soak import server\n\nserver.install()\n"


class GcTimer:
    """gc.callbacks entry: full (generation 2) collections, their seconds and the longest, and the most
    seconds of any 30 s window spent collecting (all generations)."""

    def __init__(self) -> None:
        self.full, self.full_s, self.longest_s = 0, 0.0, 0.0
        self.windows: dict[int, float] = {}
        self._start: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        if self._start is None:
            return
        took, self._start = time.perf_counter() - self._start, None
        window = int(time.monotonic() // 30)
        self.windows[window] = self.windows.get(window, 0.0) + took
        if info["generation"] == 2:
            self.full += 1
            self.full_s += took
            self.longest_s = max(self.longest_s, took)


def stats(timer: GcTimer, longest_queue: int = 0) -> dict[str, Any]:
    """The numbers the soak reads back: every model lock's longest wait and the longest queue (at least
    `longest_queue`, the most seen before), and the garbage-collection times."""
    from engine.core.queue import all_locks

    locks = all_locks()
    return {
        "locks": len(locks),
        "longest_wait_s": max([0.0] + [lock.longest_wait_s for lock in locks]),
        "longest_queue": max([longest_queue] + [len(lock.queue()) for lock in locks]),
        "gc_full": timer.full,
        "gc_full_s": timer.full_s,
        "gc_longest_s": timer.longest_s,
        "gc_busiest_30s": max(list(timer.windows.values()) or [0.0]),
    }


def _write_stats(path: Path, timer: GcTimer, every_s: float = 0.5) -> None:
    longest_queue = 0
    while True:
        time.sleep(every_s)
        found = stats(timer, longest_queue)
        longest_queue = found["longest_queue"]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(found))
        os.replace(tmp, path)


def install() -> None:
    """In the server process (`streamlit run app.py`): the GC timer, the stack dump on SIGUSR1 and the
    stats thread; in any other process (a training child) nothing."""
    if "app.py" not in sys.argv or not os.environ.get(STATS_ENV):
        return
    timer = GcTimer()
    gc.callbacks.append(timer)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <server>`: a stuck page's stacks
    writer = threading.Thread(target=_write_stats, args=(Path(os.environ[STATS_ENV]), timer), daemon=True)
    writer.name = "soak-stats"
    writer.start()


def site_dir(folder: Path) -> Path:
    """`folder` with the sitecustomize.py that installs the measurement (put it first on the server's
    PYTHONPATH, with the repository root after it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder


class MemorySampler(threading.Thread):
    """Reads the server's VmHWM (peak resident set) and VmRSS once a second, and the resident memory of the
    server with its child processes (the grokking trainings run in children: engine.core.processes)."""

    def __init__(self, pid: int):
        super().__init__(name="soak-memory", daemon=True)
        self.pid, self.hwm_kb, self.rss_kb, self.samples = pid, 0, 0, 0
        self.tree_kb, self.children = 0, 0  # peak RSS of the server + its children at one sample; most children
        self._halt = threading.Event()

    def read(self) -> None:
        import psutil

        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.hwm_kb = max(self.hwm_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:"):
                    self.rss_kb = max(self.rss_kb, int(line.split()[1]))
            self.samples += 1
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(self.pid)
            children = server.children(recursive=True)
            total = server.memory_info().rss
            for child in children:
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.tree_kb = max(self.tree_kb, total // 1024)
            self.children = max(self.children, len(children))

    def run(self) -> None:
        while not self._halt.wait(1.0):
            self.read()

    def stop(self) -> None:
        self._halt.set()
        self.read()


def server_pid(port: int) -> int:
    """The `streamlit run` process this script started (a child of this process, on `port`)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "streamlit" in " ".join(cmd) and str(port) in cmd:
                return child.pid
    raise RuntimeError(f"no streamlit process on port {port} among this process's children")


def log_problems(log: str) -> tuple[list[str], list[str]]:
    """(errors, disconnects) in the server log: every error shown to a user with an id ("error <id>: ...")
    and every other traceback, by its last line; and the tracebacks of websockets that a closing or
    navigating browser left (the web server's own noise, not the lab's)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()  # Streamlit colours its tracebacks
    errors, disconnects, ids = [], [], set()
    for n, line in enumerate(lines):
        shown = re.match(r"error ([0-9a-f]{8}): (.*)", line)
        if shown:
            ids.add(shown.group(1))
            errors.append(f"error {shown.group(1)} (shown to a user): {shown.group(2)[:200]}")
        elif line.startswith("Traceback"):
            last = next((x for x in lines[n + 1 :] if x and not x[0].isspace()), "")
            before = " ".join(lines[max(0, n - 3) : n])
            if any(f"error {i}" in before for i in ids) or "exception" in before:
                continue  # the trace of an error listed by its id, or the next link of a chained trace
            target = disconnects if "WebSocket" in last else errors
            if last.strip() and f"traceback: {last.strip()[:200]}" not in target:
                target.append(f"traceback: {last.strip()[:200]}")
    return errors, disconnects
