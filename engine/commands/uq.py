"""`python -m engine uq --questions FILE --out DIR`: A1 / A2 / A3 of semantic vs usual uncertainty.

Same engine calls as the page (engine.uq.runs): same inputs and seed give the same numbers. The run
is saved question by question in cache/uq/<run_id>/, so an interrupted command resumes when rerun.
"""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from engine.uq import correctness

    parser = subparsers.add_parser(
        "uq", help="semantic vs surface uncertainty: A1/A2/A3 on a question set (results.csv, summary.json/.md)"
    )
    parser.add_argument(
        "--questions",
        required=True,
        help="CSV or JSONL with a question column (answer: references separated by |), or 'default'",
    )
    parser.add_argument("--out", required=True, help="output folder for results.csv, summary.json, summary.md")
    parser.add_argument("--model", default=None, help="model name, HF id or folder (default: gemma-3-270m)")
    parser.add_argument("--samples", "-k", type=int, default=10, help="K sampled answers per question (default 10)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of the K samples (default 1.0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit (default 24)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--seed", type=int, default=0, help="sampling, bootstrap and cross-fitting seed")
    parser.add_argument("--prompt-file", default=None, help="prompt template file with {question} (default: few-shot)")
    parser.add_argument("--question-column", default=None, help="column holding the questions (default: guessed)")
    parser.add_argument("--answer-column", default=None, help="column holding the references (default: guessed)")
    parser.add_argument("--id-column", default=None, help="column holding ids (default: guessed, else row number)")
    parser.add_argument(
        "--judge",
        default="auto",
        choices=correctness.JUDGES,
        help="correctness judge (auto = normalised containment or F1 >= --f1-threshold)",
    )
    parser.add_argument("--judge-model", default=None, help="model for --judge llm (default: the generating model)")
    parser.add_argument("--f1-threshold", type=float, default=correctness.F1_THRESHOLD)
    parser.add_argument("--embedding-threshold", type=float, default=correctness.EMBEDDING_THRESHOLD)
    parser.add_argument("--usual", default="mean_token_nll", help="score behind A2 (default mean_token_nll)")
    parser.add_argument("--semantic", default="semantic_entropy", help="score behind A3 (default semantic_entropy)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args) -> int:
    import time
    from pathlib import Path

    from engine.core.embedded import EMBEDDED_LM
    from engine.core.embedder import load_embedder
    from engine.core.errors import LabError
    from engine.core.loading import load_model
    from engine.uq import questions as qmod
    from engine.uq import runs
    from engine.uq.generation import GenerationConfig, default_template

    if args.limit is not None and args.limit < 1:
        raise LabError("--limit must be at least 1.")
    columns = {"question_col": args.question_column, "answer_col": args.answer_column, "id_col": args.id_column}
    qset = (
        qmod.default_questions() if args.questions == "default" else qmod.load_question_file(args.questions, **columns)
    )
    for message in qset.messages:
        print(f"note: {message}", file=sys.stderr)
    lm = load_model(args.model or EMBEDDED_LM)
    template = default_template(lm)
    if args.prompt_file:
        try:
            template = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise LabError(f"Cannot read the prompt file: {err}") from err
    generation = GenerationConfig(
        prompt_template=template,
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    store = runs.open_run_for(lm, qset.frame, generation, source=Path(args.questions).name)
    total = len(qset) if args.limit is None else min(args.limit, len(qset))
    already = len([i for i in store.done_indices() if i < total])
    start = time.perf_counter()

    def progress(done, total_, seconds):
        if not args.quiet:
            rate = 60 * (done - already) / max(time.perf_counter() - start, 1e-9)
            print(f"\r{done}/{total_} questions ({rate:.1f}/min)", end="", file=sys.stderr, flush=True)

    written = runs.generate_run(lm, store, limit=total, progress=progress)
    if not args.quiet:
        print(f"\nrun {store.run_id}: {written} generated now, {total - written} resumed from cache", file=sys.stderr)
    options = runs.EvalOptions(
        judge=args.judge,
        f1_threshold=args.f1_threshold,
        embedding_threshold=args.embedding_threshold,
        usual=args.usual,
        semantic=args.semantic,
        n_boot=args.bootstrap,
        seed=args.seed,
        judge_model=args.judge_model or "",
    )
    if args.judge == "llm":
        judge_lm = lm if not args.judge_model else load_model(args.judge_model)
        options.judge_model = judge_lm.name
        runs.run_llm_judge(judge_lm, store, limit=total)
    evaluation = runs.evaluate_run(store, load_embedder(), options, limit=total)
    paths = runs.write_outputs(evaluation, args.out)
    s = evaluation.summary
    print(
        f"n={s['n']}  A1={s['A1']:.3f}  A2={s['A2']:.3f} ({s['usual_method']})  A3={s['A3']:.3f} ({s['semantic_method']})"
    )
    for path in paths:
        print(path)
    return 0
