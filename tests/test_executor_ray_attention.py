"""The attention study on the Ray executor, on a local Ray instance (2 CPUs, one instance for the module)
with a tiny random Llama: heads studied in groups on Ray workers give the local study's records (the same
explanations, rule choices, fits and predictions) and result, written once each into the same cache; a
study stopped on Ray resumes with either executor; a job started with LAB_EXECUTOR=ray studies its heads
on Ray and reports progress."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from engine.attention import distributed, study  # noqa: E402
from engine.attention.study_config import StudyConfig  # noqa: E402
from engine.core.executor import ExecutorConfig  # noqa: E402

SMALL = dict(train=3, heldout=4, random=1, queries=2, max_tokens=10, max_new_tokens=2, n_boot=100)
CONFIG = StudyConfig(heads=("0.0", "0.1", "1.0", "1.1"), **SMALL)
RAY = ExecutorConfig(executor="ray", ray_workers=2, ray_cpus=1)


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    """The module's local Ray instance (tests/conftest.py ray_local) for every test here."""


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    from engine.core.loading import load_model

    return load_model(str(tiny_llama_dir))


def _records(lm, config=CONFIG):
    """Every studied head's cached record, as the study reads it back."""
    run = study.prepare(lm, config)
    hq = study.heldout_queries(run.heldout, config.queries)
    return [study.load_record(run.folder, layer, head, hq) for layer, head in run.heads], study.load_control(run)


def _same(a, b) -> None:
    (records_a, control_a), (records_b, control_b) = a, b
    assert len(records_a) == len(records_b) == len(CONFIG.heads)
    for x, y in zip(records_a, records_b):
        assert (x.layer, x.head, x.explanation, x.explain_mode) == (y.layer, y.head, y.explanation, y.explain_mode)
        assert (x.rule_choice, x.detector, x.detector_train) == (y.rule_choice, y.detector, y.detector_train)
        assert x.probe == y.probe
        assert list(x.predictions) == list(y.predictions)
        for name in x.predictions:
            for p, q in zip(x.predictions[name], y.predictions[name], strict=True):
                assert p.keys() == q.keys() and all(np.array_equal(p[k], q[k]) for k in p)
    for p, q in zip(control_a[0], control_b[0], strict=True):
        assert all(np.array_equal(p[k], q[k]) for k in p)


@pytest.fixture(scope="module")
def local_study(lm, tmp_path_factory):
    """The local study's result and records (the reference), in a cache of its own."""
    import os

    old = os.environ.get("LAB_CACHE_DIR")
    os.environ["LAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("local"))
    try:
        return study.run_study(lm, CONFIG), _records(lm)
    finally:
        os.environ.pop("LAB_CACHE_DIR") if old is None else os.environ.__setitem__("LAB_CACHE_DIR", old)


def test_heads_on_ray_give_the_local_records_and_result(lm, local_study, tmp_path, monkeypatch):
    """Stopped after its first head on Ray, the study resumes on Ray: every record and the control are the
    local ones, each head saved once; the result's table is the local table (wall times aside)."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    saves: list[tuple[int, int]] = []
    save = distributed.save_record
    monkeypatch.setattr(distributed, "save_record", lambda folder, rec: (saves.append(rec.key), save(folder, rec)))
    stop = threading.Event()
    calls: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, message: str) -> None:
        calls.append((done, total, message))
        if message.startswith("head "):
            stop.set()

    assert study.run_study(lm, CONFIG, progress, stop, elsewhere=distributed.on_ray(RAY)) is None
    assert 1 <= len(saves) < len(CONFIG.heads)
    assert not [n for n in ray.util.list_named_actors() if n.startswith(distributed.WORKER_PREFIX)]
    calls.clear()
    result = study.run_study(lm, CONFIG, lambda d, n, m: calls.append((d, n, m)), elsewhere=distributed.on_ray(RAY))
    assert sorted(saves) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every head written once over both calls
    _same(_records(lm), local_study[1])
    pd.testing.assert_frame_equal(result.table(), local_study[0].table())
    assert result.verdict == local_study[0].verdict
    assert calls[-1][0] == calls[-1][1] and any("done (" in m for _, _, m in calls)


def test_an_attention_job_with_the_ray_executor_studies_on_ray_and_reports_progress(lm, tmp_path, monkeypatch):
    from engine.attention import jobs
    from engine.core import jobs as core_jobs

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_EXECUTOR", "ray")
    monkeypatch.setenv("LAB_RAY_WORKERS", "2")
    monkeypatch.setattr(core_jobs, "check_quota", lambda person: None)
    monkeypatch.setattr(core_jobs, "start_owned", lambda key, start, **kw: start())
    used: list[int] = []
    on_ray = distributed.study_on_ray
    monkeypatch.setattr(distributed, "study_on_ray", lambda run, *a, **k: used.append(1) or on_ray(run, *a, **k))
    config = StudyConfig(heads=("0.0", "1.1"), **SMALL)
    from engine.core.jobs import Job

    seen = []  # every progress call the job gets (polling the job could miss fast ones)
    report = Job.progress

    def recorded(job, done, total=None, message="", seconds=None):
        seen.append((int(done), total))
        return report(job, done, total, message, seconds)

    monkeypatch.setattr(Job, "progress", recorded)
    job, joined = jobs.start(lm, "alice", config)
    job.wait()
    assert not joined and job.error is None and used == [1]
    assert job.result is not None and job.result.table()["layer.head"].tolist() == ["0.0", "1.1"]
    assert job.done == job.total and len({done for done, _ in seen}) >= 2  # progress moved while it ran
