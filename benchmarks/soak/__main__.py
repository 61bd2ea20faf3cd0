"""`python -m benchmarks.soak [--quick] [--minutes M] [--keep]` (or `python benchmarks/soak ...`): the soak
test of the shared lab server; what it does is in benchmarks/soak/__init__.py."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/soak`: the folder run as a script
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository root, not this folder's modules
    __package__ = "benchmarks.soak"
    import benchmarks.soak  # noqa: F401 - puts tests/ (the browser harness) on sys.path

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

from browser import browser_missing_reason, streamlit_server  # noqa: E402

import benchmarks.soak as soak_package  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from benchmarks.soak import server as server_site  # noqa: E402
from benchmarks.soak.plan import FULL, QUICK, upload_files  # noqa: E402
from benchmarks.soak.reference import alone  # noqa: E402
from benchmarks.soak.report import report  # noqa: E402
from benchmarks.soak.server import MemorySampler, log_problems, server_pid  # noqa: E402
from benchmarks.soak.session import Soak  # noqa: E402
from engine.core.limits import server_limits  # noqa: E402

ROOT = soak_package.ROOT
RESULTS = ROOT / "benchmarks" / "soak_results.md"


def main(argv: list[str] | None = None) -> int:
    """The soak: the browser phase, the same work alone, the report; 2 when it cannot run here."""
    summary = soak_package.__doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=summary)
    parser.add_argument("--quick", action="store_true", help="2 people + 1 hostile session, a lighter hostile scan")
    parser.add_argument("--keep", action="store_true", help="keep the temporary caches (printed)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="end the whole soak after this many minutes (a slow machine)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.minutes:  # the browser phase keeps its share of the whole
        share = plan.browser_s / plan.total_s
        plan = dataclasses.replace(plan, total_s=60 * args.minutes, browser_s=60 * args.minutes * share)
    reason = browser_missing_reason()
    if reason:
        print(f"soak: cannot run: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + plan.total_s
    load_before = os.getloadavg()[0]
    from transformers import AutoTokenizer

    from engine.core.embedded import prepare_embedded

    models = prepare_embedded()
    tokenizer = AutoTokenizer.from_pretrained(str(models))
    tmp = Path(tempfile.mkdtemp(prefix="lab_soak_"))
    soak_cache, ref_cache, site = tmp / "served", tmp / "alone", tmp / "site"
    for folder in (soak_cache, ref_cache, site):
        folder.mkdir()
        if folder is not site:
            (folder / "models").symlink_to(models.parent)
    server_site.site_dir(site)
    stats_path = tmp / "server_stats.json"
    files = upload_files(tmp / "uploads", server_limits())
    env = {
        "LAB_CACHE_DIR": str(soak_cache),
        server_site.STATS_ENV: str(stats_path),
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    seconds: dict[str, float] = {}
    server: dict[str, Any] = {}
    with streamlit_server(env) as url:
        port = urlparse(url).port
        sampler = MemorySampler(server_pid(port))
        sampler.start()
        soak = Soak(url, plan, tokenizer, files, soak_cache)
        print(f"soak: {url}, {plan.people} people + 1 hostile session, cache {soak_cache}", flush=True)
        phase = time.monotonic()
        asyncio.run(soak.run())
        seconds["browser"] = time.monotonic() - phase
        sampler.stop()
        server.update(
            hwm_kb=sampler.hwm_kb,
            rss_kb=sampler.rss_kb,
            samples=sampler.samples,
            tree_kb=sampler.tree_kb,
            children=sampler.children,
        )
        with contextlib.suppress(OSError, ValueError):
            server.update(json.loads(stats_path.read_text()))
    log_path = ROOT / "tests" / "artifacts" / f"streamlit-{port}.log"
    if log_path.exists():
        server["log_problems"], server["disconnects"] = log_problems(log_path.read_text(errors="replace"))
    print(f"soak: browser phase done in {seconds['browser']:.0f} s; the same work alone...", flush=True)
    phase = time.monotonic()
    try:
        refs = alone(plan, soak.people, ref_cache, soak_cache, deadline - 10)
    except Exception as err:  # noqa: BLE001 - the report still says what the browsers saw
        refs = {}
        soak.hostile.problem(f"the work alone failed: {type(err).__name__}: {err}")
    seconds["alone"] = time.monotonic() - phase
    seconds["total"] = time.monotonic() - started
    command = "python -m benchmarks.soak" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    when = datetime.datetime.now().isoformat(timespec="minutes")
    load = (load_before, os.getloadavg()[0])
    text = report(plan, soak.people, soak.hostile, refs, server, seconds, load, command, when, machine())
    text += f"\nServer log: `{log_path.relative_to(ROOT)}`.\n"
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    if args.keep:
        print(f"soak: caches kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
