"""`python -m engine attention --prompt TEXT --out DIR` and `python -m engine heads --prompts FILE --out DIR`.

attention: all maps of one prompt (maps.npz), every head's text description (descriptions.txt /
descriptions.json) and per-head detector scores with best labels (head_scores.csv).
heads: the head-function table across prompts (head_functions.csv long, head_labels.csv wide).
Both: `--explain LAYER.HEAD ...` asks the model to explain those heads and scores the explanations
on held-out prompts (explanations.csv, explanations.json). Same engine functions as the page.

Defaults and help texts come from the option dataclasses of engine.attention.config (no torch
import: `--help` is instant).
"""

from __future__ import annotations

import sys

from engine.attention.config import HIGHLIGHTED, MapOptions, PromptSetOptions, ScoringOptions
from engine.core.embedded import EMBEDDED_LM
from engine.core.options import add_options, from_args


def _common(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--model", default=None, help=f"model name, HF id or folder (default: embedded {EMBEDDED_LM})")
    add_options(parser, MapOptions)
    parser.add_argument(
        "--explain", nargs="*", default=[], metavar="LAYER.HEAD", help="heads to explain and score, e.g. 5.1 2.3"
    )
    add_options(parser, ScoringOptions)


def register(subparsers) -> None:
    att = subparsers.add_parser("attention", help="all attention maps, text descriptions and head scores of one prompt")
    att.add_argument("--prompt", required=True, help="the prompt text")
    _common(att)
    att.set_defaults(func=run)
    heads = subparsers.add_parser("heads", help="head functions (previous-token, induction, ...) across prompts")
    heads.add_argument("--prompts", default=None, help="file: one prompt per line, or a .json list of strings")
    add_options(heads, PromptSetOptions)
    heads.add_argument(
        "--prompt", default=None, help="prompt whose description the model explains (default: the first prompt)"
    )
    _common(heads)
    heads.set_defaults(func=run)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _explain(lm, result, table, heads: list[tuple[int, int]], out, scoring: ScoringOptions) -> None:
    import json

    from engine.attention import head_functions, self_explain

    labels = head_functions.detector_labels(table)
    _log(f"Explaining and scoring {len(heads)} head(s) on held-out prompts...")
    evaluations = self_explain.explain_and_score(
        lm,
        result,
        heads,
        {head: labels[head] for head in heads},
        max_queries=scoring.max_queries,
        control=scoring.control,
        progress=lambda k, n, what: _log(f"  [{k}/{n}] {what}"),
    )
    self_explain.evaluations_table(evaluations).to_csv(out / "explanations.csv", index=False)
    (out / "explanations.json").write_text(json.dumps([e.to_json() for e in evaluations], indent=2, ensure_ascii=False))
    for e in evaluations:
        print(
            f"{e.layer}.{e.head}: {e.verdict} | self top-1 {e.scores['self-explanation'].top1:.2f}, "
            f"detector ({e.detector_label}) {e.scores['detector label'].top1:.2f}, "
            f"BOS {e.scores['baseline: BOS'].top1:.2f} | {e.explanation}"
        )


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from engine.attention import head_functions
    from engine.attention.maps import all_descriptions, parse_head, run_attention
    from engine.core.errors import LabError
    from engine.core.loading import load_model

    if args.command == "attention" and not args.prompt.strip():
        raise LabError("Empty prompt: give --prompt some text.")
    max_tokens = from_args(MapOptions, args).max_tokens
    scoring = from_args(ScoringOptions, args)
    for spec in args.explain:  # bad specs fail before the model loads
        parse_head(spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model or EMBEDDED_LM)
    if args.command == "attention":
        result = run_attention(lm, args.prompt, max_tokens=max_tokens)
        if result.note:
            _log(result.note)
        np.savez_compressed(
            out / "maps.npz",
            maps=result.maps,
            token_ids=np.asarray(result.token_ids),
            labels=np.asarray(result.labels),
            layer_types=np.asarray(result.layer_types),
        )
        descriptions = all_descriptions(result)
        (out / "descriptions.txt").write_text(
            "\n\n".join(f"# head {key}\n{text}" for key, text in descriptions.items()) + "\n", encoding="utf-8"
        )
        (out / "descriptions.json").write_text(
            json.dumps(
                {"model": lm.name, "tokens": result.labels, "note": result.note, "heads": descriptions},
                indent=2,
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        table = head_functions.table_from_results(lm.name, ["prompt"], [result])  # the forward pass above, scored
        table.wide().to_csv(out / "head_scores.csv", index=False)
        print(f"{len(result.token_ids)} tokens, {result.n_layers} layers x {result.n_heads} heads -> {out}")
    else:
        prompt_set = from_args(PromptSetOptions, args)
        prompts = head_functions.builtin_prompts(
            lm.tokenizer, n_random=max(0, prompt_set.random), texts=prompt_set.builtin
        )
        if args.prompts:
            prompts += head_functions.read_prompts_file(args.prompts)
        if not prompts:
            raise LabError("No prompts: give --prompts FILE, --random N, or drop --no-builtin.")
        table = head_functions.run_prompt_set(
            lm, prompts, max_tokens=max_tokens, progress=lambda k, n, what: _log(f"[{k}/{n}] {what}")
        )
        table.table().to_csv(out / "head_functions.csv", index=False)
        wide = table.wide()
        wide.to_csv(out / "head_labels.csv", index=False)
        for fn in HIGHLIGHTED:
            print(f"top {fn} heads: {table.top_heads(fn)}")
        print(f"{len(prompts)} prompts, {len(wide)} heads -> {out}")
        if args.explain:
            first = args.prompt or next((p.text for p in prompts if p.text), None)
            result = run_attention(lm, first, max_tokens=max_tokens)
    if args.explain:
        heads = [parse_head(spec, result.n_layers, result.n_heads) for spec in args.explain]
        _explain(lm, result, table, heads, out, scoring)
    return 0
