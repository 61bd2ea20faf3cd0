"""An evaluation's files: results.csv (spreadsheet-safe), summary.json and summary.md (page downloads
and the CLI's --out folder alike)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from engine.core.paths import atomic_write
from engine.uq.contrasts import contrasts_markdown
from engine.uq.evaluation import Evaluation, Summary
from engine.uq.metrics import format_difference, format_value, summary_markdown


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells starting with = + - @ (or tab / CR) get a leading ' so spreadsheets never run them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v
            )
    return out


def results_csv(evaluation: Evaluation) -> bytes:
    """The per-question results table as UTF-8 CSV."""
    return spreadsheet_safe(evaluation.results).to_csv(index=False).encode("utf-8")


def _no_nan(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def summary_json(evaluation: Evaluation) -> str:
    """The summary as JSON (NaN written as null)."""
    return json.dumps(_no_nan(evaluation.summary.as_dict()), indent=2, ensure_ascii=False)


def judges_markdown(summary: Summary) -> str:
    """The A1 / A2 / A3 table under each judge (the chosen one first), with 95% intervals, the paired
    A3 - A2 and each judge's verdict on the decompositions."""
    lines = [
        f"| judge | n | A1 | A2 (`{summary.usual_method}`) | A3 (`{summary.semantic_method}`) | A3 − A2 (paired) "
        "| decompositions | a semantic score beats length |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in summary.judges:
        name = f"**{t.judge}** (chosen)" if t.judge == summary.judge else t.judge
        lines.append(
            f"| {name} | {t.n} | {format_value(t.A1, t.A1_ci)} | {format_value(t.A2, t.A2_ci)} | "
            f"{format_value(t.A3, t.A3_ci)} | {format_difference(t.a3_minus_a2)} | {t.verdict.answer} | "
            f"{'yes' if t.length.beaten else 'no'} |"
        )
    return "\n".join(lines)


def lead_markdown(summary: Summary) -> str:
    """The answer first: the verdict sentence and the answer-length check (the chosen judge)."""
    return f"**Answer ({summary.judge} judge):** {summary.verdict.sentence}\n\n{summary.length.sentence}"


def summary_md(evaluation: Evaluation) -> str:
    """A Markdown report: the verdict sentence, run and judge in a few lines, A1 / A2 / A3 under each judge,
    then every score's metrics and paired differences from the usual score."""
    s = evaluation.summary
    head = ["# Semantic vs surface uncertainty", "", lead_markdown(s), ""]
    run = s.run or {}
    if run:
        gen = run.get("generation") or {}
        head.append(
            f"Model `{run.get('model')}`, questions `{run.get('source')}` (hash {run.get('questions_hash')}), "
            f"K = {gen.get('samples')} samples at T = {gen.get('temperature')}, seed {gen.get('seed')}, "
            f"run `{run.get('run_id')}`."
        )
    head.append(f"Judge: `{s.judge}`; {s.n_graded} graded questions ({s.n_manual} marked by hand).")
    head += ["", "## A1 / A2 / A3 under each judge", "", judges_markdown(s), ""]
    if s.contrasts:
        head += [
            "## Pre-registered contrasts (with against without the decomposition)",
            "",
            f"Every cross-fitted score: the mean over {s.n_seeds} fold seed(s); AUROC by DeLong's paired test, acc@50 "
            f"by a paired bootstrap of {s.n_boot_test} resamples; Holm within each family.",
            "",
            contrasts_markdown(s.contrasts),
            "",
        ]
    head += [f"## Every score ({s.judge} judge)", ""]
    notes = [f"- `{name}`: {note}" for name, note in (s.score_info.get("notes") or {}).items()]
    tail = ["", "Notes:", *notes] if notes else []
    return "\n".join(head) + summary_markdown(s.as_dict()) + "\n" + "\n".join(tail) + ("\n" if tail else "")


def write_outputs(evaluation: Evaluation, out_dir: str | Path) -> list[Path]:
    """results.csv, summary.json and summary.md in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "summary.json", out / "summary.md"]
    atomic_write(paths[0], results_csv(evaluation))
    atomic_write(paths[1], summary_json(evaluation).encode("utf-8"))
    atomic_write(paths[2], summary_md(evaluation).encode("utf-8"))
    return paths
