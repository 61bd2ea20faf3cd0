"""What determines a grokking run, and the checks made before anything is allocated (no torch here:
`python -m engine grok --help` derives its flags from these dataclasses and must stay instant).

Task: predict c = (a o b) mod p from (a, b) for every pair (Power et al. 2022, arXiv 2201.02177);
a random `train_frac` of the p^2 pairs is the training set, the rest the test set. Models: a small
transformer without LayerNorm (Nanda et al. 2023, arXiv 2301.05217) or an MLP on the concatenated
one-hot codes of a and b (Prieto et al. 2025, arXiv 2501.04697). Optimiser: AdamW, optionally with
the Grokfast EMA gradient filter (Lee et al. 2024, arXiv 2405.20233).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

from engine.core.errors import LabError
from engine.core.options import option
from engine.core.runstore import run_id_for

Task = Literal["add", "sub", "mul", "div", "sq_sum", "cube_ab"]
ModelKind = Literal["mlp", "transformer"]
Measure = Literal["super_weight", "max_over_median", "kurtosis", "top_coordinate", "massive_activation"]

TASK_LABELS: dict[str, str] = {
    "add": "(a + b) mod p",
    "sub": "(a - b) mod p",
    "mul": "(a * b) mod p",
    "div": "(a / b) mod p, b != 0",
    "sq_sum": "(a^2 + b^2) mod p",
    "cube_ab": "(a^3 + a*b) mod p",
}
INVERSE_TASKS = frozenset({"div"})  # tasks that need b^-1 mod p: b != 0 only, and p prime
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
MEASURES: tuple[str, ...] = get_args(Measure)
MEASURE_LABELS: dict[str, str] = {
    "super_weight": "super weight (causal)",
    "max_over_median": "max/median |w|",
    "kurtosis": "weight kurtosis",
    "top_coordinate": "stable top coordinate",
    "massive_activation": "massive activation",
}

MEMORISATION_ACCURACY = 0.99  # train accuracy that marks memorisation
HALF_GROK_ACCURACY = 0.50  # test accuracy of the first grokking event
GROK_ACCURACY = 0.95  # test accuracy that marks grokking (and starts the stop_after_grok countdown)

FORMAT_VERSION = 1  # part of every run id: a new layout of the run folder gives new ids
RUN_ID_DIGITS = 16  # hex digits of a run id (cache/grokking/<run id>/)
MAX_LAYERS = 4
TRAIN_THREADS = 1  # torch threads while training: 1 is fastest for these tiny models (benchmarks/bench_grokking.py)
DEFAULT_MEMORY_LIMIT_GB = 6.0  # refuse configurations whose estimate exceeds this (LAB_GROK_MEMORY_GB)


@dataclass(frozen=True)
class GrokConfig:
    """Everything that determines a run: its id hashes these fields (add none without a new FORMAT_VERSION)."""

    task: Task = option("add", "(a o b) mod p task", flag="--op")
    p: int = option(53, "modulus p (prime for div)")
    train_frac: float = option(0.6, "fraction of all pairs used for training, in (0, 1)")
    seed: int = option(0, "seed of the train/test split, the initial weights and the minibatches")
    model: ModelKind = option(
        "mlp", "one-hot MLP (Prieto et al. 2025) or transformer without LayerNorm (Nanda et al. 2023)"
    )
    n_layers: int = option(1, f"MLP hidden layers or transformer blocks (1-{MAX_LAYERS})", flag="--layers")
    d_model: int = option(128, "transformer width")
    n_heads: int = option(4, "transformer attention heads (dividing --d-model)", flag="--heads")
    d_mlp: int = option(512, "transformer MLP width")
    mlp_width: int = option(256, "hidden width of the one-hot MLP")
    lr: float = option(3e-3, "AdamW learning rate")
    weight_decay: float = option(1.0, "AdamW weight decay")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.98, "AdamW beta2")
    batch_size: int = option(0, "minibatch size (0 = full batch)")
    steps: int = option(3000, "maximum training steps")
    eval_every: int = option(25, "steps between evaluations (one metrics row each)")
    checkpoint_every: int = option(100, "steps between checkpoints with all measures (a multiple of --eval-every)")
    grokfast: bool = option(True, "Grokfast EMA gradient filter g <- g + lamb * EMA_alpha(g); off: plain AdamW")
    grokfast_alpha: float = option(0.98, "Grokfast EMA decay alpha, in [0, 1)")
    grokfast_lamb: float = option(2.0, "Grokfast amplification lamb, >= 0")
    stop_after_grok: int = option(
        500, f"steps to go on once test accuracy first reaches {GROK_ACCURACY:g} (-1: train all steps)"
    )

    def key_fields(self) -> dict[str, Any]:
        """What the run id hashes: {"v": FORMAT_VERSION, **fields} (config.json holds the fields alone)."""
        return {"v": FORMAT_VERSION, **dataclasses.asdict(self)}

    def key(self) -> str:
        """The run id: first 16 hex digits of sha256 of the sorted JSON of `key_fields()`."""
        return run_id_for(self.key_fields(), RUN_ID_DIGITS)

    def replace(self, **changes: Any) -> GrokConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        model = (
            f"transformer {self.n_layers}L d{self.d_model} {self.n_heads}h"
            if self.model == "transformer"
            else f"MLP {self.n_layers}x{self.mlp_width}"
        )
        opt = f"AdamW lr {self.lr:g} wd {self.weight_decay:g}" + (" + Grokfast" if self.grokfast else "")
        return f"{TASK_LABELS[self.task]}, p={self.p}, train {self.train_frac:.0%}, seed {self.seed}, {model}, {opt}"

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> GrokConfig:
        """The config of a config.json (unknown keys ignored; TypeError/ValueError when it is not one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every seed x weight decay of a base configuration, each run on its own."""

    seeds: tuple[int, ...] = option((0, 1, 2), "seeds")
    weight_decays: tuple[float, ...] = option((0.3, 1.0), "weight decays (0 usually does not grok: a contrast)")
    measure: Measure = option("super_weight", "onset measure to correlate with the grokking step")


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (not part of its id)."""

    threads: int = option(TRAIN_THREADS, "torch CPU threads while training (1 is fastest for these tiny models)")
    out: str | None = option(
        None,
        "grok: the run's folder (default cache/grokking/<run id>/); "
        "grok-sweep: a folder with one sub-folder per run, named by run id",
    )


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def n_pairs(config: GrokConfig) -> int:
    """Number of (a, b) pairs of the task: p^2, or p (p - 1) when b must be invertible."""
    return config.p * (config.p - 1) if config.task in INVERSE_TASKS else config.p**2


def estimate_memory_bytes(config: GrokConfig) -> int:
    """Rough peak memory of a run: data + parameters/optimiser state + activations of one batch.

    Activations (float32, kept for backward, x3 for gradients and temporaries) per example:
    transformer 3 positions x (d_model x 8 + d_mlp x 2 + heads x 3) per layer + logits;
    MLP 2p inputs + 2 x width per layer + logits. Evaluation runs in chunks, so the batch is the
    training batch (the whole training set when full batch).
    """
    p = config.p
    pairs = n_pairs(config)
    n_train = max(1, int(round(config.train_frac * pairs)))
    batch = n_train if config.batch_size <= 0 else min(config.batch_size, n_train)
    if config.model == "mlp":
        params = 2 * p * config.mlp_width + (config.n_layers - 1) * config.mlp_width**2 + config.mlp_width * p
        per_example = 2 * p + 2 * config.mlp_width * config.n_layers + 2 * p
    else:
        d = config.d_model
        params = (p + 1) * d + 3 * d + config.n_layers * (4 * d * d + 2 * d * config.d_mlp) + d * p
        per_example = 3 * config.n_layers * (8 * d + 2 * config.d_mlp + 3 * config.n_heads) + 3 * d + 2 * p
    data = pairs * 3 * 8
    return int(data + params * 4 * 5 + batch * per_example * 4 * 3)


def validate(config: GrokConfig, memory_limit_gb: float | None = None) -> None:
    """Refuse a configuration with a one-line reason (LabError) before anything is allocated."""
    if config.task not in TASK_LABELS:
        raise LabError(f"Unknown task {config.task!r}; choose one of {', '.join(TASK_LABELS)}.")
    if config.model not in MODEL_KINDS:
        raise LabError(f"Unknown model {config.model!r}; choose transformer or mlp.")
    if not isinstance(config.p, int) or config.p < 3:
        raise LabError(f"p must be an integer >= 3 (got {config.p}).")
    if config.task in INVERSE_TASKS and not is_prime(config.p):
        raise LabError(
            f"{TASK_LABELS[config.task]} needs every b != 0 to have an inverse mod p, which holds only for prime p; "
            f"{config.p} is not prime (try {next(q for q in range(config.p, 2 * config.p + 3) if is_prime(q))})."
        )
    if not 0 < config.train_frac < 1:
        raise LabError(f"Train fraction must be strictly between 0 and 1 (got {config.train_frac}).")
    if not (config.lr > 0 and config.weight_decay >= 0 and 0 <= config.beta1 < 1 and 0 <= config.beta2 < 1):
        raise LabError("Need lr > 0, weight decay >= 0 and 0 <= beta1, beta2 < 1.")
    if config.steps < 1 or config.eval_every < 1 or config.checkpoint_every < 1:
        raise LabError("steps, eval_every and checkpoint_every must be positive.")
    if config.checkpoint_every % config.eval_every:
        raise LabError(
            f"checkpoint_every ({config.checkpoint_every}) must be a multiple of eval_every ({config.eval_every})."
        )
    if (
        config.n_layers not in range(1, MAX_LAYERS + 1)
        or config.d_model < 4
        or config.n_heads < 1
        or config.d_model % config.n_heads
    ):
        raise LabError(f"Need 1-{MAX_LAYERS} layers and d_model divisible by the number of heads.")
    if config.batch_size < 0:
        raise LabError("Batch size must be >= 0 (0 = full batch).")
    if config.grokfast and not (0 <= config.grokfast_alpha < 1 and config.grokfast_lamb >= 0):
        raise LabError("Grokfast needs 0 <= alpha < 1 and lamb >= 0.")
    pairs = n_pairs(config)
    n_train = int(round(config.train_frac * pairs))
    if n_train < 1 or n_train >= pairs:
        raise LabError(f"Train fraction {config.train_frac} leaves an empty train or test set for p={config.p}.")
    limit = (
        memory_limit_gb
        if memory_limit_gb is not None
        else float(os.environ.get("LAB_GROK_MEMORY_GB", DEFAULT_MEMORY_LIMIT_GB))
    )
    need = estimate_memory_bytes(config)
    if need > limit * 2**30:
        raise LabError(
            f"This configuration needs about {need / 2**30:.1f} GiB ({pairs:,} pairs for p={config.p}), "
            f"over the {limit:g} GiB limit: use a smaller p, a minibatch size, or raise LAB_GROK_MEMORY_GB."
        )
