"""Evaluation of an uncertainty run: grade the answers, score them, compare the scores.

`evaluate_run` turns a saved run into the results table, A1 / A2 / A3 and every score's metrics
(`metrics.comparison`), each score's paired difference from the usual score behind A2 with Holm-adjusted
p-values (`paired.differences_vs_usual`), the one-sentence verdict on the decompositions
(`paired.verdict`) and the answer-length check (`paired.against_length`), under the chosen judge and
again under each automatic judge (containment, F1, embedding) so the conclusion does not hang on one
judge; the same for the page and the CLI given the same `EvalOptions`. Label-free scores depend on the
records only, so they are cached in the run folder; the correctness-dependent ones (correctness probes,
entropy + probe) are computed per judge, out-of-fold, from the label-free statistics kept in memory.
Grading (judges, thresholds, manual marks) is recomputed on every call; manual marks override every judge.
Under the chosen judge, whenever a decomposition ran, the pre-registered contrasts (engine.uq.contrasts:
each method with against without the decomposition, same-rank controls, the exploratory comparisons with
the usual score) are tested and their primary family gives the verdict; the other judges' tables keep the
A3 - A2 rule on the decomposition scores (engine.uq.paired.verdict), with one fold seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.runstore import read_json, write_json
from engine.uq import correctness, estimators
from engine.uq.config import EvalOptions
from engine.uq.contrasts import contrast_verdict, decomposition_ran, planned, run_contrasts
from engine.uq.correctness import Judge
from engine.uq.estimators import ScoreKind, ScoreResult, Stats, labelled_estimators, scoring_stats
from engine.uq.metrics import DIFF_METRICS, METRICS, comparison, rejection_curves
from engine.uq.nli import LMJudge, load_nli
from engine.uq.paired import Acc50Bootstrap, LengthCheck, Verdict, against_length, differences_vs_usual, verdict
from engine.uq.records import QuestionRecord
from engine.uq.store import UqRun

JUDGE_COLUMNS = ("contains", "f1_correct", "auto", "embedding", "llm")  # the agreement table's judges, in order
VERDICT_COLUMN: dict[str, str] = {  # judge -> its verdict column in correctness.grade_automatic's frame
    "auto": "auto",
    "contains": "contains",
    "f1": "f1_correct",
    "embedding": "embedding",
    "llm": "llm",
}
AUTOMATIC_JUDGES: tuple[Judge, ...] = ("contains", "f1", "embedding")  # an A1/A2/A3 table under each
TABLE_COLUMNS = {  # metric -> (its column, its interval's column) in Summary.methods_table
    "acc50": ("acc@50%", "acc CI"),
    "auroc": ("AUROC", "AUROC CI"),
    "prr": ("PRR", "PRR CI"),
    "auarc": ("AUARC", "AUARC CI"),
}


@dataclasses.dataclass
class JudgeTable:
    """A1 / A2 / A3 under one judge with 95% bootstrap intervals, the paired A3 - A2 (semantic score vs
    usual score, paired.PairedDifference.as_dict) and that judge's verdict and length check."""

    judge: Judge
    n: int
    A1: float
    A1_ci: list[float]
    A2: float
    A2_ci: list[float]
    A3: float
    A3_ci: list[float]
    a3_minus_a2: dict[str, float]
    verdict: Verdict
    length: LengthCheck


