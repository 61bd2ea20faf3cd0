"""engine.grokking.jobs: a run's job says what it is doing (starting, loading, training) and gives a time left
only once a rate is measured in this job; a stopped run's note agrees with its files; validate names the field
it refuses. The child process is replaced by a script of its messages (no training here)."""

from __future__ import annotations

import queue
import threading

import pytest

from engine.core.errors import FieldError
from engine.grokking import jobs, process
from engine.grokking.config import GrokConfig, validate

CONFIG = GrokConfig(p=23, train_frac=0.8, steps=600, eval_every=10, checkpoint_every=40)


class ScriptedChild:
    """Stands in for run_in_process: sends the messages the test puts in `messages`, ends on None."""

    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.handled = threading.Event()

    def __call__(self, fn, kwargs, *, job=None, on_message=None, **_):
        while True:
            message = self.messages.get(timeout=30)
            if message is None:
                return None
            on_message(message)
            self.handled.set()

    def send(self, message) -> None:
        self.handled.clear()
        self.messages.put(message)
        assert self.handled.wait(10)


def _row(step: int, elapsed: float) -> process.Evaluated:
    return process.Evaluated(
        {
            "step": step,
            "train_loss": 1.0,
            "train_acc": 0.5,
            "test_loss": 1.0,
            "test_acc": 0.1,
            "weight_norm": 1.0,
            "elapsed_s": elapsed,
        }
    )


@pytest.fixture
def child(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    scripted = ScriptedChild()
    monkeypatch.setattr(jobs, "run_in_process", scripted)
    yield scripted
    scripted.messages.put(None)


def test_a_first_start_says_it_is_starting_then_loading_and_estimates_before_a_rate(child):
    outcome = jobs.start(CONFIG)
    assert isinstance(outcome, jobs.Training) and outcome.new
    run = outcome.run
    first = jobs.progress(run)
    assert first.phase == "starting" and first.step == 0 and first.seconds_left is None
    child.send(process.Loading(None))
    assert jobs.progress(run).phase == "loading" and jobs.progress(run).resume_step is None
    child.send(_row(0, 5.0))  # one row: no rate yet (the 5 s were spent starting, not training)
    p = jobs.progress(run)
    assert p.phase == "training" and p.step == 0 and p.seconds_left is None
    child.send(_row(10, 6.0))  # 0.1 s per step measured: 590 steps left
    p = jobs.progress(run)
    assert p.step == 10 and p.seconds_left == pytest.approx(59.0)
    assert isinstance(jobs.start(CONFIG), jobs.Training) and not jobs.start(CONFIG).new  # the same job, found
    child.messages.put(None)
    outcome.job.wait(10)
    assert jobs.progress(run) is None


def test_a_resume_starts_at_its_checkpoint_without_a_growing_estimate(child):
    """A stopped run resumed: the job starts at the checkpoint it resumes from, says so, and gives no time left
    until two rows of this job measured a rate (before: steps trained earlier made the estimate grow)."""
    from engine.grokking.runs import open_run

    run = open_run(CONFIG)
    run.ckpt_dir.mkdir(parents=True)
    for step in (0, 40, 80, 87):
        run.checkpoint_path(step).write_bytes(b"")
    run.resume_path.write_bytes(b"")
    run.set_status("stopped", 87, "stopped at step 87")
    outcome = jobs.start(CONFIG)
    assert isinstance(outcome, jobs.Training)
    p = jobs.progress(outcome.run)
    assert p.phase == "starting" and p.step == 87 and p.seconds_left is None
    child.send(process.Loading(87))
    p = jobs.progress(outcome.run)
    assert p.phase == "loading" and p.resume_step == 87 and p.seconds_left is None
    child.send(_row(90, 100.0))
    assert jobs.progress(outcome.run).seconds_left is None
    child.send(_row(100, 101.0))
    assert jobs.progress(outcome.run).seconds_left == pytest.approx(0.1 * 500)


def test_the_stop_note_names_the_last_checkpoint_and_the_last_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    from engine.grokking.runs import METRIC_COLUMNS, open_run

    run = open_run(CONFIG)
    run.ckpt_dir.mkdir(parents=True)
    for step in (0, 40, 80, 87):
        run.checkpoint_path(step).write_bytes(b"")
    rows = [",".join(map(str, [s, 1, 0.5, 1, 0.1, 1, s / 10])) for s in range(0, 81, 10)]
    run.metrics_path.write_text(",".join(METRIC_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    assert jobs.stop_note(run) is None  # not stopped
    run.set_status("stopped", 87, "stopped at step 87")
    note = jobs.stop_note(run)
    assert (note.step, note.checkpoint, note.last_evaluation) == (87, 87, 80)
    assert note.text() == (
        "Stopped at step 87: checkpoint 87 is the last kept, and Start resumes from it; the curves and the summary "
        "end at step 80, the last evaluation (one every 10 steps)."
    )


def test_validate_names_the_field_it_refuses():
    cases = {
        "p": GrokConfig(task="div", p=12),
        "train_frac": GrokConfig(train_frac=1.5),
        "n_layers": GrokConfig(n_layers=99),
        "n_heads": GrokConfig(model="llm", n_layers=4, d_model=30, n_heads=4),
        "suppress_factor": GrokConfig(
            model="llm", n_layers=4, d_model=32, n_heads=4, suppress=True, suppress_factor=0.0
        ),
        "batch_size": GrokConfig(batch_size=-1),
    }
    for field, config in cases.items():
        with pytest.raises(FieldError) as refused:
            validate(config)
        assert refused.value.field == field, (field, str(refused.value))
    with pytest.raises(FieldError, match=r"not prime \(try 11\)"):
        validate(GrokConfig(task="div", p=12))
