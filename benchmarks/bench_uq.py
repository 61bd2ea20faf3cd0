"""Uncertainty generation: questions per minute with several questions per batch, against one per batch.

Same questions (every 7th of the bundled set), K = 10, embedded Gemma 3 270M, three paths:
- today: `generate_record` as it was before question batching (engine/uq/generation.py at
  BASELINE_COMMIT, read with git; skipped without the repository history): one question's K+1 rows
  per batch, every row kept to the end, log_softmax + softmax + cumsum per step;
- one question per batch: this code with `batch_questions=1` (stopped rows leave the batch, one exp
  pass serves log-probs and sampling);
- batched: this code with the batch size the run loop chooses (`auto_batch_questions`).
Target: batched >= 1.8x today's questions per minute (2x with the cheaper LM head and sampling).
The machine is shared: the questions go in groups of one batch, and each group runs every path in a
rotating order, so load from other processes hits all paths alike; the ratios are the fair numbers.

Also the pipeline cost per question (batched generation plus its share of `score_records`) against a
bare `model.generate(num_return_sequences=K+1, min_new_tokens=max_new_tokens=L)` of one question, L
the decoding steps our loop ran for it. Target: <= 1.3x.
"""

from __future__ import annotations

import subprocess
import sys
import time
import types

from common import ROOT, print_report, row

QUESTIONS = 24
QUICK_QUESTIONS = 8
BASELINE_COMMIT = "f4aa32744ed4275a53348e18d5262f5598bb18e3"  # the last engine/uq/generation.py without batching


def baseline_generation() -> types.ModuleType | None:
    """engine/uq/generation.py at BASELINE_COMMIT as a module, or None when git or the commit is missing."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:engine/uq/generation.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("uq_generation_baseline")
    exec(compile(source, f"{BASELINE_COMMIT[:7]}:engine/uq/generation.py", "exec"), module.__dict__)
    return module


def run(quick: bool = False) -> list[dict]:
    import torch

    from engine.core.embedded import EMBEDDED_LM
    from engine.core.embedder import load_embedder
    from engine.core.loading import load_model
    from engine.uq.config import GenerationConfig
    from engine.uq.estimators import score_records
    from engine.uq.generation import QuestionItem, auto_batch_questions, build_prompt, generate_records
    from engine.uq.questions import default_questions

    lm = load_model(EMBEDDED_LM)
    embedder = load_embedder()
    n = QUICK_QUESTIONS if quick else QUESTIONS
    frame = default_questions().frame.iloc[::7].head(n)
    items = [QuestionItem(i, q, qid) for i, (qid, q) in enumerate(zip(frame["id"], frame["question"]))]
    config = GenerationConfig(samples=10)
    longest = max(
        len(lm.prompt_inputs(config.prompt_template.replace("{question}", i.question)).input_ids[0]) for i in items
    )
    batch = auto_batch_questions(lm, config, longest)
    baseline = baseline_generation()

    paths = {
        "one question per batch": lambda group: dict(generate_records(lm, group, config, batch_questions=1)),
        "batched": lambda group: dict(generate_records(lm, group, config, batch_questions=batch)),
    }
    if baseline is not None:
        paths = {
            "today": lambda group: {
                i.index: baseline.generate_record(lm, i.question, config, qid=i.qid, index=i.index) for i in group
            },
            **paths,
        }
    for path in paths.values():  # warm-up
        path([QuestionItem(0, "What is 1+1?")])
    seconds = dict.fromkeys(paths, 0.0)
    bare = 0.0
    records = {}
    for g, start in enumerate(range(0, n, batch)):
        group = items[start : start + batch]
        names = list(paths)
        for name in names[g % len(names) :] + names[: g % len(names)]:
            begin = time.perf_counter()
            out = paths[name](group)
            seconds[name] += time.perf_counter() - begin
            if name == "batched":
                records.update(out)
        for item in group:
            record = records[item.index]
            steps = min(
                config.max_new_tokens,
                max(len(x) for x in [record.answer_token_logprobs, *record.sample_token_logprobs]) + 1,
            )
            ids = lm.tokenizer(build_prompt(lm, config.prompt_template, item.question), return_tensors="pt").input_ids
            begin = time.perf_counter()
            with lm.lock, torch.no_grad():
                lm.model.generate(
                    ids,
                    do_sample=True,
                    num_return_sequences=config.samples + 1,
                    max_new_tokens=steps,
                    min_new_tokens=steps,
                    top_k=0,
                    top_p=1.0,
                    pad_token_id=lm.tokenizer.pad_token_id,
                )
            bare += time.perf_counter() - begin
    begin = time.perf_counter()
    score_records([records[i.index] for i in items], embedder)
    scoring = (time.perf_counter() - begin) / n
    per_question = seconds["batched"] / n + scoring
    ratio = per_question / (bare / n)
    rate = {name: 60 * n / s for name, s in seconds.items()}
    rows = [
        row("uq batching", f"batch size chosen from memory (questions, K={config.samples})", batch, ""),
        row(
            "uq batching",
            f"today, one question per batch ({BASELINE_COMMIT[:7]})",
            rate.get("today", float("nan")),
            "q/min" if baseline is not None else "q/min (no git history: not measured)",
        ),
        row("uq batching", "one question per batch (this code)", rate["one question per batch"], "q/min"),
        row("uq batching", f"batched ({batch} questions per batch)", rate["batched"], "q/min"),
    ]
    if baseline is not None:
        speedup = rate["batched"] / rate["today"]
        rows.append(row("uq batching", "batched / today", speedup, "x", ">= 1.8 (2 with cheaper head)", speedup >= 1.8))
    rows += [
        row("uq batching", "batched / one question per batch", rate["batched"] / rate["one question per batch"], "x"),
        row(
            "uq pipeline",
            f"generation per question (K={config.samples}, {n} questions, batched)",
            seconds["batched"] / n,
            "s",
        ),
        row("uq pipeline", "scoring per question (every score)", scoring, "s"),
        row("uq pipeline", "bare batched generate of the same tokens, one question", bare / n, "s"),
        row("uq pipeline", "(generation + scores) / bare generate", ratio, "x", "<= 1.3", ratio <= 1.3),
        row("uq pipeline", "questions per minute (embedded 270M, this CPU, with scores)", 60 / per_question, "q/min"),
    ]
    return rows


if __name__ == "__main__":
    print_report(run(quick="--quick" in sys.argv))