@dataclasses.dataclass
class Summary:
    """A1 / A2 / A3, every score's metrics and how the answers were graded (summary.json's content).

    `methods`: score name -> {"kind", then per name in metrics.METRICS the value and its "<name>_ci"
    [low, high] 95% bootstrap interval, "n_tied_at_cutoff" (metrics.method_metrics), and "diff_vs_usual":
    per metric in paired.DIFF_METRICS {estimate, ci_low, ci_high, p, p_holm} of score minus the usual
    score (None for the usual score itself)}. `verdict` and `length` answer the key question under
    `judge`; `judges` repeats A1/A2/A3 and the verdict under it and under each automatic judge."""

    n: int  # graded questions compared
    A1: float  # accuracy on all of them
    A1_ci: list[float]
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
    verdict: Verdict
    length: LengthCheck
    judges: list[JudgeTable]
    run: dict[str, Any] | None = None  # run_id, model, source, questions_hash, generation (saved runs only)
    contrasts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # engine.uq.contrasts, chosen judge
    n_seeds: int = 1  # fold seeds averaged in every cross-fitted score
    n_boot_test: int = 0  # bootstrap resamples behind every acc50 test

    def as_dict(self) -> dict[str, Any]:
        """The summary as summary.json writes it (no "run" key when it was not a saved run)."""
        out = dataclasses.asdict(self)
        if out["run"] is None:
            del out["run"]
        return out

    def methods_table(self) -> pd.DataFrame:
        """One row per score: kind, each metric and its 95% interval as "[low, high]" text, then per metric
        of paired.DIFF_METRICS the difference from the usual score, its interval and Holm-adjusted p."""
        rows = []
        for name, m in self.methods.items():
            row: dict[str, Any] = {"score": name, "kind": m["kind"]}
            for metric in METRICS:
                column, interval = TABLE_COLUMNS[metric]
                row[column], row[interval] = m[metric], _interval(m[f"{metric}_ci"])
            for metric in DIFF_METRICS:
                d = (m.get("diff_vs_usual") or {}).get(metric)
                column = TABLE_COLUMNS[metric][0]
                row[f"Δ{column}"] = d["estimate"] if d else None
                row[f"Δ{column} CI"] = _interval([d["ci_low"], d["ci_high"]]) if d else ""
                row[f"Δ{column} p (Holm)"] = d["p_holm"] if d else None
            rows.append(row)
        return pd.DataFrame(rows)

    def judges_table(self) -> pd.DataFrame:
        """A1 / A2 / A3 with intervals, A3 - A2 and the verdict per judge (the chosen judge first)."""
        rows = []
        for t in self.judges:
            d = t.a3_minus_a2
            rows.append(
                {
                    "judge": t.judge + (" (chosen)" if t.judge == self.judge else ""),
                    "n": t.n,
                    "A1": t.A1,
                    "A1 CI": _interval(t.A1_ci),
                    "A2": t.A2,
                    "A2 CI": _interval(t.A2_ci),
                    "A3": t.A3,
                    "A3 CI": _interval(t.A3_ci),
                    "A3 − A2": d["estimate"],
                    "A3 − A2 CI": _interval([d["ci_low"], d["ci_high"]]),
                    "p (Holm)": d["p_holm"],
                    "decompositions": t.verdict.answer,
                    "beats length": t.length.beaten,
                }
            )
        return pd.DataFrame(rows)


def _interval(values) -> str:
    return "" if not values or any(v is None or pd.isna(v) for v in values) else f"[{values[0]:.3f}, {values[1]:.3f}]"


@dataclasses.dataclass
class Evaluation:
    results: pd.DataFrame  # one row per question: id, question, reference, answer, correct, judges, scores
    summary: Summary
    curves: pd.DataFrame  # rejection curves of the chosen judge: method, rejected_fraction, accuracy
    clusters: dict[str, list[int]]  # question id -> meaning cluster of each sample
    info: dict
    agreement: pd.DataFrame
    records: list[QuestionRecord]


# ---------------------------------------------------------------- entailment judges for the clusters


@functools.lru_cache(maxsize=2)
def _nli_judge(name: str):
    return load_nli(name)


def entailment_judge(options: EvalOptions, lm: LoadedModel | None = None) -> Callable[[str, str], bool] | None:
    """The meaning clusters' entailment judge `options` asks for: an NLI model (engine.uq.nli.load_nli, a
    missing one names itself and how to get it), the LM `lm` asked yes / no (LMJudge), or None (MiniLM)."""
    if options.nli_model and options.lm_entailment:
        raise LabError("Choose one entailment judge: an NLI model or the language model, not both.")
    if options.nli_model:
        return _nli_judge(options.nli_model.strip())
    if options.lm_entailment:
        if lm is None:
            raise LabError("LM entailment needs the language model: load it first.")
        return LMJudge(lm)
    return None


def _entails_key(entails) -> str:
    if entails is None:
        return ""
    if isinstance(entails, LMJudge):
        return f"lm:{entails.lm.name}"
    return f"nli:{getattr(entails, 'name', repr(entails))}"


