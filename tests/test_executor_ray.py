"""The Ray executor on a local Ray instance (2 CPUs, no dashboard, one instance for the module) with a tiny
random Gemma 3: `lab uq --executor ray` writes the local executor's results.csv byte for byte, resumes
runs made by either executor, reruns a killed worker's shard without losing or doubling a record, and
refuses an unreachable cluster or one without the GPUs asked for before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading

import pytest

ray = pytest.importorskip("ray")

from engine.cli import main  # noqa: E402
from engine.core.errors import LabError  # noqa: E402
from engine.core.executor import ExecutorConfig, plan_workers, ray_module  # noqa: E402
from engine.uq import questions  # noqa: E402
from engine.uq.config import FEW_SHOT_TEMPLATE, GenerationConfig  # noqa: E402
from engine.uq.distributed import WORKER_PREFIX, RayGeneration, shard_bounds  # noqa: E402
from engine.uq.store import open_run  # noqa: E402

N, BATCH = 12, 2  # 12 questions in 6 batches of 2: shards of whole batches
GENERATION = GenerationConfig(samples=2, max_new_tokens=6, seed=3)
RAY = ExecutorConfig(executor="ray", ray_workers=2, ray_cpus=1)


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    """The module's local Ray instance (tests/conftest.py ray_local) for every test here."""


def _argv(model_dir, out, *extra):
    return [
        "uq", "--questions", "default", "--model", str(model_dir), "--out", str(out), "--limit", str(N),
        "--samples", str(GENERATION.samples), "--max-new-tokens", str(GENERATION.max_new_tokens),
        "--seed", str(GENERATION.seed), "--batch-questions", str(BATCH), "--bootstrap", "50", "--quiet", *extra,
    ]  # fmt: skip


def _cli(tmp_path, monkeypatch, model_dir, name, *extra) -> int:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / f"cache-{name}"))
    return main(_argv(model_dir, tmp_path / name, *extra))


@pytest.fixture(scope="module")
def local_results(tiny_gemma3_dir, tmp_path_factory):
    """results.csv bytes and the records of the local executor (the reference)."""
    folder = tmp_path_factory.mktemp("local")
    old = os.environ.get("LAB_CACHE_DIR")
    os.environ["LAB_CACHE_DIR"] = str(folder / "cache")
    try:
        assert main(_argv(tiny_gemma3_dir, folder / "out")) == 0
        return (folder / "out" / "results.csv").read_bytes(), _open(tiny_gemma3_dir).load_records()
    finally:
        os.environ.pop("LAB_CACHE_DIR") if old is None else os.environ.__setitem__("LAB_CACHE_DIR", old)


def _open(model_dir):
    """The CLI's run for these settings, opened in the current LAB_CACHE_DIR (tiny Gemma: 2 layers)."""
    frame = questions.default_questions().frame
    config = dataclasses.replace(GENERATION, prompt_template=FEW_SHOT_TEMPLATE)
    return open_run(str(model_dir), frame, config, source="default", n_layers=2)


def _same_records(a, b) -> None:
    assert len(a) == len(b) == N
    for x, y in zip(a, b):
        assert (x.answer, x.samples) == (y.answer, y.samples)
        assert (x.answer_token_logprobs, x.sample_token_logprobs) == (y.answer_token_logprobs, y.sample_token_logprobs)
        assert x.answer_hidden.tobytes() == y.answer_hidden.tobytes()
        assert x.sample_hidden.tobytes() == y.sample_hidden.tobytes()


def _workers() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(WORKER_PREFIX)]


def test_ray_results_csv_is_byte_identical_to_local(local_results, tiny_gemma3_dir, tmp_path, monkeypatch):
    assert _cli(tmp_path, monkeypatch, tiny_gemma3_dir, "ray", "--executor", "ray", "--ray-workers", "2") == 0
    assert (tmp_path / "ray" / "results.csv").read_bytes() == local_results[0]
    assert _workers() == []  # every worker ended with the run


