"""Grokking engine: input checks, data, a small run that groks in seconds, cache round-trip,
stop/resume with usable checkpoints, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from engine.core.errors import LabError
from engine.grokking import analysis
from engine.grokking.config import GrokConfig, validate
from engine.grokking.models import evaluate
from engine.grokking.runs import open_run, run_for
from engine.grokking.tasks import make_dataset
from engine.grokking.training import train

# p = 23 with 80% of the pairs for training groks in about 1000 full-batch steps (MLP + Grokfast)
SMALL = GrokConfig(p=23, train_frac=0.8, steps=1500, eval_every=25, checkpoint_every=100, stop_after_grok=100)


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    root = tmp_path_factory.mktemp("grok")
    rows = []
    summary = analysis.run_experiment(SMALL, root=root, on_eval=rows.append, threads=1)
    return root, rows, summary


def test_bad_input_is_refused_with_a_reason():
    validate(GrokConfig(task="add", p=12))  # + and - work for any modulus
    validate(GrokConfig(task="sub", p=12))
    with pytest.raises(LabError, match="not prime.*try 11"):
        validate(GrokConfig(task="div", p=12))
    for frac in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(LabError, match="strictly between 0 and 1"):
            validate(GrokConfig(train_frac=frac))
    with pytest.raises(LabError, match="GiB"):
        validate(GrokConfig(p=20000))  # 4e8 pairs: refused before anything is allocated
    with pytest.raises(LabError, match="choose one of mlp, transformer, llm"):
        validate(GrokConfig(model="cnn"))


def test_dataset_labels_and_split():
    data = make_dataset(GrokConfig(task="div", p=7, train_frac=0.5))
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    assert len(y) == 7 * 6 and (x[:, 1] != 0).all()
    assert ((y * x[:, 1]) % 7 == x[:, 0]).all()  # c = a / b  <=>  c * b = a (mod p)
    assert len(data.y_train) == 21
    sq = make_dataset(GrokConfig(task="sq_sum", p=11, train_frac=0.5))
    assert ((sq.x_train[:, 0] ** 2 + sq.x_train[:, 1] ** 2) % 11 == sq.y_train).all()


def test_small_config_groks_with_a_delay(grokked):
    root, rows, summary = grokked
    assert summary["grokked"] and summary["state"] == "finished"
    assert summary["memorisation_step"] < summary["grok_50_step"] <= summary["grok_95_step"]
    assert summary["grokking_delay"] >= 200  # a visible delay after memorisation
    assert rows[-1]["test_acc"] >= 0.95
    cache = run_for(SMALL, root)
    assert json.loads(cache.summary_path.read_text())["grok_95_step"] == summary["grok_95_step"]
    # one measures row per matrix / layer per checkpoint, and the events are consistent with metrics.csv
    measures = pd.read_csv(cache.measures_path)
    assert sorted(measures["step"].unique()) == cache.checkpoint_steps()
    # a checkpoint loads with weights_only=True and reproduces the logged test accuracy
    step = cache.checkpoint_steps()[-1]
    model = cache.load_model(step)
    data = make_dataset(SMALL)
    _, acc = evaluate(model, data.x_test, data.y_test)
    assert acc == pytest.approx(float(cache.metrics().set_index("step").loc[step, "test_acc"]))


def test_cache_round_trip_is_identical_and_instant(grokked):
    root, rows, summary = grokked
    again = analysis.run_experiment(SMALL, root=root, on_eval=lambda r: pytest.fail("a finished run must not train"))
    assert (
        again == {k: v for k, v in summary.items() if k != "seconds"}
        or again["grok_95_step"] == summary["grok_95_step"]
    )
    metrics = run_for(SMALL, root).metrics()
    expected = pd.DataFrame(rows)[metrics.columns]
    pd.testing.assert_frame_equal(metrics.reset_index(drop=True), expected, check_exact=True, check_dtype=False)


def test_stopped_run_keeps_checkpoints_and_resumes_to_the_same_numbers(tmp_path):
    config = GrokConfig(p=23, train_frac=0.8, steps=120, eval_every=10, checkpoint_every=40, stop_after_grok=-1)
    seen = []
    first = train(
        config, root=tmp_path / "a", on_eval=seen.append, stop=lambda: len(seen) >= 7, threads=1
    )  # stop at step 60
    assert first.state == "stopped" and first.step == 60
    cache = run_for(config, tmp_path / "a")
    assert cache.status()["state"] == "stopped" and "resumes from step 60" in cache.status()["message"]
    assert cache.checkpoint_steps() == [0, 40, 60]
    cache.load_model(60)  # usable
    second = train(config, root=tmp_path / "a", threads=1)
    assert second.state == "finished" and second.step == 120
    straight = train(config, root=tmp_path / "b", threads=1)
    resumed, direct = run_for(config, tmp_path / "a").metrics(), run_for(config, tmp_path / "b").metrics()
    assert resumed["step"].tolist() == list(range(0, 121, 10))
    cols = ["train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"]
    np.testing.assert_allclose(resumed[cols].to_numpy(), direct[cols].to_numpy(), rtol=1e-5)
    assert straight.from_cache is False and train(config, root=tmp_path / "b").from_cache


def test_cli_grok_writes_metrics_checkpoints_and_summary(tmp_path, capsys):
    from engine.cli import main

    code = main(
        [
            "grok",
            "--op",
            "add",
            "--p",
            "23",
            "--train-frac",
            "0.8",
            "--steps",
            "50",
            "--eval-every",
            "10",
            "--checkpoint-every",
            "20",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    config = GrokConfig(p=23, train_frac=0.8, steps=50, eval_every=10, checkpoint_every=20)
    cache = open_run(config, run_dir=tmp_path)
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "summary.json").exists()
    assert cache.metrics()["step"].tolist() == [0, 10, 20, 30, 40, 50]
    assert cache.checkpoint_steps() == [0, 20, 40, 50]
    summary = json.loads(cache.summary_path.read_text())
    assert set(summary["onsets"]) == set(analysis.MEASURES) and "memorisation_step" in summary
    assert main(["grok", "--op", "div", "--p", "12", "--out", str(tmp_path)]) == 2
    assert "not prime" in capsys.readouterr().err
    assert (
        main(["grok", "--p", "29", "--steps", "10", "--out", str(tmp_path)]) == 2
    )  # another config: nothing overwritten
    assert "another configuration" in capsys.readouterr().err
    assert cache.metrics()["step"].tolist()[-1] == 50


def test_transformer_trains_and_is_measured(tmp_path):
    config = GrokConfig(
        model="transformer", n_layers=2, p=11, train_frac=0.5, steps=20, eval_every=10, checkpoint_every=10
    )
    summary = analysis.run_experiment(config, root=tmp_path, threads=1)
    assert summary["state"] == "finished" and summary["last_step"] == 20
    measures = pd.read_csv(run_for(config, tmp_path).measures_path)
    names = set(measures["name"])
    assert {"blocks.0.W_Q.weight", "blocks.1.W_out.weight", "embed.weight", "unembed.weight"} <= names
    assert {"block0.resid_out", "block1.resid_out"} <= set(measures.loc[measures["kind"] == "activation", "name"])
    assert len(measures) == 3 * (len(names))  # 3 checkpoints (0, 10, 20), one row per matrix / layer each


def test_delete_run_removes_it_from_the_cache(tmp_path):
    from engine.grokking.runs import delete_run, list_runs

    config = GrokConfig(p=23, train_frac=0.8, steps=30, eval_every=10, checkpoint_every=10, stop_after_grok=-1)
    analysis.run_experiment(config, root=tmp_path, threads=1)
    other = config.replace(seed=1)
    analysis.run_experiment(other, root=tmp_path, threads=1)
    assert {r.run_id for r in list_runs(tmp_path)} == {config.key(), other.key()}
    delete_run(config.key(), tmp_path)
    assert [r.run_id for r in list_runs(tmp_path)] == [other.key()]
    assert not (tmp_path / config.key()).exists() and (tmp_path / other.key()).is_dir()


def test_run_ids_are_those_of_runs_written_before_the_run_store():
    assert GrokConfig().key() == "1d485dd743ec6b44"  # cache/grokking/<id>/ of existing runs keeps opening
    assert GrokConfig(task="div", p=97, model="transformer", n_layers=2, grokfast=False).key() == "8646585c9817c2a0"


def test_a_run_written_by_another_process_is_refused(tmp_path):
    config = GrokConfig(p=23, train_frac=0.8, steps=30, eval_every=10, checkpoint_every=10, stop_after_grok=-1)
    run = open_run(config, tmp_path)
    with run.claim():  # another writer (a flock on its own open of the claim file, like another process)
        assert run.is_claimed()
        with pytest.raises(LabError, match="being trained by another session or process"):
            train(config, root=tmp_path, threads=1)
        with pytest.raises(LabError, match="being written right now"):
            from engine.grokking.runs import delete_run

            delete_run(run.run_id, tmp_path)
    assert not run.is_claimed() and run.status()["state"] == "new"  # nothing was written
    assert train(config, root=tmp_path, threads=1).state == "finished"


def test_an_old_layout_run_with_a_stale_lock_file_opens_and_resumes(tmp_path):
    import os

    from engine.grokking.runs import get_run, list_runs

    config = GrokConfig(p=23, train_frac=0.8, steps=60, eval_every=10, checkpoint_every=20, stop_after_grok=-1)
    seen = []
    assert train(config, root=tmp_path, on_eval=seen.append, stop=lambda: len(seen) >= 3, threads=1).step == 20
    folder = tmp_path / config.key()
    (folder / ".claim").unlink()  # the layout of lab versions before the run store: a pid file, no claim file
    (folder / "lock").write_text(str(os.getppid()))  # a live process that is not writing the run
    assert [r.run_id for r in list_runs(tmp_path)] == [config.key()] and not get_run(
        config.key(), tmp_path
    ).is_claimed()
    resumed = train(config, root=tmp_path, threads=1)
    assert resumed.state == "finished" and resumed.step == 60 and not resumed.from_cache
    assert not (folder / "lock").exists()
    assert run_for(config, tmp_path).metrics()["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]


def test_folders_of_an_older_version_are_strays_that_can_be_deleted(tmp_path):
    from engine.grokking.runs import delete_run, get_run, list_runs, strays

    config = GrokConfig(p=23, train_frac=0.8, steps=10, eval_every=10, checkpoint_every=10)
    train(config, root=tmp_path, threads=1)
    old = tmp_path / "00000000000000aa"  # a config of another format version: its id is not its hash
    old.mkdir()
    (old / "config.json").write_text(json.dumps({**config.key_fields(), "removed_field": 1, "p": 29}))
    broken = tmp_path / "00000000000000bb"
    broken.mkdir()
    assert [r.run_id for r in list_runs(tmp_path)] == [config.key()]
    assert sorted(f.run_id for f in strays(tmp_path)) == [old.name, broken.name]
    with pytest.raises(LabError, match="older version"):
        get_run(old.name, tmp_path)
    for folder in strays(tmp_path):
        delete_run(folder, tmp_path)
    assert strays(tmp_path) == [] and [r.run_id for r in list_runs(tmp_path)] == [config.key()]


def test_metrics_read_while_the_file_grows(tmp_path):
    """A page may read metrics.csv between its creation and the header's flush, or mid-line: never an error,
    never a half-written row (the soak test saw pandas' EmptyDataError here)."""
    from engine.grokking.runs import read_growing_csv

    path = tmp_path / "metrics.csv"
    assert list(read_growing_csv(path, ["step", "acc"]).columns) == ["step", "acc"]  # absent
    path.write_text("")
    assert read_growing_csv(path, ["step", "acc"]).empty  # created, nothing flushed yet
    path.write_text("step,acc\n1,0.5\n2,0.7")  # the last row is being written
    frame = read_growing_csv(path, ["step", "acc"])
    assert frame["step"].tolist() == [1] and frame["acc"].tolist() == [0.5]
    path.write_text("step,ac")
    assert read_growing_csv(path, ["step", "acc"]).empty


def test_a_run_stopped_at_step_0_resumes_without_a_second_step_0_row(tmp_path):
    """Stopped right after its first evaluation (checkpoint 0 kept), a run resumes from that checkpoint and
    writes the step-0 metrics once: the resumed step is never evaluated again, whatever its number."""
    config = GrokConfig(p=23, train_frac=0.8, steps=40, eval_every=10, checkpoint_every=10, stop_after_grok=-1)
    seen = []
    first = train(config, root=tmp_path, on_eval=seen.append, stop=lambda: len(seen) >= 1, threads=1)
    assert first.state == "stopped" and first.step == 0
    assert run_for(config, tmp_path).checkpoint_steps() == [0]
    assert train(config, root=tmp_path, threads=1).state == "finished"
    assert run_for(config, tmp_path).metrics()["step"].tolist() == [0, 10, 20, 30, 40]
