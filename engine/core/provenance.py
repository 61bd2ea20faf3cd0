"""Where and with what a number was computed, in one place for every report and benchmark: package
versions, the machine (OS, CPU, cores, the device used and the GPU present), the lab's git commit and
the time in UTC.

    provenance(lm.device)  # {"versions": {...}, "machine": {...}, "commit": "a3ce17e", "utc": "2026-...+00:00"}

Nothing here imports torch at module level: a report that never touched a model stays light.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from engine.core.paths import REPO_ROOT

# The packages behind the numbers, by distribution name (the lab's own last).
PACKAGES = (
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "sentence-transformers",
    "llm-internals-lab",
)


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{"python": "3.11.7", package: installed version or "not installed", ...} in the order given."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git(root: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *words], cwd=root, capture_output=True, text=True, timeout=10)


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The short hash of the lab's checked-out commit, "+" appended when tracked files differ from it;
    None outside a git checkout (an installed copy) or without git."""
    try:
        head = _git(root, "rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name(device: Any = None) -> str | None:
    """The name of the CUDA GPU `device` names (the first GPU when `device` is not a CUDA device), None
    when no GPU is visible."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = torch.device(device) if device is not None and str(device).startswith("cuda") else 0
    return torch.cuda.get_device_name(index)


def machine(device: Any = None) -> dict[str, Any]:
    """{"platform", "processor", "cpu", "cpu_cores", "python", "device" (when given), "gpu"}: the machine
    a computation ran on; "gpu" is the GPU present ("none" without one), "device" the one used."""
    out: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    if device is not None:
        out["device"] = str(device)
    out["gpu"] = gpu_name(device) or "none"
    return out


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (2026-12-06T21:44:39+00:00)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(device: Any = None) -> dict[str, Any]:
    """{"versions": versions(), "machine": machine(device), "commit": git_commit(), "utc": utc_now()}."""
    return {"versions": versions(), "machine": machine(device), "commit": git_commit(), "utc": utc_now()}


def machine_line(info: dict[str, Any]) -> str:
    """One line for a report: "Linux-6.1-x86_64-with-glibc2.36, 2 CPU cores (AMD EPYC), no GPU"
    (and ", device cuda:0" when the machine dict names the device used)."""
    gpu = info.get("gpu", "none")
    text = f"{info['platform']}, {info['cpu_cores']} CPU cores ({info['cpu']}), {'no GPU' if gpu == 'none' else gpu}"
    return text + (f", device {info['device']}" if "device" in info else "")


def versions_line(installed: dict[str, str], commit: str | None = None) -> str:
    """One line for a report: "python 3.11.7, torch 2.13.0+cpu, ..., lab commit a3ce17e"."""
    parts = [f"{name} {version}" for name, version in installed.items()]
    return ", ".join(parts + ([f"lab commit {commit}"] if commit else []))