def test_runs_resume_across_executors(local_results, tiny_gemma3_dir, tmp_path, monkeypatch):
    """A run stopped after 5 records (mid-batch) locally finishes on Ray, and one stopped on Ray finishes
    locally: both give the local executor's bytes."""
    from engine.core.loading import load_model
    from engine.uq.generation import generate_run

    ray_flags = ("--executor", "ray", "--ray-workers", "2")
    for name, first_on_ray, second in (("local-then-ray", False, ray_flags), ("ray-then-local", True, ())):
        monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / f"cache-{name}"))
        run = _open(tiny_gemma3_dir)
        stop = threading.Event()

        def progress(done: int, total: int, _note, stop=stop) -> None:
            if done == 5:
                stop.set()

        if first_on_ray:
            with RayGeneration(RAY, str(tiny_gemma3_dir), N, BATCH) as generation:
                generation.generate(run, limit=N, batch_questions=BATCH, progress=progress, stop=stop)
        else:
            lm = load_model(str(tiny_gemma3_dir))
            generate_run(lm, run, limit=N, batch_questions=BATCH, progress=progress, stop=stop)
        assert run.done() == 5 and run.status()["state"] == "stopped"
        assert _cli(tmp_path, monkeypatch, tiny_gemma3_dir, name, *second) == 0
        assert (tmp_path / name / "results.csv").read_bytes() == local_results[0], name


def test_a_killed_worker_loses_nothing_and_writes_nothing_twice(local_results, tiny_gemma3_dir, tmp_path, monkeypatch):
    """Both workers are killed (ray.kill: the process ends at once) when the first record arrives, each with a
    shard of 4 questions under way: their shards are rerun on fresh workers, every record written once."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    run = _open(tiny_gemma3_dir)
    writes: list[int] = []
    write = run.write_record
    monkeypatch.setattr(run, "write_record", lambda index, record: (writes.append(index), write(index, record)))
    killed: list[str] = []
    messages: list[str] = []

    def progress(done: int, total: int, message: str) -> None:
        messages.append(message)
        if not killed:
            killed.extend(_workers())
            for name in killed:
                ray.kill(ray.get_actor(name))

    with RayGeneration(RAY, str(tiny_gemma3_dir), N, BATCH) as generation:
        written = generation.generate(run, limit=N, batch_questions=BATCH, shard_questions=4, progress=progress)
    assert len(killed) == 2 and sum("worker lost" in m for m in messages) >= 1
    assert written == N and sorted(writes) == list(range(N))  # nothing lost, nothing twice
    _same_records(run.load_records(), local_results[1])
    assert run.status()["state"] == "finished"


def test_an_interrupted_driver_resumes(local_results, tiny_gemma3_dir, tmp_path, monkeypatch):
    """Ctrl-C in the driver after 3 records: the workers end, the 3 records stay; a rerun writes the other 9."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    run = _open(tiny_gemma3_dir)

    def interrupt(done: int, total: int, message: str) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RayGeneration(RAY, str(tiny_gemma3_dir), N, BATCH).generate(
            run, limit=N, batch_questions=BATCH, progress=interrupt
        )
    assert run.done() == 3 and _workers() == []
    with RayGeneration(RAY, str(tiny_gemma3_dir), N, BATCH) as generation:
        assert generation.generate(run, limit=N, batch_questions=BATCH) == N - 3
    _same_records(run.load_records(), local_results[1])
    assert _workers() == []


