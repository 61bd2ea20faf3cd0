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
    text = (out / "summary.md").read_text()
    assert "**A1**" in text and summary["verdict"]["sentence"] in text and summary["length"]["sentence"] in text
    for name, method in summary["methods"].items():  # every score against the usual one, paired
        if name != "mean_token_nll":
            assert all(
                set(d) == {"estimate", "ci_low", "ci_high", "p", "p_holm"} for d in method["diff_vs_usual"].values()
            )
    assert [t["judge"] for t in summary["judges"]] == ["auto", "contains", "f1", "embedding"]
    assert summary["contrasts"] == []  # 3 questions: too few to cross-fit a decomposition, so no contrast
    assert "| contains | 3 |" in text and "| f1 | 3 |" in text and "| embedding | 3 |" in text
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
    from engine.uq.config import CLI_FOLD_SEEDS, EvalOptions, GenerationConfig

    parser = build_parser()
    args = parser.parse_args(["uq", "--questions", "q.csv", "--out", "o"])
    assert from_args(GenerationConfig, args) == GenerationConfig()
    assert from_args(EvalOptions, args) == EvalOptions(n_seeds=CLI_FOLD_SEEDS)  # the page fits one fold seed
    argv = ["uq", "--questions", "q.csv", "--out", "o", "-k", "3", "--bootstrap", "50", "--seed", "7", "--judge", "f1"]
    args = parser.parse_args(argv)
    assert from_args(GenerationConfig, args) == GenerationConfig(samples=3, seed=7)
    assert from_args(EvalOptions, args) == EvalOptions(judge="f1", n_boot=50, seed=7, n_seeds=CLI_FOLD_SEEDS)


def test_study_on_a_tiny_limit_writes_the_report(shared_data, embedded_lm, tmp_path, monkeypatch, capsys):
    """`uq-study` end to end on 10 questions of each set (the fewest 5-fold cross-fitting takes), K = 2: per-set
    files, summary.md, three PNGs; then `--report-only` rebuilds the report from the cached runs."""
    _isolated_cache(tmp_path, monkeypatch)
    out = tmp_path / "report"
    argv = ["uq-study", "--limit", "10", "--samples", "2", "--max-new-tokens", "8", "--bootstrap", "50", "--quiet"]
    argv += ["--fold-seeds", "2"]
    assert main(argv + ["--out", str(out)]) == 0
    for name in ("webquestions", "bundled"):
        for file in ("results.csv", "summary.json", "summary.md"):
            assert (out / name / file).is_file()
        assert len(pd.read_csv(out / name / "results.csv")) == 10
    for figure in ("a1_a2_a3", "rejection_curves", "decomposition_ablation"):
        assert (out / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "summary.md").read_text()
    web = json.loads((out / "webquestions" / "summary.json").read_text())
    assert text.startswith("# Is decomposition") and web["verdict"]["sentence"] in text
    assert "## A1 / A2 / A3 under each judge" in text and "| contains | 10 |" in text
    command = (
        f"`python -m engine uq-study --limit 10 --out {out} --samples 2 --max-new-tokens 8 --bootstrap 50 "
        "--fold-seeds 2`"
    )
    assert command in text  # the exact command
    assert "Berant" in text and "CC-BY 4.0" in text and "torch" in text and "Wall time" in text
    assert "default_rng(0).choice" in text  # the seeded sample, stated
    manifest = json.loads((out / "study.json").read_text())
    assert [s["name"] for s in manifest["sets"]] == ["webquestions", "bundled"]
    (out / "summary.md").unlink()
    assert web["contrasts"] and "## Pre-registered contrasts" in text and "| primary |" in text
    assert (out / "figures" / "contrasts.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "confirmation_plan.json").exists()  # a --limit check never fixes the contrast
    reported = ["uq-study", "--report-only", "--bootstrap", "50", "--fold-seeds", "2", "--quiet", "--out", str(out)]
    assert main(reported) == 0
    assert (out / "summary.md").read_text().split("## How this was made")[0] == text.split("## How this was made")[0]


def test_study_names_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_SHARED_DATA", str(tmp_path))  # a folder without webquestions_test.csv
    assert main(["uq-study", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "webquestions_test.csv" in err and "--webquestions 0" in err
    assert main(["uq-study", "--report-only", "--out", str(tmp_path / "none")]) == 2
    assert "No study in" in capsys.readouterr().err
    assert main(["uq-study", "--confirm", "--out", str(tmp_path / "none")]) == 2  # nothing explored, nothing fixed
    assert "No contrast is fixed" in capsys.readouterr().err


def test_study_flags_come_from_the_config_dataclasses():
    from engine.cli import build_parser
    from engine.core.options import from_args
    from engine.uq.config import CLI_FOLD_SEEDS, EvalOptions, GenerationConfig
    from engine.uq.study import StudyConfig

    args = build_parser().parse_args(["uq-study"])
    assert from_args(StudyConfig, args) == StudyConfig()
    assert StudyConfig().webquestions == 1000 and from_args(GenerationConfig, args).samples == 10
    # no NLI model, no LM entailment by default; the study averages 10 fold seeds (the page: one)
    assert from_args(EvalOptions, args) == EvalOptions(n_seeds=CLI_FOLD_SEEDS)
    args = build_parser().parse_args(["uq-study", "--limit", "5", "--no-bundled", "--nli-model", "m"])
    assert from_args(StudyConfig, args) == StudyConfig(limit=5, bundled=False)
    assert from_args(EvalOptions, args).nli_model == "m"


def test_check_reads_a_file_without_a_model(tmp_path):
    """`uq --questions FILE --check`: the count and every warning with its line, exit 0; a refusal exits 2
    with one line; no model is loaded (no torch import at all)."""
    import subprocess
    import sys

    good = tmp_path / "q.csv"
    good.write_text("id,question,answer\n1,What is 1,000 plus 1?,1001\n2,Capital of France?,Paris\n")
    code = (
        "import runpy, sys; sys.argv = ['engine'] + sys.argv[1:]; "
        "import engine.cli as c; rc = c.main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "uq", "--questions", str(good), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1 questions") and "line 2" in lines[1] and lines[-1] == "False"
    bad = tmp_path / "q.pdf"
    bad.write_bytes(b"%PDF-1.4 binary")
    out = subprocess.run(
        [sys.executable, "-m", "engine", "uq", "--questions", str(bad), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_report_figures_take_more_rows_than_altairs_default_limit(tmp_path):
    """A 1000-question study draws a rejection-curve table of > 5000 rows: the PNG is still written."""
    import altair as alt
    import pandas as pd

    from engine.uq.report import save_png

    frame = pd.DataFrame({"x": range(6325), "y": [i % 7 for i in range(6325)]})
    path = save_png(alt.Chart(frame).mark_line().encode(x="x:Q", y="y:Q"), tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
