"""Explore, then confirm: one contrast fixed from the exploration questions, tested once on unseen ones.

1. Fix (`fix_contrast`): after the exploration set is evaluated, the primary contrast chosen by
   engine.uq.contrasts.choose_contrast is written to `confirmation_plan.json` with
       hash = sha256 of its JSON (keys sorted: name, enhanced, baseline, metric, family, one_sided),
   once: a later exploration never changes a fixed plan.
2. Confirm (`confirm_contrast`): the probes, standardisations and subspaces of both columns are fitted on
   all exploration questions (fold -1: training only) and applied unchanged to the confirmation
   questions (fold 0): no confirmation question is used to fit anything. One test: the plan's AUROC
   difference by DeLong's one-sided paired test on the confirmation questions (family of one, so p is
   the adjusted p); beside it acc@50 (tie-averaged) with its bootstrap interval. Each cross-fitted
   column is the mean over the fold seeds of EvalOptions.n_seeds (only the random parts differ there:
   shuffles, random subspaces), the seed-to-seed spread beside it.
   The step refuses a contrast other than the plan's, a plan whose hash does not match, and a second run
   (`confirmation.json` exists).
Answer (one sentence, `confirmation_sentence`): "useful" when the enhanced score beats the baseline with
p < alpha; "not useful" when the 95% interval's upper bound is below +0.02 AUROC; else "inconclusive",
always with the interval, p and the minimal detectable effect at this n (80% power, alpha).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.paths import atomic_write
from engine.uq import correctness
from engine.uq.config import EvalOptions
from engine.uq.contrasts import MARGIN, ContrastSpec, choose_contrast, run_contrasts
from engine.uq.estimators import scoring_stats
from engine.uq.metrics import acc50
from engine.uq.paired import ALPHA
from engine.uq.records import QuestionRecord

PLAN = "confirmation_plan.json"
RESULT = "confirmation.json"
SPEC_KEYS = ("name", "enhanced", "baseline", "metric", "family", "one_sided")


def contrast_hash(contrast: dict) -> str:
    """sha256 of the contrast's JSON, keys sorted (module docstring)."""
    spec = {k: contrast[k] for k in SPEC_KEYS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()


def fix_contrast(out: Path, contrasts: list[dict], *, run_id: str, n: int, judge: str) -> dict:
    """The plan in `out` (written now from `contrasts` when there is none; an existing plan is kept)."""
    path = Path(out) / PLAN
    if path.is_file():
        return read_plan(out)
    contrast = choose_contrast(contrasts)
    chosen = next(c for c in contrasts if c["name"] == contrast["name"] and c["family"] == "primary")
    plan = {
        "contrast": contrast,
        "hash": contrast_hash(contrast),
        "rule": "the primary contrast with the smallest Holm-adjusted p on the exploration set, then the largest "
        "estimate (engine.uq.contrasts.choose_contrast)",
        "exploration": {
            "run_id": run_id,
            "n": n,
            "judge": judge,
            **{k: chosen[k] for k in ("estimate", "ci_low", "ci_high", "p", "p_holm")},
        },
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(plan, indent=2).encode("utf-8"))
    return plan


def read_plan(out: Path) -> dict:
    """The fixed plan; LabError when there is none or its hash does not match its contrast."""
    path = Path(out) / PLAN
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LabError(f"No contrast is fixed in {out} ({PLAN}): run the exploration stage first.") from err
    if plan.get("hash") != contrast_hash(plan["contrast"]):
        raise LabError(f"{path}: the contrast does not match its hash; the plan was edited after it was fixed.")
    return plan


def check_request(plan: dict, out: Path, contrast: str = "") -> None:
    """LabError for a contrast other than the plan's, or when the confirmation already ran."""
    fixed = plan["contrast"]["name"]
    if contrast and contrast != fixed:
        raise LabError(f"The exploration fixed the contrast '{fixed}'; refusing to confirm '{contrast}' instead.")
    done = Path(out) / RESULT
    if done.is_file():
        raise LabError(f"The confirmation already ran ({done}); it runs once: refusing a second run.")


def _prefixed(records: list[QuestionRecord], prefix: str) -> list[QuestionRecord]:
    return [dataclasses.replace(r, id=f"{prefix}{r.id}") for r in records]


def _labels(records: list[QuestionRecord], options: EvalOptions, embedder, marks: dict[str, bool]) -> np.ndarray:
    """1 / 0 per record under the options' automatic judge, manual marks first; NaN where ungraded."""
    from engine.uq.evaluation import VERDICT_COLUMN

    if options.judge == "llm":
        raise LabError("The confirmation grades with an automatic judge; choose auto, contains, f1 or embedding.")
    auto = correctness.grade_automatic(
        [r.answer for r in records],
        [r.references for r in records],
        f1_threshold=options.f1_threshold,
        embedder=embedder if options.judge == "embedding" else None,
        embedding_threshold=options.embedding_threshold,
    )
    auto.index = pd.Index([r.id for r in records], name="id")
    final = correctness.apply_marks(auto[VERDICT_COLUMN[options.judge]], marks)
    return np.array([np.nan if pd.isna(v) else float(bool(v)) for v in final])


def confirm_contrast(
    exploration: list[QuestionRecord],
    confirmation: list[QuestionRecord],
    contrast: dict,
    options: EvalOptions,
    embedder,
    *,
    marks: tuple[dict[str, bool], dict[str, bool]] = ({}, {}),
) -> dict[str, Any]:
    """Fit on `exploration`, apply to `confirmation`, one test of `contrast` (module docstring): the test
    row (engine.uq.contrasts fields), acc@50 beside it, A1 / A2 / A3 / A3 with the decomposition on the
    confirmation questions, and the sentence."""
    spec = ContrastSpec(contrast["name"], contrast["enhanced"], contrast["baseline"], "auroc", "confirmation", True)
    beside = dataclasses.replace(spec, metric="acc50", family="confirmation acc@50")
    records = _prefixed(exploration, "explore:") + _prefixed(confirmation, "confirm:")
    marks_all = {f"explore:{k}": v for k, v in marks[0].items()} | {f"confirm:{k}": v for k, v in marks[1].items()}
    labels = _labels(records, options, embedder, marks_all)
    folds = np.r_[np.full(len(exploration), -1), np.zeros(len(confirmation), dtype=int)]
    stats = scoring_stats(
        records,
        embedder,
        layer=options.layer,
        n_folds=options.n_folds,
        seed=options.seed,
        threshold=options.cluster_threshold,
        n_seeds=options.n_seeds,
        folds=folds,
        correct=labels,
    )
    names = list(dict.fromkeys([spec.enhanced, spec.baseline, options.usual, options.semantic]))
    result = stats.score(names)
    missing = [c for c in (spec.enhanced, spec.baseline) if result.scores[c].isna().all()]
    if missing:
        notes = "; ".join(f"{c}: {result.info.get('notes', {}).get(c, 'not computed')}" for c in missing)
        raise LabError(f"The confirmation could not compute {', '.join(missing)} ({notes}).")
    scored = (folds == 0) & ~np.isnan(labels)
    scores = result.scores[scored]
    correct = labels[scored]
    seeded = {k: v[:, scored] for k, v in result.seed_scores.items()}
    test, acc = run_contrasts(
        scores, correct, [spec, beside], n_boot=options.n_boot_test, seed=options.seed, seed_scores=seeded
    )
    a = {
        "A1": float(np.mean(correct)),
        "A2": acc50(scores[options.usual], correct),
        "A3": acc50(scores[options.semantic], correct),
        "A3_decomposition": acc50(scores[spec.enhanced], correct),
        "A3_baseline": acc50(scores[spec.baseline], correct),
    }
    return {
        "contrast": contrast,
        "hash": contrast_hash(contrast),
        "n_exploration": len(exploration),
        "n_confirmation": len(confirmation),
        "n_graded": int(scored.sum()),
        "judge": options.judge,
        "n_seeds": options.n_seeds,
        "test": test,
        "acc50": acc,
        **a,
        "sentence": confirmation_sentence(test, int(scored.sum())),
    }


def confirmation_sentence(test: dict, n: int, *, alpha: float = ALPHA, margin: float = MARGIN) -> str:
    """Useful / not useful / inconclusive from the one test, with its interval, p and MDE."""
    numbers = (
        f"ΔAUROC = {test['estimate']:+.3f} (95% CI [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}], one-sided DeLong "
        f"p = {test['p']:.3g}, minimal detectable effect {test['mde']:.3f} at n = {n})"
    )
    what = f"`{test['enhanced']}` against `{test['baseline']}`"
    if test["estimate"] > 0 and test["p"] < alpha:
        return f"Useful: on the unseen confirmation questions the decomposition helps, {what}: {numbers}."
    if test["ci_high"] < margin:
        return (
            f"Not useful: on the unseen confirmation questions the decomposition does not help, {what}: {numbers}; "
            f"a gain of {margin:g} AUROC or more is ruled out."
        )
    return (
        f"Inconclusive: on the unseen confirmation questions {what} gives {numbers}; neither a gain nor its "
        f"absence (a gain below {margin:g}) is established."
    )


def write_result(out: Path, result: dict) -> Path:
    """confirmation.json in `out` (refused when it exists: the confirmation runs once)."""
    path = Path(out) / RESULT
    if path.is_file():
        raise LabError(f"The confirmation already ran ({path}); it runs once: refusing a second run.")
    atomic_write(path, json.dumps(result, indent=2, default=float).encode("utf-8"))
    return path
