"""`python -m engine superweights --model M --out DIR`: scan, detected candidates, ablation table."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "superweights",
        help="find, inspect and ablate the super weights of an LLM (Yu et al. 2024)",
        description="Hooked scan of every MLP down projection, the paper's iterative super-weight detection, "
        "and the ablation table (perplexity, stopword shift, greedy continuations). Writes json/csv to --out.",
    )
    parser.add_argument("--model", default="gemma-3-270m", help="model name, HF id or folder (default: embedded)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--prompt", action="append", help="scan prompt (repeatable; default: the paper's prompt)")
    parser.add_argument("--threshold", choices=["relative", "absolute"], default="relative")
    parser.add_argument("--factor", type=float, default=5.0, help="relative threshold: x median over layers")
    parser.add_argument("--absolute", type=float, default=50.0, help="absolute threshold (paper: 50)")
    parser.add_argument("--max-iterations", type=int, default=5)
    parser.add_argument("--k", type=int, default=None, help="other weights to zero (default: 1e-6 of the weights)")
    parser.add_argument(
        "--scale", type=float, action="append", help="super-weight scale in [0, 3] (repeatable; default 2)"
    )
    parser.add_argument("--eval-tokens", type=int, default=4096, help="tokens of the bundled text for perplexity")
    parser.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    parser.add_argument("--no-ablation", action="store_true", help="scan and detect only")
    parser.add_argument("--quantize", action="store_true", help="also run the super-weight-aware 4-bit RTN sweep")
    parser.add_argument("--block-sizes", default="64,256,1024,4096", help="comma-separated RTN block sizes")
    parser.add_argument("--quantization", choices=["none", "8bit", "4bit"], default="none", help="load precision")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from engine.core import weight_edits
    from engine.core.errors import LabError
    from engine.core.loading import load_model
    from engine.superweights import ablation
    from engine.superweights import detect as superweights
    from engine.superweights import quantize as sw_quantize

    try:  # bad block sizes fail before the model loads
        blocks = [int(b) for b in args.block_sizes.split(",") if b.strip()] if args.quantize else []
    except ValueError as err:
        raise LabError(f"--block-sizes must be comma-separated integers (got {args.block_sizes!r}).") from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model, quantization=args.quantization)
    prompts = superweights.clean_prompts(args.prompt or [superweights.DEFAULT_PROMPT])
    detection = superweights.detect(
        lm, prompts, mode=args.threshold, factor=args.factor, absolute=args.absolute, max_iterations=args.max_iterations
    )
    first = detection.scans[0]
    first.frame().to_csv(out / "scan.csv", index=False)
    (out / "scan.json").write_text(json.dumps({"model": lm.name, **first.to_json()}, indent=1))
    (out / "detection.json").write_text(json.dumps({"model": lm.name, **detection.to_json()}, indent=1))
    detection.frame().to_csv(out / "candidates.csv", index=False)
    print(f"{lm.describe()}\n{detection.rule}: {len(detection.candidates)} candidate(s); stop: {detection.stop_reason}")
    for c in detection.candidates:
        print(
            f"  layer {c.layer} W[{c.row}, {c.col}] = {c.weight:.4g} (rank {c.rank}), super activation "
            f"{c.super_activation:.4g} at token {c.token} {c.token_text!r}, persists in layers {c.persists_in_layers}"
        )
    if detection.rejected:
        detection.frame(rejected=True).to_csv(out / "rejected.csv", index=False)
    for c in detection.rejected:
        print(f"  rejected: layer {c.layer} W[{c.row}, {c.col}] = {c.weight:.4g}, share of its spike {c.share:.2f}")
    published = superweights.published_for(lm.name)
    if published:
        compare = superweights.compare_with_published(detection.candidates, published)
        compare.to_csv(out / "published_vs_detected.csv", index=False)
        print("published vs detected:\n" + compare.to_string(index=False))
    if args.no_ablation:
        return 0
    problem = weight_edits.weights_edit_problem(lm)
    if problem:
        print(f"ablation skipped: {problem}", file=sys.stderr)
        return 0
    result = ablation.ablation_table(
        lm, detection.candidates, k=args.k, scales=args.scale or [2.0], window=args.window, max_tokens=args.eval_tokens
    )
    result.table.to_csv(out / "ablation.csv", index=False)
    result.stopwords.to_csv(out / "stopword_shift.csv", index=False)
    result.continuations.to_csv(out / "continuations.csv", index=False)
    (out / "ablation.json").write_text(
        json.dumps(
            {
                "model": lm.name,
                "eval_tokens": result.eval_tokens,
                "k": result.k,
                "seconds": result.seconds,
                "candidates": [list(c.coord) for c in detection.candidates],
                "table": result.table.to_dict(orient="records"),
            },
            indent=1,
        )
    )
    print(
        f"ablation over {result.eval_tokens} tokens ({result.seconds:.0f} s):\n" + result.table.to_string(index=False)
    )
    if args.quantize:
        table = sw_quantize.quantization_table(
            lm, detection.candidates, blocks, window=args.window, max_tokens=args.eval_tokens
        )
        table.to_csv(out / "quantization.csv", index=False)
        print("4-bit RTN (decoder linear layers):\n" + table.to_string(index=False))
    print(f"wrote {out}")
    return 0
