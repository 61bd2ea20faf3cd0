"""`python -m engine uq` on a few WebQuestions with the real model: files, columns, resume, errors."""

import json
import os

import pandas as pd

from engine.cli import main
from engine.core.paths import REPO_ROOT


def _isolated_cache(tmp_path, monkeypatch):
    """Run caches in tmp, the embedded model cache shared with the repository (no re-conversion)."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    os.symlink(REPO_ROOT / "cache" / "models", tmp_path / "cache" / "models")


def test_cli_on_webquestions(shared_data, embedded_lm, tmp_path, monkeypatch, capsys):
    _isolated_cache(tmp_path, monkeypatch)
    out = tmp_path / "out"
    argv = [
        "uq",
        "--questions",
        str(shared_data / "webquestions_test.csv"),
        "--out",
        str(out),
        "--limit",
        "3",
        "--samples",
        "3",
        "--max-new-tokens",
        "8",
        "--bootstrap",
        "50",
        "--quiet",
    ]
    assert main(argv) == 0
    results = pd.read_csv(out / "results.csv")
    assert list(results["id"]) == ["wqs000000", "wqs000001", "wqs000002"]
    for column in ("question", "reference", "answer", "correct", "mean_token_nll", "semantic_entropy", "sep"):
        assert column in results.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and abs(summary["A1"] - results["correct"].mean()) < 1e-12
    assert {"acc50", "auroc", "prr", "acc50_ci"} <= set(summary["methods"]["mean_token_nll"])
    assert "**A1**" in (out / "summary.md").read_text()
    # a second call resumes the saved run (nothing generated) and gives the same numbers
    assert main(argv[:-1] + ["--out", str(tmp_path / "again")]) == 0
    assert "0 generated now" in capsys.readouterr().err
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["A1"] == summary["A1"]


def test_cli_user_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\nx,y\n")
    assert main(["uq", "--questions", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "No 'question' column" in capsys.readouterr().err
    assert main(["uq", "--questions", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2


def test_cli_flags_come_from_the_config_dataclasses():
    """Defaults and flags are the dataclasses' own: one --seed for generation and scores, as on the page."""
    from engine.cli import build_parser
    from engine.core.options import from_args
    from engine.uq.config import EvalOptions, GenerationConfig

    parser = build_parser()
    args = parser.parse_args(["uq", "--questions", "q.csv", "--out", "o"])
    assert from_args(GenerationConfig, args) == GenerationConfig()
    assert from_args(EvalOptions, args) == EvalOptions()
    argv = ["uq", "--questions", "q.csv", "--out", "o", "-k", "3", "--bootstrap", "50", "--seed", "7", "--judge", "f1"]
    args = parser.parse_args(argv)
    assert from_args(GenerationConfig, args) == GenerationConfig(samples=3, seed=7)
    assert from_args(EvalOptions, args) == EvalOptions(judge="f1", n_boot=50, seed=7)
