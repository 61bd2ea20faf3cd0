"""Grokking on the Ray executor, on a local Ray instance (2 CPUs, no dashboard, one instance for the module):
a study of 2 tiny runs writes the local pool's metrics and measures, a worker killed mid-run gives the
same run (resumed from the checkpoint that reached the driver, never written twice), and an unreachable
address is refused before any work."""

from __future__ import annotations

import socket

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from engine.cli import main  # noqa: E402
from engine.core.errors import LabError  # noqa: E402
from engine.core.executor import ExecutorConfig  # noqa: E402
from engine.grokking import analysis, distributed, pool  # noqa: E402
from engine.grokking.config import GrokConfig, StudyConfig  # noqa: E402
from engine.grokking.runs import run_for  # noqa: E402

TINY = (
    *("--seeds", "0,1", "--arms", "control", "--p", "7", "--seq-len", "10", "--steps", "20", "--d-model", "16"),
    *("--d-mlp", "32", "--batch-size", "8", "--eval-every", "10", "--checkpoint-every", "10"),
    *("--stop-after-grok", "-1"),
)
TIMING = ["elapsed_s"]  # wall times: the only columns that differ between two trainings of a run
MEASURE_TIMING = ["measure_seconds"]


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_local):
    """The module's local Ray instance (tests/conftest.py ray_local) for every test here."""


def _configs():
    """The GrokConfig of each run of the tiny study, as the CLI builds them from TINY."""
    from engine.cli import build_parser
    from engine.core.options import from_args

    return [config for _, config in from_args(StudyConfig, build_parser().parse_args(["grok-study", *TINY])).runs()]


def _study(tmp_path, name: str, *extra: str):
    """Run the tiny study with the CLI; (metrics without wall time, llm measures, checkpoint steps, state) per run."""
    root, report = tmp_path / name / "runs", tmp_path / name / "report"
    assert main(["grok-study", *TINY, "--root", str(root), "--report-dir", str(report), *extra]) == 0
    return [_files(run_for(config, root)) for config in _configs()]


def _files(run):
    measures = run.llm_measures().drop(columns=MEASURE_TIMING)
    return run.metrics().drop(columns=TIMING), measures, run.checkpoint_steps(), run.status()["state"]


def _same(a, b) -> None:
    assert len(a) == len(b) == 2
    for (ma, la, ca, sa), (mb, lb, cb, sb) in zip(a, b):
        pd.testing.assert_frame_equal(ma, mb)
        pd.testing.assert_frame_equal(la, lb)
        assert ca == cb and sa == sb == "finished"


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The local 2-process pool's runs (the reference)."""
    folder = tmp_path_factory.mktemp("local")
    return _study(folder, "local", "--workers", "2")


def test_grok_study_on_ray_writes_the_local_pools_runs(tmp_path, local_runs):
    _same(_study(tmp_path, "ray", "--executor", "ray", "--ray-workers", "2"), local_runs)
    assert (tmp_path / "ray" / "report" / "summary.md").exists()
    assert not list((tmp_path / "ray" / "runs").rglob("*.tmp*"))


def test_a_killed_worker_reruns_its_run_from_the_last_checkpoint_that_came_back(tmp_path, monkeypatch):
    """The first worker is killed as soon as checkpoint 10 of its run (of 40 steps) reached the driver; the
    run resumes from it on a fresh worker and ends as the local one did (same rows, once each)."""
    configs = [config.replace(steps=40) for config in _configs()]
    reference = []
    for config in configs:
        analysis.run_experiment(config, root=tmp_path / "local", threads=1)
        reference.append(_files(run_for(config, tmp_path / "local")))
    root = tmp_path / "kill" / "runs"
    applied = distributed.apply_snapshot
    killed: list[str] = []
    checkpoints_at_kill: list[list[int]] = []

    def apply_then_kill(path, snapshot):
        applied(path, snapshot)
        if not killed and not snapshot.final and "checkpoints/step_0000010.pt" in snapshot.present:
            name = next(n for n in ray.util.list_named_actors() if n.startswith(distributed.WORKER_PREFIX))
            ray.kill(ray.get_actor(name))
            killed.append(name)
            checkpoints_at_kill.append(sorted(p for p in snapshot.present if p.startswith("checkpoints/")))

    monkeypatch.setattr(distributed, "apply_snapshot", apply_then_kill)
    ended = []
    executor = ExecutorConfig(executor="ray", ray_workers=1, ray_cpus=1)
    outcome = distributed.train_runs(configs, executor, root, lambda c, s, e: ended.append((c.seed, e)))
    assert killed and checkpoints_at_kill[0]
    assert outcome.errors == [] and outcome.reruns == 1
    assert sorted(ended) == [(0, ""), (1, "")]  # each run ended once
    _same([_files(run_for(config, root)) for config in configs], reference)  # no row twice, none lost


