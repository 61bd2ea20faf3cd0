"""Grokking lab: does the default configuration grok within 60 s on this CPU, how fast does it train,
and what do the super-weight measures add to a run's wall time?

Targets: default config reaches test accuracy >= 95% within 60 s with a visible
delay after train accuracy reaches 100%; measures add <= 20% at the default evaluation interval.
The LLM-shaped model (the study's control arm, engine.grokking.config.StudyConfig): steps per second, time to
grok, and the llm measures' overhead at the study's checkpoint spacing. `grok --model llm` with its defaults
(config.LLM_PRESET: AdamW, warmup, gradient clipping, no Grokfast): it must grok (test accuracy >= 95% held for
the hold window) and hold to the end of the run (no collapse), with steps/s and wall time.
`--llm-default` runs only that row. Each run trains in a fresh cache folder (nothing reopened); run it niced.
"""

from __future__ import annotations

import sys
import tempfile
import time

from common import print_report, row


def _run(config, measure: bool, threads: int):
    from engine.grokking.analysis import run_experiment

    start = time.perf_counter()
    summary = run_experiment(config, root=tempfile.mkdtemp(prefix="bench_grok_"), measure=measure, threads=threads)
    return summary, time.perf_counter() - start


def run(quick: bool = False) -> list[dict]:
    import torch

    from engine.grokking.config import GrokConfig

    d = GrokConfig()
    rows = [
        row(
            "grokking",
            "default config",
            0.0,
            d.describe() + f", eval every {d.eval_every}, checkpoint every {d.checkpoint_every}",
        )
    ]
    _run(d.replace(steps=100), True, 1)  # warm imports (torch optimiser, scipy, pandas paths)
    with_m, t_with = _run(d, True, 1)
    first_wall = t_with
    rows += [
        row(
            "grokking",
            "wall time to finish (grokked + stop_after_grok steps), 1 thread",
            first_wall,
            "s",
            "<= 60 s",
            first_wall <= 60 and with_m["grokked"],
        ),
        row("grokking", "memorisation step (train acc 99%)", float(with_m["memorisation_step"] or -1), "steps"),
        row(
            "grokking",
            "grokking step (test acc 95%)",
            float(with_m["grok_95_step"] or -1),
            "steps",
            "reached",
            with_m["grokked"],
        ),
        row(
            "grokking",
            "delay grokking - memorisation",
            float(with_m["grokking_delay"] or -1),
            "steps",
            ">= 200",
            (with_m["grokking_delay"] or 0) >= 200,
        ),
        row("grokking", "steps per second with measures, 1 thread", with_m["last_step"] / t_with, "steps/s"),
    ]
    if not quick:
        # the machine is shared: alternate runs with and without measures and keep each one's fastest
        without, t_without = _run(d, False, 1)
        for _ in range(1):
            t_with = min(t_with, _run(d, True, 1)[1])
            t_without = min(t_without, _run(d, False, 1)[1])
        same_steps = without["last_step"] == with_m["last_step"]
        overhead = t_with / t_without - 1
        rows += [
            row("grokking", "steps per second without measures, 1 thread", without["last_step"] / t_without, "steps/s"),
            row(
                "grokking",
                "measure overhead on wall time",
                100 * overhead,
                "%",
                "<= 20%",
                overhead <= 0.20 and same_steps,
            ),
        ]
        # a steadier estimate: time of the measures at one checkpoint x checkpoints / training time
        from common import timed

        from engine.grokking.measures import measure_checkpoint
        from engine.grokking.models import build_model
        from engine.grokking.tasks import make_dataset

        torch.set_num_threads(1)
        model, data = build_model(d), make_dataset(d)
        per_ckpt, _ = timed(lambda: measure_checkpoint(0, model, data.x_test, data.y_test), repeats=5)
        n_ckpt = without["last_step"] // d.checkpoint_every + 2
        rows += [
            row("grokking", "measures at one checkpoint (median of 5)", 1000 * per_ckpt, "ms"),
            row(
                "grokking",
                "estimated measure overhead (checkpoints x per-checkpoint / run without)",
                100 * n_ckpt * per_ckpt / t_without,
                "%",
                "<= 20%",
                n_ckpt * per_ckpt / t_without <= 0.20,
            ),
        ]
        short = d.replace(steps=300, stop_after_grok=-1)
        for threads in (1, 2):
            _, t = _run(short, False, threads)
            rows.append(
                row("grokking", f"steps per second, 300 steps, {threads} thread(s), no measures", 300 / t, "steps/s")
            )
        torch.set_num_threads(2)
    rows += _llm_rows(quick)
    if not quick:
        rows += llm_default_rows()
    return rows


