"""Grokking of modular arithmetic on a CPU: tasks, models, training loop and an on-disk run cache.

Task: predict c = (a o b) mod p from (a, b) for every pair (Power et al. 2022, arXiv 2201.02177);
a random `train_frac` of the p^2 pairs is the training set, the rest the test set. Models: a
small transformer without LayerNorm (tokens [a, b, =], 1-2 layers, d_model 128, 4 heads, ReLU MLP;
Nanda et al. 2023, arXiv 2301.05217) or an MLP on the concatenated one-hot codes of a and b
(Prieto et al. 2025, arXiv 2501.04697). Optimiser: AdamW, optionally with the Grokfast EMA
gradient filter g <- g + lamb * EMA_alpha(g) (Lee et al. 2024, arXiv 2405.20233).

A run lives in `cache/grokking/<key>/` where key is a hash of its configuration: `config.json`,
`metrics.csv` (one row per evaluation step), `checkpoints/step_XXXXXXX.pt` (model state_dict,
`torch.save`, read back with `torch.load(weights_only=True)`), `resume.pt` (optimiser and
Grokfast state of the last checkpoint), `status.json`, and (written by `engine.grokking.analysis`)
`measures.csv` and `summary.json`. A stopped run keeps every checkpoint written so far and
resumes from the last one; a finished run reopens without training.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.core.errors import LabError
from engine.core.paths import atomic_write, cache_dir

CACHE_TOPIC = "grokking"
FORMAT_VERSION = 1
METRIC_COLUMNS = ["step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "elapsed_s"]

# name -> (label, function of int64 tensors a, b and p, needs an inverse mod p)
TASKS: dict[str, tuple[str, Callable, bool]] = {
    "add": ("(a + b) mod p", lambda a, b, p: (a + b) % p, False),
    "sub": ("(a - b) mod p", lambda a, b, p: (a - b) % p, False),
    "mul": ("(a * b) mod p", lambda a, b, p: (a * b) % p, False),
    "div": ("(a / b) mod p, b != 0", None, True),
    "sq_sum": ("(a^2 + b^2) mod p", lambda a, b, p: (a * a + b * b) % p, False),
    "cube_ab": ("(a^3 + a*b) mod p", lambda a, b, p: (a * a % p * a + a * b) % p, False),
}
MODEL_KINDS = ("transformer", "mlp")
DEFAULT_MEMORY_LIMIT_GB = 6.0  # refuse configurations whose estimate exceeds this (LAB_GROK_MEMORY_GB)


@dataclass(frozen=True)
class GrokConfig:
    """Everything that determines a run (its cache key is a hash of these fields).

    batch_size 0 = full batch. eval_every: steps between evaluations (one metrics row each);
    checkpoint_every: steps between checkpoints (a multiple of eval_every). stop_after_grok: when
    >= 0, end the run that many steps after test accuracy first reaches 95% (-1: train all steps).
    """

    task: str = "add"
    p: int = 53
    train_frac: float = 0.6
    seed: int = 0
    model: str = "mlp"
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    mlp_width: int = 256
    lr: float = 3e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    batch_size: int = 0
    steps: int = 3000
    eval_every: int = 25
    checkpoint_every: int = 100
    grokfast: bool = True
    grokfast_alpha: float = 0.98
    grokfast_lamb: float = 2.0
    stop_after_grok: int = 500

    def key(self) -> str:
        """Cache key: first 16 hex digits of sha256 of the sorted JSON of the fields."""
        blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> GrokConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        model = (
            f"transformer {self.n_layers}L d{self.d_model} {self.n_heads}h"
            if self.model == "transformer"
            else f"MLP {self.n_layers}x{self.mlp_width}"
        )
        opt = f"AdamW lr {self.lr:g} wd {self.weight_decay:g}" + (" + Grokfast" if self.grokfast else "")
        return f"{TASKS[self.task][0]}, p={self.p}, train {self.train_frac:.0%}, seed {self.seed}, {model}, {opt}"


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def estimate_memory_bytes(config: GrokConfig) -> int:
    """Rough peak memory of a run: data + parameters/optimiser state + activations of one batch.

    Activations (float32, kept for backward, x3 for gradients and temporaries) per example:
    transformer 3 positions x (d_model x 8 + d_mlp x 2 + heads x 3) per layer + logits;
    MLP 2p inputs + 2 x width per layer + logits. Evaluation runs in chunks, so the batch is the
    training batch (the whole training set when full batch).
    """
    p = config.p
    n_pairs = p * (p - 1) if TASKS.get(config.task, ("", None, False))[2] else p * p
    n_train = max(1, int(round(config.train_frac * n_pairs)))
    batch = n_train if config.batch_size <= 0 else min(config.batch_size, n_train)
    if config.model == "mlp":
        params = 2 * p * config.mlp_width + (config.n_layers - 1) * config.mlp_width**2 + config.mlp_width * p
        per_example = 2 * p + 2 * config.mlp_width * config.n_layers + 2 * p
    else:
        d = config.d_model
        params = (p + 1) * d + 3 * d + config.n_layers * (4 * d * d + 2 * d * config.d_mlp) + d * p
        per_example = 3 * config.n_layers * (8 * d + 2 * config.d_mlp + 3 * config.n_heads) + 3 * d + 2 * p
    data = n_pairs * 3 * 8
    return int(data + params * 4 * 5 + batch * per_example * 4 * 3)


def validate(config: GrokConfig, memory_limit_gb: float | None = None) -> None:
    """Refuse a configuration with a one-line reason (LabError) before anything is allocated."""
    if config.task not in TASKS:
        raise LabError(f"Unknown task {config.task!r}; choose one of {', '.join(TASKS)}.")
    if config.model not in MODEL_KINDS:
        raise LabError(f"Unknown model {config.model!r}; choose transformer or mlp.")
    if not isinstance(config.p, int) or config.p < 3:
        raise LabError(f"p must be an integer >= 3 (got {config.p}).")
    label, _, needs_inverse = TASKS[config.task]
    if needs_inverse and not is_prime(config.p):
        raise LabError(
            f"{label} needs every b != 0 to have an inverse mod p, which holds only for prime p; "
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
        config.n_layers not in (1, 2, 3, 4)
        or config.d_model < 4
        or config.n_heads < 1
        or config.d_model % config.n_heads
    ):
        raise LabError("Need 1-4 layers and d_model divisible by the number of heads.")
    if config.batch_size < 0:
        raise LabError("Batch size must be >= 0 (0 = full batch).")
    if config.grokfast and not (0 <= config.grokfast_alpha < 1 and config.grokfast_lamb >= 0):
        raise LabError("Grokfast needs 0 <= alpha < 1 and lamb >= 0.")
    n_pairs = config.p * (config.p - 1) if needs_inverse else config.p**2
    n_train = int(round(config.train_frac * n_pairs))
    if n_train < 1 or n_train >= n_pairs:
        raise LabError(f"Train fraction {config.train_frac} leaves an empty train or test set for p={config.p}.")
    limit = (
        memory_limit_gb
        if memory_limit_gb is not None
        else float(os.environ.get("LAB_GROK_MEMORY_GB", DEFAULT_MEMORY_LIMIT_GB))
    )
    need = estimate_memory_bytes(config)
    if need > limit * 2**30:
        raise LabError(
            f"This configuration needs about {need / 2**30:.1f} GiB ({n_pairs:,} pairs for p={config.p}), "
            f"over the {limit:g} GiB limit: use a smaller p, a minibatch size, or raise LAB_GROK_MEMORY_GB."
        )


# ----------------------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """All pairs (a, b) of the task, split by a seeded permutation. x: int64 [n, 2], y: int64 [n]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    p: int


