"""One run store for every feature: a run is a folder `<root>/<topic>/<run_id>/` whose id hashes what
determines it, so the same inputs reopen (and resume) the same run.

A `RunFolder` knows its `config.json` (written once, when the run is created), its `status.json`
(state, progress, message; rewritten atomically) and its claim: an exclusive `flock` on `.claim`
held by whoever is writing the run. The kernel drops a flock when its process dies, so unlike a pid
file a claim can never outlive its writer or be fooled by a reused pid; flocks on separate opens of
the file also exclude each other inside one process, so one claim rule serves threads and processes.
Everything else in the folder belongs to the feature (records, metrics, checkpoints).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from engine.core.errors import LabError
from engine.core.paths import atomic_write, cache_dir

RunState = Literal["new", "running", "stopped", "finished", "failed"]
CLAIM_FILE = ".claim"
LEGACY_FILES = ("lock",)  # a pid file written by lab versions before the run store: stale by construction


def run_id_for(key: dict[str, Any], digits: int = 12) -> str:
    """First `digits` hex digits of sha256 of the key's sorted JSON: same key, same run."""
    blob = json.dumps(key, sort_keys=True)  # ASCII-escaped, as run ids were always computed
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:digits]


def write_json(path: Path, obj: Any) -> None:
    """JSON written atomically (readers see the old or the new file, never half of one)."""
    atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=True).encode("utf-8"))


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


class RunFolder:
    """One run's folder: config, status and claim; safe to read while its writer appends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_id = self.path.name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def config(self) -> dict:
        """config.json ({} when missing or unreadable)."""
        return read_json(self.config_path, {}) or {}

    def exists(self) -> bool:
        return self.config_path.is_file()

    # -- status
    def status(self) -> dict:
        """{"state": RunState, "step": int, "message": str, "time": float} ("new" before any write)."""
        status = read_json(self.path / "status.json", None)
        return status if isinstance(status, dict) else {"state": "new", "step": 0, "message": "", "time": 0.0}

    def set_status(self, state: RunState, step: int = 0, message: str = "") -> None:
        write_json(
            self.path / "status.json", {"state": state, "step": int(step), "message": message, "time": time.time()}
        )

    # -- claim
    @contextlib.contextmanager
    def claim(self, what: str = "written") -> Iterator[None]:
        """Hold the run's exclusive claim for the duration of the block; LabError at once when another
        thread or process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        for legacy in LEGACY_FILES:
            (self.path / legacy).unlink(missing_ok=True)
        handle = open(self.path / CLAIM_FILE, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise LabError(
                    f"Run {self.run_id} is being {what} by another session or process right now; "
                    "open it to watch, or wait until it ends."
                ) from err
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def is_claimed(self) -> bool:
        """Whether a writer holds the claim right now (this or any other process)."""
        path = self.path / CLAIM_FILE
        if not path.exists():
            return False
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def modified(self) -> float:
        """When the run was created (config.json's mtime; 0 when missing)."""
        try:
            return self.config_path.stat().st_mtime
        except OSError:
            return 0.0


class RunStore:
    """The runs of one topic (`cache/<topic>/` unless `root` is given): open, get, list, delete.

    `digits` is the length of the hashed run id (grokking keeps 16 hex digits, uncertainty 12, as
    their runs were always named)."""

    def __init__(self, topic: str, root: Path | None = None, digits: int = 12):
        self.topic = topic
        self.digits = digits
        self._root = Path(root) if root is not None else None

    @property
    def root(self) -> Path:
        if self._root is not None:
            self._root.mkdir(parents=True, exist_ok=True)
            return self._root
        return cache_dir(self.topic)

    def run_id(self, key: dict[str, Any]) -> str:
        return run_id_for(key, self.digits)

    def folder(self, run_id: str) -> RunFolder:
        """The folder of a run id (which may not exist yet); LabError for a malformed id."""
        if not run_id or len(run_id) > 64 or not all(c in "0123456789abcdef" for c in run_id):
            raise LabError(f"Not a run id: {run_id!r}")
        return RunFolder(self.root / run_id)

    def open(self, key: dict[str, Any], config: dict[str, Any] | None = None) -> RunFolder:
        """The run for this key, created with `config` (default: the key) when new."""
        run = self.folder(self.run_id(key))
        if not run.exists():
            run.path.mkdir(parents=True, exist_ok=True)
            write_json(run.config_path, key if config is None else config)
        return run

    def get(self, run_id: str) -> RunFolder:
        """An existing run; LabError when there is none with this id."""
        run = self.folder(run_id)
        if not run.exists():
            raise LabError(f"No saved {self.topic} run {run_id}.")
        return run

    def _folders(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def list(self) -> list[RunFolder]:
        """Every run with a readable config.json, newest first."""
        runs = [RunFolder(p) for p in self._folders() if isinstance(read_json(p / "config.json"), dict)]
        return sorted(runs, key=lambda r: -r.modified())

    def strays(self) -> list[RunFolder]:
        """Folders without a readable config (half-created, or from another lab version): listed so they
        can be deleted, never loaded."""
        return [RunFolder(p) for p in sorted(self._folders()) if not isinstance(read_json(p / "config.json"), dict)]

    def delete(self, run: str | RunFolder) -> None:
        """Remove a run's folder (by id, or a folder from `list`/`strays`); refused while it is being written."""
        run = run if isinstance(run, RunFolder) else self.folder(run)
        if run.path.parent != self.root or not run.path.is_dir():
            raise LabError(f"No saved {self.topic} run {run.run_id}.")
        if run.is_claimed():
            raise LabError("This run is being written right now: stop it before deleting it.")
        shutil.rmtree(run.path, ignore_errors=True)
