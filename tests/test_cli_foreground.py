"""The command line's runs go through the features' job modules (engine.grokking.jobs.run_here / sweep_here,
engine.uq.jobs.generate_here, engine.attention.jobs.run_here): a first Ctrl-C is the page's Stop (the work ends
cleanly at its next step, resumable, and says so in the page's words with the command as what resumes it); a
second interrupts at once; the same command then resumes to the end."""

from __future__ import annotations

import signal

import pandas as pd
import pytest

from engine.cli import main
from engine.core.jobs import ctrl_c_stops
from engine.grokking import jobs as grok_jobs
from engine.grokking.config import GrokConfig

CONFIG = GrokConfig(p=7, train_frac=0.6, steps=60, eval_every=10, checkpoint_every=10, stop_after_grok=-1)
FLAGS = ["--p", "7", "--train-frac", "0.6", "--steps", "60", "--eval-every", "10", "--checkpoint-every", "10"]
FLAGS += ["--stop-after-grok", "-1", "--threads", "1"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)  # as the terminal sends it: the handler runs in the main thread


def test_the_first_ctrl_c_asks_a_stop_the_second_interrupts_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_stops() as stop:
        assert not stop.is_set()
        ctrl_c()
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    assert signal.getsignal(signal.SIGINT) is before


def test_grok_stopped_by_ctrl_c_says_where_in_the_tabs_words_and_the_same_command_resumes(cache, capsys, monkeypatch):
    out = cache / "run"
    asked = []

    def on_eval(row) -> None:
        if row["step"] == 20 and not asked:
            asked.append(row["step"])
            ctrl_c()

    run, summary = grok_jobs.run_here(CONFIG, run_dir=out, on_eval=on_eval, threads=1)
    assert run.status()["state"] == "stopped" and summary["last_step"] == 20  # ends at its step, with a checkpoint
    note = grok_jobs.ended_text(run, grok_jobs.COMMAND_RESUMES)
    assert note.startswith("Stopped at step 20: checkpoint 20 is the last kept, and the same command resumes from it")
    assert grok_jobs.stop_note(run).text() == note.replace("the same command", "Start")  # the tab's words

    real = grok_jobs.run_experiment
    monkeypatch.setattr(grok_jobs, "run_experiment", lambda *a, **k: real(*a, **{**k, "on_eval": on_eval}))
    assert main(["grok", *FLAGS, "--out", str(out)]) == 0  # resumes from step 20 (on_eval asks no second stop)
    printed = capsys.readouterr()
    assert run.status()["state"] == "finished" and "checkpoints" in printed.out and "Stopped" not in printed.err
    metrics = pd.read_csv(run.metrics_path)
    assert metrics["step"].iloc[-1] == 60 and metrics["step"].is_monotonic_increasing


def test_grok_cli_exits_130_with_the_note_when_stopped(cache, capsys, monkeypatch):
    real = grok_jobs.run_experiment

    def stopped_at_the_first_evaluation(*args, **kwargs):
        return real(*args, **{**kwargs, "on_eval": lambda row: ctrl_c() if row["step"] == 10 else None})

    monkeypatch.setattr(grok_jobs, "run_experiment", stopped_at_the_first_evaluation)
    assert main(["grok", *FLAGS, "--out", str(cache / "run")]) == 130
    err = capsys.readouterr().err
    assert "Stopped at step 10: checkpoint 10 is the last kept, and the same command resumes from it" in err


def test_a_setting_the_page_refuses_the_cli_refuses_before_anything_is_made(cache, capsys):
    assert main(["grok", "--p", "2", "--out", str(cache / "bad")]) == 2
    assert "p must be an integer >= 3" in capsys.readouterr().err and not (cache / "bad").exists()


