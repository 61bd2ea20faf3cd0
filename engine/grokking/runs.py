"""The folder of a grokking run, on the lab's one run store (engine.core.runstore).

A run lives in `cache/grokking/<run id>/` (or `<root>/<run id>/`), its id the first 16 hex digits of
the hash of {"v": FORMAT_VERSION, **config fields} (`GrokConfig.key()`), so a configuration reopens its
run, and runs written before the run store keep their ids. Besides the store's `config.json`,
`status.json` and claim, a run holds `metrics.csv` (one row per evaluation step),
`checkpoints/step_XXXXXXX.pt` (model state_dict, `torch.save`, read back with
`torch.load(weights_only=True)`), `resume.pt` (optimiser and Grokfast state of the last checkpoint),
and (written by `engine.grokking.analysis`) `measures.csv` (llm runs: `llm_measures.csv`, one row of
engine.grokking.llm_measures scalars per checkpoint, and `llm_causal.csv`) and `summary.json`. A checkpoint
of the LLM-shaped model is exported on demand as a Hugging Face folder `hf/step_XXXXXXX/` that the first
tab opens as a local model (`GrokRun.export_checkpoint`). A person's run on the server has
{"owner": name} in its key (and in config.json), so it never collides with another person's run of the
same configuration; runs without an owner (the CLI's) keep their ids.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.core.errors import LabError
from engine.core.runstore import RunFolder, RunStore, read_json, write_json
from engine.grokking.config import RUN_ID_DIGITS, GrokConfig
from engine.grokking.llm import GrokLlama, save_checkpoint
from engine.grokking.measures import MEASURE_COLUMNS
from engine.grokking.models import build_model

CACHE_TOPIC = "grokking"
METRIC_COLUMNS = ["step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "elapsed_s"]


class RunEvents(TypedDict):
    """Events of one run (steps; None when they did not happen), see `run_events`."""

    memorisation_step: int | None
    grok_50_step: int | None
    grok_95_step: int | None
    final_train_acc: float | None
    final_test_acc: float | None
    last_step: int
    grokked: bool
    grokking_delay: int | None
    onsets: dict[str, int | None]
    lags: dict[str, int | None]
    outcome: NotRequired[str]  # grokked / collapsed / unconfirmed / never (analysis.grok_outcome)
    grok_step: NotRequired[int | None]  # grok_95 when the run grokked and held, else None
    time: NotRequired[int]  # the survival time: the grokking step, or the censoring step
    hold_steps: NotRequired[int]
    min_test_acc_after_grok: NotRequired[float | None]


class RunSummary(RunEvents):
    """summary.json of a run (a JSON object, so a typed dict): its configuration and state, and its events."""

    key: str
    config: dict[str, Any]
    state: str | None
    message: str
    onset_settings: dict[str, Any]
    seconds: NotRequired[float]  # training wall time, returned by run_experiment (not in summary.json)
    owner: NotRequired[str | None]
    zeroing: NotRequired[dict[str, Any] | None]  # llm runs that grokked: llm_measures.zeroing_outcome + "source"


def read_growing_csv(path: Path, columns: list[str], **read_options: Any) -> pd.DataFrame:
    """A CSV that a training run is appending to, as far as it is complete: an empty frame with `columns`
    when the file is absent or has no header yet, and never a half-written last line (read while it grows)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    text = text[: text.rfind("\n") + 1]  # complete lines only
    if not text.strip():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(io.StringIO(text), **read_options)


class GrokRun(RunFolder):
    """One grokking run's folder (which may not exist yet): its files, read as far as they got."""

    def __init__(self, path: Path, grok_config: GrokConfig, owner: str | None = None):
        super().__init__(path)
        self.grok_config = grok_config
        self.owner = owner
        self.ckpt_dir = self.path / "checkpoints"

    metrics_path = property(lambda self: self.path / "metrics.csv")
    measures_path = property(lambda self: self.path / "measures.csv")
    summary_path = property(lambda self: self.path / "summary.json")
    resume_path = property(lambda self: self.path / "resume.pt")
    llm_measures_path = property(lambda self: self.path / "llm_measures.csv")
    llm_causal_path = property(lambda self: self.path / "llm_causal.csv")

    def llm_measures(self) -> pd.DataFrame:
        """llm_measures.csv (one row per checkpoint of an llm run; empty when absent)."""
        return read_growing_csv(self.llm_measures_path, ["step"], dtype={"scan_candidates": str})

    def hf_folder(self, step: int) -> Path:
        """Where checkpoint `step` of an llm run is (or would be) exported as a Hugging Face folder."""
        return self.path / "hf" / f"step_{step:07d}"

    def export_checkpoint(self, step: int) -> Path:
        """Checkpoint `step` of an llm run as a Hugging Face folder (save_pretrained of model and tokenizer),
        written once; paste its path into the first tab's "Other (HF id or local folder)"."""
        if self.grok_config.model != "llm":
            raise LabError("Only checkpoints of the LLM-shaped model (--model llm) open as a local model.")
        folder = self.hf_folder(step)
        if not (folder / "config.json").is_file():
            model = self.load_model(step)
            assert isinstance(model, GrokLlama)
            save_checkpoint(model, folder)
        return folder

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics_path.exists()

    def metrics(self) -> pd.DataFrame:
        """metrics.csv (columns METRIC_COLUMNS; empty when absent)."""
        return read_growing_csv(self.metrics_path, METRIC_COLUMNS)

    def measures(self) -> pd.DataFrame:
        """measures.csv (columns engine.grokking.measures.MEASURE_COLUMNS; empty when absent)."""
        return read_growing_csv(self.measures_path, MEASURE_COLUMNS, dtype={"argmax": str})

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
            raise LabError(f"No checkpoint at step {step} in {self.path} (have {self.checkpoint_steps()[-5:]}).")
        model = build_model(self.grok_config)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        model.eval()
        return model

    def summary(self) -> RunSummary | None:
        """summary.json (written by engine.grokking.analysis.summarize), or None before the run was summarised."""
        summary = read_json(self.summary_path)
        return summary if isinstance(summary, dict) else None


