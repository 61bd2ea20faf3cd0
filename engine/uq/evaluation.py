"""Evaluation of an uncertainty run: grade the answers, score them, compare the scores.

`evaluate_run` turns a saved run into the results table, A1 / A2 / A3 and every score's metrics
(`metrics.comparison`), the same for the page and the CLI given the same `EvalOptions`. Scores depend
on the records only, so they are cached in the run folder; grading (judges, thresholds, manual marks)
is recomputed on every call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.runstore import read_json, write_json
from engine.uq import correctness, estimators
from engine.uq.config import EvalOptions
from engine.uq.correctness import Judge
from engine.uq.estimators import ScoreResult, score_records
from engine.uq.metrics import METRICS, comparison, rejection_curves
from engine.uq.records import QuestionRecord
from engine.uq.store import UqRun

JUDGE_COLUMNS = ("contains", "f1_correct", "auto", "embedding", "llm")  # the agreement table's judges, in order
TABLE_COLUMNS = {  # metric -> (its column, its interval's column) in Summary.methods_table
    "acc50": ("acc@50%", "acc CI"),
    "auroc": ("AUROC", "AUROC CI"),
    "prr": ("PRR", "PRR CI"),
    "auarc": ("AUARC", "AUARC CI"),
}


@dataclasses.dataclass
class Summary:
    """A1 / A2 / A3, every score's metrics and how the answers were graded (summary.json's content).

    `methods`: score name -> {"kind", then per name in metrics.METRICS the value and its "<name>_ci"
    [low, high] 95% bootstrap interval, "n_tied_at_cutoff"} (metrics.method_metrics)."""

    n: int  # graded questions compared
    A1: float  # accuracy on all of them
    A2: float  # accuracy on the 50% most certain by `usual_method`
    A3: float  # accuracy on the 50% most certain by `semantic_method`
    usual_method: str
    semantic_method: str
    n_boot: int
    seed: int
    methods: dict[str, dict[str, Any]]
    judge: Judge
    n_graded: int
    n_ungraded: int
    n_manual: int  # answers marked by hand
    agreement: list[dict[str, Any]]  # pairwise judge agreement rows (correctness.agreement)
    score_info: dict[str, Any]  # estimators' notes and settings (ScoreResult.info without timings)
    run: dict[str, Any] | None = None  # run_id, model, source, questions_hash, generation (saved runs only)

    def as_dict(self) -> dict[str, Any]:
        """The summary as summary.json writes it (no "run" key when it was not a saved run)."""
        out = dataclasses.asdict(self)
        if out["run"] is None:
            del out["run"]
        return out

    def methods_table(self) -> pd.DataFrame:
        """One row per score: kind, each metric and its 95% interval as "[low, high]" text."""
        rows = []
        for name, m in self.methods.items():
            row: dict[str, Any] = {"score": name, "kind": m["kind"]}
            for metric in METRICS:
                column, interval = TABLE_COLUMNS[metric]
                row[column], row[interval] = m[metric], _interval(m[f"{metric}_ci"])
            rows.append(row)
        return pd.DataFrame(rows)


def _interval(values) -> str:
    return "" if not values or any(pd.isna(v) for v in values) else f"[{values[0]:.3f}, {values[1]:.3f}]"


@dataclasses.dataclass
class Evaluation:
    results: pd.DataFrame  # one row per question: id, question, reference, answer, correct, judges, scores
    summary: Summary
    curves: pd.DataFrame  # rejection curves: method, rejected_fraction, accuracy
    clusters: dict[str, list[int]]  # question id -> meaning cluster of each sample
    info: dict
    agreement: pd.DataFrame
    records: list[QuestionRecord]


def _score_cache_key(records: list[QuestionRecord], options: EvalOptions) -> str:
    key = json.dumps(
        [
            [r.id for r in records],
            options.n_folds,
            options.seed,
            options.cluster_threshold,
            estimators.SCORES_VERSION,
            options.layer,
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def score_run(run: UqRun | None, records: list[QuestionRecord], embedder, options: EvalOptions) -> ScoreResult:
    """`estimators.score_records` on the records, cached in the run folder (scores depend on records only)."""
    path = run.path / "scores" / f"{_score_cache_key(records, options)}.json" if run is not None else None
    if path is not None and path.is_file():
        cached = read_json(path, None)
        if cached:
            scores = pd.read_json(io.StringIO(cached["scores"]), orient="split")
            scores.index = scores.index.astype(str)
            scores.index.name = "id"
            return ScoreResult(scores, cached["clusters"], cached["info"])
    result = score_records(
        records,
        embedder,
        n_folds=options.n_folds,
        seed=options.seed,
        threshold=options.cluster_threshold,
        layer=options.layer,
    )
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        write_json(
            path,
            {
                "scores": result.scores.to_json(orient="split", double_precision=15),
                "clusters": result.clusters,
                "info": _jsonable(result.info),
            },
        )
    return result


def evaluate_records(
    records: list[QuestionRecord],
    embedder,
    options: EvalOptions | None = None,
    *,
    marks: dict[str, bool] | None = None,
    llm_verdicts: dict | None = None,
    run: UqRun | None = None,
) -> Evaluation:
    """Results table, A1/A2/A3 and every score's metrics for these records (the page and the CLI)."""
    options = options or EvalOptions()
    if options.judge not in correctness.JUDGES:
        raise LabError(f"Unknown judge '{options.judge}': choose one of {', '.join(correctness.JUDGES)}.")
    if not records:
        raise LabError("No generated answers yet: run generation first.")
    marks = marks or {}
    ids = [r.id for r in records]
    auto = correctness.grade_automatic(
        [r.answer for r in records],
        [r.references for r in records],
        f1_threshold=options.f1_threshold,
        embedder=embedder,
        embedding_threshold=options.embedding_threshold,
    )
    auto.index = pd.Index(ids, name="id")
    if llm_verdicts:
        auto["llm"] = [llm_verdicts.get(i) for i in ids]
    if options.judge == "llm" and "llm" not in auto.columns:
        raise LabError("No LLM-judge verdicts for this run yet: run the LLM judge first.")
    verdict = auto[options.judge]
    final = correctness.apply_marks(verdict, marks)
    ungraded = final.isna()
    if ungraded.all():
        raise LabError("No answer can be graded: the set has no reference answers and nothing is marked by hand.")
    result = score_run(run, records, embedder, options)
    scores = result.scores.loc[ids]
    graded = ~ungraded.to_numpy()
    correct = final[graded].astype(bool)
    comp = comparison(
        scores[graded],
        correct.to_numpy(),
        usual=options.usual,
        semantic=options.semantic,
        kinds=result.kinds,
        n_boot=options.n_boot,
        seed=options.seed,
    )
    curves = rejection_curves(scores[graded], correct.to_numpy())
    judges = auto[[c for c in JUDGE_COLUMNS if c in auto.columns]].copy()
    judges["manual"] = [marks.get(i) for i in ids]
    agree = correctness.agreement(judges)
    results = pd.DataFrame(
        {
            "id": ids,
            "question": [r.question for r in records],
            "reference": [" | ".join(r.references) for r in records],
            "answer": [r.answer for r in records],
            "correct": [None if pd.isna(v) else bool(v) for v in final],
            "manual": [marks.get(i) for i in ids],
            "judge": [None if pd.isna(v) else bool(v) for v in verdict],
            "f1": auto["f1"].to_numpy(),
        }
    )
    if "embedding_sim" in auto.columns:
        results["embedding_sim"] = auto["embedding_sim"].to_numpy()
    if "llm" in auto.columns:
        results["llm_judge"] = auto["llm"].to_numpy()
    for column in scores.columns:
        results[column] = scores[column].to_numpy()
    summary = Summary(
        **comp,
        judge=options.judge,
        n_graded=int(graded.sum()),
        n_ungraded=int((~graded).sum()),
        n_manual=int(sum(i in marks for i in ids)),
        agreement=_jsonable(agree.to_dict(orient="records")),
        score_info=_jsonable({k: v for k, v in result.info.items() if k != "seconds"}),
        run=None if run is None else _run_info(run),
    )
    return Evaluation(results, summary, curves, result.clusters, result.info, agree, records)


