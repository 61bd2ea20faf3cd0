"""Uncertainty pipeline cost per question vs a bare batched HF `generate` of the same tokens.

Per question: our `generate_record` (greedy graded answer + K samples, raw-logit token log-probs and
hidden states, one batch) plus its share of `score_records` (every score), against
`model.generate(num_return_sequences=K+1, min_new_tokens=max_new_tokens=L)` where L is the number of
decoding steps our loop ran. Target (issue): <= 1.3x. Also questions per minute on this CPU.
Timings alternate between the two so CPU contention hits both alike.
"""

from __future__ import annotations

import sys
import time

from common import print_report, row

QUESTIONS = 12


def run(quick: bool = False) -> list[dict]:
    import torch

    from engine.core.embedded import EMBEDDED_LM
    from engine.core.embedder import load_embedder
    from engine.core.loading import load_model
    from engine.uq.config import GenerationConfig
    from engine.uq.estimators import score_records
    from engine.uq.generation import build_prompt, generate_record
    from engine.uq.questions import default_questions

    lm = load_model(EMBEDDED_LM)
    embedder = load_embedder()
    n = 4 if quick else QUESTIONS
    frame = default_questions().frame.iloc[::7].head(n)
    config = GenerationConfig(samples=10)
    ours, bare, records = [], [], []
    generate_record(lm, "What is 1+1?", config)  # warm-up
    for index, (qid, question) in enumerate(zip(frame["id"], frame["question"])):
        start = time.perf_counter()
        record = generate_record(lm, question, config, qid=qid, index=index)
        ours.append(time.perf_counter() - start)
        records.append(record)
        steps = min(
            config.max_new_tokens,
            max(len(x) for x in [record.answer_token_logprobs, *record.sample_token_logprobs]) + 1,
        )
        ids = lm.tokenizer(build_prompt(lm, config.prompt_template, question), return_tensors="pt").input_ids
        start = time.perf_counter()
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
        bare.append(time.perf_counter() - start)
    start = time.perf_counter()
    score_records(records, embedder)
    scoring = (time.perf_counter() - start) / n
    per_question = sum(ours) / n + scoring
    bare_per_question = sum(bare) / n
    ratio = per_question / bare_per_question
    return [
        row("uq pipeline", f"generation per question (K={config.samples}, {n} questions)", sum(ours) / n, "s"),
        row("uq pipeline", "scoring per question (every score)", scoring, "s"),
        row("uq pipeline", "bare batched generate of the same tokens", bare_per_question, "s"),
        row("uq pipeline", "(generation + scores) / bare generate", ratio, "x", "<= 1.3", ratio <= 1.3),
        row("uq pipeline", "questions per minute (embedded 270M, this CPU)", 60 / per_question, "q/min"),
    ]


if __name__ == "__main__":
    print_report(run(quick="--quick" in sys.argv))
