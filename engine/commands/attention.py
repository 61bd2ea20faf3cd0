"""`python -m engine attention --prompt TEXT --out DIR` and `python -m engine heads --prompts FILE --out DIR`.

attention: all maps of one prompt (maps.npz), every head's text description (descriptions.txt /
descriptions.json) and per-head detector scores with best labels (head_scores.csv).
heads: the head-function table across prompts (head_functions.csv long, head_labels.csv wide).
Both: `--explain LAYER.HEAD ...` asks the model to explain those heads and scores the explanations
on held-out prompts (explanations.csv, explanations.json). Same engine functions as the page.
"""

from __future__ import annotations

import sys


def _common(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--model", default=None, help="model name, HF id or folder (default: embedded gemma-3-270m)")
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="token limit per prompt; longer prompts are truncated (default 64)"
    )
    parser.add_argument(
        "--explain", nargs="*", default=[], metavar="LAYER.HEAD", help="heads to explain and score, e.g. 5.1 2.3"
    )
    parser.add_argument(
        "--explain-queries", type=int, default=8, help="query tokens scored per held-out prompt (default 8)"
    )
    parser.add_argument("--no-control", action="store_true", help="skip the no-explanation simulator control")


def register(subparsers) -> None:
    att = subparsers.add_parser("attention", help="all attention maps, text descriptions and head scores of one prompt")
    att.add_argument("--prompt", required=True, help="the prompt text")
    _common(att)
    att.set_defaults(func=run)
    heads = subparsers.add_parser("heads", help="head functions (previous-token, induction, ...) across prompts")
    heads.add_argument("--prompts", default=None, help="file: one prompt per line, or a .json list of strings")
    heads.add_argument(
        "--no-builtin", action="store_true", help="leave out the built-in texts (sentences, code, lists)"
    )
    heads.add_argument(
        "--random", type=int, default=2, metavar="N", help="random-token sequences repeated twice (default 2)"
    )
    heads.add_argument(
        "--prompt", default=None, help="prompt whose description the model explains (default: the first prompt)"
    )
    _common(heads)
    heads.set_defaults(func=run)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _explain(lm, result, table, heads_spec: list[str], out, queries: int, control: bool) -> None:
    import json

    from engine.attention import head_functions as hf
    from engine.attention import self_explain as se
    from engine.attention.maps import parse_head

    heads = [parse_head(s, result.n_layers, result.n_heads) for s in heads_spec]
    labels = hf.best_labels(table)
    detector = {(layer, head): labels[layer][head][0] for layer, head in heads}
    _log(f"Explaining and scoring {len(heads)} head(s) on held-out prompts...")
    evaluations = se.explain_and_score(
        lm,
        result,
        heads,
        detector,
        max_queries=queries,
        control=control,
        progress=lambda k, n, what: _log(f"  [{k}/{n}] {what}"),
    )
    se.evaluations_table(evaluations).to_csv(out / "explanations.csv", index=False)
    (out / "explanations.json").write_text(
        json.dumps(
            [
                {
                    "head": f"{e.layer}.{e.head}",
                    "explanation": e.explanation,
                    "detector_label": e.detector_label,
                    "scores": e.scores,
                    "verdict": e.verdict,
                }
                for e in evaluations
            ],
            indent=2,
            ensure_ascii=False,
        )
    )
    for e in evaluations:
        print(
            f"{e.layer}.{e.head}: {e.verdict} | self top-1 {e.scores['self-explanation']['top1']:.2f}, "
            f"detector ({e.detector_label}) {e.scores['detector label']['top1']:.2f}, "
            f"BOS {e.scores['baseline: BOS']['top1']:.2f} | {e.explanation}"
        )


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from engine.attention import head_functions as hf
    from engine.attention.maps import all_descriptions, parse_head, run_attention
    from engine.core.embedded import EMBEDDED_LM
    from engine.core.errors import LabError
    from engine.core.loading import load_model

    if args.command == "attention" and not args.prompt.strip():
        raise LabError("Empty prompt: give --prompt some text.")
    heads_spec = [parse_head(spec) for spec in args.explain]  # bad specs fail before the model loads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model or EMBEDDED_LM)
    if args.command == "attention":
        result = run_attention(lm, args.prompt, max_tokens=args.max_tokens)
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
        table = hf.table_from_results(lm.name, ["prompt"], [result])  # the forward pass above, scored
        table.wide().to_csv(out / "head_scores.csv", index=False)
        print(f"{len(result.token_ids)} tokens, {result.n_layers} layers x {result.n_heads} heads -> {out}")
    else:
        prompts = hf.builtin_prompts(lm.tokenizer, n_random=max(0, args.random), texts=not args.no_builtin)
        if args.prompts:
            prompts += hf.read_prompts_file(args.prompts)
        if not prompts:
            raise LabError("No prompts: give --prompts FILE, --random N, or drop --no-builtin.")
        table = hf.run_prompt_set(
            lm, prompts, max_tokens=args.max_tokens, progress=lambda k, n, what: _log(f"[{k}/{n}] {what}")
        )
        table.table().to_csv(out / "head_functions.csv", index=False)
        wide = table.wide()
        wide.to_csv(out / "head_labels.csv", index=False)
        for fn in ("induction", "previous_token"):
            top = ", ".join(f"{layer}.{head} ({score:.2f})" for layer, head, score in table.ranking(fn, 3))
            print(f"top {fn} heads: {top}")
        print(f"{len(prompts)} prompts, {len(wide)} heads -> {out}")
        if args.explain:
            first = args.prompt or next((p.text for p in prompts if p.text), None)
            result = run_attention(lm, first, max_tokens=args.max_tokens)
    if heads_spec:
        _explain(lm, result, table, args.explain, out, args.explain_queries, not args.no_control)
    return 0
