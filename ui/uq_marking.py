"""Mark answers blind: the uncertainty page's view for marking a run's answers by hand without seeing how
the automatic judges graded them (engine.uq.handmarks).

The seeded sample (handmarks.draw_sample: answers drawn at random plus answers the judges disagree on) is
shown one answer at a time in the run's order, with the question, the reference answers and the model's
answer only: never a judge's verdict, a score, nor which stratum an answer was drawn from. Right / Wrong
save a mark (with an optional note) through the engine, into the person's marks file in the run folder (the
format `uq-marks agreement|contrasts --marks` reads), so a reload keeps them; Skip passes an answer for this
session. While this view is on the page shows nothing of the run's results (ui.uq_view), so no verdict is one
scroll away.

Marks are private to the person who makes them (handmarks.hand_marks_path): the owner of a run marks it in
its `hand_marks.csv`; anyone else who may see the run (one made with the command line, as the study's are, or
one shared with the group) marks it in a file of their own, which nobody else is shown. Once marks exist, the
person may open each judge's agreement with their marks (handmarks.judge_agreement); it is off by default,
because with a few marks it tells how the judges graded those answers. The download is their marks file, to
be committed as the study's marks (reports/uq/hand_marks/marks.csv, read by the study's report).

URL: `uq_blind` (this view on), `uq_mark_n`, `uq_mark_extra`, `uq_mark_seed` (the draw).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.options import default_of, help_of
from engine.uq import handmarks
from engine.uq.config import MARK_EXTRA_RANGE, MARK_SAMPLE_RANGE, MARK_SEED_RANGE, EvalOptions, MarkSample
from engine.uq.store import TOPIC, UqRun
from ui import access, models
from ui.fields import between, number_field
from ui.state import compute, recall
from ui.tables import readable

BLIND = "uq_blind"  # the toggle's key (and URL parameter)
GOTO = "_uq_mark_goto"  # the answer picked to be shown next (session)
SKIPPED = "_uq_mark_skipped"  # answers skipped in this session
MARK_TEXT = {True: "right", False: "wrong"}
AGREEMENT_LABELS = {"judge": "judge", "n": "answers marked", "accuracy": "accuracy", "kappa": "Cohen's kappa"}
SHOWN_COLUMNS = ("question_id", "question", "references", "answer")  # all the view ever shows of an answer


def blind_toggle() -> bool:
    """The "Mark answers blind" switch (in the URL); whether the view is on."""
    return st.toggle(
        "Mark answers blind",
        key=BLIND,
        bind="query-params",
        help="Mark a seeded sample of the answers right or wrong by hand, without the judges' verdicts; the run's "
        "results are hidden while this is on.",
    )


def render(run: UqRun) -> None:
    """The marking view of `run` for whoever may see it, with their own marks."""
    st.header("Mark answers blind")
    person = access.me()
    try:
        handmarks.hand_marks_path(run, person)
    except LabError as err:
        st.info(str(err), icon=":material/lock:")
        return
    whose = (
        "they are saved with your run"
        if access.can_write(TOPIC, run.run_id)
        else f"the run is not yours ({access.owner_label(access.access_of(TOPIC, run.run_id))}): your marks are "
        "kept apart from its owner's and anyone else's, and only you see them"
    )
    st.caption(
        "One answer at a time: the question, the reference answers and the model's answer, nothing else (no "
        "judge's verdict, no score, not why it was drawn). Mark it right if it names the right thing, even in "
        f"other words. Your marks are private and saved as you go ({whose}); download them below for "
        "`python -m engine uq-marks agreement|contrasts --marks`."
    )
    settings = _settings()
    if settings is None:
        return
    drawn = _drawn(run, settings)
    if drawn is None:
        return
    items, answers, verdicts = drawn
    marks = handmarks.load_hand_marks(run, person)
    _card(run, items, marks)
    _marks_table(items, marks)
    _agreement(marks, answers, verdicts)


def _settings() -> MarkSample | None:
    """The draw's fields (engine ranges, refused under the field), or None while one is refused."""
    c1, c2, c3 = st.columns(3)
    fields = (
        (c1, "Answers drawn at random", "n_random", "uq_mark_n", MARK_SAMPLE_RANGE),
        (c2, "Extra answers the judges disagree on", "n_disagreement", "uq_mark_extra", MARK_EXTRA_RANGE),
        (c3, "Seed of the draw", "sample_seed", "uq_mark_seed", MARK_SEED_RANGE),
    )
    values, good = {}, True
    for where, label, name, key, (low, high) in fields:
        value, ok = number_field(
            where,
            label,
            default_of(MarkSample, name),
            key,
            between(label, low, high, integer=True),
            step=1,
            help=help_of(MarkSample, name),
        )
        values[name], good = value, good and ok
    return MarkSample(**{k: int(v) for k, v in values.items()}) if good else None


