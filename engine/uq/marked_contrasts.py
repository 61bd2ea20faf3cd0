"""The study's pre-registered contrasts graded by hand marks instead of the automatic judge.

The scores are the run's, unchanged: every label-free score, and the correctness probes fitted out-of-fold to
the chosen automatic judge's verdicts (the study's results table); only the label that grades them changes.
The families are engine.uq.contrasts.planned's "primary" and "same-rank control" (AUROC of wrong-answer
detection, positives = answers marked wrong, DeLong's one-sided paired test, Holm within each family, the
minimal detectable effect at 80% power and Holm's strictest level), on two parts of the marked answers
(the seeded sample of engine.uq.handmarks.draw_sample):
    "random sample"  the marked answers of the simple random sample: an unbiased sample of the run's
                     answers, so its AUROC differences estimate the run's;
    "all marked"     those plus the disagreement stratum; it over-samples the answers the judges disagree
                     on, so its AUROCs are not the run's (reported beside, never instead).
Each part is also graded by the automatic judge on the same answers, so a change can be told apart from
the smaller n. DeLong needs no resampling, so there is no floor on p; at n ~ 150 the interval is wide,
and its width and the MDE say how large an effect the part could find. A part with fewer than
MIN_PER_CLASS answers marked right or wrong is refused: an AUROC needs both classes, and with a handful of
one class DeLong's variance (a covariance over that class's structural components) is not reliable.

`check_hand_marks` gathers what the study's report says of a marks file (engine.uq.report): each judge's
agreement with the marks (engine.uq.handmarks.judge_agreement) and both parts' contrasts, or why the contrasts
could not be graded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq import handmarks
from engine.uq.config import SEMANTIC_SCORE, USUAL_SCORE, MarkSample
from engine.uq.contrasts import ContrastVerdict, contrast_verdict, planned, run_contrasts

Part = Literal["random sample", "all marked"]
PARTS: tuple[Part, ...] = ("random sample", "all marked")
FAMILIES = ("primary", "same-rank control")
MIN_PER_CLASS = 10


@dataclasses.dataclass
class MarkedContrasts:
    """The contrasts of one part graded by the hand marks (`rows`) and by the judge on the same answers
    (`judge_rows`, empty without judge labels); rows as engine.uq.contrasts.run_contrasts gives them."""

    part: Part
    n: int
    n_right: int
    n_wrong: int
    rows: list[dict[str, Any]]
    judge_rows: list[dict[str, Any]]
    verdict: ContrastVerdict
    judge_verdict: ContrastVerdict | None
    note: str = ""


def read_results(path) -> pd.DataFrame:
    """A results.csv of the study or `engine uq` (index = question id); LabError when unreadable."""
    try:
        frame = pd.read_csv(path, dtype={"id": str, "answer": str})
    except (OSError, ValueError) as err:
        raise LabError(f"Cannot read the results file {path}: {err}") from err
    if "id" not in frame.columns or "answer" not in frame.columns:
        raise LabError(f"The results file {path} lacks an id or an answer column: use a results.csv of the run.")
    return frame.assign(answer=frame["answer"].fillna("")).set_index("id")


def _as_label(value) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return float("nan")
    return float(str(value).strip().lower() in ("true", "1", "1.0", "yes"))


def part_contrasts(
    scores: pd.DataFrame,
    marks: pd.Series,
    part: Part,
    *,
    judge: pd.Series | None = None,
    usual: str = USUAL_SCORE,
    semantic: str = SEMANTIC_SCORE,
    min_per_class: int = MIN_PER_CLASS,
    note: str = "",
) -> MarkedContrasts:
    """The families of the module docstring on the answers `marks` names (index = question id, True = right),
    `scores` holding one column per score for at least those ids. `judge`: the automatic verdicts (True /
    False, NaN where ungraded) for the judge's contrasts on the same answers."""
    missing = marks.index.difference(scores.index)
    if len(missing):
        raise LabError(f"{len(missing)} marked question(s) have no scores (e.g. {missing[0]}): is it the same run?")
    y = marks.astype(bool).to_numpy()
    n_right, n_wrong = int(y.sum()), int((~y).sum())
    if min(n_right, n_wrong) < min_per_class:
        raise LabError(
            f"Too few hand marks for an AUROC in the {part}: {n_right} marked right and {n_wrong} wrong; each "
            f"needs at least {min_per_class}. Mark more answers."
        )
    specs = [s for s in planned(usual, semantic) if s.family in FAMILIES]
    rows_scores = scores.loc[marks.index]
    rows = run_contrasts(rows_scores, y, specs)
    verdict = contrast_verdict(rows, len(y))
    judge_rows: list[dict[str, Any]] = []
    judge_verdict = None
    if judge is not None:
        labels = np.array([_as_label(v) for v in judge.reindex(marks.index)])
        graded = ~np.isnan(labels)
        if graded.any() and 0 < labels[graded].sum() < graded.sum():
            judge_rows = run_contrasts(rows_scores[graded], labels[graded], specs)
            judge_verdict = contrast_verdict(judge_rows, int(graded.sum()))
    return MarkedContrasts(part, len(y), n_right, n_wrong, rows, judge_rows, verdict, judge_verdict, note)


