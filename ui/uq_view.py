"""Semantic uncertainty page: the method, the question set, generation (a background job of the core
runner, resumable) and the saved runs; the chosen run's grading and results are `ui.uq_results`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.jobs import RUNNER
from engine.core.options import default_of, help_of
from engine.uq import estimators, store
from engine.uq import questions as qmod
from engine.uq.config import (
    FEW_SHOT_TEMPLATE,
    MAX_NEW_TOKENS_RANGE,
    SAMPLES_RANGE,
    TEMPERATURE_RANGE,
    GenerationConfig,
)
from engine.uq.generation import default_template, job_key, open_run_for, start_generation
from engine.uq.questions import QuestionSet
from engine.uq.store import UqRun
from ui import uq_results
from ui.models import current_choice, get_model, is_loaded

POLL_SECONDS = 2  # how often the progress panel refreshes while a run generates
SEED_MAX = 2**31 - 1

METHOD = (
    "- **Generation**: per question one greedy graded answer and K samples at temperature T in one batched "
    "decoding loop; answers stop at the first newline. Token log-probs are the model's raw distribution "
    "(T = 1) of the chosen tokens; hidden states of each answer's last token are kept at a few layers, "
    "captured during generation (no second pass).\n"
    "- **Usual scores**: mean token NLL, negated max sequence probability, naive predictive entropy, "
    "1 - ROUGE-L similarity of samples, EigenScore (INSIDE).\n"
    "- **Semantic scores**: semantic entropy over meaning clusters of the samples (weighted and discrete, "
    "Farquhar et al. 2024), semantic entropy probes (out-of-fold logistic regression on hidden states, "
    "arXiv 2406.15927), and the spread of the samples' hidden states inside a *semantic* subspace (row space "
    "of a ridge map from hidden states to sentence embeddings) and its *surface* complement (cross-fitted "
    "by question).\n"
    "- **Retained half**: stable sort by (uncertainty, position), keep the first ceil(n/2). Metrics: "
    "accuracy at 50% coverage, AUROC for detecting wrong answers, PRR, area under the accuracy-rejection "
    "curve, each with a 95% bootstrap interval over questions.\n"
    "- Every score is *higher = more uncertain*."
)


def render() -> None:
    """The whole page below its title."""
    _method()
    st.header("1. Question set")
    qset = _question_set()
    limit = _limit(qset) if qset is not None else None
    st.header("2. Generation")
    _generation(qset, limit)
    run = _saved_run()
    if run is None:
        return
    _progress_panel(run)
    _delete_button(run)
    uq_results.render(run)


def _method() -> None:
    with st.expander("Method", icon=":material/info:"):
        st.markdown(METHOD)
        st.dataframe(
            pd.DataFrame(
                [{"score": e.name, "kind": e.kind, "formula": e.formula} for e in estimators.ESTIMATORS.values()]
            ),
            hide_index=True,
            width="stretch",
        )


# ------------------------------------------------------------------------------------------------
# 1. Question set


def _question_set() -> QuestionSet | None:
    source = st.radio("Questions", ["Bundled default set", "Upload a file"], key="uq_source", horizontal=True)
    if source == "Bundled default set":
        qset = qmod.default_questions()
        st.caption(
            f"{len(qset)} short factual questions written for the lab, with references (several forms separated by |)."
        )
        return qset
    upload = st.file_uploader(
        "CSV (main path) or JSONL: a `question` column; `answer` (references separated by |) and `id` optional",
        type=["csv", "tsv", "txt", "jsonl", "json"],
        key="uq_upload",
    )
    if upload is None:
        st.info("Upload a file to start, or pick the bundled default set.", icon=":material/upload_file:")
        return None
    try:
        return _columns_picked(qmod.read_table(upload.getvalue(), upload.name), upload.name)
    except LabError as err:
        st.error(f"{err}", icon=":material/error:")
        return None


def _columns_picked(raw: pd.DataFrame, source: str) -> QuestionSet:
    """Question / answer / id column pickers (guessed first) and the question set they give."""
    guessed = qmod.guess_columns(raw)
    columns = [str(c) for c in raw.columns]
    none = "(none)"
    c1, c2, c3 = st.columns(3)
    qcol = c1.selectbox(
        "Question column",
        columns,
        key="uq_qcol",
        placeholder="pick the question column",
        index=columns.index(guessed["question"]) if guessed["question"] in columns else None,
    )
    acol = c2.selectbox(
        "Answer column",
        [none] + columns,
        key="uq_acol",
        index=([none] + columns).index(guessed["answer"]) if guessed["answer"] in columns else 0,
    )
    icol = c3.selectbox(
        "Id column",
        [none] + columns,
        key="uq_idcol",
        index=([none] + columns).index(guessed["id"]) if guessed["id"] in columns else 0,
    )
    if qcol is None:
        raise LabError(
            f"No 'question' column: found [{', '.join(columns[:8])}]. Pick the column that holds the questions above."
        )
    return qmod.prepare_questions(raw, qcol, acol if acol != none else "", icol if icol != none else "", source=source)


def _limit(qset: QuestionSet) -> int:
    """Warnings and a preview of the set, and how many of its questions to run."""
    for message in qset.messages:
        st.warning(message, icon=":material/warning:")
    preview = qset.frame.head(200).assign(references=lambda f: f["references"].map(" | ".join))
    st.dataframe(preview, hide_index=True, width="stretch", height=220)
    st.caption(f"{len(qset):,} questions.")
    return int(
        st.number_input("How many questions to run (the first N)", 1, len(qset), min(len(qset), 50), key="uq_limit")
    )


# ------------------------------------------------------------------------------------------------
# 2. Generation


def _generation(qset: QuestionSet | None, limit: int | None) -> None:
    """Generation settings and the button that starts (or resumes) the run in the background."""
    lm_now = get_model() if is_loaded(current_choice()) else None
    template = st.text_area(
        "Prompt template ({question} is replaced; instruction-tuned models get it inside their chat template)",
        default_template(lm_now) if lm_now is not None else FEW_SHOT_TEMPLATE,
        height=200,
        key="uq_prompt",
    )
    c1, c2, c3, c4 = st.columns(4)
    k = c1.number_input("Samples K", *SAMPLES_RANGE, _default("samples"), key="uq_k", help=_help("samples"))
    temperature = c2.number_input(
        "Temperature", *TEMPERATURE_RANGE, _default("temperature"), 0.1, key="uq_temp", help=_help("temperature")
    )
    max_new = c3.number_input(
        "Max new tokens",
        *MAX_NEW_TOKENS_RANGE,
        _default("max_new_tokens"),
        key="uq_max_new",
        help=_help("max_new_tokens"),
    )
    seed = c4.number_input("Seed", 0, SEED_MAX, _default("seed"), key="uq_seed", help=_help("seed"))
    start = st.button(
        "Generate (or resume)", key="uq_start", type="primary", disabled=qset is None, icon=":material/play_arrow:"
    )
    if not start or qset is None:
        return
    lm = get_model()
    if lm is None:
        return
    try:
        config = GenerationConfig(
            prompt_template=template,
            samples=int(k),
            temperature=float(temperature),
            max_new_tokens=int(max_new),
            seed=int(seed),
        )
        run = open_run_for(lm, qset.frame, config, source=qset.source or "default")
        start_generation(lm, run, limit)
        st.session_state["uq_run_id"] = run.run_id
        st.session_state.pop("uq_run_pick", None)
    except LabError as err:
        st.error(str(err), icon=":material/error:")


def _default(name: str):
    return default_of(GenerationConfig, name)


def _help(name: str) -> str:
    return help_of(GenerationConfig, name).capitalize() + "."


# ------------------------------------------------------------------------------------------------
# Saved runs


def _saved_run() -> UqRun | None:
    """The run picker over the saved runs (None when there is none); strays can be deleted."""
    _strays()
    saved = {run.run_id: run for run in store.list_runs()}
    if not saved:
        st.info("No saved run yet.")
        return None
    ids = list(saved)
    labels = {run_id: run.describe() for run_id, run in saved.items()}  # as of this rerun
    wanted = st.session_state.get("uq_run_id")
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(wanted) if wanted in ids else 0,
        key="uq_run_pick",
        format_func=labels.get,
        help="Runs are saved question by question in cache/uq/ and resume.",
    )
    st.session_state["uq_run_id"] = run_id
    return saved[run_id]


def _strays() -> None:
    strays = store.stray_runs()
    if not strays:
        return
    with st.expander(f"{len(strays)} saved folder(s) in cache/uq/ from an older version", icon=":material/history:"):
        st.caption("They cannot be opened: " + ", ".join(s.run_id for s in strays))
        if st.button("Delete them", key="uq_delete_strays", icon=":material/delete:"):
            for stray in strays:
                try:
                    store.delete_run(stray)
                except LabError as err:
                    st.error(str(err))
            st.rerun()


def _progress_panel(run: UqRun) -> None:
    """Progress, ETA and a stop button while the run generates in this process; else a note when another
    process generates it."""
    run_id, key = run.run_id, job_key(run.run_id)
    job = RUNNER.get(key)

    @st.fragment(run_every=POLL_SECONDS if job is not None and job.running else None)
    def panel() -> None:
        job = RUNNER.get(key)
        if job is None:
            if run.is_claimed():
                st.info("This run is being generated by another session or process.", icon=":material/sync:")
            return
        if job.running:
            eta = job.eta_seconds()
            total = job.total or 0
            st.progress(
                job.done / max(total, 1),
                text=f"{job.done}/{total} questions" + (f" · ETA {eta / 60:.1f} min" if eta else ""),
            )
            if st.button("Stop", key="uq_stop", icon=":material/stop:"):
                job.stop()
                st.toast("Stopping after the current question; rerun Generate to resume.")
            return
        if job.error:
            st.error(f"Generation stopped: {job.error}", icon=":material/error:")
        if st.session_state.get("uq_seen_finished") != (run_id, job.started):
            st.session_state["uq_seen_finished"] = (run_id, job.started)
            st.rerun(scope="app")

    panel()


def _delete_button(run: UqRun) -> None:
    _, right = st.columns([4, 1])
    if right.button("Delete this run", key="uq_delete", icon=":material/delete:"):
        try:
            store.delete_run(run.run_id)
            st.session_state.pop("uq_run_id", None)
            st.rerun()
        except LabError as err:
            st.error(str(err))