def test_grok_sweep_hands_its_executor_workers_and_stop_to_the_pool(cache, capsys, monkeypatch):
    """grok-sweep through engine.grokking.jobs.sweep_here: --executor / --workers reach engine.grokking.pool.run_sweep
    with the Ctrl-C stop event; a worker count the pool cannot use is refused before the pool is called."""
    import threading

    from engine.core.errors import LabError
    from engine.grokking import pool

    seen = {}

    def sweep(base, seeds, weight_decays, **kwargs):
        seen.update(kwargs, seeds=list(seeds), weight_decays=list(weight_decays))
        raise LabError("the pool was called")

    monkeypatch.setattr(pool, "run_sweep", sweep)
    argv = ["grok-sweep", "--p", "7", "--seeds", "0,1", "--weight-decays", "1.0", "--out", str(cache / "sweep")]
    assert main([*argv, "--workers", "0"]) == 2
    assert "--workers must be at least 1." in capsys.readouterr().err and not seen
    assert main([*argv, "--executor", "ray", "--ray-workers", "2", "--workers", "3"]) == 2
    assert "the pool was called" in capsys.readouterr().err
    assert seen["executor"].executor == "ray" and seen["executor"].ray_workers == 2 and seen["workers"] == 3
    assert isinstance(seen["stop"], threading.Event) and seen["seeds"] == [0, 1] and seen["weight_decays"] == [1.0]


def test_uq_generation_stopped_by_ctrl_c_is_resumable_and_says_so(cache, tiny_gemma3):
    from engine.uq import jobs as uq_jobs
    from engine.uq.config import GenerationConfig
    from engine.uq.generation import open_run_for

    questions = pd.DataFrame(
        {"id": ["q1", "q2", "q3"], "question": ["the cat", "the dog", "a bird?"], "references": [["cat"]] * 3}
    )
    run = open_run_for(tiny_gemma3, questions, GenerationConfig(samples=2, max_new_tokens=3, seed=1), source="t.csv")
    written, where = uq_jobs.generate_here(
        tiny_gemma3,
        run,
        limit=3,
        progress=lambda done, total, seconds: ctrl_c() if done == 1 else None,
        batch_questions=1,
    )
    assert written == 1 and where.state == "stopped"
    assert where.text(uq_jobs.COMMAND_RESUMES) == (
        "Stopped: 1 of the set's 3 questions saved; run the same command to resume."
    )
    assert where.line.endswith("press Generate with the same settings to resume.")  # the page's words
    written, where = uq_jobs.generate_here(tiny_gemma3, run, limit=3, batch_questions=1)
    assert written == 2 and where.state == "finished" and where.done == 3


def test_attention_study_stopped_by_ctrl_c_exits_130_and_says_the_heads_are_kept(
    cache, tiny_gemma3_dir, capsys, monkeypatch
):
    """engine.attention.jobs.run_here: the page's validation, the stop event handed to the study (its first
    Ctrl-C), None when stopped; the command says the finished heads stay cached and writes no report. The study
    itself is replaced by one that reports a step and honours the stop (the real one is tested on its own)."""
    from engine.attention import jobs as study_jobs

    seen = {}

    def study(lm, config, progress, stop, report_only=False, elsewhere=None):
        seen["report_only"] = report_only
        seen["elsewhere"] = elsewhere  # the local executor: every head in this process
        progress(1, 4, "first head")
        ctrl_c()
        return None if stop.is_set() else "finished"

    monkeypatch.setattr(study_jobs, "run_study", study)
    out = cache / "report"
    argv = ["attention-study", "--model", str(tiny_gemma3_dir), "--out", str(out), "--quiet"]
    assert main(argv) == 130
    assert study_jobs.STOPPED_TEXT in capsys.readouterr().err and seen == {"report_only": False, "elsewhere": None}
    assert not out.exists()
    assert main([*argv, "--queries", "0"]) == 2  # refused as on the page, before the model loads
    assert "--queries must be at least 1." in capsys.readouterr().err
    assert main([*argv, "--executor", "ray", "--ray-cpus", "0"]) == 2  # the executor refused before the model loads
    assert "--ray-cpus must be at least 1." in capsys.readouterr().err
    assert main([*argv, "--executor", "ray"]) == 130  # the heads missing from the cache go to Ray workers
    assert seen["elsewhere"] is not None