# ---------------------------------------------------------------- scores


def _score_cache_key(records: list[QuestionRecord], options: EvalOptions, entails=None) -> str:
    parts = [
        [r.id for r in records],
        options.n_folds,
        options.seed,
        options.n_seeds,
        options.cluster_threshold,
        estimators.SCORES_VERSION,
        options.layer,
    ]
    if entails is not None:
        parts.append(_entails_key(entails))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


_STATS_LOCK = threading.Lock()
_STATS_MEMO: dict[tuple[str, str], Stats] = {}  # (run folder, score key) -> label-free statistics (latest only)


def _stats(run: UqRun | None, records: list[QuestionRecord], embedder, options: EvalOptions, entails) -> Stats:
    """The records' statistics; for a saved run the latest ones stay in memory, so the per-judge scores of
    the next evaluation (another judge, a new mark) reuse its decompositions and entropies."""
    key = (str(run.path), _score_cache_key(records, options, entails)) if run is not None else None
    with _STATS_LOCK:
        if key is not None and key in _STATS_MEMO:
            return _STATS_MEMO[key]
    stats = scoring_stats(
        records,
        embedder,
        entails=entails,
        n_folds=options.n_folds,
        seed=options.seed,
        threshold=options.cluster_threshold,
        layer=options.layer,
        n_seeds=options.n_seeds,
    )
    if key is not None:
        with _STATS_LOCK:
            _STATS_MEMO.clear()
            _STATS_MEMO[key] = stats
    return stats


def score_run(
    run: UqRun | None,
    records: list[QuestionRecord],
    embedder,
    options: EvalOptions,
    *,
    entails=None,
    stats: Callable[[], Stats] | None = None,
) -> ScoreResult:
    """Every estimator on the records without correctness labels (estimators.Stats.score), cached in the
    run folder: they depend on the records only. The correctness-dependent columns are NaN here.
    `stats`: gives the records' statistics when they must be computed (default: `_stats`)."""
    path = run.path / "scores" / f"{_score_cache_key(records, options, entails)}.json" if run is not None else None
    if path is not None and path.is_file():
        cached = read_json(path, None)
        if cached:
            scores = pd.read_json(io.StringIO(cached["scores"]), orient="split")
            scores.index = scores.index.astype(str)
            scores.index.name = "id"
            seeded = {k: np.asarray(v, dtype=np.float64) for k, v in (cached.get("seed_scores") or {}).items()}
            return ScoreResult(scores, cached["clusters"], cached["info"], seeded)
    computed = stats() if stats is not None else _stats(run, records, embedder, options, entails)
    result = computed.score()
    computed.drop_sample_arrays()
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        write_json(
            path,
            {
                "scores": result.scores.to_json(orient="split", double_precision=15),
                "clusters": result.clusters,
                "info": _jsonable(result.info),
                "seed_scores": {k: np.round(v, 12).tolist() for k, v in result.seed_scores.items()},
            },
        )
    return result


# ---------------------------------------------------------------- one judge


@dataclasses.dataclass
class _Judged:
    """Everything computed under one judge."""

    comparison: dict[str, Any]
    diffs: dict  # score -> metric -> paired.PairedDifference
    verdict: Verdict
    length: LengthCheck
    scores: pd.DataFrame  # every column, the labelled ones for this judge; all records
    graded: np.ndarray  # bool per record
    correct: np.ndarray  # bool per graded record
    notes: dict[str, str]  # the labelled columns' notes
    contrasts: list[dict]  # engine.uq.contrasts.run_contrasts (the chosen judge, when a decomposition ran)


