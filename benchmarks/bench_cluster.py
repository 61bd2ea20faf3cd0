"""Ray executor overhead: the same uncertainty generation locally and on one Ray worker, side by side.

The embedded Gemma 3 270M, the first QUESTIONS of the bundled set, K = 5, 16 new tokens, batches of 4,
2 torch threads on both sides (this process, and the Ray worker: `--ray-cpus 2` on the local Ray instance
`lab uq --executor ray` starts, which holds the machine's CPUs). Each side generates into its own run
store and writes its records as the CLI does (the Ray side: records stream back to this process, which
writes them). The run grows one batch at a time, the two sides alternating batch by batch (local first
on even batches, Ray first on odd ones), so the load of other processes on a shared machine hits both
alike; the Ray side pays its per-call costs (cutting shards, dispatching, streaming back) on every
batch, more often than a real run does.

Reported: the generation time of each side, the Ray overhead on it (target <= 10%), the fixed costs Ray
adds once per command (starting a local instance; starting a worker, which loads its copy of the model,
against loading it here), and whether the records are identical (answers, log-probs and hidden states
byte for byte). Multi-node and GPU placement cannot be measured on this machine.

Second table row group: a grokking study (GROK_SEEDS tiny LLM-shaped runs of the control arm) trained by
the local pool of 2 processes and by 2 Ray workers of 1 CPU each (`--executor ray --ray-workers 2`), each
into its own run store, local first; reported: both wall times (the Ray side's includes starting its
workers, not the instance), Ray's speed relative to the pool (target >= 0.9x) and whether the metrics
and measures (wall-time columns aside) are identical.

Third row group: a grokking sweep (SWEEP_SEEDS runs of a small modular-addition transformer, one weight
decay) trained one run after another in this process (grok-sweep's default), by the local pool of 2
processes (`--workers 2`) and by 2 Ray workers (`--executor ray --ray-workers 2`), each into its own run
store; reported: the three wall times, Ray's speed relative to the pool (target >= 0.9x) and whether the
metrics and measures (wall times aside) are identical on all three.

Usage: python benchmarks/bench_cluster.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import print_report, row

QUESTIONS = 32
QUICK_QUESTIONS = 8
THREADS = 2
BATCH = 4


def _records_identical(a, b) -> bool:
    return len(a) == len(b) and all(
        (x.answer, x.samples, x.answer_token_logprobs, x.sample_token_logprobs)
        == (y.answer, y.samples, y.answer_token_logprobs, y.sample_token_logprobs)
        and x.answer_hidden.tobytes() == y.answer_hidden.tobytes()
        and x.sample_hidden.tobytes() == y.sample_hidden.tobytes()
        for x, y in zip(a, b)
    )


def run(quick: bool = False) -> list[dict]:
    try:
        import ray
    except ImportError:
        print("bench_cluster: ray is not installed (pip install -e .[cluster]); skipped", file=sys.stderr)
        return []
    import torch

    from engine.core.embedded import EMBEDDED_LM
    from engine.core.executor import ExecutorConfig, connect
    from engine.core.loading import load_model
    from engine.uq.config import GenerationConfig
    from engine.uq.distributed import RayGeneration
    from engine.uq.generation import default_template, generate_run, open_run_for
    from engine.uq.questions import default_questions

    n = QUICK_QUESTIONS if quick else QUESTIONS
    torch.set_num_threads(THREADS)
    frame = default_questions().frame.head(n)
    start = time.perf_counter()
    lm = load_model(EMBEDDED_LM)
    local_load = time.perf_counter() - start
    config = GenerationConfig(samples=5, max_new_tokens=16, prompt_template=default_template(lm))
    executor = ExecutorConfig(executor="ray", ray_workers=1, ray_cpus=THREADS)

    start = time.perf_counter()
    connect(executor)  # a local instance, as `lab uq --executor ray` starts it
    ray_start = time.perf_counter() - start
    seconds = {"local": 0.0, "ray": 0.0}
    old_cache = os.environ.get("LAB_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory() as folder:
            runs = {}
            for side in seconds:  # a run store each (the runs have the same id)
                os.environ["LAB_CACHE_DIR"] = os.path.join(folder, side)
                runs[side] = open_run_for(lm, frame, config, source="bench")
            start = time.perf_counter()
            with RayGeneration(executor, EMBEDDED_LM, n, BATCH) as generation:  # the worker loads the model
                worker_start = time.perf_counter() - start
                for batch, end in enumerate(range(BATCH, n + 1, BATCH)):
                    for side in ("local", "ray") if batch % 2 == 0 else ("ray", "local"):
                        start = time.perf_counter()
                        if side == "local":
                            generate_run(lm, runs[side], limit=end, batch_questions=BATCH)
                        else:
                            generation.generate(runs[side], limit=end, batch_questions=BATCH)
                        seconds[side] += time.perf_counter() - start
            records = {side: run_.load_records() for side, run_ in runs.items()}
            assert all(len(r) == n for r in records.values())
    finally:
        ray.shutdown()
        if old_cache is None:
            os.environ.pop("LAB_CACHE_DIR", None)
        else:
            os.environ["LAB_CACHE_DIR"] = old_cache
    local, on_ray = seconds["local"], seconds["ray"]
    overhead = on_ray / local - 1
    name = "cluster (1 Ray worker vs local)"
    return [
        row(name, f"local generation, {n} questions, K=5, {THREADS} threads", local, "s"),
        row(name, f"Ray generation, 1 worker x {THREADS} CPUs", on_ray, "s"),
        row(name, "Ray overhead on the generation", 100 * overhead, "%", "<= 10%", overhead <= 0.10),
        row(name, "once per command: start a local Ray instance", ray_start, "s"),
        row(name, "once per command: start a Ray worker (loads the model)", worker_start, "s"),
        row(name, "once per command: load the model here (local)", local_load, "s"),
        row(
            name,
            "records identical (answers, log-probs, hidden states)",
            "yes" if _records_identical(records["local"], records["ray"]) else "no",
            "",
            "yes",
            _records_identical(records["local"], records["ray"]),
        ),
    ]


GROK_SEEDS = (0, 1, 2, 3)
GROK_STEPS, GROK_QUICK_STEPS = 200, 40


def run_grok(quick: bool = False) -> list[dict]:
    """The grokking study on the local 2-process pool and on 2 Ray workers, side by side."""
    try:
        import ray
    except ImportError:
        print("bench_cluster: ray is not installed (pip install -e .[cluster]); skipped", file=sys.stderr)
        return []
    from engine.core.executor import ExecutorConfig, connect
    from engine.grokking.config import StudyConfig
    from engine.grokking.runs import run_for
    from engine.grokking.study import run_study

    steps = GROK_QUICK_STEPS if quick else GROK_STEPS
    executor = ExecutorConfig(executor="ray", ray_workers=2, ray_cpus=1)
    seconds, tables = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        studies = {
            side: StudyConfig(
                seeds=GROK_SEEDS, arms=("control",), p=7, seq_len=10, steps=steps, d_model=16, d_mlp=32,
                eval_every=10, checkpoint_every=20, stop_after_grok=-1, workers=2,
                root=os.path.join(folder, side, "runs"), report_dir=os.path.join(folder, side, "report"),
            )  # fmt: skip
            for side in ("local", "ray")
        }
        try:
            start = time.perf_counter()
            connect(executor)
            ray_start = time.perf_counter() - start
            seconds["local"] = run_study(studies["local"])
            seconds["ray"] = run_study(studies["ray"], executor=executor)
        finally:
            ray.shutdown()
        for side, study in studies.items():
            root = Path(study.root)
            tables[side] = [
                (
                    run_for(c, root).metrics().drop(columns=["elapsed_s"]).to_csv(),
                    run_for(c, root).llm_measures().drop(columns=["measure_seconds"]).to_csv(),
                )
                for _, c in study.runs()
            ]
    same = tables["local"] == tables["ray"]
    speed = seconds["local"] / seconds["ray"]
    name = "cluster (grokking study, 2 Ray workers vs local pool of 2)"
    runs = f"{len(GROK_SEEDS)} runs x {steps} steps"
    return [
        row(name, f"local pool, 2 processes x 1 thread, {runs}", seconds["local"], "s"),
        row(name, "Ray, 2 workers x 1 CPU (workers started in the time)", seconds["ray"], "s"),
        row(name, "Ray speed relative to the local pool", speed, "x", ">= 0.9x", speed >= 0.9),
        row(name, "once per command: start a local Ray instance", ray_start, "s"),
        row(name, "metrics and measures identical (wall times aside)", "yes" if same else "no", "", "yes", same),
    ]


SWEEP_SEEDS = (0, 1, 2, 3)
SWEEP_STEPS, SWEEP_QUICK_STEPS = 1500, 60


def run_grok_sweep(quick: bool = False) -> list[dict]:
    """A grokking sweep (seeds x 1 weight decay of a small modular-addition transformer) one run after
    another in this process (grok-sweep's default), on the local pool of 2 processes, and on 2 Ray workers."""
    try:
        import ray
    except ImportError:
        print("bench_cluster: ray is not installed (pip install -e .[cluster]); skipped", file=sys.stderr)
        return []
    from engine.core.executor import ExecutorConfig, connect
    from engine.grokking.analysis import sweep_configs
    from engine.grokking.config import GrokConfig
    from engine.grokking.pool import run_sweep
    from engine.grokking.runs import run_for

    steps = SWEEP_QUICK_STEPS if quick else SWEEP_STEPS
    base = GrokConfig(p=11, train_frac=0.5, steps=steps, eval_every=10, checkpoint_every=20, stop_after_grok=-1)
    executor = ExecutorConfig(executor="ray", ray_workers=2, ray_cpus=1)
    sides = {"sequential": {"threads": 1}, "pool": {"workers": 2}, "ray": {"executor": executor}}
    seconds, tables = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        try:
            connect(executor)
            for side, options in sides.items():
                start = time.perf_counter()
                run_sweep(base, SWEEP_SEEDS, [1.0], root=Path(folder, side), **options)
                seconds[side] = time.perf_counter() - start
        finally:
            ray.shutdown()
        for side in sides:
            tables[side] = [
                (
                    run_for(c, Path(folder, side)).metrics().drop(columns=["elapsed_s"]).to_csv(),
                    run_for(c, Path(folder, side)).measures().to_csv(),
                )
                for c in sweep_configs(base, SWEEP_SEEDS, [1.0])
            ]
    same = tables["sequential"] == tables["pool"] == tables["ray"]
    answer = "yes" if same else "no"
    speed = seconds["pool"] / seconds["ray"]
    name = "cluster (grokking sweep, 2 Ray workers vs local pool of 2 vs one by one)"
    runs = f"{len(SWEEP_SEEDS)} runs x {steps} steps"
    return [
        row(name, f"one run after another in this process, 1 thread, {runs}", seconds["sequential"], "s"),
        row(name, "local pool, 2 processes x 1 thread", seconds["pool"], "s"),
        row(name, "Ray, 2 workers x 1 CPU (workers started in the time)", seconds["ray"], "s"),
        row(name, "Ray speed relative to the local pool", speed, "x", ">= 0.9x", speed >= 0.9),
        row(name, "metrics and measures identical, all three (wall times aside)", answer, "", "yes", same),
    ]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print_report(run(quick) + run_grok(quick) + run_grok_sweep(quick))
