"""The automatic judges against hand marks: which answers to mark, and how well each judge agrees.

Sample (`draw_sample`): the graded answers of a run fall in two strata, "agree" (every automatic judge
gives the same verdict) and "disagree" (they differ). A seeded simple random sample of `n_random`
answers of the run (numpy default_rng(seed).choice without replacement) is drawn first, then up to
`n_disagreement` more answers from the disagree stratum that the random sample missed (same generator):
disagreements are where the judges' accuracies differ, so they are oversampled. The marking happens in the
lab's marking view with the automatic verdicts hidden; the marks file holds question_id, answer, mark.

Agreement (`judge_agreement`): each marked answer belongs to one population stratum s (agree /
disagree) with N_s answers in the run and n_s marked; it gets the weight w = N_s / n_s (post-
stratification), so the weighted numbers estimate the whole run's, not the oversampled sample's:
    accuracy_j = sum_i w_i [judge_j(i) = mark(i)] / sum_i w_i,
    kappa_j = Cohen's kappa of judge j against the marks with sample_weight w (sklearn cohen_kappa_score).
With fewer than MIN_FOR_KAPPA marked answers, or one class only among the marks or the verdicts, the
kappa is not computed and the row says "too few hand marks for a kappa".

Marks made in the lab (`save_hand_marks`) are private to the person who made them (an owner id, engine.core.db):
the run owner's are `hand_marks.csv` in the run folder; anyone else who may read the run (one made with the command
line, which has no owner, or one shared with the group) marks it in `hand_marks/<owner id>.csv` there, which only
they are shown. Every file is in the format `read_marks` reads (question_id, answer, mark, note), each change a
locked read-modify-write of the whole file written atomically, so two tabs of one person never lose a mark.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.db import lab_db
from engine.core.errors import LabError
from engine.core.paths import atomic_write
from engine.uq.config import EvalOptions, MarkSample
from engine.uq.records import QuestionRecord
from engine.uq.store import TOPIC, UqRun

MIN_FOR_KAPPA = 30
SAMPLE_COLUMNS = ("question_id", "stratum", "answer")
MARK_COLUMNS = ("question_id", "answer", "mark")
FILE_COLUMNS = (*MARK_COLUMNS, "note")  # a marks file as the lab writes it
VERDICT_COLUMNS = {"auto": "auto", "contains": "contains", "f1_correct": "f1", "embedding": "embedding"}
TOO_FEW = "too few hand marks for a kappa"
HAND_MARKS_FILE = "hand_marks.csv"  # the run owner's marks
PERSONAL_DIR = "hand_marks"  # everyone else's: <owner id>.csv
_PERSON = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # an owner id as a file name (never a path)
_WRITE_LOCK = threading.Lock()


def judge_verdicts(records: list[QuestionRecord], options: EvalOptions, embedder) -> tuple[pd.Series, pd.DataFrame]:
    """(the graded answer per question id, the automatic judges' verdicts: auto, contains, f1, embedding;
    None where a question has no reference) at the thresholds of `options`."""
    from engine.uq.evaluation import automatic_grades

    ids = [r.id for r in records]
    auto = automatic_grades(records, options, embedder)
    verdicts = auto[[c for c in VERDICT_COLUMNS if c in auto.columns]].rename(columns=VERDICT_COLUMNS)
    return pd.Series([r.answer for r in records], index=ids), verdicts


def disagreement(verdicts: pd.DataFrame) -> pd.Series:
    """Per answer (index = question id): whether the automatic judges' verdicts (bool columns; None where
    ungraded) differ; NaN where no judge graded it."""
    graded = verdicts.notna().any(axis=1)
    differs = verdicts.apply(lambda row: len({bool(v) for v in row if v is not None and not pd.isna(v)}) > 1, axis=1)
    return differs.where(graded)


def draw_sample(
    answers: pd.Series, verdicts: pd.DataFrame, *, n_random: int = 150, n_disagreement: int = 50, seed: int = 0
) -> pd.DataFrame:
    """The answers to mark (module docstring): question_id, stratum ("random" / "disagreement"), answer,
    in the run's order. `answers`: the graded answer per question id; `verdicts`: the judges' columns."""
    differs = disagreement(verdicts)
    graded = differs.index[differs.notna()]
    if len(graded) < n_random:
        raise LabError(f"The run has {len(graded)} graded answers; a sample of {n_random} needs at least that many.")
    rng = np.random.default_rng(seed)
    random = set(rng.choice(np.asarray(graded), size=n_random, replace=False).tolist())
    pool = [i for i in graded if differs[i] and i not in random]
    extra = (
        set(rng.choice(np.asarray(pool), size=min(n_disagreement, len(pool)), replace=False).tolist())
        if pool
        else set()
    )
    rows = [
        {"question_id": i, "stratum": "random" if i in random else "disagreement", "answer": answers[i]}
        for i in answers.index
        if i in random or i in extra
    ]
    return pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))


def sample_for(answers: pd.Series, verdicts: pd.DataFrame, settings: MarkSample) -> pd.DataFrame:
    """`draw_sample` with the settings of `settings` (checked against their ranges first)."""
    settings.validate()
    return draw_sample(
        answers,
        verdicts,
        n_random=settings.n_random,
        n_disagreement=settings.n_disagreement,
        seed=settings.sample_seed,
    )


def read_marks(path) -> pd.DataFrame:
    """A marks file (CSV: question_id, answer, mark as true/false or 1/0); LabError naming what is wrong."""
    try:
        frame = pd.read_csv(path, dtype={"question_id": str, "answer": str})
    except (OSError, ValueError) as err:
        raise LabError(f"Cannot read the marks file {path}: {err}") from err
    missing = [c for c in MARK_COLUMNS if c not in frame.columns]
    if missing:
        raise LabError(
            f"The marks file {path} lacks the column(s) {', '.join(missing)} (needs {', '.join(MARK_COLUMNS)})."
        )
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    marks = frame["mark"].astype(str).str.strip().str.lower().map(truth)
    if marks.isna().any():
        bad = frame["mark"][marks.isna()].iloc[0]
        raise LabError(f"The marks file {path} has a mark '{bad}': use true / false.")
    return frame.assign(mark=marks.astype(bool), answer=frame["answer"].fillna(""))


def matched_marks(marks: pd.DataFrame, answers: pd.Series) -> tuple[pd.DataFrame, str]:
    """The marks of the run's answers (index = question id, the last mark of a question kept) and a note on
    the marks left out: a question that is not in the run, or an answer that is not the run's answer."""
    known = marks["question_id"].isin(answers.index)
    same = known & (marks["answer"].str.strip() == answers.reindex(marks["question_id"]).fillna("").str.strip().values)
    used = marks[same].drop_duplicates("question_id", keep="last").set_index("question_id")
    note = ""
    if (~same).any():
        note = f"{int((~same).sum())} mark(s) left out: their question is not in the run or their answer differs"
    return used, note


