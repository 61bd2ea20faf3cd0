"""`python -m engine uq --questions FILE --out DIR`: A1 / A2 / A3 of semantic vs usual uncertainty,
`python -m engine uq-study`: the study (1000 WebQuestions + the bundled set, then `--confirm`, report in
reports/uq), and `python -m engine uq-marks sample|agreement|contrasts`: the judges against hand marks and the
study's contrasts graded by them.

Same engine calls as the page (engine.uq.jobs, .generation, .evaluation, .export): same inputs and seed
give the same numbers. The run is saved question by question in cache/uq/<run_id>/, so a stopped (Ctrl-C)
or interrupted command resumes when rerun; on Ray the workers generate (engine.uq.distributed).
Flags, defaults and help come from `GenerationConfig`, `BatchOptions`, `EvalOptions` and `StudyConfig`.
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
from engine.core.executor import ExecutorConfig
from engine.core.loading import load_model
from engine.core.options import add_options, from_args
from engine.uq import jobs, questions
from engine.uq.config import CLI_FOLD_SEEDS, BatchOptions, EvalOptions, GenerationConfig, MarkSample
from engine.uq.distributed import RayGeneration, ShardOptions
from engine.uq.evaluation import entailment_judge, evaluate_run, run_llm_judge
from engine.uq.export import write_outputs
from engine.uq.generation import default_template, open_run_for
from engine.uq.store import open_run
from engine.uq.study import StudyConfig, run_study

STOPPED = 130  # exit code of a generation stopped with Ctrl-C (resumable), as a shell reports an interrupt


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "uq", help="semantic vs surface uncertainty: A1/A2/A3 on a question set (results.csv, summary.json/.md)"
    )
    parser.add_argument(
        "--questions",
        required=True,
        help="CSV or JSONL with a question column (answer: references separated by |), or 'default'",
    )
    parser.add_argument("--out", default=None, help="output folder for results.csv, summary.json, summary.md")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only read --questions: print the question count and every warning with its line; load no model",
    )
    parser.add_argument("--model", default=EMBEDDED_LM, help="model name, HF id or folder (default: %(default)s)")
    add_options(parser, GenerationConfig)
    parser.add_argument("-k", dest="samples", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # --samples
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--prompt-file", default=None, help="prompt template file with {question} (default: few-shot)")
    parser.add_argument("--question-column", default=None, help="column holding the questions (default: guessed)")
    parser.add_argument("--answer-column", default=None, help="column holding the references (default: guessed)")
    parser.add_argument("--id-column", default=None, help="column holding ids (default: guessed, else row number)")
    add_options(parser, BatchOptions)
    add_options(parser, ExecutorConfig)
    add_options(parser, ShardOptions)
    # one --seed: the generation's, as on the page; 10 fold seeds on the command line (the page takes 1)
    add_options(parser, EvalOptions, skip=("seed",), defaults={"n_seeds": CLI_FOLD_SEEDS})
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)

    study = subparsers.add_parser(
        "uq-study",
        help="the uncertainty study: 1000 WebQuestions + the bundled set, K=10, resumable; report in reports/uq",
    )
    add_options(study, StudyConfig)
    add_options(study, GenerationConfig)
    add_options(study, BatchOptions)
    add_options(study, ExecutorConfig)
    add_options(study, ShardOptions)
    add_options(study, EvalOptions, skip=("seed",), defaults={"n_seeds": CLI_FOLD_SEEDS})
    study.add_argument("--quiet", action="store_true", help="no progress lines")
    study.set_defaults(func=study_command)
    register_marks(subparsers)


def register_marks(subparsers) -> None:
    marks = subparsers.add_parser(
        "uq-marks",
        help="hand marks for the judges: draw the answers to mark (sample), measure each judge against marks "
        "(agreement), or grade the study's contrasts by the marks (contrasts)",
    )
    marks.add_argument(
        "action",
        choices=("sample", "agreement", "contrasts"),
        help="sample: write the answers to mark; "
        "agreement: each judge's accuracy and stratum-weighted Cohen's kappa against a marks file; "
        "contrasts: the primary and same-rank-control contrasts with the hand mark as the label, on the random "
        "sample and on all marked answers",
    )
    marks.add_argument("--run", required=True, help="run id (cache/uq/<run_id>), e.g. the study's WebQuestions run")
    marks.add_argument("--limit", type=int, default=None, help="only the run's first N questions")
    marks.add_argument("--out", default=None, help="sample: the CSV to write (question_id, stratum, answer)")
    marks.add_argument("--marks", default=None, help="agreement, contrasts: the marks CSV (question_id, answer, mark)")
    marks.add_argument(
        "--results",
        default=None,
        help="contrasts: the run's results.csv with every score (e.g. reports/uq/webquestions/results.csv of the "
        "study); without it the run is evaluated again (minutes: the correctness probes are refitted)",
    )
    add_options(marks, MarkSample)
    add_options(marks, EvalOptions, skip=("seed",), defaults={"n_seeds": CLI_FOLD_SEEDS})
    marks.set_defaults(func=marks_command)


def marks_command(args) -> int:
    """`uq-marks sample|agreement|contrasts` (engine.uq.handmarks, engine.uq.marked_contrasts)."""
    from engine.core.paths import atomic_write
    from engine.uq import handmarks
    from engine.uq.store import get_run

    options = from_args(EvalOptions, args)
    settings = from_args(MarkSample, args)
    run = get_run(args.run)
    records = run.load_records(args.limit)
    answers, verdicts = handmarks.judge_verdicts(records, options, load_embedder())
    if args.action == "sample":
        if not args.out:
            raise LabError("uq-marks sample needs --out (the CSV of answers to mark).")
        sample = handmarks.sample_for(answers, verdicts, settings)
        atomic_write(Path(args.out), sample.to_csv(index=False).encode("utf-8"))
        counts = sample["stratum"].value_counts().to_dict()
        print(f"{len(sample)} answers to mark ({counts}) written to {args.out}")
        return 0
    if not args.marks:
        raise LabError(f"uq-marks {args.action} needs --marks (the CSV of hand marks: question_id, answer, mark).")
    marks = handmarks.read_marks(args.marks)
    if args.action == "agreement":
        table, note = handmarks.judge_agreement(marks, answers, verdicts)
        print(table.to_string(index=False))
        if note:
            print(note)
        return 0
    return _marked_contrasts(args, run, options, settings, marks, answers, verdicts)


def _marked_contrasts(args, run, options, settings, marks, answers, verdicts) -> int:
    """`uq-marks contrasts`: both parts as markdown (engine.uq.marked_contrasts)."""
    from engine.uq import handmarks, marked_contrasts

    used, note = handmarks.matched_marks(marks, answers)
    sample = handmarks.sample_for(answers, verdicts, settings)
    if args.results:
        results = marked_contrasts.read_results(args.results)
        ids = results.index.intersection(answers.index)
        differ = ids[results.loc[ids, "answer"].str.strip().to_numpy() != answers[ids].str.strip().to_numpy()]
        if len(differ) or not used.index.isin(results.index).all():
            raise LabError(
                f"The results file {args.results} is not this run's: its answers differ from run {run.run_id} "
                "or it lacks marked questions."
            )
    else:
        results = evaluate_run(run, load_embedder(), options, limit=args.limit).results.set_index("id")
    parts = marked_contrasts.marked_contrasts(
        results, used, sample, judge=results["correct"], usual=options.usual, semantic=options.semantic
    )
    if note:
        print(note + "\n")
    for part in parts:
        print(marked_contrasts.part_markdown(part, options.judge) + "\n")
    return 0


def study_command(args) -> int:
    """`uq-study`: generate what is missing, evaluate, write the report; prints the verdict per set."""
    config = from_args(StudyConfig, args)
    last = [0.0]

    def log(message: str) -> None:
        if args.quiet:
            return
        now = time.perf_counter()
        if "questions (" not in message or now - last[0] > 10:  # progress lines at most every 10 s
            last[0] = now
            print(message, file=sys.stderr, flush=True)

    paths = run_study(
        config,
        from_args(GenerationConfig, args),
        from_args(EvalOptions, args),
        from_args(BatchOptions, args),
        log,
        from_args(ExecutorConfig, args),
        from_args(ShardOptions, args),
    )
    for path in paths:
        print(path)
    return 0


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise LabError("--limit must be at least 1.")
    columns = {"question_col": args.question_column, "answer_col": args.answer_column, "id_col": args.id_column}
    qset = (
        questions.default_questions()
        if args.questions == "default"
        else questions.load_question_file(args.questions, **columns)
    )
    if args.check:
        print("\n".join(questions.check_lines(qset)))
        return 0
    if not args.out:
        raise LabError("--out is required (the folder for results.csv, summary.json, summary.md), unless --check.")
    for message in qset.messages:
        print(f"note: {message}", file=sys.stderr)
    options = from_args(EvalOptions, args)
    executor = from_args(ExecutorConfig, args)
    executor.validate()
    # On Ray the workers hold the model; this process loads it only for an LM judge or LM entailment.
    needs_lm = executor.executor == "local" or options.judge == "llm" or options.lm_entailment
    lm = load_model(args.model) if needs_lm else None
    entailment_judge(options, lm)  # a missing NLI model says so now, not after the generation
    prompt = None
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise LabError(f"Cannot read the prompt file: {err}") from err
    n_questions = len(qset.frame) if args.limit is None else min(args.limit, len(qset.frame))
    on_ray = (
        RayGeneration(executor, args.model, n_questions, args.batch_questions) if executor.executor == "ray" else None
    )
    try:
        facts = on_ray.facts if on_ray is not None else {"name": lm.name, "template": default_template(lm)}
        generation = from_args(GenerationConfig, args, prompt_template=facts["template"] if prompt is None else prompt)
        source = Path(args.questions).name
        if on_ray is not None:
            if not args.quiet:
                print(f"{on_ray.plan.describe()}; model on {facts['device']}", file=sys.stderr)
            run = open_run(facts["name"], qset.frame, generation, source=source, n_layers=facts["n_layers"])
        else:
            run = open_run_for(lm, qset.frame, generation, source=source)
        total = run.total(args.limit)
        already = run.done(total)
        start = time.perf_counter()

        def report(done: int, message: str) -> None:
            if not args.quiet:
                rate = 60 * (done - already) / max(time.perf_counter() - start, 1e-9)
                print(f"\r{message} ({rate:.1f}/min)", end="", file=sys.stderr, flush=True)

        if on_ray is not None:
            written, where = jobs.generate_on_ray_here(
                on_ray,
                run,
                limit=total,
                progress=lambda done, _total, message: report(done, message),
                batch_questions=args.batch_questions,
                shard_questions=args.shard_questions,
            )
        else:
            written, where = jobs.generate_here(
                lm,
                run,
                limit=total,
                progress=lambda done, total_, _seconds: report(done, f"{done}/{total_} questions"),
                batch_questions=args.batch_questions,
            )
        if where.state == "stopped":
            print(f"\n{where.text(jobs.COMMAND_RESUMES)}", file=sys.stderr)
            return STOPPED
    finally:
        if on_ray is not None:
            on_ray.close()
    if not args.quiet:
        print(f"\nrun {run.run_id}: {written} generated now, {total - written} resumed from cache", file=sys.stderr)
    if options.judge == "llm":
        judge_lm = lm if not options.judge_model else load_model(options.judge_model)
        options = dataclasses.replace(options, judge_model=judge_lm.name)
        run_llm_judge(judge_lm, run, limit=total)
    evaluation = evaluate_run(run, load_embedder(), options, limit=total, lm=lm)
    paths = write_outputs(evaluation, args.out)
    s = evaluation.summary
    print(f"n={s.n}  A1={s.A1:.3f}  A2={s.A2:.3f} ({s.usual_method})  A3={s.A3:.3f} ({s.semantic_method})")
    print(s.verdict.sentence)
    for path in paths:
        print(path)
    return 0