def _judge(
    final: pd.Series,
    base: ScoreResult,
    stats: Callable[[], Stats],
    options: EvalOptions,
    kinds: dict[str, ScoreKind],
    *,
    chosen: bool = True,
) -> _Judged:
    """Labelled scores, comparison, paired differences, verdict and length check for one judge's final
    verdicts `final` (index = record id, None where ungraded). The chosen judge's labelled scores are the
    mean over `options.n_seeds` fold seeds and its contrasts are tested; another judge's labelled scores
    use the first fold seed only (its table is a robustness check)."""
    graded = ~final.isna().to_numpy()
    labels = np.where(graded, final.map(lambda v: float(bool(v)) if not pd.isna(v) else np.nan), np.nan)
    with_labels = stats().with_labels(labels)
    if not chosen:
        with_labels = dataclasses.replace(with_labels, n_seeds=1)
    labelled = with_labels.score(labelled_estimators())
    scores = base.scores.copy()
    for column in labelled.scores.columns:
        scores[column] = labelled.scores[column].to_numpy()
    correct = labels[graded].astype(bool)
    draws: dict = {}
    compared = scores[graded]
    comp = comparison(
        compared,
        correct,
        usual=options.usual,
        semantic=options.semantic,
        kinds=kinds,
        n_boot=options.n_boot,
        seed=options.seed,
        draws=draws,
    )
    boot = Acc50Bootstrap(correct, options.n_boot_test, options.seed)
    diffs = differences_vs_usual(compared, correct, usual=options.usual, boot=boot)
    for name, m in comp["methods"].items():
        m["diff_vs_usual"] = {k: d.as_dict() for k, d in diffs[name].items()} if name in diffs else None
    rule = verdict(diffs, comp["n"], kinds=kinds, usual=options.usual, n_right=int(correct.sum()))
    tested: list[dict] = []
    if chosen and decomposition_ran(compared):
        seeded = {**base.seed_scores, **labelled.seed_scores}
        seeded = {k: v[:, graded] for k, v in seeded.items()}
        specs = planned(options.usual, options.semantic)
        tested = run_contrasts(compared, correct, specs, seed_scores=seeded, boot=boot, seed=options.seed)
        if 0 < int(correct.sum()) < correct.size:  # with one class of answers the rule's own sentence says so
            fair = contrast_verdict(tested, comp["n"])
            rule = Verdict(fair.answer, fair.sentence, comp["n"], fair.best)
    return _Judged(
        comp,
        diffs,
        rule,
        against_length(compared, correct, kinds=kinds),
        scores,
        graded,
        correct,
        labelled.info.get("notes", {}),
        tested,
    )


def _table(judge: Judge, judged: _Judged, options: EvalOptions) -> JudgeTable:
    c = judged.comparison
    usual, semantic = c["methods"][options.usual], c["methods"][options.semantic]
    semantic_diff = judged.diffs.get(options.semantic, {}).get("acc50")
    nan = float("nan")
    a3_minus_a2 = (
        semantic_diff.as_dict()
        if semantic_diff
        else dict.fromkeys(("estimate", "ci_low", "ci_high", "p", "p_holm"), nan)
    )
    return JudgeTable(
        judge,
        c["n"],
        c["A1"],
        c["A1_ci"],
        c["A2"],
        usual["acc50_ci"],
        c["A3"],
        semantic["acc50_ci"],
        a3_minus_a2,
        judged.verdict,
        judged.length,
    )


# ---------------------------------------------------------------- entry points


def automatic_grades(records: list[QuestionRecord], options: EvalOptions, embedder) -> pd.DataFrame:
    """The automatic judges' grades of each record's answer against its references (correctness.grade_automatic
    at the thresholds of `options`), indexed by question id."""
    auto = correctness.grade_automatic(
        [r.answer for r in records],
        [r.references for r in records],
        f1_threshold=options.f1_threshold,
        embedder=embedder,
        embedding_threshold=options.embedding_threshold,
    )
    auto.index = pd.Index([r.id for r in records], name="id")
    return auto


