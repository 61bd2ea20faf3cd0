"""engine.core.processes.run_in_process: a computation in a spawned child, waited on by a job thread.

The child functions are module-level (a spawned child imports this module by name); the module imports
nothing heavy at the top so each child starts quickly.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from engine.core.errors import LabError
from engine.core.processes import run_in_process


def _add(a: int, b: int, *, stop, report) -> int:
    return a + b


def _lab_error(*, stop, report) -> None:
    raise LabError("p must be prime (try 11)")


def _other_error(*, stop, report) -> None:
    raise ZeroDivisionError("division by zero in the child")


def _killed(*, stop, report) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    time.sleep(30)


def _counts(n: int, *, stop, report) -> int:
    for i in range(n):
        report({"i": i})
    return n


def _until_stopped(*, stop, report) -> str:
    report("started")
    for _ in range(600):  # at most 60 s
        if stop():
            return "stopped cleanly"
        time.sleep(0.1)
    return "never stopped"


def _ignores_stop(*, stop, report) -> None:
    for _ in range(600):  # reports on, never looks at stop()
        report("busy")
        time.sleep(0.1)


def _owner(*, stop, report) -> tuple[str, int]:
    from engine.core.queue import current_owner

    return current_owner(), os.getpid()


def _niceness(*, stop, report) -> int:
    return os.nice(0)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="os.nice is POSIX only")
def test_the_child_runs_at_a_lower_cpu_priority_than_the_server():
    """Training children must not take the CPU from the server's page scripts (the soak's frozen pages)."""
    from engine.core.processes import CHILD_NICENESS

    here = os.nice(0)
    assert CHILD_NICENESS > 0
    assert run_in_process(_niceness, {}) == min(here + CHILD_NICENESS, 19)
    assert os.nice(0) == here  # the server's own priority is unchanged


def test_returns_the_value_and_acts_for_the_same_owner():
    from engine.core.queue import acting_as

    assert run_in_process(_add, {"a": 2, "b": 3}) == 5
    with acting_as("alice-owner-id"):
        owner, pid = run_in_process(_owner, {})
    assert owner == "alice-owner-id" and pid != os.getpid()


def test_the_parents_main_script_is_not_run_again_in_the_child(tmp_path, monkeypatch):
    """Under Streamlit, `__main__` is the page script: the child must not execute it."""
    import types

    marker = tmp_path / "ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('the page ran in the child')\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    assert run_in_process(_add, {"a": 4, "b": 5}) == 9
    assert not marker.exists() and sys.modules["__main__"] is page


def test_a_lab_error_arrives_with_its_message_another_error_named():
    with pytest.raises(LabError) as err:
        run_in_process(_lab_error, {})
    assert str(err.value) == "p must be prime (try 11)"
    with pytest.raises(LabError, match="ZeroDivisionError: division by zero in the child"):
        run_in_process(_other_error, {})


def test_a_child_killed_by_a_signal_is_a_lab_error_and_the_parent_goes_on():
    with pytest.raises(LabError, match=r"the training process was killed \(signal 9: out of memory\?\)"):
        run_in_process(_killed, {})
    assert run_in_process(_add, {"a": 1, "b": 1}) == 2


def test_messages_arrive_in_order_in_the_waiting_thread():
    seen: list = []
    assert run_in_process(_counts, {"n": 200}, on_message=seen.append, poll_s=0.05) == 200
    assert seen == [{"i": i} for i in range(200)]


def test_a_stop_of_the_job_ends_the_child_cleanly():
    from engine.core.jobs import Job

    job = Job(key="test-stop")
    start = time.monotonic()
    result = run_in_process(_until_stopped, {}, job=job, on_message=lambda m: job.stop(), poll_s=0.1)
    assert result == "stopped cleanly" and time.monotonic() - start < 30


def test_a_child_that_ignores_the_stop_is_ended_after_the_grace():
    from engine.core.jobs import Job

    job = Job(key="test-ignore")
    start = time.monotonic()
    from engine.core.processes import StopTimeout

    with pytest.raises(StopTimeout, match="did not stop within 1 s"):
        run_in_process(_ignores_stop, {}, job=job, on_message=lambda m: job.stop(), poll_s=0.1, grace_s=1.0)
    assert time.monotonic() - start < 30
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.name == "lab-_ignores_stop"]


def test_a_grokking_run_through_a_child_gives_the_in_process_metrics(tmp_path, monkeypatch):
    """The page's path (a RUNNER job holding the run's claim, the child training under it) writes the
    same metrics.csv, bit for bit but the times, as analysis.run_experiment in this process."""
    from engine.core.jobs import RUNNER
    from engine.grokking import analysis
    from engine.grokking import process as grok_process
    from engine.grokking.config import GrokConfig
    from engine.grokking.runs import open_run, run_for

    config = GrokConfig(p=23, train_frac=0.8, steps=120, eval_every=10, checkpoint_every=40, stop_after_grok=-1)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "thread"))
    direct = analysis.run_experiment(config, threads=1)
    expected = run_for(config).metrics()

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "process"))  # the child inherits the environment
    run = open_run(config)
    rows: list = []
    claimed: list = []

    def work(job):
        def on_message(message):
            if isinstance(message, grok_process.Evaluated):  # (the first message says the child is loading)
                rows.append(message.row)
                claimed.append(run.is_claimed())  # the job's claim holds while the child writes

        kwargs = {"config": config, "threads": 1, "claim": False}
        return run_in_process(grok_process.train_run, kwargs, job=job, on_message=on_message)

    job = RUNNER.start("test-grok-process", work, run=run, total=config.steps)
    assert job.wait(300)
    assert job.error is None, job.error
    got = run_for(config).metrics()
    assert got["step"].tolist() == list(range(0, 121, 10)) == [r["step"] for r in rows]
    assert all(claimed) and not run.is_claimed()  # released when the job ended
    columns = [c for c in expected.columns if c != "elapsed_s"]
    import pandas as pd

    pd.testing.assert_frame_equal(got[columns], expected[columns], check_exact=True)
    assert job.result["memorisation_step"] == direct["memorisation_step"]
    assert run.status()["state"] == "finished"
