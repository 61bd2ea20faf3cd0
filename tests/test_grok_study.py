"""The LLM-shaped model in the grokking lab: the normal train loop with resume, checkpoints that the
first tab's loader and scan open, suppression's bound in a trained run, bad input, the bounded number of
checkpoints, owner-namespaced run ids, and the study command on a tiny setting."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from engine.cli import main
from engine.core.errors import LabError
from engine.core.loading import load_model
from engine.grokking import analysis, pool
from engine.grokking.config import (
    LLM_MEASURES,
    LLM_PRESET,
    STUDY_ARMS,
    GrokConfig,
    StudyConfig,
    validate,
    validate_study,
    validate_sweep,
)
from engine.grokking.runs import checkpoints_to_drop, list_runs, open_run, run_for
from engine.grokking.training import train
from engine.superweights import detect

# a tiny LLM-shaped run: 4 layers (the detection rule's minimum), d16, p = 7; seconds on a CPU
TINY = GrokConfig(
    **{**LLM_PRESET, "d_model": 16, "d_mlp": 32},
    p=7,
    train_frac=0.6,
    steps=40,
    eval_every=10,
    checkpoint_every=10,
    stop_after_grok=-1,
)
METRICS = ["step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"]


def test_llm_trains_through_the_train_loop_and_resumes_identically(tmp_path):
    whole = train(TINY, root=tmp_path / "a", threads=1)
    assert whole.state == "finished" and whole.step == 40
    calls = {"n": 0}

    def stop_after_two_evals() -> bool:
        calls["n"] += 1
        return calls["n"] > 20  # the stop is asked once per step: ends cleanly at step 20

    first = train(TINY, root=tmp_path / "b", stop=stop_after_two_evals, threads=1)
    assert first.state == "stopped" and first.step == 20
    second = train(TINY, root=tmp_path / "b", threads=1)
    assert second.state == "finished" and second.step == 40
    a, b = whole.run.metrics()[METRICS], second.run.metrics()[METRICS]
    pd.testing.assert_frame_equal(a, b)  # resume after a stop = the uninterrupted run, row for row


def test_llm_run_measures_and_its_checkpoint_opens_in_the_first_tab(tmp_path):
    summary = analysis.run_experiment(TINY.replace(steps=20), root=tmp_path, threads=1)
    run = run_for(TINY.replace(steps=20), tmp_path)
    measures = run.llm_measures()
    assert measures["step"].tolist() == [0, 10, 20]
    for column in ("max_ppl_ratio_train", "max_ppl_ratio_test", "super_activation_bos", "n_key_frequencies"):
        assert measures[column].notna().all()
    assert set(summary["onsets"]) == set(LLM_MEASURES)
    causal = pd.read_csv(run.llm_causal_path)
    assert {"train", "test"} == set(causal["split"]) and set(causal["step"]) == {0, 10, 20}
    folder = run.export_checkpoint(20)
    lm = load_model(str(folder), device="cpu")  # the first tab's loader: an ordinary HF folder
    result = detect.scan(lm, ["1 + 2 =", "3 + 4 ="])  # the pretrained-LLM scan, unchanged
    assert len(result.layers) == TINY.n_layers
    detect.detect(lm, ["1 + 2 =", "3 + 4 ="])


def test_suppression_keeps_max_over_median_under_the_bound(tmp_path):
    q, c = 0.992, 1.0  # 512 weights per down projection: clips 5 (0.98%), the bound is the 5th largest |w|
    suppressed = TINY.replace(suppress=True, suppress_every=1, suppress_quantile=q, suppress_factor=c, steps=30)
    control = suppressed.replace(suppress=False)
    for config in (suppressed, control):
        train(config, root=tmp_path, threads=1)

    def ratios(config: GrokConfig) -> list[tuple[float, float]]:
        model = run_for(config, tmp_path).load_model(30)  # the last checkpoint: right after a clip
        out = []
        for layer in model.lm.model.layers:
            a = layer.mlp.down_proj.weight.detach().abs().flatten().sort().values
            bound = c * a[math.ceil(q * (len(a) - 1))]  # >= c x quantile_q: the clip threshold's order statistic
            median = a.median()
            out.append((float(a[-1] / median), float(bound / median)))
        return out

    assert all(ratio <= bound * (1 + 1e-6) for ratio, bound in ratios(suppressed))
    assert any(ratio > bound * (1 + 1e-6) for ratio, bound in ratios(control))  # the bound is not free


def test_bad_input_is_refused_before_training(tmp_path):
    with pytest.raises(LabError, match="not prime"):
        validate(TINY.replace(task="div", p=8))
    for frac in (0.0, 1.0):
        with pytest.raises(LabError, match="strictly between 0 and 1"):
            validate(TINY.replace(train_frac=frac))
    with pytest.raises(LabError, match="needs 1-8 layers"):
        validate(TINY.replace(n_layers=9))
    with pytest.raises(LabError, match="GiB limit"):
        validate(TINY.replace(p=997, d_model=512, d_mlp=2048, n_layers=8), memory_limit_gb=0.5)
    with pytest.raises(LabError, match="remove every weight"):
        validate(TINY.replace(suppress=True, suppress_factor=0.0))
    with pytest.raises(LabError, match="over the 1% limit"):
        validate(TINY.replace(suppress=True, suppress_quantile=0.9))
    with pytest.raises(LabError, match="LLM-shaped"):
        validate(GrokConfig(suppress=True))
    with pytest.raises(LabError, match="over the limit"):
        validate_sweep(65)
    with pytest.raises(LabError, match="over the limit"):
        pool.run_sweep(TINY, range(40), [0.3, 1.0], root=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was trained or created


def test_checkpoints_are_thinned_keeping_the_events():
    steps = list(range(0, 1001, 10))
    drop = checkpoints_to_drop(steps, 20, (105, 500))
    kept = sorted(set(steps) - set(drop))
    assert len(kept) == 20 and {0, 1000, 100, 110, 490, 500} <= set(kept)
    assert checkpoints_to_drop(steps[:5], 20) == []


def test_a_run_keeps_at_most_max_checkpoints(tmp_path):
    result = train(TINY.replace(checkpoint_every=10, steps=60), root=tmp_path, threads=1, max_checkpoints=4)
    kept = result.run.checkpoint_steps()
    assert len(kept) == 4 and kept[0] == 0 and kept[-1] == 60


def test_owner_namespaced_run_ids_differ_while_cli_ids_stay(tmp_path):
    assert GrokConfig().key() == "1d485dd743ec6b44"  # unchanged by the new fields (suppression off)
    assert TINY.key() == TINY.key(None) != TINY.key("alice") != TINY.key("bob")
    assert TINY.replace(suppress=True).key() != TINY.key()
    mine, cli = open_run(TINY, tmp_path, owner="alice"), open_run(TINY, tmp_path)
    assert mine.run_id == TINY.key("alice") and cli.run_id == TINY.key()
    found = {run.run_id: run.owner for run in list_runs(tmp_path)}
    assert found == {mine.run_id: "alice", cli.run_id: None}


def test_study_command_writes_the_report(tmp_path):
    report = tmp_path / "report"
    argv = [
        "grok-study",
        *("--seeds", "0", "--p", "7", "--seq-len", "10", "--steps", "20", "--d-model", "16", "--batch-size", "8"),
        *("--d-mlp", "32", "--eval-every", "10", "--checkpoint-every", "10", "--workers", "1"),
        *("--stop-after-grok", "-1", "--report-dir", str(report), "--root", str(tmp_path / "runs")),
    ]
    assert main(argv) == 0
    assert {"summary.md", "runs.csv", "study_log.json", "accuracy_curves.png", "measures.png"} <= {
        f.name for f in report.iterdir()
    }
    text = (report / "summary.md").read_text()
    assert text.index("## 1. Formation check") < text.index("## 2. Outcomes per arm")  # the positive control first
    assert "## Answer" in text and "Wall time" in text and "python -m engine grok-study" in text
    runs_csv = pd.read_csv(report / "runs.csv")
    assert sorted(runs_csv["arm"]) == sorted(STUDY_ARMS) and (runs_csv["state"] == "finished").all()
    assert set(runs_csv["outcome"]) <= {"grokked", "collapsed", "never", "unconfirmed"}
    assert main([*argv, "--report-only"]) == 0  # cached: the report again, no training
    assert torch.get_num_threads() >= 1
    with pytest.raises(LabError, match="Unknown arm"):
        validate_study(StudyConfig(arms=("control", "sigmoid")))
    with pytest.raises(LabError, match="hold window"):
        validate_study(StudyConfig(stop_after_grok=50))


def test_a_stopped_sweep_resumes(tmp_path):
    base = GrokConfig(p=11, train_frac=0.5, steps=30, eval_every=10, checkpoint_every=10, stop_after_grok=-1)
    asked = {"n": 0}

    def stop() -> bool:
        asked["n"] += 1
        return asked["n"] > 45  # during the second run

    first = pool.run_sweep(base, [0, 1], [1.0], root=tmp_path, stop=stop, threads=1)
    assert [s["state"] for s in first] == ["finished", "stopped"]
    second = pool.run_sweep(base, [0, 1], [1.0], root=tmp_path, threads=1)
    assert [s["state"] for s in second] == ["finished", "finished"] and second[1]["last_step"] == 30
    assert "seconds" not in second[0] and second[0]["key"] == first[0]["key"]  # reopened from its cache


def test_a_measure_registered_in_one_place_appears_in_onsets_labels_the_study_tables_and_the_charts(tmp_path):
    """One register() in this test and no other edit: the measure is computed at every checkpoint, has an onset,
    its label is in config's labels (the tab's onset table) and the run's summary sentence, the tab charts its
    panel, and the study report has it in runs.csv, its tables and its trace figure."""
    from engine.grokking.config import LLM_MEASURE_LABELS
    from engine.grokking.measure_registry import ChartPanel, MeasureSpec, register, traces, unregister
    from engine.grokking.runs import list_runs
    from ui.grokking_charts import llm_panels

    def compute(model, data, settings) -> dict[str, float]:
        return {"dummy_norm": float(model.lm.model.embed_tokens.weight.detach().norm())}

    panel = ChartPanel("Dummy norm over training", "norm")
    register(
        MeasureSpec(
            "dummy",
            "a dummy measure",
            ("dummy_norm",),
            lambda m, s: m["dummy_norm"] > 0,
            compute,
            panel,
            trace=("dummy_norm", "norm of the dummy"),
        )
    )
    try:
        assert LLM_MEASURE_LABELS["dummy"] == "a dummy measure" and "dummy" in LLM_MEASURES
        assert (["dummy_norm"], "norm", "Dummy norm over training", "linear") in llm_panels()
        assert traces()["dummy_norm"] == "norm of the dummy"
        report = tmp_path / "report"
        argv = [
            "grok-study",
            *("--seeds", "0", "--arms", "control", "--p", "7", "--seq-len", "10", "--steps", "10"),
            *("--d-model", "16", "--d-mlp", "32", "--eval-every", "10", "--checkpoint-every", "10", "--workers", "1"),
            *("--stop-after-grok", "-1", "--report-dir", str(report), "--root", str(tmp_path / "runs")),
        ]
        assert main(argv) == 0
        runs_csv = pd.read_csv(report / "runs.csv")
        assert runs_csv["onset_dummy"].tolist() == [0]  # on at every checkpoint: onset at step 0
        assert runs_csv["max_dummy_norm"].iloc[0] > 0
        summary_md = (report / "summary.md").read_text()
        assert "| a dummy measure | 1 of 1 (median 0) |" in summary_md  # the table of every registered measure
        header = next(line for line in summary_md.splitlines() if line.startswith("| arm | seed |"))
        assert "onset_dummy" in header and "max_dummy_norm" in header  # the runs table
        assert (report / "measures.png").exists()  # the trace figure (its columns: traces())
        (run,) = list_runs(tmp_path / "runs")
        summary = analysis.summarize(run)
        assert summary["onsets"]["dummy"] == 0
        assert "a dummy measure: onset at step 0" in analysis.run_summary_text(summary)
    finally:
        unregister("dummy")
    assert "dummy" not in LLM_MEASURE_LABELS and "dummy_norm" not in traces()


@pytest.mark.parametrize("command", ["grok", "grok-sweep", "grok-study"])
def test_help_of_every_grokking_command_renders(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "--" in capsys.readouterr().out
