"""Semantic uncertainty page, second half: grade a saved run's answers (judges, thresholds, manual marks),
then the results, figures first: the answer in one sentence (the verdict on the decompositions and the
answer-length check) over A1 / A2 / A3 as bars with 95% bootstrap intervals under each judge, the
accuracy-rejection curves with a score picker (the usual and semantic scores highlighted); then the tables
(A1 / A2 / A3 under each judge, every score's metrics and paired differences from the usual score), the
decompositions' formulas, judge agreement, the editable results, a drill-down into one question and the
downloads. The chart builders are the study report's (engine.uq.report): one piece of code for both.

URL (`bind="query-params"`): `uq_judge`, `uq_f1`, `uq_emb` (grading) and `uq_score` (the curves drawn).
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from engine.core.options import default_of, help_of
from engine.uq import contrasts, correctness, decompositions, export, report, subspace
from engine.uq.config import EvalOptions
from engine.uq.evaluation import Evaluation, evaluate_run, run_llm_judge
from engine.uq.store import UqRun
from ui import access
from ui.figures import identical_curves, show_chart
from ui.models import get_embedder, get_model
from ui.progress import steps
from ui.state import compute, recall
from ui.tables import cell_text, column_name, readable

MARKS = {"right": True, "wrong": False}  # the editor's manual column -> mark
SHARED_EVALUATIONS = 8  # evaluations kept for every session of the process (a reload finds them)


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
    _figures(evaluation, done)
    _contrasts(evaluation)
    _tables(evaluation)
    _results_editor(run, evaluation, writable)
    _drill_down(evaluation)
    _downloads(run, evaluation)


def _options(run: UqRun, writable: bool) -> EvalOptions:
    """The judge widgets (and the LLM judge button); the seed is the run's, as the CLI's --seed."""
    c1, c2, c3 = st.columns(3)
    judge = c1.selectbox(
        "Judge", list(correctness.JUDGES), key="uq_judge", help=help_of(EvalOptions, "judge"), bind="query-params"
    )
    f1_threshold = c2.slider(
        "F1 threshold",
        0.1,
        1.0,
        default_of(EvalOptions, "f1_threshold"),
        0.05,
        key="uq_f1",
        help=help_of(EvalOptions, "f1_threshold"),
        bind="query-params",
    )
    emb_threshold = c3.slider(
        "Embedding threshold",
        0.3,
        1.0,
        default_of(EvalOptions, "embedding_threshold"),
        0.05,
        key="uq_emb",
        help=help_of(EvalOptions, "embedding_threshold"),
        bind="query-params",
    )
    if writable and st.button("Run the LLM judge (loaded model)", key="uq_llm_judge", icon=":material/gavel:"):
        judge_lm = get_model()
        if judge_lm is not None:
            with steps("LLM judge") as progress:
                run_llm_judge(judge_lm, run, progress=lambda d, t: progress(d, t, "answers judged"))
    return EvalOptions(
        judge=judge,
        f1_threshold=float(f1_threshold),
        embedding_threshold=float(emb_threshold),
        judge_model=run.model,
        seed=run.generation_config().seed,
    )


@st.cache_resource(max_entries=SHARED_EVALUATIONS, show_spinner=False)
def _shared_evaluation(inputs: str, _run: UqRun, _embedder, _options: EvalOptions) -> Evaluation:
    """evaluate_run, kept for the process by `inputs` (the run's folder, its answers, marks, verdicts and the
    options as JSON): a reload (a new session) or a colleague opening the same link gets it back at once.
    The result is shared: the page only reads it."""
    return evaluate_run(_run, _embedder, _options)


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
    key = json.dumps([str(run.path), *inputs[1:4], repr(options)])
    try:
        return compute("uq_eval", inputs, "Scoring answers...", lambda: _shared_evaluation(key, run, embedder, options))
    except Exception as err:  # noqa: BLE001 - a scoring bug must not hide the saved run behind a traceback
        st.error(
            f"Scoring failed ({type(err).__name__}: {err}); the run is saved and can be re-scored.",
            icon=":material/error:",
        )
        return None


# ------------------------------------------------------------------------------------------------
# Figures first


def a123_figure_frame(evaluation: Evaluation) -> pd.DataFrame:
    """report.a123_frame for this run, the chosen judge first and named "(chosen)"."""
    frame = report.a123_frame([("this run", evaluation)])
    chosen = evaluation.summary.judge
    return frame.assign(judge=[j + " (chosen)" if j == chosen else j for j in frame["judge"]])


def score_choices(evaluation: Evaluation) -> tuple[list[str], list[str]]:
    """(every score with a curve, the ones drawn by default: the report's choice, report.curve_methods)."""
    computed = list(dict.fromkeys(evaluation.curves["method"])) if not evaluation.curves.empty else []
    return computed, report.curve_methods(evaluation)


def curves_for(evaluation: Evaluation, picked: list[str]) -> pd.DataFrame:
    """The rejection curves of the picked scores, in the picker's order."""
    curves = evaluation.curves
    frame = curves[curves["method"].isin(picked)]
    order = {name: i for i, name in enumerate(picked)}
    return frame.sort_values("method", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)


def _figures(evaluation: Evaluation, done: int) -> None:
    """The answer, A1 / A2 / A3 with intervals under each judge, then the rejection curves."""
    summary = evaluation.summary
    st.header("The answer")
    st.markdown(export.lead_markdown(summary))
    st.subheader("A1 / A2 / A3 with 95% bootstrap intervals")
    st.caption(
        f"A1 = accuracy on all {summary.n} graded answers; A2 = on the 50% most certain by `{summary.usual_method}` "
        f"(usual); A3 = by `{summary.semantic_method}` (semantic). One panel per judge (manual marks override "
        f"every judge); whiskers: 95% bootstrap intervals ({summary.n_boot} resamples of the questions)."
    )
    a123 = a123_figure_frame(evaluation)
    show_chart(report.a123_chart(a123, by_set=False), "a1_a2_a3", key="uq_fig_a123", data=a123.drop(columns="set"))
    chosen = next((t for t in summary.judges if t.judge == summary.judge), None)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Questions", f"{summary.n}", help=f"{done} generated; graded: {summary.n_graded}")
    m2.metric("A1 (all)", f"{summary.A1:.3f}", help=_ci_text(summary.A1_ci))
    m3.metric(
        "A2 (usual, 50%)",
        f"{summary.A2:.3f}",
        help=f"Retained half by {summary.usual_method}. " + _ci_text(chosen.A2_ci if chosen else None),
    )
    m4.metric(
        "A3 (semantic, 50%)",
        f"{summary.A3:.3f}",
        help=f"Retained half by {summary.semantic_method}. " + _ci_text(chosen.A3_ci if chosen else None),
    )
    _curves(evaluation)


def _ci_text(ci) -> str:
    if not ci or any(v is None or pd.isna(v) for v in ci):
        return "No interval."
    return f"95% bootstrap interval [{ci[0]:.3f}, {ci[1]:.3f}]."


def _curves(evaluation: Evaluation) -> None:
    """The accuracy-rejection curves of the picked scores; the usual and semantic scores highlighted."""
    summary = evaluation.summary
    st.subheader("Accuracy as the most uncertain answers are rejected")
    computed, default = score_choices(evaluation)
    if not computed:
        st.info("No score could be computed on these answers, so there is no curve.")
        return
    picked = st.multiselect(
        "Scores drawn",
        computed,
        default=default,
        key="uq_score",
        bind="query-params",
        help="Bold: the usual score behind A2 and the semantic score behind A3; the others faded. Point at the "
        "chart for every drawn score's accuracy at that fraction.",
    )
    if not picked:
        st.caption("Pick at least one score to draw its curve.")
        return
    frame = curves_for(evaluation, picked)
    chart = report.curves_chart(
        frame, highlight=[summary.usual_method, summary.semantic_method], by_set=False, width="container"
    )
    show_chart(chart, "rejection_curves", key="uq_fig_curves", data=frame)
    for same in identical_curves(frame):
        st.caption(
            f"{', '.join(same[:-1])} and {same[-1]} draw one and the same curve on these answers (they rank the "
            "questions alike): one line shows them all."
        )


CONTRAST_LABELS = {
    "family": "family",
    "name": "contrast",
    "metric": "metric",
    "estimate": "Δ (with − without)",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "p": "p (one-sided)",
    "p_holm": "p (Holm)",
    "mde": "minimal detectable effect",
    "seed_sd": "seed-to-seed SD",
    "note": "note",
}


def _contrasts(evaluation: Evaluation) -> None:
    summary = evaluation.summary
    contrast_section(summary.contrasts, summary.n_graded, summary.n_seeds)


def contrast_section(found: list[dict], n: int, n_seeds: int) -> None:
    """Does the decomposition help? Each method with the semantic subspace against the same method on the full
    state (engine.uq.contrasts: the study's table and figure), with the verdict on the primary family; nothing
    when no decomposition ran."""
    if not found:
        return
    st.subheader("Does the decomposition help? Each method with it against the same method without it")
    verdict = contrasts.contrast_verdict(found, n)
    st.markdown(f"**{verdict.sentence}**")
    frame = report.contrast_rows([("this run", found)])
    if len(frame):
        show_chart(report.contrasts_chart(frame), "contrasts", key="uq_fig_contrasts", data=frame)
    seeds = (
        f"Cross-fitted scores here are the mean over {n_seeds} fold seeds."
        if n_seeds > 1
        else "Single fold seed on this page, to stay interactive: the study and `lab uq` average 10 fold seeds, "
        "so their intervals include the refit variance and their numbers can differ slightly."
    )
    st.caption(
        "AUROC of wrong-answer detection; DeLong's paired one-sided test, Holm within each family; same-rank "
        "controls (a random and a PCA subspace of the decomposition's rank) tell a gain from 'semantic' apart from "
        f"a gain from fewer dimensions. Comparisons with the usual score are exploratory. {seeds}"
    )
    table = pd.DataFrame(found)
    shown = [c for c in CONTRAST_LABELS if c in table.columns]
    st.dataframe(readable(table[shown], CONTRAST_LABELS), hide_index=True, width="stretch")


# ------------------------------------------------------------------------------------------------
# Tables below the figures


def _tables(evaluation: Evaluation) -> None:
    summary = evaluation.summary
    st.header("The tables")
    st.subheader("A1 / A2 / A3 under each judge")
    st.caption(
        "The same comparison graded by each automatic judge (manual marks override all of them), so the "
        "conclusion does not hang on one judge. A3 − A2: paired bootstrap difference, Holm-adjusted p."
    )
    st.dataframe(readable(summary.judges_table(), {}), hide_index=True, width="stretch")
    st.subheader("Every score")
    st.caption(
        f"Δ columns: the score minus `{summary.usual_method}` on the same bootstrap resamples (paired), with its "
        "95% interval and Holm-adjusted p over all scores compared. Kinds: usual, semantic, decomposition "
        "(anything computed from a semantic / surface split, surface spreads included), baseline."
    )
    st.dataframe(readable(summary.methods_table(), {}), hide_index=True, width="stretch")
    notes = summary.score_info.get("notes") or {}
    if notes:
        with st.expander(f"Notes on {len(notes)} score(s) (why some are not computed)", icon=":material/notes:"):
            for name, note in notes.items():
                st.caption(f"{name}: {note}")
    with st.expander("Decompositions: formulas", icon=":material/functions:"):
        st.code(subspace.__doc__, language=None, wrap_lines=True)
        st.code(decompositions.__doc__, language=None, wrap_lines=True)
    with st.expander("Judge agreement", icon=":material/balance:"):
        st.caption(
            "Pairs of judges on the questions both graded: share of equal verdicts and Cohen's kappa "
            "(empty where a judge graded nothing, e.g. the LLM judge before it is run)."
        )
        st.dataframe(readable(evaluation.agreement, {}), hide_index=True, width="stretch")


def _results_editor(run: UqRun, evaluation: Evaluation, writable: bool) -> None:
    """The results table with an editable "manual" column (the run's owner only); a changed mark is saved
    (only the questions whose mark changed: others' marks are kept) and the page reruns."""
    st.subheader("Results (mark answers right or wrong: marks override the judge)")
    view = evaluation.results.copy()
    view["manual"] = view["manual"].map({v: k for k, v in MARKS.items()}).fillna("")
    if not writable:
        st.dataframe(readable(view, {}), hide_index=True, width="stretch", height=360)
        st.caption("Marks are the owner's (read-only for you).")
        return
    edited = st.data_editor(
        view,
        key="uq_editor",
        hide_index=True,
        width="stretch",
        height=360,
        disabled=[c for c in view.columns if c != "manual"],
        column_config={c: column_name(c, {}) for c in view.columns}
        | {"manual": st.column_config.SelectboxColumn("manual", options=["", *MARKS])},
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
        readable(
            pd.DataFrame(
                {
                    "sample": record.samples,
                    "cluster": labels if len(labels) == len(record.samples) else [None] * len(record.samples),
                    "tokens": [len(t) for t in record.sample_token_logprobs],
                }
            ),
            {},
        ),
        hide_index=True,
        width="stretch",
    )
    row = results.set_index("id").loc[pick]
    values = row.drop(["question", "reference", "answer"])
    values.index = [column_name(c, {}) for c in values.index]
    st.dataframe(values.map(cell_text).rename("value").to_frame(), width="stretch")


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
