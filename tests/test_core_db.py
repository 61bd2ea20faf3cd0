"""The state database: ownership and sharing rules, marks without lost updates across processes."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from engine.core.db import LabDB
from engine.core.errors import LabError


def test_ownership_and_sharing(tmp_path):
    db = LabDB(tmp_path / "lab.sqlite")
    access = db.claim_run("uq", "abc", "alice", label="my run")
    assert access.owner == "alice" and not access.shared
    assert db.claim_run("uq", "abc", "bob").owner == "alice"  # the first starter owns it
    a = db.access("uq", "abc")
    assert a.readable_by("alice") and a.writable_by("alice")
    assert not a.readable_by("bob") and not a.writable_by("bob")
    with pytest.raises(LabError, match="belongs to someone else"):
        db.set_shared("uq", "abc", "bob", True)
    db.set_shared("uq", "abc", "alice", True)
    a = db.access("uq", "abc")
    assert a.readable_by("bob") and not a.writable_by("bob")
    outside = db.access("uq", "made-by-cli")  # no owner row: readable by all, writable by none
    assert outside.readable_by("bob") and not outside.writable_by("bob") and not outside.writable_by("alice")
    with pytest.raises(LabError, match="outside the server"):
        db.require_write("uq", "made-by-cli", "alice")


def test_usage_and_forget(tmp_path):
    db = LabDB(tmp_path / "lab.sqlite")
    db.claim_run("uq", "a", "alice")
    db.claim_run("grokking", "b", "alice")
    db.set_bytes("uq", "a", 300)
    db.set_bytes("grokking", "b", 500)
    assert db.usage("alice") == 800 and [r[1] for r in db.runs_of("alice")] == ["b", "a"]
    db.set_marks("uq", "a", {"q1": True})
    db.forget_run("uq", "a")
    assert db.usage("alice") == 500 and db.marks("uq", "a") == {}


def _mark_many(path: str, prefix: str, n: int) -> None:
    db = LabDB(path)
    for i in range(n):
        db.set_marks("uq", "run", {f"{prefix}{i}": i % 2 == 0})


def test_concurrent_marks_lose_no_update(tmp_path):
    """Two processes and two threads each set 40 different marks at once: all 160 are kept."""
    path = str(tmp_path / "lab.sqlite")
    LabDB(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_mark_many, args=(path, p, 40)) for p in ("p", "q")]
    threads = [threading.Thread(target=_mark_many, args=(path, t, 40)) for t in ("s", "t")]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join(60)
    marks = LabDB(path).marks("uq", "run")
    assert len(marks) == 160 and marks["p0"] is True and marks["t1"] is False


def test_marks_clear_and_verdicts(tmp_path):
    db = LabDB(tmp_path / "lab.sqlite")
    db.set_marks("uq", "r", {"a": True, "b": False})
    db.set_marks("uq", "r", {"a": None})
    assert db.marks("uq", "r") == {"b": False}
    db.set_verdicts("uq", "r", "judge-lm", {"a": True, "b": None})
    assert db.verdicts("uq", "r", "judge-lm") == {"a": True, "b": None}
    assert db.verdicts("uq", "r", "other") == {}