def test_an_unreachable_address_is_refused_before_any_work(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    root = tmp_path / "runs"
    argv = ["grok-study", *TINY, "--root", str(root), "--report-dir", str(tmp_path / "report")]
    argv += ["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "Cannot reach the Ray cluster at 127.0.0.1" in err[-1]
    assert not root.exists() or not any(root.rglob("metrics.csv"))
    with pytest.raises(LabError, match="Cannot reach"):
        distributed.train_runs([], ExecutorConfig(executor="ray", ray_address=f"127.0.0.1:{port}"), root)


SWEEP = (
    *("--p", "11", "--train-frac", "0.5", "--steps", "30", "--eval-every", "10", "--checkpoint-every", "10"),
    *("--stop-after-grok", "-1", "--seeds", "0,1", "--weight-decays", "1.0", "--threads", "1"),
)
SWEEP_BASE = GrokConfig(p=11, train_frac=0.5, steps=30, eval_every=10, checkpoint_every=10, stop_after_grok=-1)


def _sweep_files(root):
    """(metrics, measures) without wall time, checkpoint steps and state of each run of the 2-run sweep."""
    out = []
    for config in analysis.sweep_configs(SWEEP_BASE, [0, 1], [1.0]):
        run = run_for(config, root)
        out.append((run.metrics().drop(columns=TIMING), run.measures(), run.checkpoint_steps(), run.status()["state"]))
    return out


def test_grok_sweep_on_ray_writes_the_local_sweeps_runs(tmp_path, capsys):
    """`grok-sweep --executor ray` (one task per run, 2 workers) writes the runs the sequential local sweep
    writes, row for row; a second call reopens both finished runs without a worker."""
    assert main(["grok-sweep", *SWEEP, "--out", str(tmp_path / "local")]) == 0
    local = capsys.readouterr().out
    assert main(["grok-sweep", *SWEEP, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-workers", "2"]) == 0
    assert capsys.readouterr().out == local  # the same sweep table and connection sentence
    _same(_sweep_files(tmp_path / "ray"), _sweep_files(tmp_path / "local"))
    assert not list((tmp_path / "ray").rglob("*.tmp*"))
    again = pool.run_sweep(
        SWEEP_BASE, [0, 1], [1.0], root=tmp_path / "ray", executor=ExecutorConfig(executor="ray", ray_address="x:1")
    )  # an unreachable address: finished runs reopen from the cache before Ray is asked for anything
    assert [s["state"] for s in again] == ["finished", "finished"]


def test_a_sweep_job_with_the_ray_executor_runs_on_ray_and_reports_progress(tmp_path, monkeypatch):
    """A sweep job started with LAB_EXECUTOR=ray (the server's configuration) trains its runs through Ray
    (the job's thread is the driver) and its progress counts the runs as they end."""
    from engine.grokking import jobs

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_EXECUTOR", "ray")
    monkeypatch.setenv("LAB_RAY_WORKERS", "2")
    calls = []
    train_runs = distributed.train_runs
    monkeypatch.setattr(distributed, "train_runs", lambda *a, **k: calls.append(a[0]) or train_runs(*a, **k))
    from engine.core.jobs import Job

    seen = []  # every progress call the job gets (polling the job could miss fast ones)
    report = Job.progress

    def recorded(job, done, total=None, message="", seconds=None):
        seen.append((int(done), total, message))
        return report(job, done, total, message, seconds)

    monkeypatch.setattr(Job, "progress", recorded)
    job = jobs.start_sweep(SWEEP_BASE, [0, 1], [1.0])
    job.wait()
    assert job.error is None and len(calls) == 1 and len(calls[0]) == 2  # both runs, one Ray call
    assert [s["state"] for s in job.result] == ["finished", "finished"] and (job.done, job.total) == (2, 2)
    assert any("on Ray" in message for _, _, message in seen)
    assert not [n for n in ray.util.list_named_actors() if n.startswith(distributed.WORKER_PREFIX)]


def test_the_servers_executor_comes_from_the_environment():
    from engine.core.executor import server_executor

    assert server_executor({}) == ExecutorConfig()
    environ = {"LAB_EXECUTOR": "ray", "LAB_RAY_ADDRESS": "auto", "LAB_RAY_CPUS": "2", "LAB_RAY_GPUS": "1"}
    config = server_executor(environ)
    assert config == ExecutorConfig(executor="ray", ray_address="auto", ray_cpus=2, ray_gpus=1.0)
    with pytest.raises(LabError, match="LAB_EXECUTOR='dask' is not an executor"):
        server_executor({"LAB_EXECUTOR": "dask"})
    with pytest.raises(LabError, match="LAB_RAY_WORKERS='two' is not a number"):
        server_executor({"LAB_EXECUTOR": "ray", "LAB_RAY_WORKERS": "two"})


def test_a_stop_on_ray_keeps_what_came_back_and_the_run_resumes_to_the_local_result(tmp_path):
    """Two runs on 2 workers; a stop when the short one ends: the long one's worker ends, the run keeps what
    reached the driver (stopped, or untouched when nothing came back), and a second call finishes it with the
    rows of the same run trained in this process."""
    import threading

    from engine.grokking import pool

    short, long = SWEEP_BASE.replace(steps=20), SWEEP_BASE.replace(steps=400, seed=1)
    analysis.run_experiment(long, root=tmp_path / "local", threads=1)
    reference = _files_of(run_for(long, tmp_path / "local"))
    stop = threading.Event()
    executor = ExecutorConfig(executor="ray", ray_workers=2, ray_cpus=1)
    root = tmp_path / "ray"
    first = pool.train_all(
        [short, long], executor=executor, root=root, stop=stop, on_run=lambda c, s, e: stop.set()
    )
    assert first.errors == [] and first.summaries[short]["state"] == "finished"
    state = run_for(long, root).status().get("state")
    assert state != "finished" and (state == "stopped") == (long in first.summaries)
    assert not [n for n in ray.util.list_named_actors() if n.startswith(distributed.WORKER_PREFIX)]
    second = pool.train_all([short, long], executor=executor, root=root)
    assert second.summaries[long]["state"] == "finished"
    resumed = _files_of(run_for(long, root))
    pd.testing.assert_frame_equal(resumed[0], reference[0])
    pd.testing.assert_frame_equal(resumed[1], reference[1])


def _files_of(run):
    return run.metrics().drop(columns=TIMING), run.measures(), run.checkpoint_steps()