def run_store(root: Path | None = None) -> RunStore:
    """The grokking runs: `cache/grokking/`, or `root/` when given."""
    return RunStore(CACHE_TOPIC, root, digits=RUN_ID_DIGITS)


def checkpoints_to_drop(steps: list[int], keep_max: int, events: tuple[int | None, ...] = ()) -> list[int]:
    """Checkpoint steps to delete so that at most `keep_max` stay (the shared demo's disk rule), thinning evenly.

    Always kept: the first (step 0) and the last checkpoint, and for each event step (memorisation,
    grokking) the checkpoints just before and at/after it; the rest keep evenly spaced survivors."""
    steps = sorted(steps)
    if len(steps) <= max(keep_max, 2):
        return []
    protect = {steps[0], steps[-1]}
    for event in events:
        if event is None:
            continue
        before = [s for s in steps if s < event]
        after = [s for s in steps if s >= event]
        protect.update(before[-1:] + after[:1])
    rest = [s for s in steps if s not in protect]
    room = max(0, keep_max - len(protect))
    if room >= len(rest):
        return []
    keep = {rest[round(i)] for i in np.linspace(0, len(rest) - 1, room)} if room else set()
    return [s for s in rest if s not in keep]


def run_for(config: GrokConfig, root: Path | None = None, owner: str | None = None) -> GrokRun:
    """The run of this configuration (of `owner`, when given), to read (nothing is created)."""
    return GrokRun(run_store(root).folder(config.key(owner)).path, config, owner)


def open_run(
    config: GrokConfig, root: Path | None = None, run_dir: Path | None = None, owner: str | None = None
) -> GrokRun:
    """The run of this configuration (of `owner`, when given), created when new: in the store (under `root`),
    or exactly in `run_dir`, which is refused when it holds a run of another configuration (nothing is
    overwritten)."""
    fields = {**dataclasses.asdict(config), **({"owner": owner} if owner else {})}
    if run_dir is None:
        return GrokRun(run_store(root).open(config.key_fields(owner), config=fields).path, config, owner)
    run = GrokRun(Path(run_dir), config, owner)
    if run.config_path.exists():
        if read_json(run.config_path) != fields:
            raise LabError(f"{run.path} holds a run of another configuration; pick another output folder.")
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.config_path, fields)
    return run


def _as_run(folder: RunFolder) -> GrokRun | None:
    """The folder as a run of this version, or None (unreadable config, or one from an older version)."""
    try:
        config = GrokConfig.from_json(folder.config)
        owner = folder.config.get("owner") or None
    except (TypeError, ValueError, AttributeError):
        return None
    return GrokRun(folder.path, config, owner) if config.key(owner) == folder.run_id else None


def list_runs(root: Path | None = None) -> list[GrokRun]:
    """Every run of this version, newest first."""
    return [run for run in map(_as_run, run_store(root).list()) if run is not None]


def strays(root: Path | None = None) -> list[RunFolder]:
    """Folders that are not runs of this version (from an older version, or half-created): never
    loaded, listed so they can be deleted."""
    store = run_store(root)
    return store.strays() + [folder for folder in store.list() if _as_run(folder) is None]


def get_run(run_id: str, root: Path | None = None) -> GrokRun:
    """A saved run by id; LabError when there is none of this version."""
    run = _as_run(run_store(root).get(run_id))
    if run is None:
        raise LabError(f"Run {run_id} is from an older version of the lab: it can only be deleted.")
    return run


def delete_run(run: str | RunFolder, root: Path | None = None) -> None:
    """Remove a run's folder (by id, or a folder of `list_runs`/`strays`); refused while it is being written."""
    run_store(root).delete(run)
