"""`python -m engine superweights --model M --out DIR`: scan, detected candidates, causal test, ablation table;
`python -m engine superweights-controls`: the positive-control report (reports/superweights/).

The detection, ablation and quantization flags come from the config dataclasses of
`engine.superweights.config` (defaults and help in one place); that module is torch-free, so `--help`
is instant.
"""

from __future__ import annotations

import argparse
import sys

from engine.core.embedded import EMBEDDED_LM
from engine.core.model import QUANTIZATIONS
from engine.core.options import add_options, default_of, from_args, help_of
from engine.superweights.config import (
    DEFAULT_PROMPT,
    AblationConfig,
    ConfirmationConfig,
    DetectionConfig,
    QuantizationConfig,
    number,
)

CONTROL_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")  # a known super weight first, then the default


def block_sizes(text: str) -> tuple[int, ...]:
    """`--block-sizes 64,256`: comma-separated integers, checked while parsing (before the model loads)."""
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers (got {text!r})") from err
    if not sizes:
        raise argparse.ArgumentTypeError("pick at least one block size")
    return sizes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "superweights",
        help="find, inspect and ablate the super weights of an LLM (Yu et al. 2024)",
        description="Hooked scan of every MLP down projection, the paper's iterative super-weight detection, "
        "and the ablation table (perplexity, stopword shift, greedy continuations). Writes json/csv to --out.",
    )
    parser.add_argument("--model", default=EMBEDDED_LM, help="model name, HF id or folder (default: embedded)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--prompt", action="append", help="scan prompt (repeatable; default: the paper's prompt)")
    add_options(parser, DetectionConfig)
    add_options(parser, ConfirmationConfig)
    add_options(parser, AblationConfig)
    scales = default_of(AblationConfig, "scales")
    parser.add_argument(
        "--scale",
        type=float,
        action="append",
        help=f"{help_of(AblationConfig, 'scales')} (repeatable; default {','.join(map(number, scales))})",
    )
    parser.add_argument("--no-ablation", action="store_true", help="scan, detect and confirm only")
    parser.add_argument("--no-confirm", action="store_true", help="skip the causal test of each proposed weight")
    bits = default_of(QuantizationConfig, "bits")
    parser.add_argument("--quantize", action="store_true", help=f"also run the super-weight-aware {bits}-bit RTN sweep")
    parser.add_argument(
        "--block-sizes",
        dest="block_sizes",
        type=block_sizes,
        default=default_of(QuantizationConfig, "block_sizes"),
        metavar="A,B,...",
        help=f"{help_of(QuantizationConfig, 'block_sizes')}, comma-separated "
        f"(default: {','.join(map(str, default_of(QuantizationConfig, 'block_sizes')))})",
    )
    parser.add_argument("--quantization", choices=list(QUANTIZATIONS), default="none", help="load precision")
    parser.set_defaults(func=run)

    controls = subparsers.add_parser(
        "superweights-controls",
        help="positive controls of the super-weight detector (SmolLM2's known super weight, Gemma)",
        description="Detection, causal test against random weights of the same matrix, and the previous rule's "
        "verdict, per model; writes positive_controls.md/.csv/.png to --out.",
    )
    controls.add_argument("--models", nargs="+", default=list(CONTROL_MODELS), help="models (default: %(default)s)")
    controls.add_argument("--out", default="reports/superweights", help="output folder (default: %(default)s)")
    add_options(controls, ConfirmationConfig, defaults={"n_random": 20})
    controls.set_defaults(func=run_controls)


def run_controls(args) -> int:
    import shlex
    import time
    from pathlib import Path

    from engine.core.loading import load_model
    from engine.superweights import controls

    settings = from_args(ConfirmationConfig, args)
    start = time.perf_counter()
    results = []
    for name in args.models:
        lm = load_model(name, device="cpu")
        results.append(controls.run_control(lm, settings, progress=lambda m: print(m, file=sys.stderr)))
        print(results[-1].table.drop(columns=["reason"]).to_string(index=False))
        del lm
    flags = sys.argv[sys.argv.index("superweights-controls") + 1 :] if "superweights-controls" in sys.argv else []
    command = shlex.join(["python", "-m", "engine", "superweights-controls", *flags])
    path = controls.write_report(results, Path(args.out), settings, command, time.perf_counter() - start)
    print(f"wrote {path}")
    return 0


def run(args) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from engine.core import weight_edits
    from engine.core.loading import load_model
    from engine.superweights import ablation, confirm, quantize
    from engine.superweights import detect as superweights

    detect_config = from_args(DetectionConfig, args)
    confirm_config = from_args(ConfirmationConfig, args)
    ablation_config = from_args(AblationConfig, args, scales=tuple(args.scale or default_of(AblationConfig, "scales")))
    quantization_config = from_args(QuantizationConfig, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model, quantization=args.quantization)
    prompts = superweights.clean_prompts(args.prompt or [DEFAULT_PROMPT])
    detection = superweights.detect(lm, prompts, **dataclasses.asdict(detect_config))
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
    if detection.cancelling:
        detection.frame(cancelling=True).to_csv(out / "cancelling.csv", index=False)
    for c in detection.cancelling:
        print(
            f"  cancelling: layer {c.layer} W[{c.row}, {c.col}] = {c.weight:.4g} pushes the incoming massive "
            f"activation {c.residual_in:.4g} back by {-c.residual_change:.4g}"
        )
    for c in detection.rejected:
        print(f"  minor: layer {c.layer} W[{c.row}, {c.col}] = {c.weight:.4g}, share of its spike {c.share:.2f}")
    problem = weight_edits.weights_edit_problem(lm)
    if not args.no_confirm and detection.proposals and problem is None:
        confirmation = confirm.confirm(lm, detection, **dataclasses.asdict(confirm_config))
        confirmation.frame().to_csv(out / "confirmation.csv", index=False)
        print(f"causal test ({confirmation.eval_tokens} tokens, {confirm_config.n_random} random weights each):")
        for c, (verdict, reason) in zip(confirmation.proposals, confirmation.verdicts):
            print(f"  layer {c.layer} W[{c.row}, {c.col}]: {verdict}: {reason}")
    published = superweights.published_for(lm.name)
    if published:
        compare = superweights.compare_with_published(detection.candidates, published)
        compare.to_csv(out / "published_vs_detected.csv", index=False)
        print("published vs detected:\n" + compare.to_string(index=False))
    if args.no_ablation:
        return 0
    if problem:
        print(f"ablation skipped: {problem}", file=sys.stderr)
        return 0
    result = ablation.ablation_table(lm, detection.candidates, **dataclasses.asdict(ablation_config))
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
        table = quantize.quantization_table(
            lm,
            detection.candidates,
            **dataclasses.asdict(quantization_config),
            window=ablation_config.window,
            max_tokens=ablation_config.max_tokens,
        )
        table.to_csv(out / "quantization.csv", index=False)
        print(f"{quantization_config.bits}-bit RTN (decoder linear layers):\n" + table.to_string(index=False))
    print(f"wrote {out}")
    return 0
