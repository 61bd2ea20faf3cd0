"""Semantic uncertainty page, second half: grade a saved run's answers (judges, thresholds, manual marks),
then the answer in one sentence (the verdict on the decompositions and the answer-length check), A1 / A2 /
A3 under each judge, every score's metrics and paired differences from the usual score, the rejection
curves, the decompositions' formulas, the editable results, a drill-down into one question and the downloads.
"""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.options import default_of, help_of
from engine.uq import correctness, decompositions, export, subspace
from engine.uq.config import EvalOptions
from engine.uq.evaluation import Evaluation, evaluate_run, run_llm_judge
from engine.uq.store import UqRun
from ui import access
from ui.models import get_embedder, get_model
from ui.state import compute, recall

MARKS = {"right": True, "wrong": False}  # the editor's manual column -> mark


def render(run: UqRun) -> None:
    """Correctness settings, then the evaluation of `run` for exactly these settings and marks."""
    done = run.done()
    if done == 0:
        st.info("This run has no answers yet.")
        return
    st.header("3. Correctness")
    writable = access.can_write("uq", run.run_id)
    options = _options(run, writable)
    embedder = get_embedder()
    if embedder is None:
        return
    evaluation = _evaluation(run, done, embedder, options)
    if evaluation is None:
        return
    _table(evaluation, done)
    _results_editor(run, evaluation, writable)
    _drill_down(evaluation)
    _downloads(run, evaluation)


def _options(run: UqRun, writable: bool) -> EvalOptions:
    """The judge widgets (and the LLM judge button); the seed is the run's, as the CLI's --seed."""
    c1, c2, c3 = st.columns(3)
    judge = c1.selectbox("Judge", list(correctness.JUDGES), key="uq_judge", help=help_of(EvalOptions, "judge"))
    f1_threshold = c2.slider(
        "F1 threshold",
        0.1,
        1.0,
        default_of(EvalOptions, "f1_threshold"),
        0.05,
        key="uq_f1",
        help=help_of(EvalOptions, "f1_threshold"),
    )
    emb_threshold = c3.slider(
        "Embedding threshold",
        0.3,
        1.0,
        default_of(EvalOptions, "embedding_threshold"),
        0.05,
        key="uq_emb",
        help=help_of(EvalOptions, "embedding_threshold"),
    )
    if writable and st.button("Run the LLM judge (loaded model)", key="uq_llm_judge", icon=":material/gavel:"):
        judge_lm = get_model()
        if judge_lm is not None:
            bar = st.progress(0.0, text="LLM judge...")
            run_llm_judge(judge_lm, run, progress=lambda d, t: bar.progress(d / max(t, 1), text=f"LLM judge {d}/{t}"))
            bar.empty()
    return EvalOptions(
        judge=judge,
        f1_threshold=float(f1_threshold),
        embedding_threshold=float(emb_threshold),
        judge_model=run.model,
        seed=run.generation_config().seed,
    )


def _evaluation(run: UqRun, done: int, embedder, options: EvalOptions) -> Evaluation | None:
    """The evaluation for exactly these inputs (answers, marks, verdicts, options), computed when new."""
    inputs = (
        run.run_id,
        done,
        json.dumps(run.marks(), sort_keys=True),
        json.dumps(run.llm_verdicts(options.judge_model)),
        options,
    )
    evaluation = recall("uq_eval", inputs)
    if evaluation is not None:
        return evaluation
    try:
        return compute("uq_eval", inputs, "Scoring answers...", lambda: evaluate_run(run, embedder, options))
    except Exception as err:  # noqa: BLE001 - a scoring bug must not hide the saved run behind a traceback
        st.error(
            f"Scoring failed ({type(err).__name__}: {err}); the run is saved and can be re-scored.",
            icon=":material/error:",
        )
        return None


