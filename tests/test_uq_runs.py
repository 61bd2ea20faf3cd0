"""Run store: resume after an interrupted run equals an uninterrupted run; marks update A1; list/delete;
one writer per run (claim); records lossless on disk, damaged ones reported and regenerated; stale
temporaries cleaned; concurrent marks and verdicts never lost."""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

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
ROOT = Path(__file__).resolve().parent.parent


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


# ------------------------------------------------------------------------------------------------
# Records on disk: lossless and smaller, old ones load, damaged ones are reported and regenerated


def _synthetic_records(n: int = 40, k: int = 6, d: int = 32, seed: int = 0) -> list:
    """Records like a real run's: answers from a small vocabulary, so samples repeat; the same answer text has
    the same hidden state (as in generation); magnitudes of a real residual stream (with outliers)."""
    from engine.uq.records import QuestionRecord

    rng = np.random.default_rng(seed)
    vocabulary = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "the capital", "I do not know"]
    records = []
    for i in range(n):
        states = {w: (rng.normal(0, 70, (3, d)) * np.where(rng.random((3, d)) < 0.02, 300, 1)) for w in vocabulary}
        samples = [str(rng.choice(vocabulary[: 2 + i % 6])) for _ in range(k)]
        records.append(
            QuestionRecord(
                id=f"q{i}",
                question=f"question {i}?",
                references=[vocabulary[i % 4]],
                answer=samples[0],
                answer_token_logprobs=list(-rng.random(3)),
                answer_hidden=states[samples[0]].astype(np.float32),
                samples=samples,
                sample_token_logprobs=[list(-rng.random(1 + j % 3)) for j in range(k)],
                sample_hidden=np.stack([states[s] for s in samples]).astype(np.float32),
                hidden_layers=[4, 6, 8],
            )
        )
    return records


def test_stored_records_move_no_score(tmp_path, embedder):
    """Every score of records read back from disk equals the score of the records in memory (max |difference|
    <= 1e-3; the storage is lossless, so 0), and repeated sample states are stored once."""
    from engine.uq.estimators import score_records

    records = _synthetic_records()
    back, old_size, new_size = [], 0, 0
    for i, record in enumerate(records):
        data = store.record_to_bytes(record)
        path = tmp_path / f"{i:06d}.npz"
        path.write_bytes(data)
        back.append(store.record_from_file(path))
        old_size, new_size = old_size + len(_old_format(record)), new_size + len(data)
    assert all(np.array_equal(a.sample_hidden, b.sample_hidden) for a, b in zip(records, back))
    assert all(b.sample_hidden.dtype == np.float32 for b in back)
    assert new_size < 0.8 * old_size
    before = score_records(records, embedder).scores
    after = score_records(back, embedder).scores
    assert list(before.columns) == list(after.columns)
    assert before.isna().equals(after.isna())
    assert float(np.nanmax((before - after).abs().to_numpy(), initial=0.0)) <= 1e-3


def _old_format(record) -> bytes:
    """A record as the lab wrote it before (every sample row, meta as a numpy unicode string)."""
    meta = {f: getattr(record, f) for f in store._RECORD_FIELDS}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        answer_hidden=np.asarray(record.answer_hidden, dtype=np.float32),
        sample_hidden=np.asarray(record.sample_hidden, dtype=np.float32),
        meta=np.array(json.dumps(meta, ensure_ascii=False)),
    )
    return buffer.getvalue()


def test_old_float32_records_still_load(tmp_path):
    """Records written before de-duplication (every sample row stored) load unchanged."""
    record = _synthetic_records(1)[0]
    path = tmp_path / "000000.npz"
    path.write_bytes(_old_format(record))
    back = store.record_from_file(path)
    assert np.array_equal(back.sample_hidden, record.sample_hidden) and back.samples == record.samples
    assert back.sample_token_logprobs == record.sample_token_logprobs