def _llm_rows(quick: bool) -> list[dict]:
    """The LLM-shaped model of the study (seed 0, its first weight decay, no suppression): one run with the llm
    measures timed at every checkpoint (training time = wall time - measure time)."""
    from engine.grokking.analysis import measure_llm
    from engine.grokking.config import StudyConfig
    from engine.grokking.llm import llm_data
    from engine.grokking.training import train

    study = StudyConfig()
    config = study.base().replace(seed=0, steps=200 if quick else study.steps)
    spent = {"measures": 0.0, "grok_wall": None}
    data = llm_data(config)

    def on_checkpoint(step, model, _data) -> None:
        start = time.perf_counter()
        measure_llm(run_box[0], step, model, data)
        spent["measures"] += time.perf_counter() - start

    def on_eval(row_: dict) -> None:
        if spent["grok_wall"] is None and row_["test_acc"] >= 0.95:
            spent["grok_wall"] = time.perf_counter() - t0

    from engine.grokking.runs import open_run

    root = tempfile.mkdtemp(prefix="bench_grok_llm_")
    run_box = [open_run(config, root)]
    t0 = time.perf_counter()
    result = train(config, root=root, on_eval=on_eval, on_checkpoint=on_checkpoint, threads=1)
    wall = time.perf_counter() - t0
    training = wall - spent["measures"]
    overhead = spent["measures"] / training
    metrics = result.run.metrics()
    grok = metrics.loc[metrics["test_acc"] >= 0.95, "step"]
    return [
        row("grokking-llm", "config", 0.0, config.describe() + f", checkpoint every {config.checkpoint_every}"),
        row("grokking-llm", "steps per second (training only), 1 thread", result.step / training, "steps/s"),
        row(
            "grokking-llm",
            "grokking step (test acc 95%)",
            float(grok.iloc[0]) if len(grok) else -1.0,
            "steps",
            f"reached within {config.steps}",
            bool(len(grok)),
        ),
        row("grokking-llm", "wall time to grok (with measures)", spent["grok_wall"] or -1.0, "s"),
        row(
            "grokking-llm",
            "measure overhead (measure time / training time)",
            100 * overhead,
            "%",
            "<= 20%",
            overhead <= 0.20,
        ),
    ]


def llm_default_rows() -> list[dict]:
    """`python -m engine grok --model llm` with its defaults (the CLI's own config), with the measures the CLI
    takes: does it grok and hold to the end? Steps per second and wall time."""
    from engine.cli import build_parser
    from engine.commands.grok import _config

    config = _config(build_parser().parse_args(["grok", "--model", "llm"]))
    summary, wall = _run(config, True, 1)
    held = summary["outcome"] == "grokked" and (summary["min_test_acc_after_grok"] or 0) >= 0.95
    return [
        row("grokking-llm-default", "config", 0.0, config.describe() + f", {config.steps} steps cap"),
        row(
            "grokking-llm-default",
            "grokking step (95% test, held for the hold window)",
            float(summary["grok_step"] if summary["grok_step"] is not None else -1),
            "steps",
            "grokked",
            summary["outcome"] == "grokked",
        ),
        row(
            "grokking-llm-default",
            "lowest test accuracy from first reaching 95% to the end",
            float(summary["min_test_acc_after_grok"] or 0.0),
            "",
            ">= 0.95 (holds to the end)",
            held,
        ),
        row("grokking-llm-default", "steps run (grokking + stop_after_grok)", float(summary["last_step"]), "steps"),
        row("grokking-llm-default", "steps per second with measures, 1 thread", summary["last_step"] / wall, "steps/s"),
        row("grokking-llm-default", "wall time", wall, "s"),
    ]


if __name__ == "__main__":
    if "--llm-default" in sys.argv:
        print_report(llm_default_rows())
    else:
        print_report(run(quick="--quick" in sys.argv))
