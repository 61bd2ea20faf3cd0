"""Run store: resume after an interrupted run equals an uninterrupted run; marks update A1; list/delete;
one writer per run (claim)."""

import dataclasses
import hashlib
import json
import threading

import numpy as np
import pandas as pd
import pytest

from engine.core.errors import LabError
from engine.uq import store
from engine.uq.config import EvalOptions, GenerationConfig
from engine.uq.evaluation import evaluate_run
from engine.uq.export import write_outputs
from engine.uq.generation import generate_run, open_run_for, start_generation
from engine.uq.questions import questions_hash

QUESTIONS = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d"],
        "question": ["the cat", "the dog", "a bird", "the sky"],
        "references": [["cat"], ["dog"], ["bird"], ["sky"]],
    }
)
CONFIG = GenerationConfig(prompt_template="Q: {question}\nA:", samples=2, max_new_tokens=4, seed=5)


def _records(run):
    return [
        (r.id, r.answer, r.samples, r.answer_token_logprobs, r.sample_token_logprobs, r.sample_hidden.tolist())
        for r in run.load_records()
    ]


def test_resume_after_interruption_equals_uninterrupted(tiny_gemma3, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "one"))
    whole = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert generate_run(tiny_gemma3, whole) == 4
    expected = _records(whole)

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "two"))
    run = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert run.run_id == whole.run_id  # same inputs -> same run id
    stop = threading.Event()
    generate_run(tiny_gemma3, run, progress=lambda done, total, s: stop.set() if done == 2 else None, stop=stop)
    assert run.done_indices() == [0, 1]
    # a process killed mid-write leaves only a temp file, never a half record
    (run.path / "records" / ".000002.npz.123.tmp").write_bytes(b"partial")
    again = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert generate_run(tiny_gemma3, again) == 2
    assert _records(again) == expected


def test_background_job_marks_and_evaluation(tiny_gemma3, embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    job = start_generation(tiny_gemma3, run, limit=3)
    assert job.wait(120)
    assert job.state == "finished" and job.error is None and job.done == 3
    options = EvalOptions(n_boot=50)
    first = evaluate_run(run, embedder, options)
    assert len(first.results) == 3 and first.summary.n == 3
    wrong = first.results["correct"].tolist()
    run.save_marks({"a": not wrong[0]})
    second = evaluate_run(run, embedder, options)
    assert second.results["correct"][0] == (not wrong[0])
    assert second.summary.A1 == pytest.approx(first.summary.A1 + (1 if not wrong[0] else -1) / 3)
    assert "mean_token_nll" in second.results.columns and second.summary.n_manual == 1
    paths = write_outputs(second, tmp_path / "out")
    assert [p.name for p in paths] == ["results.csv", "summary.json", "summary.md"]
    assert [r.run_id for r in store.list_runs()] == [run.run_id]
    store.delete_run(run.run_id)
    assert store.list_runs() == []
    with pytest.raises(LabError):
        store.get_run("../etc")


def test_record_roundtrip(tmp_path):
    from engine.uq.records import QuestionRecord

    rec = QuestionRecord(
        "x",
        "q?",
        ["r"],
        "ans",
        [-0.5],
        np.ones((2, 3), np.float32),
        ["s1", "s2"],
        [[-1.0], [-2.0, -0.1]],
        np.zeros((2, 2, 3), np.float32),
        [1, 2],
        0.25,
    )
    path = tmp_path / "r.npz"
    path.write_bytes(store.record_to_bytes(rec))
    back = store.record_from_file(path)
    assert back.samples == rec.samples and back.sample_token_logprobs == rec.sample_token_logprobs
    assert np.array_equal(back.answer_hidden, rec.answer_hidden) and back.hidden_layers == [1, 2]


def test_one_generator_per_run_and_no_delete_while_generating(tiny_gemma3, tmp_path, monkeypatch):
    """A held claim (the CLI, or another server, generating the run) refuses a second generator, in the
    foreground or as a background job, and refuses deletion; once released, both work."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    with run.claim():
        assert run.is_claimed()
        with pytest.raises(LabError, match="another session or process"):
            generate_run(tiny_gemma3, run, limit=1)
        with pytest.raises(LabError, match="another session or process"):
            start_generation(tiny_gemma3, run, limit=1)
        with pytest.raises(LabError, match="being written"):
            store.delete_run(run.run_id)
        assert run.done_indices() == []  # nobody generated behind the claim
    assert generate_run(tiny_gemma3, run, limit=1) == 1
    store.delete_run(run.run_id)
    assert store.list_runs() == []


def test_run_id_is_the_one_saved_runs_have(tmp_path, monkeypatch):
    """Runs saved before the run store keep their ids: sha256 of the sorted JSON of (model, generation
    config, question-set hash), 12 hex digits."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    config = dataclasses.replace(CONFIG, hidden_layers=[1, 2])
    run = store.open_run("some/model", QUESTIONS, config, source="t")
    key = {"model": "some/model", "generation": dataclasses.asdict(config), "questions": questions_hash(QUESTIONS)}
    assert run.run_id == hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    assert run.config["n_questions"] == 4 and len(run.questions()) == 4


def test_strays_are_listed_apart_and_deletable(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = store.open_run("m", QUESTIONS, CONFIG, n_layers=2)
    stray = tmp_path / "uq" / "0123456789ab"
    (stray / "records").mkdir(parents=True)  # a folder without config.json (half-created or older version)
    assert [r.run_id for r in store.list_runs()] == [run.run_id]
    assert [s.run_id for s in store.stray_runs()] == ["0123456789ab"]
    store.delete_run(store.stray_runs()[0])
    assert store.stray_runs() == [] and not stray.exists()