def _drawn(run: UqRun, settings: MarkSample) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame] | None:
    """(the sample's answers as shown: SHOWN_COLUMNS, the run's answers, the judges' verdicts), for exactly
    these settings and answers; the verdicts stay in memory for the agreement and are never shown."""
    inputs = (run.run_id, run.done(), settings)
    found = recall("uq_marking", inputs, shared=True)
    if found is not None:
        return found
    embedder = models.get_embedder()
    if embedder is None:
        return None

    def draw():
        records = run.load_records()
        answers, verdicts = handmarks.judge_verdicts(records, EvalOptions(), embedder)
        sample = handmarks.sample_for(answers, verdicts, settings)
        by_id = {r.id: r for r in records}
        items = pd.DataFrame(
            {
                "question_id": sample["question_id"],
                "question": [by_id[i].question for i in sample["question_id"]],
                "references": [" | ".join(by_id[i].references) for i in sample["question_id"]],
                "answer": sample["answer"],
            }
        )
        return items[list(SHOWN_COLUMNS)].reset_index(drop=True), answers, verdicts

    return compute("uq_marking", inputs, "Drawing the answers to mark...", draw, shared=True)


def _next_id(items: pd.DataFrame, marks: pd.DataFrame) -> str | None:
    """The answer to show: the one picked, else the first neither marked nor skipped in this session."""
    picked = st.session_state.get(GOTO)
    if picked in set(items["question_id"]):
        return picked
    done = set(marks["question_id"]) | st.session_state.get(SKIPPED, set())
    return next((q for q in items["question_id"] if q not in done), None)


def _card(run: UqRun, items: pd.DataFrame, marks: pd.DataFrame) -> None:
    """The answer to mark, its Right / Wrong / Skip buttons and a note; a picker to go back to any answer."""
    ids = list(items["question_id"])
    marked = dict(zip(marks["question_id"], marks["mark"]))
    n_marked = sum(q in marked for q in ids)
    skipped = st.session_state.get(SKIPPED, set())
    st.markdown(f"**{n_marked} of {len(ids)} answers marked**" + (f" ({len(skipped)} skipped)" if skipped else ""))
    st.selectbox(
        "Go to an answer",
        ids,
        index=None,
        key="uq_mark_pick",
        placeholder="the next one to mark",
        format_func=lambda q: f"{ids.index(q) + 1}. {q}" + (f" (marked {MARK_TEXT[marked[q]]})" if q in marked else ""),
        on_change=_go_to,
    )
    qid = _next_id(items, marks)
    if qid is None:
        st.success(f"Every answer of the sample is marked or skipped ({n_marked} marked).", icon=":material/task_alt:")
        if skipped and st.button("Show the skipped answers again", key="uq_mark_unskip"):
            st.session_state[SKIPPED] = set()
            st.rerun()
        return
    row = items.set_index("question_id").loc[qid]
    notes = dict(zip(marks["question_id"], marks["note"]))
    with st.container(border=True):
        st.caption(f"Answer {ids.index(qid) + 1} of {len(ids)} · {qid}")
        st.text(f"Question: {row['question']}\nReference answers: {row['references'] or '(none)'}")
        st.text(f"The model's answer: {row['answer']}")
        if qid in marked:
            st.caption(f"You marked it {MARK_TEXT[marked[qid]]}.")
        note_key = f"uq_mark_note_{qid}"
        st.text_input("Note (optional)", value=notes.get(qid, ""), key=note_key, placeholder="why, if unsure")
        b1, b2, b3 = st.columns(3)
        for where, label, mark, icon in (
            (b1, "Right", True, ":material/check:"),
            (b2, "Wrong", False, ":material/close:"),
        ):
            where.button(
                label,
                key=f"uq_mark_{label.lower()}",
                icon=icon,
                width="stretch",
                on_click=_save,
                args=(run, qid, str(row["answer"]), mark, note_key),
            )
        b3.button("Skip", key="uq_mark_skip", icon=":material/skip_next:", width="stretch", on_click=_skip, args=(qid,))