def make_dataset(config: GrokConfig) -> Dataset:
    p = config.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if config.task == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), p - 2, p) if v else 0 for v in range(p)])
        y = (a * inverse[b]) % p
    else:
        y = TASKS[config.task][1](a, b, p)
    x = torch.stack([a, b], dim=1)
    perm = torch.from_numpy(np.random.default_rng(config.seed).permutation(len(y)))
    n_train = int(round(config.train_frac * len(y)))
    tr, te = perm[:n_train], perm[n_train:]
    return Dataset(x[tr], y[tr], x[te], y[te], p)


# --------------------------------------------------------------------------------------- models


class Block(nn.Module):
    """Residual attention + ReLU MLP block without LayerNorm (as in Nanda et al. 2023)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads = n_heads
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.W_in = nn.Linear(d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.n_heads

        def split(z):
            return z.view(n, t, h, d // h).transpose(1, 2)

        attn = nn.functional.scaled_dot_product_attention(
            split(self.W_Q(x)), split(self.W_K(x)), split(self.W_V(x)), is_causal=True
        )
        x = x + self.W_O(attn.transpose(1, 2).reshape(n, t, d))
        return x + self.W_out(torch.relu(self.W_in(x)))


class GrokTransformer(nn.Module):
    """Tokens [a, b, =] (vocabulary p + 1), learned position embeddings, blocks, unembedding at '='."""

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, n_layers: int = 1):
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, p, bias=False)

    def forward(self, x: torch.Tensor, acts: dict | None = None) -> torch.Tensor:
        tokens = torch.cat([x, torch.full_like(x[:, :1], self.p)], dim=1)
        h = self.embed(tokens) + self.pos
        for i, block in enumerate(self.blocks):
            h = block(h)
            if acts is not None:
                acts[f"block{i}.resid_out"] = h.detach()
        return self.unembed(h[:, -1])


class GrokMLP(nn.Module):
    """MLP on concat(one_hot(a), one_hot(b)) (2p inputs), n_layers ReLU hidden layers, p logits."""

    def __init__(self, p: int, width: int = 256, n_layers: int = 1):
        super().__init__()
        self.p = p
        sizes = [2 * p] + [width] * n_layers
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(width, p)

    def forward(self, x: torch.Tensor, acts: dict | None = None) -> torch.Tensor:
        h = torch.cat([nn.functional.one_hot(x[:, 0], self.p), nn.functional.one_hot(x[:, 1], self.p)], dim=1).float()
        for i, layer in enumerate(self.hidden):
            z = layer(h)
            if acts is not None:  # pre-ReLU, like a residual stream: post-ReLU medians are mostly 0
                acts[f"hidden{i}.pre_relu"] = z.detach()
            h = torch.relu(z)
        return self.out(h)


def build_model(config: GrokConfig) -> nn.Module:
    """A freshly initialised model, seeded by config.seed (same seed -> same initial weights)."""
    torch.manual_seed(config.seed)
    if config.model == "mlp":
        return GrokMLP(config.p, config.mlp_width, config.n_layers)
    return GrokTransformer(config.p, config.d_model, config.n_heads, config.d_mlp, config.n_layers)


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's 2-D weight matrices by parameter name (biases and vectors left out)."""
    return {name: param for name, param in model.named_parameters() if param.ndim == 2}


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters, sqrt(sum_i w_i^2)."""
    with torch.no_grad():
        return float(torch.sqrt(sum((param.double() ** 2).sum() for param in model.parameters())).item())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model on (x, y), in chunks."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), chunk):
        logits = model(x[start : start + chunk])
        target = y[start : start + chunk]
        loss_sum += nn.functional.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return loss_sum / len(y), correct / len(y)


# ------------------------------------------------------------------------------------ run cache


class RunCache:
    """Files of one run under `cache/grokking/<config.key()>/`, `root/<key>/`, or exactly `run_dir/`.

    A run_dir that already holds a run of another configuration is refused (nothing is overwritten).
    """

    def __init__(self, config: GrokConfig, root: Path | None = None, run_dir: Path | None = None):
        self.config = config
        if run_dir is not None:
            self.dir = Path(run_dir)
            existing = self.dir / "config.json"
            if existing.exists() and json.loads(existing.read_text()) != dataclasses.asdict(config):
                raise LabError(f"{self.dir} holds a run of another configuration; pick another output folder.")
        else:
            self.dir = Path(root) / config.key() if root else cache_dir(CACHE_TOPIC, config.key())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.dir / "checkpoints"

    # paths
    metrics_path = property(lambda self: self.dir / "metrics.csv")
    measures_path = property(lambda self: self.dir / "measures.csv")
    summary_path = property(lambda self: self.dir / "summary.json")
    status_path = property(lambda self: self.dir / "status.json")
    resume_path = property(lambda self: self.dir / "resume.pt")

    def status(self) -> dict:
        """{"state": "new"|"running"|"stopped"|"finished"|"failed", "step": int, "message": str}."""
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"state": "new", "step": 0, "message": ""}

    def set_status(self, state: str, step: int, message: str = "") -> None:
        atomic_write(
            self.status_path, json.dumps({"state": state, "step": step, "message": message, "time": time.time()})
        )

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics_path.exists()

    def metrics(self):
        """metrics.csv as a pandas DataFrame (empty with the right columns when absent)."""
        import pandas as pd

        if not self.metrics_path.exists():
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.read_csv(self.metrics_path)

    def checkpoint_steps(self) -> list[int]:
        if not self.ckpt_dir.exists():
            return []
        return sorted(int(f.stem.split("_")[1]) for f in self.ckpt_dir.glob("step_*.pt"))

    def checkpoint_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:07d}.pt"

    def load_model(self, step: int) -> nn.Module:
        """The model at a checkpoint (torch.load(weights_only=True) of its state_dict)."""
        path = self.checkpoint_path(step)
        if not path.exists():
            raise LabError(f"No checkpoint at step {step} in {self.dir} (have {self.checkpoint_steps()[-5:]}).")
        model = build_model(self.config)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        model.eval()
        return model

    def summary(self) -> dict | None:
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None


def _atomic_save(obj, path: Path) -> None:
    """torch.save, atomically (see engine.paths.atomic_write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


_ACTIVE: set[str] = set()  # run dirs being trained in this process
_ACTIVE_LOCK = threading.Lock()


def _claim(cache: RunCache) -> None:
    """One writer per run: refuse when this process or another live process is training it."""
    lock = cache.dir / "lock"
    with _ACTIVE_LOCK:
        if str(cache.dir) in _ACTIVE:
            raise LabError("This configuration is already being trained (by another session); open it to watch.")
        try:
            other = int(lock.read_text())
        except (OSError, ValueError):
            other = None
        if other and other != os.getpid() and _pid_alive(other):
            raise LabError(
                f"This configuration is already being trained by process {other}; wait or pick another seed."
            )
        lock.write_text(str(os.getpid()))
        _ACTIVE.add(str(cache.dir))


def _release(cache: RunCache) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(cache.dir))
        (cache.dir / "lock").unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_training(config: GrokConfig, root: Path | None = None) -> bool:
    """Whether a run of this configuration is training in this process right now."""
    directory = Path(root) / config.key() if root else cache_dir(CACHE_TOPIC) / config.key()
    return str(directory) in _ACTIVE


