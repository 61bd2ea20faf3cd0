"""`python -m engine attention-study`: can the model explain its own attention heads better than external
methods? Every head (or a sample) of a model: explanations, rules, probe and controls scored on held-out
prompts, statistics over heads, report in reports/attention (engine.attention.study). Resumable: rerun
the same command to continue. Flags, defaults and help come from `StudyConfig`.
"""

from __future__ import annotations

import sys
import time

from engine.attention.study_config import StudyConfig
from engine.core.executor import ExecutorConfig
from engine.core.options import add_options, from_args

STOPPED = 130  # exit code of a study stopped with Ctrl-C (the finished heads stay cached), as after an interrupt


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention-study",
        help="the attention study: self-explanations vs detector / probe / controls over all heads; reports/attention",
    )
    add_options(parser, StudyConfig)
    add_options(parser, ExecutorConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    """The study through engine.attention.jobs.run_here (validation, resume, Ctrl-C as a stop, as on the page), the
    missing heads in this process or on Ray workers (--executor ray)."""
    from engine.attention import jobs
    from engine.attention.study_report import write_report
    from engine.core.loading import load_model

    config = from_args(StudyConfig, args)
    config.validate()  # before the model loads
    executor = from_args(ExecutorConfig, args)
    executor.validate()
    last = [0.0]
    start = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        now = time.perf_counter()
        if not args.quiet and (now - last[0] > 5 or done >= total):
            last[0] = now
            elapsed = now - start
            print(f"[{done}/{total}] {elapsed / 60:.1f} min: {message}", file=sys.stderr, flush=True)

    lm = load_model(config.model)
    result = jobs.run_here(lm, config, progress, executor)
    if result is None:
        print(jobs.STOPPED_TEXT, file=sys.stderr)
        return STOPPED
    paths = write_report(result, config.out, config.reduced)
    print(result.verdict)
    for path in paths:
        print(path)
    return 0