def _table(evaluation: Evaluation, done: int) -> None:
    summary = evaluation.summary
    st.subheader("Judge agreement")
    st.caption("Pairs of judges on the questions both graded: share of equal verdicts and Cohen's kappa.")
    st.dataframe(evaluation.agreement, hide_index=True, width="stretch")

    st.header("The table")
    st.markdown(export.lead_markdown(summary))
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Questions", f"{summary.n}", help=f"{done} generated; graded: {summary.n_graded}")
    m2.metric("A1 (all)", f"{summary.A1:.3f}")
    m3.metric("A2 (usual, 50%)", f"{summary.A2:.3f}", help=f"Retained half by {summary.usual_method}")
    m4.metric("A3 (semantic, 50%)", f"{summary.A3:.3f}", help=f"Retained half by {summary.semantic_method}")
    st.subheader("A1 / A2 / A3 under each judge")
    st.caption(
        "The same comparison graded by each automatic judge (manual marks override all of them), so the "
        "conclusion does not hang on one judge. A3 − A2: paired bootstrap difference, Holm-adjusted p."
    )
    st.dataframe(summary.judges_table(), hide_index=True, width="stretch")
    st.subheader("Every score")
    st.caption(
        f"Δ columns: the score minus `{summary.usual_method}` on the same bootstrap resamples (paired), with its "
        "95% interval and Holm-adjusted p over all scores compared. Kinds: usual, semantic, decomposition "
        "(anything computed from a semantic / surface split, surface spreads included), baseline."
    )
    st.dataframe(summary.methods_table(), hide_index=True, width="stretch")
    with st.expander("Decompositions: formulas", icon=":material/functions:"):
        st.code(subspace.__doc__, language=None, wrap_lines=True)
        st.code(decompositions.__doc__, language=None, wrap_lines=True)
    for name, note in (summary.score_info.get("notes") or {}).items():
        st.caption(f"{name}: {note}")
    if not evaluation.curves.empty:
        chart = (
            alt.Chart(evaluation.curves)
            .mark_line()
            .encode(
                x=alt.X("rejected_fraction:Q", title="fraction rejected (most uncertain first)"),
                y=alt.Y("accuracy:Q", title="accuracy of the retained answers"),
                color=alt.Color("method:N", title="score"),
                tooltip=["method", "rejected_fraction", "accuracy"],
            )
        )
        st.altair_chart(chart, width="stretch")


def _results_editor(run: UqRun, evaluation: Evaluation, writable: bool) -> None:
    """The results table with an editable "manual" column (the run's owner only); a changed mark is saved
    (only the questions whose mark changed: others' marks are kept) and the page reruns."""
    st.subheader("Results (mark answers right or wrong: marks override the judge)")
    view = evaluation.results.copy()
    view["manual"] = view["manual"].map({v: k for k, v in MARKS.items()}).fillna("")
    if not writable:
        st.dataframe(view, hide_index=True, width="stretch", height=360)
        st.caption("Marks are the owner's (read-only for you).")
        return
    edited = st.data_editor(
        view,
        key="uq_editor",
        hide_index=True,
        width="stretch",
        height=360,
        disabled=[c for c in view.columns if c != "manual"],
        column_config={"manual": st.column_config.SelectboxColumn("manual", options=["", *MARKS])},
    )
    changes = {qid: MARKS.get(mark) for qid, mark in zip(edited["id"], edited["manual"])}  # "" -> None clears
    saved = run.marks()
    changed = {qid: mark for qid, mark in changes.items() if saved.get(qid) != mark}
    if changed:
        run.save_marks(changed)
        st.rerun()


def _drill_down(evaluation: Evaluation) -> None:
    st.subheader("Drill-down")
    results = evaluation.results
    question_of = dict(zip(results["id"], results["question"]))
    pick = st.selectbox(
        "Question", list(results["id"]), key="uq_drill", format_func=lambda i: f"{i}: {question_of[i][:80]}"
    )
    record = next(r for r in evaluation.records if r.id == pick)
    st.text(f"Question: {record.question}\nReferences: {' | '.join(record.references)}\nGraded answer: {record.answer}")
    labels = evaluation.clusters.get(pick, [])
    st.dataframe(
        pd.DataFrame(
            {
                "sample": record.samples,
                "cluster": labels if len(labels) == len(record.samples) else [None] * len(record.samples),
                "tokens": [len(t) for t in record.sample_token_logprobs],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    row = results.set_index("id").loc[pick]
    st.dataframe(row.drop(["question", "reference", "answer"]).astype(str).rename("value").to_frame(), width="stretch")


def _downloads(run: UqRun, evaluation: Evaluation) -> None:
    st.subheader("Downloads")
    d1, d2, d3 = st.columns(3)
    d1.download_button("results.csv", export.results_csv(evaluation), "results.csv", "text/csv", key="uq_dl_csv")
    d2.download_button(
        "summary.json", export.summary_json(evaluation), "summary.json", "application/json", key="uq_dl_json"
    )
    d3.download_button("summary.md", export.summary_md(evaluation), "summary.md", "text/markdown", key="uq_dl_md")
    generation = run.generation_config()
    st.caption(
        f"Same numbers from the command line: `python -m engine uq --questions FILE --out DIR --samples "
        f"{generation.samples} --seed {generation.seed}` (run {run.run_id})."
    )