def _run_info(run: UqRun) -> dict[str, Any]:
    config = run.config
    return {
        "run_id": run.run_id,
        **{k: config.get(k) for k in ("model", "source", "questions_hash")},
        "generation": config.get("generation"),
    }


def evaluate_run(run: UqRun, embedder, options: EvalOptions | None = None, *, limit: int | None = None) -> Evaluation:
    """evaluate_records on a saved run with its manual marks and saved LLM verdicts (of
    `options.judge_model`, default the run's model)."""
    options = options or EvalOptions()
    records = run.load_records(limit)
    verdicts = run.llm_verdicts(options.judge_model or run.model)
    return evaluate_records(records, embedder, options, marks=run.marks(), llm_verdicts=verdicts or None, run=run)


def run_llm_judge(
    judge_lm: LoadedModel,
    run: UqRun,
    *,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, bool | None]:
    """LLM-judge verdicts for the run's answers not judged yet by this model, saved in the run (keyed by
    the judge model); returns every verdict of that model."""
    records = run.load_records(limit)
    saved = run.llm_verdicts(judge_lm.name)
    todo = [r for r in records if r.id not in saved]
    verdicts = correctness.llm_judge(
        judge_lm,
        [r.question for r in todo],
        [r.references for r in todo],
        [r.answer for r in todo],
        progress=progress,
        stop=stop,
    )
    new = {r.id: v for r, v in zip(todo, verdicts) if v is not None or not r.references}
    run.save_llm_verdicts(judge_lm.name, new)
    return {**saved, **new}
