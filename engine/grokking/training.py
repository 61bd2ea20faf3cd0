"""The training loop of a grokking run: AdamW on the full batch (or seeded minibatches), optionally
with a linear learning-rate warmup (lr_t = lr x min(1, (t + 1) / warmup_steps)), gradient clipping to a
global L2 norm, and the Grokfast EMA gradient filter g <- g + lamb * EMA_alpha(g) (Lee et al. 2024, arXiv
2405.20233; applied before clipping),
an evaluation row every eval_every steps and a checkpoint every checkpoint_every steps, written to the
run's folder (engine.grokking.runs). A stopped run keeps every checkpoint written so far and resumes
from the last one; a finished run reopens without training.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from engine.core.paths import atomic_write
from engine.grokking.config import GROK_ACCURACY, MAX_CHECKPOINTS, MEMORISATION_ACCURACY, GrokConfig, validate
from engine.grokking.llm import BOS_TOKEN, GrokLlama, vocabulary
from engine.grokking.models import build_model, evaluate, weight_norm
from engine.grokking.runs import METRIC_COLUMNS, GrokRun, checkpoints_to_drop, open_run
from engine.grokking.suppression import Suppression
from engine.grokking.tasks import Dataset, make_dataset
from engine.grokking.zeroing import ZEROING_COLUMNS, Zeroing

Stop = threading.Event | Callable[[], bool] | None  # asks a run to end cleanly at its next step


@dataclass
class TrainResult:
    """Outcome of `train`: the run, why it ended, and the last step reached."""

    run: GrokRun
    state: Literal["finished", "stopped"]
    step: int
    from_cache: bool
    seconds: float


class _GrokfastEMA:
    """Grokfast-EMA (Lee et al. 2024, Alg. 1): mu <- alpha mu + (1 - alpha) g;  g <- g + lamb mu."""

    def __init__(self, alpha: float, lamb: float, state: dict[str, torch.Tensor] | None = None):
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


def should_stop(stop: Stop) -> bool:
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def train(
    config: GrokConfig,
    *,
    root: Path | None = None,
    run_dir: Path | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[int, nn.Module, Dataset], None] | None = None,
    stop: Stop = None,
    threads: int | None = None,
    claim: bool = True,
    owner: str | None = None,
    max_checkpoints: int = MAX_CHECKPOINTS,
) -> TrainResult:
    """Train (or resume, or reopen) the run of `config` (engine.grokking.runs.open_run(config, root, run_dir,
    owner)).

    Every eval_every steps a metrics row {step, train_loss, train_acc, test_loss, test_acc,
    weight_norm, elapsed_s} is appended to metrics.csv and passed to on_eval. Train metrics are
    those of the full training set at the parameters before that step's update (full batch: the
    training forward itself); losses and accuracies are those of the answer (markov context: each pair in
    its fixed context, while the training loss also has the filler's next-token terms). Every
    checkpoint_every steps (and at the last step, and when stopped) the model state_dict is saved and
    on_checkpoint(step, model, data) is called.
    `stop` ends the run cleanly at the next step: the checkpoint of that step is written and the
    run resumes from it when `train` is called again. A finished run returns at once without
    training (from_cache=True). The run's claim is held while training (LabError at once when
    another thread or process writes the run); claim=False when the caller already holds it (a job
    of engine.core.jobs.RUNNER started with run=...).
    threads: torch intra-op threads while training (default: $LAB_GROK_THREADS, else unchanged);
    1 thread is fastest for these tiny models on a busy 2-core CPU (benchmarks/bench_grokking.py).
    The LLM-shaped model trains on CUDA when present. With config.suppress, each down projection is
    clipped after every suppress_every-th update (engine.grokking.suppression; LabError, run failed,
    when a clip would exceed its limit). At most `max_checkpoints` checkpoints stay on disk, thinned
    evenly (runs.checkpoints_to_drop keeps step 0, the checkpoints around memorisation and grokking,
    and the last).
    """
    validate(config)
    run = open_run(config, root, run_dir, owner)
    start_time = time.perf_counter()
    if run.is_finished():
        return TrainResult(run, "finished", run.status()["step"], True, 0.0)
    with run.claim("trained") if claim else contextlib.nullcontext():
        threads = threads or int(os.environ.get("LAB_GROK_THREADS", "0") or 0) or None
        if threads:
            _enter_threads(threads)
        try:
            return _train_claimed(run, on_eval, on_checkpoint, stop, start_time, max_checkpoints)
        except BaseException as err:
            state = "failed" if not isinstance(err, KeyboardInterrupt) else "stopped"
            run.set_status(state, run.status().get("step", 0), str(err))
            raise
        finally:
            if threads:
                _exit_threads()


_THREADS: dict[str, Any] = {"users": 0, "previous": None}
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


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (see engine.core.paths.atomic_write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def _train_claimed(
    run: GrokRun,
    on_eval: Callable[[dict[str, Any]], None] | None,
    on_checkpoint: Callable[[int, nn.Module, Dataset], None] | None,
    stop: Stop,
    start_time: float,
    max_checkpoints: int = MAX_CHECKPOINTS,
) -> TrainResult:
    config = run.grok_config
    device = "cuda" if config.model == "llm" and torch.cuda.is_available() else "cpu"
    data = make_dataset(config)
    model = build_model(config)
    if device != "cpu":
        model.to(device)
        data = Dataset(*(t.to(device) for t in (data.x_train, data.y_train, data.x_test, data.y_test)), data.p)
    suppression = Suppression.of(config)
    zeroing = Zeroing.of(config)
    zeroing_path = run.path / "zeroing.csv"
    bos_id = vocabulary(config.p, config.context == "markov")[BOS_TOKEN]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)
    )
    ema = _GrokfastEMA(config.grokfast_alpha, config.grokfast_lamb) if config.grokfast else None
    step, elapsed0, grok_step, mem_step = 0, 0.0, None, None
    reached_at, below = None, True  # the latest rise of test accuracy to GROK_ACCURACY; below it now
    resumed = run.resume_path.exists() and bool(run.checkpoint_steps())  # from a checkpoint, step 0 included

    if resumed:
        state = torch.load(run.resume_path, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema = _GrokfastEMA(config.grokfast_alpha, config.grokfast_lamb, state.get("ema"))
        step = int(state["step"])
        grok_step = state.get("grok_step")
        grok_step = None if grok_step is None or int(grok_step) < 0 else int(grok_step)
        _truncate_after(run, step)
        metrics = run.metrics()
        elapsed0 = float(metrics["elapsed_s"].iloc[-1]) if len(metrics) else 0.0
        memorised = metrics.loc[metrics["train_acc"] >= MEMORISATION_ACCURACY, "step"]
        mem_step = int(memorised.iloc[0]) if len(memorised) else None
        reached_at = latest_rise(metrics, GROK_ACCURACY)
        below = reached_at is None or bool(metrics["test_acc"].iloc[-1] < GROK_ACCURACY)
        for extra in run.checkpoint_steps():
            if extra > step:
                run.checkpoint_path(extra).unlink(missing_ok=True)
    else:
        for old in (
            run.metrics_path,
            run.measures_path,
            run.llm_measures_path,
            run.llm_causal_path,
            run.summary_path,
            zeroing_path,
        ):
            old.unlink(missing_ok=True)
        if run.ckpt_dir.exists():
            for old in run.ckpt_dir.glob("*.pt"):
                old.unlink()
    run.ckpt_dir.mkdir(exist_ok=True)
    run.set_status("running", step)
    resumed_at = step
    saved = set(run.checkpoint_steps())
    t0 = time.perf_counter() - elapsed0
    full_batch = config.batch_size <= 0 or config.batch_size >= len(data.y_train)
    new_file = not run.metrics_path.exists()
    with open(run.metrics_path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(METRIC_COLUMNS)
        # stop_after_grok counts from the latest time test accuracy rose to GROK_ACCURACY (a dip below and a
        # new rise restart it), so every run that reaches it can show whether it then holds (analysis.grok_outcome)
        end_step = config.steps if reached_at is None else _end_after(config, reached_at)
        while True:
            is_eval = step % config.eval_every == 0 or step == end_step
            model.train()
            if full_batch:
                xb, yb = data.x_train, data.y_train
            else:
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
                idx = torch.randint(len(data.y_train), (config.batch_size,), generator=gen).to(device)
                xb, yb = data.x_train[idx], data.y_train[idx]
            if isinstance(model, GrokLlama):
                loss, logits = model.train_loss(xb, yb, step)
            else:
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits, yb)
            if is_eval and not (resumed and step == resumed_at):
                model.eval()
                if full_batch and config.context != "markov":  # markov: the loss has filler terms; read the answer
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
                if mem_step is None and train_acc >= MEMORISATION_ACCURACY:
                    mem_step = step
                if grok_step is None and test_acc >= GROK_ACCURACY:
                    grok_step = step
                if below and test_acc >= GROK_ACCURACY:
                    end_step = _end_after(config, step)
                below = test_acc < GROK_ACCURACY
                if on_eval:
                    on_eval(row)
            done = step >= end_step
            stopping = not done and should_stop(stop)
            if (step % config.checkpoint_every == 0 or done or stopping) and step not in saved:
                model.eval()
                _atomic_save(model.state_dict(), run.checkpoint_path(step))
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "ema": ema.mu if ema else {},
                        "step": step,
                        "grok_step": -1 if grok_step is None else grok_step,
                    },
                    run.resume_path,
                )
                saved.add(step)
                for old in checkpoints_to_drop(sorted(saved), max_checkpoints, (mem_step, grok_step)):
                    run.checkpoint_path(old).unlink(missing_ok=True)
                    saved.discard(old)
                if on_checkpoint:
                    on_checkpoint(step, copy.deepcopy(model).eval(), data)  # a copy: the step's graph is alive
            if done or stopping:
                message = (
                    ""
                    if done
                    else f"stopped at step {step}; checkpoints up to here are kept and the run resumes from step {step}"
                )
                run.set_status("finished" if done else "stopped", step, message)
                return TrainResult(
                    run, "finished" if done else "stopped", step, False, time.perf_counter() - start_time
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ema is not None:
                ema.apply(model)
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if config.warmup_steps > 0:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
            optimizer.step()
            step += 1
            if suppression is not None and suppression.due(step):
                suppression.apply(model)
            if zeroing is not None and zeroing.due(step):
                assert isinstance(model, GrokLlama)
                _append_row(zeroing_path, ZEROING_COLUMNS, zeroing.apply(model.lm, bos_id, step))
            if step % config.eval_every == 0:
                run.set_status("running", step)


def latest_rise(metrics, threshold: float) -> int | None:
    """The step of the latest evaluation at which test accuracy rose to >= threshold (the first evaluation, or
    one after an evaluation below it); None when it never reached it."""
    if not len(metrics):
        return None
    acc = metrics["test_acc"].to_numpy()
    steps = metrics["step"].to_numpy()
    rises = [i for i in range(len(acc)) if acc[i] >= threshold and (i == 0 or acc[i - 1] < threshold)]
    return int(steps[rises[-1]]) if rises else None


def _end_after(config: GrokConfig, reached: int) -> int:
    """The last step of a run whose test accuracy rose to GROK_ACCURACY at `reached`: stop_after_grok steps
    later (rounded up to an evaluation), the step cap at most; the cap when stop_after_grok < 0."""
    if config.stop_after_grok < 0:
        return config.steps
    return min(config.steps, _round_up(reached + config.stop_after_grok, config.eval_every))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _append_row(path: Path, columns: list[str], row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(columns)
        writer.writerow([row[c] for c in columns])


def _truncate_after(run: GrokRun, step: int) -> None:
    """Drop metric / measure rows after `step` (written after the last checkpoint of a stopped run)."""
    for path in (
        run.metrics_path,
        run.measures_path,
        run.llm_measures_path,
        run.llm_causal_path,
        run.path / "zeroing.csv",
    ):
        if path.exists():
            frame = pd.read_csv(path)
            frame = frame[frame["step"] <= step]
            atomic_write(path, frame.to_csv(index=False))
