"""`python -m engine grok ...` (one grokking run) and `python -m engine grok-sweep ...` (seeds x weight decays)."""

from __future__ import annotations

import sys

TASK_CHOICES = [
    "add",
    "sub",
    "mul",
    "div",
    "sq_sum",
    "cube_ab",
]  # engine.grokking.TASKS (not imported: keeps --help fast)


def _add_config_args(parser) -> None:
    """Options default to None, meaning the engine.grokking.GrokConfig default (mlp, p=53, ...)."""
    parser.add_argument("--op", "--task", dest="task", choices=TASK_CHOICES, help="(a o b) mod p task (default add)")
    parser.add_argument("--p", type=int, help="modulus (prime needed for div; default 53)")
    parser.add_argument(
        "--train-frac", type=float, help="fraction of all pairs used for training, in (0, 1) (default 0.6)"
    )
    parser.add_argument("--model", choices=["transformer", "mlp"], help="default mlp")
    parser.add_argument("--layers", dest="n_layers", type=int)
    parser.add_argument("--d-model", type=int, help="transformer width (default 128)")
    parser.add_argument("--heads", dest="n_heads", type=int, help="transformer heads (default 4)")
    parser.add_argument("--mlp-width", type=int, help="hidden width of the one-hot MLP (default 256)")
    parser.add_argument("--lr", type=float, help="default 3e-3")
    parser.add_argument("--beta2", type=float, help="default 0.98")
    parser.add_argument("--batch-size", type=int, help="0 = full batch (default)")
    parser.add_argument("--steps", type=int, help="maximum steps (default 3000)")
    parser.add_argument("--eval-every", type=int, help="default 25")
    parser.add_argument("--checkpoint-every", type=int, help="default 100 (a multiple of --eval-every)")
    parser.add_argument(
        "--no-grokfast", dest="grokfast", action="store_const", const=False, help="plain AdamW (no Grokfast EMA filter)"
    )
    parser.add_argument("--grokfast-alpha", type=float, help="default 0.98")
    parser.add_argument("--grokfast-lamb", type=float, help="default 2.0")
    parser.add_argument(
        "--stop-after-grok", type=int, help="steps to go on after test acc 95%% (-1: all steps; default 500)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these tiny models)")
    parser.add_argument(
        "--out",
        default=None,
        help="grok: the run's folder (default cache/grokking/<config hash>/); "
        "grok-sweep: a folder with one sub-folder per run, named by config hash",
    )


def register(subparsers) -> None:
    one = subparsers.add_parser(
        "grok", help="train a small model until it groks modular arithmetic, with super-weight measures"
    )
    _add_config_args(one)
    one.add_argument("--seed", type=int, help="default 0")
    one.add_argument("--weight-decay", type=float, help="default 1.0")
    one.set_defaults(func=run)
    sweep = subparsers.add_parser("grok-sweep", help="grokking runs over seeds x weight decays: onset vs grokking step")
    _add_config_args(sweep)
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    sweep.add_argument("--weight-decays", default="0.3,1.0", help="comma-separated weight decays")
    sweep.add_argument("--measure", default="super_weight", help="onset measure to correlate with the grokking step")
    sweep.set_defaults(func=run_sweep)


def _config(args, **overrides):
    from engine.grokking.training import GrokConfig

    fields = {
        k: getattr(args, k)
        for k in (
            "task",
            "p",
            "train_frac",
            "model",
            "n_layers",
            "d_model",
            "n_heads",
            "mlp_width",
            "lr",
            "beta2",
            "batch_size",
            "steps",
            "eval_every",
            "checkpoint_every",
            "grokfast",
            "grokfast_alpha",
            "grokfast_lamb",
            "stop_after_grok",
        )
    }
    fields.update(overrides)
    return GrokConfig(**{k: v for k, v in fields.items() if v is not None})


def _parse_list(text: str, kind):
    from engine.core.errors import LabError

    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LabError(f"Could not read the list {text!r}: use comma-separated numbers.") from None


def run(args) -> int:
    from engine.grokking.analysis import run_experiment, run_summary_text
    from engine.grokking.training import RunCache, validate

    config = _config(args, seed=args.seed, weight_decay=args.weight_decay)
    validate(config)
    cache = RunCache(config, run_dir=args.out) if args.out else RunCache(config)
    print(f"{config.describe()}\nrun folder: {cache.dir}", file=sys.stderr)

    def on_eval(row):
        print(
            f"step {row['step']:>6}  train acc {row['train_acc']:.3f}  test acc {row['test_acc']:.3f}  "
            f"test loss {row['test_loss']:.3f}  |w| {row['weight_norm']:.1f}",
            file=sys.stderr,
        )

    summary = run_experiment(config, run_dir=args.out, on_eval=on_eval, threads=args.threads)
    print(run_summary_text(summary))
    print(f"wrote {cache.metrics_path}, {cache.summary_path}, {len(cache.checkpoint_steps())} checkpoints")
    return 0


def run_sweep(args) -> int:
    from engine.core.errors import LabError
    from engine.grokking.analysis import MEASURES, SweepProgress, connection, plain_summary, sweep_table
    from engine.grokking.analysis import run_sweep as sweep
    from engine.grokking.training import validate

    if args.measure not in MEASURES:
        raise LabError(f"Unknown measure {args.measure!r}; choose one of {', '.join(MEASURES)}.")
    seeds, wds = _parse_list(args.seeds, int), _parse_list(args.weight_decays, float)
    base = _config(args)
    for wd in wds:
        validate(base.replace(weight_decay=wd))
    progress = SweepProgress()

    def on_run(summary):
        print(
            f"[{progress.done}/{progress.total}] seed {summary['config']['seed']} wd {summary['config']['weight_decay']:g}: "
            f"grok_95 {summary['grok_95_step']}, {args.measure} onset {summary['onsets'][args.measure]}",
            file=sys.stderr,
        )

    summaries = sweep(base, seeds, wds, root=args.out, progress=progress, on_run=on_run, threads=args.threads)
    table = sweep_table(summaries, args.measure)
    print(table.drop(columns=["key"]).to_string(index=False))
    print()
    print(plain_summary(connection(table), args.measure))
    return 0