# ------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """Outcome of `train`: the run's cache, why it ended, and the last step reached."""

    cache: RunCache
    state: str  # "finished" | "stopped"
    step: int
    from_cache: bool
    seconds: float


class _GrokfastEMA:
    """Grokfast-EMA (Lee et al. 2024, Alg. 1): mu <- alpha mu + (1 - alpha) g;  g <- g + lamb mu."""

    def __init__(self, alpha: float, lamb: float, state: dict | None = None):
        self.alpha, self.lamb = alpha, lamb
        self.mu: dict[str, torch.Tensor] = dict(state or {})

    def apply(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if param.grad is None:
                continue
            g = param.grad.detach()
            mu = self.mu.get(name)
            self.mu[name] = g.clone() if mu is None else mu.mul_(self.alpha).add_(g, alpha=1 - self.alpha)
            param.grad.add_(self.mu[name], alpha=self.lamb)


def train(
    config: GrokConfig,
    *,
    root: Path | None = None,
    run_dir: Path | None = None,
    on_eval: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[int, nn.Module, Dataset], None] | None = None,
    stop: threading.Event | Callable[[], bool] | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train (or resume, or reopen) the run of `config`, writing its cache as it goes.

    Every eval_every steps a metrics row {step, train_loss, train_acc, test_loss, test_acc,
    weight_norm, elapsed_s} is appended to metrics.csv and passed to on_eval. Train metrics are
    those of the full training set at the parameters before that step's update (full batch: the
    training forward itself). Every checkpoint_every steps (and at the last step, and when
    stopped) the model state_dict is saved and on_checkpoint(step, model, data) is called.
    `stop` (an Event or a callable) ends the run cleanly at the next step: the checkpoint of that
    step is written and the run resumes from it when `train` is called again.
    A finished run returns at once without training (from_cache=True).
    threads: torch intra-op threads while training (default: $LAB_GROK_THREADS, else unchanged);
    1 thread is fastest for these tiny models on a busy 2-core CPU (benchmarks/bench_grokking.py).
    """
    validate(config)
    cache = RunCache(config, root, run_dir)
    start_time = time.perf_counter()
    if cache.is_finished():
        return TrainResult(cache, "finished", cache.status()["step"], True, 0.0)
    _claim(cache)
    threads = threads or int(os.environ.get("LAB_GROK_THREADS", "0") or 0) or None
    if threads:
        _enter_threads(threads)
    try:
        return _train_locked(config, cache, on_eval, on_checkpoint, stop, start_time)
    except BaseException as err:
        cache.set_status(
            "failed" if not isinstance(err, KeyboardInterrupt) else "stopped", cache.status().get("step", 0), str(err)
        )
        raise
    finally:
        if threads:
            _exit_threads()
        _release(cache)


_THREADS = {"users": 0, "previous": None}
_THREADS_LOCK = threading.Lock()


def _enter_threads(n: int) -> None:
    """torch.set_num_threads is process-wide: the first concurrent run sets it, the last restores it."""
    with _THREADS_LOCK:
        if _THREADS["users"] == 0:
            _THREADS["previous"] = torch.get_num_threads()
            torch.set_num_threads(n)
        _THREADS["users"] += 1


def _exit_threads() -> None:
    with _THREADS_LOCK:
        _THREADS["users"] -= 1
        if _THREADS["users"] == 0 and _THREADS["previous"]:
            torch.set_num_threads(_THREADS["previous"])


def _should_stop(stop) -> bool:
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def _train_locked(config, cache, on_eval, on_checkpoint, stop, start_time) -> TrainResult:
    data = make_dataset(config)
    model = build_model(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    ema = _GrokfastEMA(config.grokfast_alpha, config.grokfast_lamb) if config.grokfast else None
    step, elapsed0, grok_step = 0, 0.0, None
    cache.dir.joinpath("config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))

    if cache.resume_path.exists() and cache.checkpoint_steps():
        state = torch.load(cache.resume_path, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema = _GrokfastEMA(config.grokfast_alpha, config.grokfast_lamb, state.get("ema"))
        step = int(state["step"])
        grok_step = state.get("grok_step")
        grok_step = None if grok_step is None or int(grok_step) < 0 else int(grok_step)
        _truncate_after(cache, step)
        metrics = cache.metrics()
        elapsed0 = float(metrics["elapsed_s"].iloc[-1]) if len(metrics) else 0.0
        for extra in cache.checkpoint_steps():
            if extra > step:
                cache.checkpoint_path(extra).unlink(missing_ok=True)
    else:
        for old in (cache.metrics_path, cache.measures_path, cache.summary_path):
            old.unlink(missing_ok=True)
        if cache.ckpt_dir.exists():
            for old in cache.ckpt_dir.glob("*.pt"):
                old.unlink()
    cache.ckpt_dir.mkdir(exist_ok=True)
    cache.set_status("running", step)
    resumed = step > 0
    resumed_at = step
    saved = set(cache.checkpoint_steps())
    t0 = time.perf_counter() - elapsed0
    full_batch = config.batch_size <= 0 or config.batch_size >= len(data.y_train)
    new_file = not cache.metrics_path.exists()
    with open(cache.metrics_path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(METRIC_COLUMNS)
        end_step = config.steps
        while True:
            is_eval = step % config.eval_every == 0 or step == end_step
            model.train()
            if full_batch:
                xb, yb = data.x_train, data.y_train
            else:
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
                idx = torch.randint(len(data.y_train), (config.batch_size,), generator=gen)
                xb, yb = data.x_train[idx], data.y_train[idx]
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            if is_eval and not (resumed and step == resumed_at):
                model.eval()
                if full_batch:
                    train_loss, train_acc = loss.item(), (logits.argmax(-1) == yb).float().mean().item()
                else:
                    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
                test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
                row = {
                    "step": step,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "weight_norm": weight_norm(model),
                    "elapsed_s": time.perf_counter() - t0,
                }
                writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in METRIC_COLUMNS])
                handle.flush()
                if grok_step is None and test_acc >= 0.95:
                    grok_step = step
                    if config.stop_after_grok >= 0:
                        end_step = min(config.steps, _round_up(step + config.stop_after_grok, config.eval_every))
                if on_eval:
                    on_eval(row)
            done = step >= end_step
            stopping = not done and _should_stop(stop)
            if (step % config.checkpoint_every == 0 or done or stopping) and step not in saved:
                model.eval()
                _atomic_save(model.state_dict(), cache.checkpoint_path(step))
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "ema": ema.mu if ema else {},
                        "step": step,
                        "grok_step": -1 if grok_step is None else grok_step,
                    },
                    cache.resume_path,
                )
                saved.add(step)
                if on_checkpoint:
                    on_checkpoint(step, copy.deepcopy(model).eval(), data)  # a copy: the step's graph is alive
            if done or stopping:
                state = "finished" if done else "stopped"
                message = (
                    ""
                    if done
                    else f"stopped at step {step}; checkpoints up to here are kept and the run resumes from step {step}"
                )
                cache.set_status(state, step, message)
                return TrainResult(cache, state, step, False, time.perf_counter() - start_time)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ema is not None:
                ema.apply(model)
            optimizer.step()
            step += 1
            if step % config.eval_every == 0:
                cache.set_status("running", step)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _truncate_after(cache: RunCache, step: int) -> None:
    """Drop metric / measure rows after `step` (written after the last checkpoint of a stopped run)."""
    import pandas as pd

    for path in (cache.metrics_path, cache.measures_path):
        if path.exists():
            frame = pd.read_csv(path)
            frame = frame[frame["step"] <= step]
            atomic_write(path, frame.to_csv(index=False))


def list_runs(root: Path | None = None) -> list[tuple[GrokConfig, dict]]:
    """Every cached run (config, status), newest first."""
    base = Path(root) if root else cache_dir(CACHE_TOPIC)
    runs = []
    for cfg_path in base.glob("*/config.json"):
        try:
            fields = json.loads(cfg_path.read_text())
            config = GrokConfig(
                **{k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(GrokConfig)}}
            )
        except (ValueError, TypeError):
            continue
        if config.key() != cfg_path.parent.name:
            continue
        runs.append((config, RunCache(config, root).status(), cfg_path.stat().st_mtime))
    runs.sort(key=lambda r: -r[2])
    return [(c, s) for c, s, _ in runs]


def delete_run(config: GrokConfig, root: Path | None = None) -> None:
    """Remove a cached run (metrics, checkpoints, summary); refused while it is training."""
    if is_training(config, root):
        raise LabError("This run is training right now: stop it before deleting it.")
    base = Path(root) if root else cache_dir(CACHE_TOPIC)
    target = base / config.key()
    if target.is_dir():
        shutil.rmtree(target)