def _go_to() -> None:
    st.session_state[GOTO] = st.session_state.get("uq_mark_pick")
    st.session_state["uq_mark_pick"] = None


def _save(run: UqRun, qid: str, answer: str, mark: bool, note_key: str) -> None:
    """Save one mark through the engine (this person's own marks; a LabError is shown) and move on."""
    try:
        handmarks.save_hand_marks(run, access.me(), {qid: (answer, mark, st.session_state.get(note_key, ""))})
    except LabError as err:
        st.session_state["_uq_mark_error"] = str(err)
        return
    st.session_state.pop(GOTO, None)


def _skip(qid: str) -> None:
    st.session_state[SKIPPED] = st.session_state.get(SKIPPED, set()) | {qid}
    st.session_state.pop(GOTO, None)


def _marks_table(items: pd.DataFrame, marks: pd.DataFrame) -> None:
    """Your marks so far, the download of the marks file."""
    error = st.session_state.pop("_uq_mark_error", None)
    if error:
        st.error(error, icon=":material/error:")
    if marks.empty:
        return
    st.subheader("Your marks")
    table = marks.merge(items[["question_id", "question"]], on="question_id", how="left")
    table = table.assign(mark=table["mark"].map(MARK_TEXT))[["question_id", "question", "answer", "mark", "note"]]
    st.dataframe(readable(table, {"question_id": "question id"}), hide_index=True, width="stretch")
    st.download_button(
        "Download my marks",
        handmarks.marks_csv(marks),
        "marks.csv",
        "text/csv",
        key="uq_mark_download",
        icon=":material/download:",
        help="question_id, answer, mark, note: the file `python -m engine uq-marks agreement|contrasts --marks` "
        "reads. Committed as reports/uq/hand_marks/marks.csv, it is the study's hand marks: the report "
        "(`make study-uq ARGS=--report-only`) grades the judges and the contrasts by it.",
    )


def _agreement(marks: pd.DataFrame, answers: pd.Series, verdicts: pd.DataFrame) -> None:
    """Each judge against the marks (stratum-weighted accuracy and Cohen's kappa), when asked for."""
    if marks.empty:
        return
    if not st.toggle(
        "Show how the automatic judges agree with my marks",
        key="uq_mark_agreement",
        help="With a few marks this tells how the judges graded the answers you marked: look when you are done.",
    ):
        return
    table, note = handmarks.judge_agreement(marks, answers, verdicts)
    st.caption(
        "Accuracy and Cohen's kappa of each judge against your marks, each answer weighted by its stratum's "
        "size in the run over its marks (the disagreements are over-sampled), so they estimate the whole run's."
    )
    few = table["kappa"].isna()
    if few.any():
        st.info(
            f"{handmarks.TOO_FEW.capitalize()}: {int(few.sum())} of {len(table)} judges have no kappa "
            f"(at least {handmarks.MIN_FOR_KAPPA} marks and both kinds of mark and verdict are needed).",
            icon=":material/info:",
        )
    shown = table.drop(columns=["note"])
    st.dataframe(readable(shown, AGREEMENT_LABELS), hide_index=True, width="stretch")
    if note:
        st.caption(note)
