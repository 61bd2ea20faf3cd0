"""The lab's state database: one SQLite file beside the run folders (`cache/lab.sqlite`, WAL mode).

It holds what several people change at once on a shared server, each change one transaction: who
owns which run and whether it is shared with the group, people's display names and disk quotas,
manual marks and LLM-judge verdicts of uncertainty runs, and the long jobs running now (so a person's
concurrent jobs can be counted). The arrays stay in the run folders' record files.

Ownership: a run belongs to the person who started it (`owner`, an opaque owner id: a hash of the
key in that person's browser cookie, never the key itself and never part of a link). A run with no
owner row was made outside the server (the command line, a study): everyone may read it, nobody
may change it from the server. A private run is visible to its owner only; a shared run is readable
by everyone and writable by its owner only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from engine.core.errors import LabError
from engine.core.paths import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', created REAL NOT NULL, quota_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    topic TEXT NOT NULL, run_id TEXT NOT NULL, owner TEXT NOT NULL, shared INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL DEFAULT '', created REAL NOT NULL, bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, run_id)
);
CREATE INDEX IF NOT EXISTS runs_by_owner ON runs (owner);
CREATE TABLE IF NOT EXISTS marks (
    topic TEXT NOT NULL, run_id TEXT NOT NULL, qid TEXT NOT NULL, correct INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (topic, run_id, qid)
);
CREATE TABLE IF NOT EXISTS verdicts (
    topic TEXT NOT NULL, run_id TEXT NOT NULL, judge TEXT NOT NULL, qid TEXT NOT NULL, correct INTEGER,
    PRIMARY KEY (topic, run_id, judge, qid)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_key TEXT PRIMARY KEY, owner TEXT NOT NULL, label TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL,
    started REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class RunAccess:
    """Who may do what with one run, as seen by one person."""

    owner: str | None  # None: made outside the server
    shared: bool
    label: str
    bytes: int

    def readable_by(self, person: str) -> bool:
        return self.owner is None or self.shared or self.owner == person

    def writable_by(self, person: str) -> bool:
        return self.owner is not None and self.owner == person


class LabDB:
    """One connection per thread to the same file; every write is one `BEGIN IMMEDIATE` transaction."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "lab.sqlite"
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: writers queue, readers go on in WAL mode)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._conn().execute(sql, args).fetchall()

    # -- people
    def ensure_owner(self, owner: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO owners (owner, created) VALUES (?, ?)", (owner, time.time()))

    def name_of(self, owner: str) -> str:
        rows = self._read("SELECT name FROM owners WHERE owner = ?", (owner,))
        return rows[0][0] if rows else ""

    def set_name(self, owner: str, name: str) -> None:
        name = " ".join(str(name).split())[:60]
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO owners (owner, created) VALUES (?, ?)", (owner, time.time()))
            conn.execute("UPDATE owners SET name = ? WHERE owner = ?", (name, owner))

    def quota_of(self, owner: str, default: int) -> int:
        rows = self._read("SELECT quota_bytes FROM owners WHERE owner = ?", (owner,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else int(default)

    # -- runs
    def claim_run(self, topic: str, run_id: str, owner: str, label: str = "") -> RunAccess:
        """Record `owner` as the run's owner unless it already has one (first starter owns); its access."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO runs (topic, run_id, owner, label, created) VALUES (?, ?, ?, ?, ?)",
                (topic, run_id, owner, label, time.time()),
            )
        return self.access(topic, run_id)

    def access(self, topic: str, run_id: str) -> RunAccess:
        rows = self._read(
            "SELECT owner, shared, label, bytes FROM runs WHERE topic = ? AND run_id = ?", (topic, run_id)
        )
        if not rows:
            return RunAccess(None, True, "", 0)
        owner, shared, label, nbytes = rows[0]
        return RunAccess(owner, bool(shared), label, int(nbytes))

    def set_shared(self, topic: str, run_id: str, person: str, shared: bool) -> None:
        self.require_write(topic, run_id, person)
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET shared = ? WHERE topic = ? AND run_id = ?", (int(shared), topic, run_id))

    def require_write(self, topic: str, run_id: str, person: str) -> None:
        """LabError unless `person` owns the run."""
        access = self.access(topic, run_id)
        if not access.writable_by(person):
            whose = "was made outside the server" if access.owner is None else "belongs to someone else"
            raise LabError(f"This run {whose}: it is read-only for you. Start your own run to change it.")

    def set_bytes(self, topic: str, run_id: str, nbytes: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET bytes = ? WHERE topic = ? AND run_id = ?", (int(nbytes), topic, run_id))

    def forget_run(self, topic: str, run_id: str) -> None:
        with self.transaction() as conn:
            for table in ("runs", "marks", "verdicts"):
                conn.execute(f"DELETE FROM {table} WHERE topic = ? AND run_id = ?", (topic, run_id))  # noqa: S608

    def runs_of(self, owner: str) -> list[tuple[str, str, str, int]]:
        """(topic, run_id, label, bytes) of a person's runs, largest first."""
        return self._read("SELECT topic, run_id, label, bytes FROM runs WHERE owner = ? ORDER BY bytes DESC", (owner,))

    def usage(self, owner: str) -> int:
        return int(self._read("SELECT COALESCE(SUM(bytes), 0) FROM runs WHERE owner = ?", (owner,))[0][0])

    # -- marks and verdicts (one row per question: concurrent writers of different questions never collide)
    def marks(self, topic: str, run_id: str) -> dict[str, bool]:
        rows = self._read("SELECT qid, correct FROM marks WHERE topic = ? AND run_id = ?", (topic, run_id))
        return {qid: bool(value) for qid, value in rows}

    def set_marks(self, topic: str, run_id: str, changes: Mapping[str, bool | None]) -> None:
        """Set (True/False) or clear (None) the marks of some questions, leaving the others as they are."""
        now = time.time()
        with self.transaction() as conn:
            for qid, value in changes.items():
                if value is None:
                    conn.execute("DELETE FROM marks WHERE topic = ? AND run_id = ? AND qid = ?", (topic, run_id, qid))
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?)",
                        (topic, run_id, str(qid), int(bool(value)), now),
                    )

    def verdicts(self, topic: str, run_id: str, judge: str) -> dict[str, bool | None]:
        rows = self._read(
            "SELECT qid, correct FROM verdicts WHERE topic = ? AND run_id = ? AND judge = ?", (topic, run_id, judge)
        )
        return {qid: (None if value is None else bool(value)) for qid, value in rows}

    def set_verdicts(self, topic: str, run_id: str, judge: str, verdicts: Mapping[str, bool | None]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
                [(topic, run_id, judge, str(q), None if v is None else int(bool(v))) for q, v in verdicts.items()],
            )

    # -- long jobs running now (a person's concurrent jobs are counted against the server limit)
    def job_started(self, job_key: str, owner: str, label: str, pid: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)", (job_key, owner, label, pid, time.time())
            )

    def job_ended(self, job_key: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE job_key = ?", (job_key,))

    def jobs_of(self, owner: str, pid: int | None = None) -> list[tuple[str, str]]:
        """(job key, label) of a person's running jobs (of server process `pid` when given: rows a dead
        process left behind are not counted)."""
        if pid is None:
            return self._read("SELECT job_key, label FROM jobs WHERE owner = ?", (owner,))
        return self._read("SELECT job_key, label FROM jobs WHERE owner = ? AND pid = ?", (owner, pid))


_DBS: dict[Path, LabDB] = {}
_DBS_LOCK = threading.Lock()


def lab_db() -> LabDB:
    """The database of the current cache root (one object per path, per process)."""
    path = cache_dir() / "lab.sqlite"
    with _DBS_LOCK:
        if path not in _DBS:
            _DBS[path] = LabDB(path)
        return _DBS[path]