def evaluate_records(
    records: list[QuestionRecord],
    embedder,
    options: EvalOptions | None = None,
    *,
    marks: dict[str, bool] | None = None,
    llm_verdicts: dict | None = None,
    run: UqRun | None = None,
    entails: Callable[[str, str], bool] | None = None,
) -> Evaluation:
    """Results table, A1/A2/A3, every score's metrics and paired differences, the verdict, under the chosen
    judge and each automatic one, for these records (the page and the CLI). `entails`: the meaning
    clusters' entailment judge (`entailment_judge`; None: MiniLM clusters)."""
    options = options or EvalOptions()
    if options.judge not in correctness.JUDGES:
        raise LabError(f"Unknown judge '{options.judge}': choose one of {', '.join(correctness.JUDGES)}.")
    if not records:
        raise LabError("No generated answers yet: run generation first.")
    marks = marks or {}
    ids = [r.id for r in records]
    auto = automatic_grades(records, options, embedder)
    if llm_verdicts:
        auto["llm"] = [llm_verdicts.get(i) for i in ids]
    if options.judge == "llm" and "llm" not in auto.columns:
        raise LabError("No LLM-judge verdicts for this run yet: run the LLM judge first.")
    verdicts = auto[VERDICT_COLUMN[options.judge]]
    final = correctness.apply_marks(verdicts, marks)
    if final.isna().all():
        raise LabError("No answer can be graded: the set has no reference answers and nothing is marked by hand.")
    holder: list[Stats] = []

    def stats() -> Stats:  # built on first use: a cached run needs it only for the labelled scores
        if not holder:
            holder.append(_stats(run, records, embedder, options, entails))
        return holder[0]

    base = score_run(run, records, embedder, options, entails=entails, stats=stats)
    base = ScoreResult(base.scores.loc[ids], base.clusters, base.info, base.seed_scores)
    kinds = base.kinds

    judged = {options.judge: _judge(final, base, stats, options, kinds)}
    for judge in AUTOMATIC_JUDGES:
        column = VERDICT_COLUMN[judge]
        if judge in judged or column not in auto.columns:
            continue
        verdict_j = correctness.apply_marks(auto[column], marks)
        if not verdict_j.isna().all():
            judged[judge] = _judge(verdict_j, base, stats, options, kinds, chosen=False)
    if holder:
        holder[0].drop_sample_arrays()
    main = judged[options.judge]
    scores, graded = main.scores, main.graded
    curves = rejection_curves(scores[graded], main.correct)
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
            "judge": [None if pd.isna(v) else bool(v) for v in verdicts],
            "f1": auto["f1"].to_numpy(),
        }
    )
    if "embedding_sim" in auto.columns:
        results["embedding_sim"] = auto["embedding_sim"].to_numpy()
    if "llm" in auto.columns:
        results["llm_judge"] = auto["llm"].to_numpy()
    for column in scores.columns:
        results[column] = scores[column].to_numpy()
    info = {k: v for k, v in base.info.items() if k != "seconds"}
    labelled = set(labelled_estimators())  # their label-free notes ("needs correctness labels") are replaced
    info["notes"] = {**{k: v for k, v in info.get("notes", {}).items() if k not in labelled}, **main.notes}
    summary = Summary(
        **main.comparison,
        judge=options.judge,
        n_graded=int(graded.sum()),
        n_ungraded=int((~graded).sum()),
        n_manual=int(sum(i in marks for i in ids)),
        agreement=_jsonable(agree.to_dict(orient="records")),
        score_info=_jsonable(info),
        verdict=main.verdict,
        length=main.length,
        judges=[_table(judge, j, options) for judge, j in judged.items()],
        run=None if run is None else _run_info(run),
        contrasts=_jsonable(main.contrasts),
        n_seeds=options.n_seeds,
        n_boot_test=options.n_boot_test,
    )
    return Evaluation(results, summary, curves, base.clusters, base.info, agree, records)


def _run_info(run: UqRun) -> dict[str, Any]:
    config = run.config
    return {
        "run_id": run.run_id,
        **{k: config.get(k) for k in ("model", "source", "questions_hash")},
        "generation": config.get("generation"),
    }


def evaluate_run(
    run: UqRun,
    embedder,
    options: EvalOptions | None = None,
    *,
    limit: int | None = None,
    lm: LoadedModel | None = None,
) -> Evaluation:
    """evaluate_records on a saved run with its manual marks and saved LLM verdicts (of
    `options.judge_model`, default the run's model); `lm`: the language model when `options` asks it to
    judge entailment (`entailment_judge`)."""
    options = options or EvalOptions()
    records = run.load_records(limit)
    verdicts = run.llm_verdicts(options.judge_model or run.model)
    return evaluate_records(
        records,
        embedder,
        options,
        marks=run.marks(),
        llm_verdicts=verdicts or None,
        run=run,
        entails=entailment_judge(options, lm),
    )


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