def judge_agreement(marks: pd.DataFrame, answers: pd.Series, verdicts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per judge: n marked, weighted accuracy and kappa against the hand marks (module docstring), and a
    note on marks left out (unknown question or an answer that is not the run's)."""
    from sklearn.metrics import cohen_kappa_score

    differs = disagreement(verdicts)
    used, note = matched_marks(marks, answers)
    stratum = differs.reindex(used.index).fillna(False).astype(bool)
    population = differs.dropna().astype(bool)
    weights = np.ones(len(used))
    for value in (True, False):
        n_marked = int((stratum == value).sum())
        if n_marked:
            weights[(stratum == value).to_numpy()] = int((population == value).sum()) / n_marked
    rows = []
    for judge in verdicts.columns:
        v = verdicts[judge].reindex(used.index)
        ok = v.notna().to_numpy()
        y_judge, y_mark, w = v[ok].astype(bool).to_numpy(), used["mark"].to_numpy()[ok], weights[ok]
        row = {"judge": judge, "n": int(ok.sum()), "accuracy": float("nan"), "kappa": float("nan"), "note": ""}
        if ok.any():
            row["accuracy"] = float(np.sum(w * (y_judge == y_mark)) / np.sum(w))
        if ok.sum() < MIN_FOR_KAPPA or len(set(y_mark)) < 2 or len(set(y_judge)) < 2:
            row["note"] = f"{TOO_FEW} ({int(ok.sum())} marked, at least {MIN_FOR_KAPPA} of both kinds needed)"
        else:
            row["kappa"] = float(cohen_kappa_score(y_mark, y_judge, sample_weight=w))
        rows.append(row)
    return pd.DataFrame(rows, columns=["judge", "n", "accuracy", "kappa", "note"]), note


# ---------------------------------------------------------------- marks made in the lab


def hand_marks_path(run: UqRun, person: str | None = None) -> Path:
    """The file of `person`'s marks on `run` (module docstring); the owner's `hand_marks.csv` when `person`
    is None (the command line) or owns the run. LabError when `person` may not read the run."""
    if person is None:
        return run.path / HAND_MARKS_FILE
    if not _PERSON.match(person):
        raise LabError("Not a person's id: hand marks are kept per owner id (letters, digits, '-' and '_').")
    access = lab_db().access(TOPIC, run.run_id)
    if not access.readable_by(person):
        raise LabError("This run is someone else's private run: you can neither see nor mark it.")
    return run.path / HAND_MARKS_FILE if access.writable_by(person) else run.path / PERSONAL_DIR / f"{person}.csv"


def load_hand_marks(run: UqRun, person: str | None = None) -> pd.DataFrame:
    """`person`'s marks on `run` (hand_marks_path; FILE_COLUMNS, mark bool, note "" when none); empty when none."""
    path = hand_marks_path(run, person)
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "mark" else object) for c in FILE_COLUMNS})
    frame = read_marks(path)
    if "note" in frame.columns:
        frame["note"] = frame["note"].astype(object).where(frame["note"].notna(), "").astype(str)
    else:
        frame["note"] = ""
    return frame[list(FILE_COLUMNS)]


def marks_csv(marks: pd.DataFrame) -> bytes:
    """A marks frame as the CSV `read_marks` reads (question_id, answer, mark as true / false, note)."""
    out = marks[list(FILE_COLUMNS)].assign(mark=marks["mark"].map({True: "true", False: "false"}))
    return out.to_csv(index=False).encode("utf-8")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """This process's lock and an exclusive flock beside the marks file `path` (other processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _WRITE_LOCK, open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_hand_marks(run: UqRun, person: str, changes: Mapping[str, tuple[str, bool | None, str]]) -> pd.DataFrame:
    """Set `person`'s marks of some questions, {question id: (answer, mark, note)} (mark None removes it),
    keeping the others, in their own file (hand_marks_path: LabError when they may not read the run).
    Returns every mark of theirs after the change."""
    path = hand_marks_path(run, person)
    with _locked(path):
        marks = load_hand_marks(run, person).set_index("question_id")
        for qid, (answer, mark, note) in changes.items():
            if mark is None:
                marks = marks.drop(index=str(qid), errors="ignore")
            else:
                marks.loc[str(qid), ["answer", "mark", "note"]] = [str(answer), bool(mark), str(note or "")]
        marks.index.name = "question_id"
        frame = marks.reset_index()
        frame["mark"] = frame["mark"].astype(bool)
        atomic_write(path, marks_csv(frame))
    return frame[list(FILE_COLUMNS)]
