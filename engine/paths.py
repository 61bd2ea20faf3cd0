"""Where the lab keeps runtime data (`cache/` beside the repository unless LAB_CACHE_DIR is set)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the lab's cache root, `$LAB_CACHE_DIR` or `<repo>/cache`."""
    root = Path(os.environ.get("LAB_CACHE_DIR") or REPO_ROOT / "cache")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """`../shared/data` beside the checkout (present in CI), or None on a user's fresh clone."""
    path = Path(os.environ.get("LAB_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    return path if path.is_dir() else None
