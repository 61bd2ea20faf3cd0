"""Where the lab keeps runtime data (`cache/` beside the repository unless LAB_CACHE_DIR is set)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "engine" / "data"  # bundled data (evaluation text, question set, prompts, coordinates)


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


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file so that readers (and a killed process) only ever see the old or the new content:
    write a unique temporary sibling, fsync it, then `os.replace` it over `path`."""
    import threading

    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
