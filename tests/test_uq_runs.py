"""Run store: resume after an interrupted run equals an uninterrupted run; marks update A1; list/delete."""

import threading

import numpy as np
import pandas as pd
import pytest

from engine.core.errors import LabError
from engine.uq import runs
from engine.uq.generation import GenerationConfig

QUESTIONS = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d"],
        "question": ["the cat", "the dog", "a bird", "the sky"],
        "references": [["cat"], ["dog"], ["bird"], ["sky"]],
    }
)
CONFIG = GenerationConfig(prompt_template="Q: {question}\nA:", samples=2, max_new_tokens=4, seed=5)


def _records(store):
    return [
        (r.id, r.answer, r.samples, r.answer_token_logprobs, r.sample_token_logprobs, r.sample_hidden.tolist())
        for r in store.load_records()
    ]


def test_resume_after_interruption_equals_uninterrupted(tiny_gemma3, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "one"))
    whole = runs.open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert runs.generate_run(tiny_gemma3, whole) == 4
    expected = _records(whole)

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "two"))
    store = runs.open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert store.run_id == whole.run_id  # same inputs -> same run id
    stop = threading.Event()
    runs.generate_run(tiny_gemma3, store, progress=lambda done, total, s: stop.set() if done == 2 else None, stop=stop)
    assert store.done_indices() == [0, 1]
    # a process killed mid-write leaves only a temp file, never a half record
    (store.path / "records" / ".000002.npz.123.tmp").write_bytes(b"partial")
    again = runs.open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert runs.generate_run(tiny_gemma3, again) == 2
    assert _records(again) == expected


def test_background_job_marks_and_evaluation(tiny_gemma3, embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    store = runs.open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    job = runs.start_job(tiny_gemma3, store, limit=3)
    job.thread.join(120)
    assert job.finished and job.error is None and job.done == 3
    options = runs.EvalOptions(n_boot=50)
    first = runs.evaluate_run(store, embedder, options)
    assert len(first.results) == 3 and first.summary["n"] == 3
    wrong = first.results["correct"].tolist()
    store.save_marks({"a": not wrong[0]})
    second = runs.evaluate_run(store, embedder, options)
    assert second.results["correct"][0] == (not wrong[0])
    assert second.summary["A1"] == pytest.approx(first.summary["A1"] + (1 if not wrong[0] else -1) / 3)
    assert "mean_token_nll" in second.results.columns and second.summary["n_manual"] == 1
    paths = runs.write_outputs(second, tmp_path / "out")
    assert [p.name for p in paths] == ["results.csv", "summary.json", "summary.md"]
    assert [r["run_id"] for r in runs.list_runs()] == [store.run_id]
    runs.delete_run(store.run_id)
    assert runs.list_runs() == []
    with pytest.raises(LabError):
        runs.get_run("../etc")


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
    path.write_bytes(runs.record_to_bytes(rec))
    back = runs.record_from_file(path)
    assert back.samples == rec.samples and back.sample_token_logprobs == rec.sample_token_logprobs
    assert np.array_equal(back.answer_hidden, rec.answer_hidden) and back.hidden_layers == [1, 2]