def test_automatic_batches_on_ray_give_the_same_texts_and_log_probs_within_1e_4(
    local_results, tiny_gemma3_dir, tmp_path, monkeypatch
):
    """Without a fixed batch size each worker picks its own (from its memory) and shards need not follow the
    local batches: the same answer texts, token log-probs within 1e-4 of the local executor's."""
    import numpy as np

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    run = _open(tiny_gemma3_dir)
    with RayGeneration(RAY, str(tiny_gemma3_dir), N, 0) as generation:
        assert generation.generate(run, limit=N, batch_questions=0, shard_questions=5) == N
    for x, y in zip(run.load_records(), local_results[1], strict=True):
        assert (x.answer, x.samples) == (y.answer, y.samples)
        for a, b in zip(
            [x.answer_token_logprobs, *x.sample_token_logprobs], [y.answer_token_logprobs, *y.sample_token_logprobs]
        ):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_an_unreachable_cluster_is_named_before_any_work(tiny_gemma3_dir, tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ("--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert _cli(tmp_path, monkeypatch, tiny_gemma3_dir, "none", *argv) == 2
    err = capsys.readouterr().err
    assert f"Cannot reach the Ray cluster at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not (tmp_path / "cache-none" / "uq").exists() and _workers() == []


def test_auto_without_a_cluster_or_with_a_stale_one_says_so(tmp_path, monkeypatch):
    """'auto' joins RAY_ADDRESS or the cluster `ray start` wrote down; neither, or a dead one, is one line at once."""
    from engine.core import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(executor, "RAY_CURRENT_CLUSTER", str(tmp_path / "ray_current_cluster"))
    with pytest.raises(LabError, match="No Ray cluster on this machine for --ray-address auto"):
        executor.check_reachable("auto")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
    with pytest.raises(LabError, match=f"Cannot reach the Ray cluster at 127.0.0.1:{port}"):
        executor.check_reachable("auto")
    with pytest.raises(LabError, match="is not HOST:PORT"):
        executor.check_reachable("head-node")


def test_a_cluster_without_the_asked_gpus_is_refused_before_work(tiny_gemma3_dir, tmp_path, monkeypatch, capsys):
    assert _cli(tmp_path, monkeypatch, tiny_gemma3_dir, "gpu", "--executor", "ray", "--ray-gpus", "1") == 2
    err = capsys.readouterr().err
    assert "The Ray cluster has 0 GPU(s); a worker asks for 1 (--ray-gpus)" in err
    assert not (tmp_path / "cache-gpu" / "uq").exists() and _workers() == []


def test_a_model_a_worker_cannot_load_is_one_line_not_a_retry(tmp_path, monkeypatch, capsys):
    """A worker whose model does not load (missing on its node) ends the command with the worker's LabError."""
    missing = tmp_path / "no-such-model"
    assert _cli(tmp_path, monkeypatch, missing, "missing", "--executor", "ray") == 2
    err = capsys.readouterr().err
    assert f"A Ray worker could not start (model {missing}): Model folder '{missing}' does not exist." in err
    assert "Traceback" not in err and _workers() == []


def test_worker_plans():
    """One worker per GPU when workers take GPUs, per CPU otherwise, never more than shards; LabError when a
    node cannot hold one worker or the GPUs asked for exceed the cluster's."""
    node = lambda cpu, gpu=0: {"Alive": True, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}
    four_gpus = {"CPU": 32.0, "GPU": 4.0}
    assert plan_workers(ExecutorConfig(), 100, four_gpus, [node(16, 2), node(16, 2)]).workers == 4
    assert plan_workers(ExecutorConfig(), 100, four_gpus, [node(16, 2), node(16, 2)]).gpus == 1.0
    assert plan_workers(ExecutorConfig(ray_gpus=0.5), 100, four_gpus, [node(32, 4)]).workers == 8
    assert plan_workers(ExecutorConfig(), 3, four_gpus, [node(32, 4)]).workers == 3
    assert plan_workers(ExecutorConfig(ray_cpus=2), 100, {"CPU": 8.0}, [node(8)]).workers == 4
    with pytest.raises(LabError, match="No node of the Ray cluster has 1 CPU"):
        plan_workers(ExecutorConfig(ray_gpus=2), 100, four_gpus, [node(16, 1)] * 4)
    with pytest.raises(LabError, match="5 workers x 1 GPU need 5 GPUs"):
        plan_workers(ExecutorConfig(ray_workers=5), 100, four_gpus, [node(32, 4)])
    with pytest.raises(LabError, match="has 4 CPU"):
        plan_workers(ExecutorConfig(ray_cpus=8), 100, {"CPU": 4.0}, [node(4)])


def test_shards_are_whole_batches():
    assert shard_bounds(12, 2, 2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    assert shard_bounds(13, 4, 1, shard_questions=5) == [(0, 8), (8, 13)]
    assert shard_bounds(10, 0, 1) == [(0, 3), (3, 6), (6, 9), (9, 10)]  # automatic batches: any cut
    for total, batch, workers in ((1000, 8, 3), (37, 5, 4), (7, 3, 16)):
        bounds = shard_bounds(total, batch, workers)
        assert bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(start % batch == 0 and b[0] == a[1] for a, b in zip(bounds, bounds[1:]) for start in (b[0],))


def test_a_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(LabError, match=r"pip install -e \.\[cluster\]"):
        ray_module()


def test_uq_study_on_ray_resumes_a_local_run_and_writes_the_local_results(tiny_gemma3_dir, tmp_path, monkeypatch):
    """`uq-study --executor ray` (the bundled set, 10 questions) finishes a run stopped after 5 records on the
    local executor and writes the local study's results.csv byte for byte (the study's generation stage
    runs on the same Generator as `lab uq`)."""
    from engine.uq.generator import Generator

    argv = [
        "uq-study", "--webquestions", "0", "--limit", "10", "--model", str(tiny_gemma3_dir), "--samples", "2",
        "--max-new-tokens", "6", "--seed", "3", "--batch-questions", str(BATCH), "--bootstrap", "50",
        "--fold-seeds", "2", "--quiet",
    ]  # fmt: skip
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache-local"))
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache-ray"))
    stop = threading.Event()
    with Generator(str(tiny_gemma3_dir), batch_questions=BATCH) as generator:
        generation = dataclasses.replace(GENERATION, prompt_template=generator.facts["template"])
        run = generator.open_run(questions.default_questions().frame, generation, "bundled")
        generator.generate(run, 10, lambda done, total, message: stop.set() if done == 5 else None, stop)
    assert run.done() == 5
    assert main([*argv, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "2"]) == 0
    assert run.done() == 10 and _workers() == []
    local = (tmp_path / "local" / "bundled" / "results.csv").read_bytes()
    assert (tmp_path / "ray" / "bundled" / "results.csv").read_bytes() == local
    assert "Ray worker(s)" in json.loads((tmp_path / "ray" / "study.json").read_text())["executor"]


def test_a_generation_job_with_the_ray_executor_generates_on_ray_and_reports_progress(
    local_results, tiny_gemma3, tmp_path, monkeypatch
):
    """A page's generation job started with LAB_EXECUTOR=ray (the server's configuration) writes the local
    executor's records through Ray workers, and its progress (the job panel's) moves record by record."""
    from engine.uq import jobs as uq_jobs

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_EXECUTOR", "ray")
    monkeypatch.setenv("LAB_RAY_WORKERS", "2")
    from engine.core.jobs import Job

    seen = []  # every progress call the job gets (polling the job could miss fast ones)
    report = Job.progress

    def recorded(job, done, total=None, message="", seconds=None):
        seen.append((int(done), message))
        return report(job, done, total, message, seconds)

    monkeypatch.setattr(Job, "progress", recorded)
    config = dataclasses.replace(GENERATION, prompt_template=FEW_SHOT_TEMPLATE)
    frame = questions.default_questions().frame
    started = uq_jobs.start(tiny_gemma3, "erin", frame, config, source="default", limit=N, batch_questions=BATCH)
    started.job.wait()
    assert started.job.error is None and started.job.result == N
    _same_records(started.run.load_records(), local_results[1])
    assert any("Ray worker" in message for _, message in seen) and any("shard" in message for _, message in seen)
    assert len({done for done, _ in seen}) >= 3 and uq_jobs.status(started.run).state == "finished"
    assert _workers() == []
