"""`python -m engine uq --questions FILE --out DIR`: A1 / A2 / A3 of semantic vs usual uncertainty.

Same engine calls as the page (engine.uq.generation, .evaluation, .export): same inputs and seed give
the same numbers. The run is saved question by question in cache/uq/<run_id>/, so an interrupted
command resumes when rerun. Flags, defaults and help come from `GenerationConfig` and `EvalOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from engine.core.embedded import EMBEDDED_LM
from engine.core.embedder import load_embedder
from engine.core.errors import LabError
from engine.core.loading import load_model
from engine.core.options import add_options, from_args
from engine.uq import questions as qmod
from engine.uq.config import EvalOptions, GenerationConfig
from engine.uq.evaluation import evaluate_run, run_llm_judge
from engine.uq.export import write_outputs
from engine.uq.generation import default_template, generate_run, open_run_for


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "uq", help="semantic vs surface uncertainty: A1/A2/A3 on a question set (results.csv, summary.json/.md)"
    )
    parser.add_argument(
        "--questions",
        required=True,
        help="CSV or JSONL with a question column (answer: references separated by |), or 'default'",
    )
    parser.add_argument("--out", required=True, help="output folder for results.csv, summary.json, summary.md")
    parser.add_argument("--model", default=EMBEDDED_LM, help="model name, HF id or folder (default: %(default)s)")
    add_options(parser, GenerationConfig)
    parser.add_argument("-k", dest="samples", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # --samples
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--prompt-file", default=None, help="prompt template file with {question} (default: few-shot)")
    parser.add_argument("--question-column", default=None, help="column holding the questions (default: guessed)")
    parser.add_argument("--answer-column", default=None, help="column holding the references (default: guessed)")
    parser.add_argument("--id-column", default=None, help="column holding ids (default: guessed, else row number)")
    add_options(parser, EvalOptions, skip=("seed",))  # one --seed: the generation's, as on the page
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise LabError("--limit must be at least 1.")
    columns = {"question_col": args.question_column, "answer_col": args.answer_column, "id_col": args.id_column}
    qset = (
        qmod.default_questions() if args.questions == "default" else qmod.load_question_file(args.questions, **columns)
    )
    for message in qset.messages:
        print(f"note: {message}", file=sys.stderr)
    lm = load_model(args.model)
    template = default_template(lm)
    if args.prompt_file:
        try:
            template = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise LabError(f"Cannot read the prompt file: {err}") from err
    generation = from_args(GenerationConfig, args, prompt_template=template)
    run = open_run_for(lm, qset.frame, generation, source=Path(args.questions).name)
    total = run.total(args.limit)
    already = run.done(total)
    start = time.perf_counter()

    def progress(done: int, total_: int, seconds: float) -> None:
        if not args.quiet:
            rate = 60 * (done - already) / max(time.perf_counter() - start, 1e-9)
            print(f"\r{done}/{total_} questions ({rate:.1f}/min)", end="", file=sys.stderr, flush=True)

    written = generate_run(lm, run, limit=total, progress=progress)
    if not args.quiet:
        print(f"\nrun {run.run_id}: {written} generated now, {total - written} resumed from cache", file=sys.stderr)
    options = from_args(EvalOptions, args)
    if options.judge == "llm":
        judge_lm = lm if not options.judge_model else load_model(options.judge_model)
        options = dataclasses.replace(options, judge_model=judge_lm.name)
        run_llm_judge(judge_lm, run, limit=total)
    evaluation = evaluate_run(run, load_embedder(), options, limit=total)
    paths = write_outputs(evaluation, args.out)
    s = evaluation.summary
    print(f"n={s.n}  A1={s.A1:.3f}  A2={s.A2:.3f} ({s.usual_method})  A3={s.A3:.3f} ({s.semantic_method})")
    for path in paths:
        print(path)
    return 0
