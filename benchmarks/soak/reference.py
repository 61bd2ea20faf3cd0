"""The same work alone: every person's inputs through the engine functions the pages' jobs run, in this
process on a fresh cache after the server stopped (`alone`), and whether the pages showed the same numbers
(`compare`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.soak.plan import UQ_SEED, Plan, Seen, attention_prompt, scan_prompts
from engine.attention.config import DEFAULT_MAX_TOKENS, HIGHLIGHTED, N_RANDOM


@contextlib.contextmanager
def cache_root(path: Path) -> Iterator[None]:
    """LAB_CACHE_DIR set to `path` within the block (the run stores read it on each call)."""
    before = os.environ.get("LAB_CACHE_DIR")
    os.environ["LAB_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LAB_CACHE_DIR", None)
        else:
            os.environ["LAB_CACHE_DIR"] = before


def alone(plan: Plan, people: list[Seen], ref_cache: Path, soak_cache: Path, deadline: float) -> dict[str, dict]:
    """Per person and feature they finished on a page: the same work done alone, through the engine's
    public functions the pages' jobs run (on a fresh cache, in this process), cheapest features first,
    until `deadline`; and whether the files the server wrote for them are the same as those written alone.

    attention: maps.run_attention and head_functions.run_prompt_set over the built-in prompts and the
    person's; scan: superweights.detect.detect with the page's default DetectionConfig; grokking:
    grokking.process.train_run (the page's training job, here in this process, never stopped) with the
    form's defaults and the person's seed; uncertainty: generation.open_run_for and generate_run, then
    evaluation.evaluate_run with the page's default judge."""
    import pandas as pd

    from engine.attention import head_functions, maps
    from engine.core.embedded import EMBEDDED_LM
    from engine.core.embedder import load_embedder
    from engine.core.loading import load_model
    from engine.grokking import analysis, runs
    from engine.grokking import process as grok_jobs
    from engine.grokking.config import TRAIN_THREADS, GrokConfig
    from engine.superweights import detect as superweights
    from engine.superweights.config import DetectionConfig
    from engine.uq import correctness, store
    from engine.uq.config import EvalOptions, GenerationConfig
    from engine.uq.evaluation import evaluate_run
    from engine.uq.generation import default_template, generate_run, open_run_for
    from engine.uq.questions import default_questions

    out: dict[str, dict] = {p.name: {} for p in people}

    def attention(i: int, person: Seen, ref: dict) -> None:
        prompt = attention_prompt(i)
        result = maps.run_attention(lm, prompt, max_tokens=DEFAULT_MAX_TOKENS)
        specs = head_functions.builtin_prompts(lm.tokenizer, n_random=N_RANDOM, texts=True)
        specs += head_functions.user_prompts(prompt)
        table = head_functions.run_prompt_set(lm, specs, max_tokens=DEFAULT_MAX_TOKENS)
        ref["attention"] = {
            "tokens": len(result.token_ids),
            "description": maps.description_text(result, 0, 0).strip(),
            "top_heads": [f"Top {head_functions.FUNCTION_TITLES[f]} heads: {table.top_heads(f)}" for f in HIGHLIGHTED],
        }

    def scan(i: int, person: Seen, ref: dict) -> None:
        detection = superweights.detect(lm, scan_prompts(i), **dataclasses.asdict(DetectionConfig()))
        ref["scan"] = {
            "candidates": [f"layer {c.layer} W[{c.row}, {c.col}]" for c in detection.candidates],
            "rejected": len(detection.rejected),
            "stop": detection.stop_reason,
        }

    def grok(i: int, person: Seen, ref: dict) -> None:
        with cache_root(soak_cache):
            served = runs.get_run(person.grok["run_id"])
            served_metrics = pd.read_csv(served.path / "metrics.csv")
        config = GrokConfig().replace(seed=i + 1, steps=plan.grok_steps)
        # a run of no one (as the command line makes), claimed by itself: no job holds its claim here
        summary = grok_jobs.train_run(
            config, stop=lambda: False, report=lambda message: None, threads=TRAIN_THREADS, claim=True
        )
        metrics = pd.read_csv(runs.run_for(config).path / "metrics.csv")
        keep = [c for c in metrics.columns if "elapsed" not in c and "second" not in c]
        ref["grok"] = {
            "config_same": served.grok_config == config,
            "test_acc": f"{metrics.iloc[-1]['test_acc']:.1%}",
            "summary": analysis.run_summary_text(summary),
            "files_same": set(keep) <= set(served_metrics.columns) and served_metrics[keep].equals(metrics[keep]),
            "seconds": (served_metrics.iloc[-1].get("elapsed_s"), metrics.iloc[-1].get("elapsed_s")),  # server, alone
        }

    def uq(i: int, person: Seen, ref: dict) -> None:
        with cache_root(soak_cache):
            served = store.get_run(person.uq["run_id"])
            served_config = served.generation_config()
            served_records = served.load_records()
            served_answers = [(r.id, r.answer, tuple(r.samples)) for r in served_records]
        config = GenerationConfig(
            prompt_template=default_template(lm),
            samples=plan.samples,
            max_new_tokens=plan.max_new_tokens,
            seed=UQ_SEED + i,
        )
        run = open_run_for(lm, qset.frame, config, source=qset.source or "default")
        generate_run(lm, run, limit=plan.questions)
        options = EvalOptions(judge=next(iter(correctness.JUDGES)), judge_model=run.model, seed=config.seed)
        summary = evaluate_run(run, embedder, options).summary
        records = run.load_records()
        answers = [(r.id, r.answer, tuple(r.samples)) for r in records]
        ref["uq"] = {
            "seconds": (sum(r.seconds for r in served_records), sum(r.seconds for r in records)),  # server, alone
            "config_same": served_config == run.generation_config(),  # hidden layers resolved as the page's
            "n": f"{summary.n}",
            "files_same": served_answers == answers,
        } | {name: f"{getattr(summary, name):.3f}" for name in ("A1", "A2", "A3")}

    with cache_root(ref_cache):
        lm = load_model(EMBEDDED_LM)
        embedder = load_embedder()
        qset = default_questions()
        longest: dict[str, float] = {}  # the longest time one comparison of a feature took (none starts past deadline)
        for feature, work, shown in (
            ("attention", attention, lambda p: p.attention.get("top_heads")),
            ("scan", scan, lambda p: p.scan.get("caption")),
            ("grok", grok, lambda p: p.grok.get("summary")),
            ("uq", uq, lambda p: p.uq.get("A1")),
        ):
            for i, person in enumerate(people):
                ref = out[person.name]
                if not shown(person):
                    continue  # never finished on its page: nothing to compare
                if time.monotonic() + longest.get(feature, 0.0) > deadline:
                    ref.setdefault("cut", []).append(feature)
                    continue
                start = time.monotonic()
                try:
                    work(i, person, ref)
                except Exception as err:  # noqa: BLE001 - recorded, the other comparisons go on
                    ref.setdefault("errors", []).append(f"{feature}: {type(err).__name__}: {err}")
                ref[f"{feature}_s"] = time.monotonic() - start
                longest[feature] = max(longest.get(feature, 0.0), ref[f"{feature}_s"])
    return out


def compare(person: Seen, ref: dict) -> dict[str, bool | None]:
    """Per feature: True when the page showed the same numbers as the work done alone (and the server's files
    are the same); None when not compared (not finished on the page, or the soak's time ran out)."""
    att, scan, uq, grok = (ref.get(k) for k in ("attention", "scan", "uq", "grok"))
    return {
        "attention": None
        if att is None
        else (
            person.attention.get("tokens") == att["tokens"]
            and person.attention.get("description") == att["description"]
            and person.attention.get("top_heads") == att["top_heads"]
        ),
        "scan": None
        if scan is None
        else (
            person.scan.get("candidates") == scan["candidates"]
            and person.scan.get("rejected") == scan["rejected"]
            and scan["stop"] in person.scan.get("caption", "")
        ),
        "uq": None
        if uq is None
        else all(person.uq.get(k) == uq[k] for k in ("n", "A1", "A2", "A3")) and uq["config_same"] and uq["files_same"],
        "grok": None
        if grok is None
        else (
            grok["config_same"]
            and person.grok.get("test_acc") == grok["test_acc"]
            and grok["summary"] in person.grok.get("summary", "")
            and grok["files_same"]
        ),
    }