def marked_contrasts(
    scores: pd.DataFrame,
    marks: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    judge: pd.Series | None = None,
    usual: str = USUAL_SCORE,
    semantic: str = SEMANTIC_SCORE,
    min_per_class: int = MIN_PER_CLASS,
) -> list[MarkedContrasts]:
    """Both parts (module docstring). `marks`: question_id -> mark (handmarks.matched_marks: only marks of
    the run's answers); `sample`: the drawn sample (question_id, stratum) that says which marks are random."""
    by_id = marks["mark"].astype(bool)
    random_ids = sample.loc[sample["stratum"] == "random", "question_id"]
    unmarked = int((~random_ids.isin(by_id.index)).sum())
    random_note = (
        f"{unmarked} of the {len(random_ids)} randomly drawn answers are not marked: if they were skipped for a "
        "reason, the rest is no longer a simple random sample."
        if unmarked
        else ""
    )
    parts = [
        (
            "random sample",
            by_id[by_id.index.isin(random_ids)],
            random_note + (" " if random_note else "") + "The disagreement stratum is left out: it over-samples "
            "the answers the judges disagree on, so with it the AUROCs would not be the run's.",
        ),
        (
            "all marked",
            by_id,
            "Random sample plus the disagreement stratum, unweighted: it over-samples the answers the judges "
            "disagree on, so these AUROCs describe the marked set, not the run.",
        ),
    ]
    return [
        part_contrasts(
            scores, ids, name, judge=judge, usual=usual, semantic=semantic, min_per_class=min_per_class, note=note
        )
        for name, ids, note in parts
    ]


@dataclasses.dataclass
class HandMarkCheck:
    """A marks file against one run: `n_marked` marks of the run's answers (`n_right` marked right), each
    judge's agreement with them (handmarks.judge_agreement's table), both parts' contrasts (`parts`, empty
    when they could not be graded, `error` saying why) and the note on marks left out."""

    marks_path: str
    judge_name: str  # the judge whose verdicts grade the same answers beside the marks
    n_marked: int
    n_right: int
    agreement: pd.DataFrame
    parts: list[MarkedContrasts]
    error: str = ""
    note: str = ""

    def part(self, name: Part) -> MarkedContrasts | None:
        return next((p for p in self.parts if p.part == name), None)


def check_hand_marks(
    marks: pd.DataFrame,
    answers: pd.Series,
    verdicts: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    marks_path: str = "",
    judge: pd.Series | None = None,
    judge_name: str = "auto",
    settings: MarkSample | None = None,
    usual: str = USUAL_SCORE,
    semantic: str = SEMANTIC_SCORE,
) -> HandMarkCheck:
    """`marks` (handmarks.read_marks) against the run whose graded answers are `answers` and the judges'
    verdicts `verdicts` (handmarks.judge_verdicts), `scores` one column per score (index = question id) and
    `judge` the verdicts of the judge `judge_name`; the sample is redrawn with `settings` (default:
    MarkSample()) to tell the random part apart. Too few marks of a class is no error here: the contrasts are
    left out and `error` says why."""
    used, note = handmarks.matched_marks(marks, answers)
    agreement, _ = handmarks.judge_agreement(marks, answers, verdicts)
    n_right = int(used["mark"].astype(bool).sum())
    check = HandMarkCheck(str(marks_path), judge_name, len(used), n_right, agreement, [], note=note)
    try:
        sample = handmarks.sample_for(answers, verdicts, settings or MarkSample())
        check.parts = marked_contrasts(scores, used, sample, judge=judge, usual=usual, semantic=semantic)
    except LabError as err:
        check.error = str(err)
    return check


def _cell(value: float, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)


def part_markdown(result: MarkedContrasts, judge_name: str = "auto") -> str:
    """One part: n, the verdict sentence and the table of contrasts (hand marks beside the judge)."""
    judge = {(r["family"], r["name"]): r for r in result.judge_rows}
    lines = [
        f"**{result.part}**, n = {result.n} ({result.n_right} marked right, {result.n_wrong} wrong). {result.note}",
        "",
        f"Graded by the hand marks: {result.verdict.sentence}",
        "",
    ]
    if result.judge_verdict is not None:
        lines += [f"The same answers graded by the {judge_name} judge: {result.judge_verdict.sentence}", ""]
    lines += [
        "| family | contrast | ΔAUROC (hand marks) | 95% CI | CI width | p | p (Holm) | MDE | "
        f"ΔAUROC ({judge_name} judge, same answers) | p (Holm), {judge_name} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        j = judge.get((r["family"], r["name"]), {})
        if np.isnan(r["estimate"]):
            lines.append(f"| {r['family']} | {r['name']} | n/a ({r.get('note', '')}) | | | | | | | |")
            continue
        lines.append(
            f"| {r['family']} | {r['name']} | {r['estimate']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
            f"{r['ci_high'] - r['ci_low']:.3f} | {r['p']:.3g} | {r['p_holm']:.3g} | {r['mde']:.3f} | "
            f"{_cell(j.get('estimate', float('nan')), '+.3f')} | {_cell(j.get('p_holm', float('nan')), '.3g')} |"
        )
    return "\n".join(lines)
