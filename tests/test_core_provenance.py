"""One provenance for every report and benchmark: versions, machine, device, commit, UTC time."""

from __future__ import annotations

import datetime
import os
import subprocess

import numpy as np
import pytest

from engine.core import provenance
from engine.core.paths import REPO_ROOT


def test_versions_are_the_installed_ones_and_missing_packages_say_so():
    found = provenance.versions()
    assert list(found)[:2] == ["python", "torch"]
    assert found["numpy"] == np.__version__
    assert {"scipy", "scikit-learn", "transformers", "pandas"} <= set(found)
    assert provenance.versions(("no-such-package-xyz",))["no-such-package-xyz"] == "not installed"


def test_machine_names_cores_cpu_device_and_gpu():
    import torch

    info = provenance.machine("cpu")
    assert info["cpu_cores"] == os.cpu_count() and info["device"] == "cpu" and info["cpu"]
    expected_gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    assert info["gpu"] == expected_gpu
    assert "device" not in provenance.machine()
    line = provenance.machine_line(info)
    assert f"{os.cpu_count()} CPU cores ({info['cpu']})" in line and line.endswith(", device cpu")
    assert ("no GPU" in line) == (expected_gpu == "none")


def test_git_commit_is_this_checkout_and_none_outside_one(tmp_path):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert provenance.git_commit().rstrip("+") == head.stdout.strip()
    assert provenance.git_commit(tmp_path) is None


def test_provenance_has_every_part_and_utc_time():
    found = provenance.provenance("cpu")
    assert set(found) == {"versions", "machine", "commit", "utc"}
    when = datetime.datetime.fromisoformat(found["utc"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


def test_versions_line():
    line = provenance.versions_line({"python": "3.11", "torch": "2.0"}, "abc123")
    assert line == "python 3.11, torch 2.0, lab commit abc123"
    assert provenance.versions_line({"numpy": "2"}) == "numpy 2"