def _damage(run) -> None:
    good = run.record_path(1).read_bytes()
    run.record_path(1).write_bytes(good[: len(good) // 2])  # truncated
    run.record_path(2).write_bytes(b"this is no zip")
    buffer = io.BytesIO()
    np.savez(buffer, something=np.zeros(3))
    run.record_path(3).write_bytes(buffer.getvalue())  # wrong keys


def test_damaged_records_are_reported_not_done_and_regenerated(tiny_gemma3, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    generate_run(tiny_gemma3, run)
    expected = _records(run)
    _damage(run)
    assert run.done_indices() == [0] and run.done() == 1
    bad = {b.index: b.reason for b in run.bad_records()}
    assert sorted(bad) == [1, 2, 3]
    assert "truncated" in bad[1] and bad[2] == "not an .npz file" and "no answer_hidden, meta, sample_hidden" in bad[3]
    assert [r.id for r in run.load_records()] == ["a"]  # never raises on a damaged file
    assert generate_run(tiny_gemma3, run) == 3
    assert run.bad_records() == [] and _records(run) == expected


def test_record_with_disagreeing_fields_is_bad(tmp_path):
    record = _synthetic_records(1)[0]
    record.samples = record.samples[:-1]
    path = tmp_path / "000000.npz"
    path.write_bytes(store.record_to_bytes(record))
    with pytest.raises(store.RecordError, match="sample_hidden has shape"):
        store.record_from_file(path)


def test_stale_temporaries_are_cleaned_when_a_run_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = store.open_run("m", QUESTIONS, CONFIG, n_layers=2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    records = run.path / "records"
    names = {
        "dead": records / f".000001.npz.{dead.pid}.1.tmp",  # its writer is gone
        "old": run.path / f".marks.json.{os.getpid()}.1.tmp",  # our own, but older than STALE_TEMP_SECONDS
        "live": records / f".000002.npz.{os.getpid()}.7.tmp",  # being written right now
        "odd_old": records / ".000003.npz.x.tmp",
        "odd_new": records / ".000004.npz.x.tmp",
    }
    for path in names.values():
        path.write_bytes(b"partial")
    past = time.time() - store.STALE_TEMP_SECONDS - 60
    for key in ("old", "odd_old"):
        os.utime(names[key], (past, past))
    store.get_run(run.run_id)
    assert {k for k, p in names.items() if p.exists()} == {"live", "odd_new"}
    names["live"].unlink()
    names["dead"].write_bytes(b"again")
    with run.claim():
        assert not names["dead"].exists()


# ------------------------------------------------------------------------------------------------
# Marks and verdicts: concurrent writers never lose an update

_MARK_WRITER = """
import sys
from engine.uq import store
run = store.get_run(sys.argv[1])
for i in range(int(sys.argv[3])):
    run.save_marks({f"{sys.argv[2]}-{i}": i % 2 == 0})
    run.save_llm_verdicts("judge", {f"{sys.argv[2]}-{i}": None if i % 3 else True})
"""


def test_concurrent_marks_and_verdicts_keep_every_update(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    run = store.open_run("m", QUESTIONS, CONFIG, n_layers=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", _MARK_WRITER, run.run_id, f"p{p}", "40"], cwd=ROOT, env=env)
        for p in range(2)
    ]
    barrier = threading.Barrier(4)

    def write(prefix: str) -> None:
        barrier.wait()
        for i in range(40):
            run.save_marks({f"{prefix}-{i}": i % 2 == 0})
            run.save_llm_verdicts("judge", {f"{prefix}-{i}": None if i % 3 else True})

    threads = [threading.Thread(target=write, args=(f"t{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [w.wait(120) for w in writers] == [0, 0]
    prefixes = ["p0", "p1", "t0", "t1", "t2", "t3"]
    marks, verdicts = run.marks(), run.llm_verdicts("judge")
    assert marks == {f"{p}-{i}": i % 2 == 0 for p in prefixes for i in range(40)}
    assert verdicts == {f"{p}-{i}": None if i % 3 else True for p in prefixes for i in range(40)}
    run.save_marks({"p0-0": None, "p0-1": True})  # None clears a mark; other marks stay
    assert "p0-0" not in run.marks() and run.marks()["p0-1"] is True and len(run.marks()) == 239


def test_batched_run_writes_each_question_when_done_and_resumes_with_another_batch_size(
    tiny_gemma3, tmp_path, monkeypatch
):
    """Questions decoded 3 at a time: each record is on disk when progress reports it, a stop inside a batch
    keeps what was written, and a resume with another batch size gives the texts of one question per batch
    (log-probs within float noise)."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "one"))
    single = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    assert generate_run(tiny_gemma3, single, batch_questions=1) == 4
    expected = single.load_records()

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "two"))
    run = open_run_for(tiny_gemma3, QUESTIONS, CONFIG, source="t")
    seen = []
    stop = threading.Event()

    def progress(done, total, seconds):
        seen.append((done, total, run.done(), seconds > 0))
        stop.set()

    assert generate_run(tiny_gemma3, run, progress=progress, stop=stop, batch_questions=3) == 1
    assert seen == [(1, 4, 1, True)]
    assert run.status()["state"] == "stopped" and run.status()["step"] == 1
    assert generate_run(tiny_gemma3, run, batch_questions=2) == 3
    assert run.status()["state"] == "finished"
    for a, b in zip(run.load_records(), expected, strict=True):
        assert (a.id, a.answer, a.samples) == (b.id, b.answer, b.samples)
        np.testing.assert_allclose(a.answer_token_logprobs, b.answer_token_logprobs, atol=1e-4)
        for x, y in zip(a.sample_token_logprobs, b.sample_token_logprobs, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4)
