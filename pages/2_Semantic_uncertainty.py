"""Semantic vs surface uncertainty: A1 / A2 / A3 on a question set (Farquhar et al. 2024; SEPs, arXiv 2406.15927)."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.uq import correctness, estimators, runs
from engine.uq import questions as qmod
from engine.uq.generation import CHAT_TEMPLATE, FEW_SHOT_TEMPLATE, GenerationConfig
from ui.models import current_choice, get_embedder, get_model, is_loaded, render_sidebar

st.set_page_config(page_title="Semantic uncertainty", page_icon=":material/psychology:", layout="wide")
render_sidebar()
st.title("Semantic vs surface uncertainty")
st.caption(
    "Does answering only the questions where the model is semantically sure reduce errors more than "
    "usual (token-level) confidence? A1 = accuracy on all questions, A2 = on the 50% most certain by a "
    "usual score, A3 = the same by semantic entropy."
)

with st.expander("Method", icon=":material/info:"):
    st.markdown(
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
    st.dataframe(
        pd.DataFrame([{"score": e.name, "kind": e.kind, "formula": e.formula} for e in estimators.ESTIMATORS.values()]),
        hide_index=True,
        width="stretch",
    )

# ------------------------------------------------------------------------------------------------
# 1. Question set
st.header("1. Question set")
source = st.radio("Questions", ["Bundled default set", "Upload a file"], key="uq_source", horizontal=True)
qset = None
if source == "Bundled default set":
    qset = qmod.default_questions()
    st.caption(
        f"{len(qset)} short factual questions written for the lab, with references (several forms separated by |)."
    )
else:
    upload = st.file_uploader(
        "CSV (main path) or JSONL: a `question` column; `answer` (references separated by |) and `id` optional",
        type=["csv", "tsv", "txt", "jsonl", "json"],
        key="uq_upload",
    )
    if upload is None:
        st.info("Upload a file to start, or pick the bundled default set.", icon=":material/upload_file:")
    else:
        try:
            raw = qmod.read_table(upload.getvalue(), upload.name)
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
                    f"No 'question' column: found [{', '.join(columns[:8])}]. Pick the column that "
                    "holds the questions above."
                )
            qset = qmod.prepare_questions(
                raw, qcol, acol if acol != none else "", icol if icol != none else "", source=upload.name
            )
        except LabError as err:
            st.error(f"{err}", icon=":material/error:")
if qset is not None:
    for message in qset.messages:
        st.warning(message, icon=":material/warning:")
    preview = qset.frame.head(200).assign(references=lambda f: f["references"].map(" | ".join))
    st.dataframe(preview, hide_index=True, width="stretch", height=220)
    st.caption(f"{len(qset):,} questions.")
    limit = int(
        st.number_input("How many questions to run (the first N)", 1, len(qset), min(len(qset), 50), key="uq_limit")
    )

# ------------------------------------------------------------------------------------------------
# 2. Generation
st.header("2. Generation")
chat = False
if is_loaded(current_choice()):
    lm_now = get_model()
    chat = bool(lm_now and lm_now.is_instruction_tuned)
template = st.text_area(
    "Prompt template ({question} is replaced; instruction-tuned models get it inside their chat template)",
    CHAT_TEMPLATE if chat else FEW_SHOT_TEMPLATE,
    height=200,
    key="uq_prompt",
)
c1, c2, c3, c4 = st.columns(4)
k = int(c1.number_input("Samples K", 1, 64, 10, key="uq_k", help="Sampled answers per question (Farquhar et al.: 10)."))
temperature = float(c2.number_input("Temperature", 0.05, 5.0, 1.0, 0.1, key="uq_temp"))
max_new = int(c3.number_input("Max new tokens", 1, 256, 24, key="uq_max_new"))
seed = int(c4.number_input("Seed", 0, 2**31 - 1, 0, key="uq_seed"))
if st.button(
    "Generate (or resume)", key="uq_start", type="primary", disabled=qset is None, icon=":material/play_arrow:"
):
    lm = get_model()
    if lm is None:
        st.stop()
    try:
        gen = GenerationConfig(
            prompt_template=template, samples=k, temperature=temperature, max_new_tokens=max_new, seed=seed
        )
        store = runs.open_run_for(lm, qset.frame, gen, source=qset.source or "default")
        runs.start_job(lm, store, limit)
        st.session_state["uq_run_id"] = store.run_id
        st.session_state.pop("uq_run_pick", None)
    except LabError as err:
        st.error(str(err), icon=":material/error:")

# ------------------------------------------------------------------------------------------------
# Saved runs
saved = runs.list_runs()
if not saved:
    st.info("No saved run yet.")
    st.stop()
ids = [r["run_id"] for r in saved]
labels = {
    r["run_id"]: f"{r['run_id']} · {r['model']} · {r['source']} · {r['done']}/{r['n_questions']} done · "
    f"K={r['samples']} · {r['created']}"
    for r in saved
}
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
store = runs.get_run(run_id)


@st.fragment(run_every=2 if (runs.JOBS.get(run_id) and runs.JOBS[run_id].running) else None)
def progress_panel() -> None:
    job = runs.JOBS.get(run_id)
    if job is None:
        return
    if job.running:
        eta = job.eta_seconds()
        st.progress(
            job.done / max(job.total, 1),
            text=f"{job.done}/{job.total} questions" + (f" · ETA {eta / 60:.1f} min" if eta else ""),
        )
        if st.button("Stop", key="uq_stop", icon=":material/stop:"):
            job.stop.set()
            st.toast("Stopping after the current question; rerun Generate to resume.")
    else:
        if job.error:
            st.error(f"Generation stopped: {job.error}", icon=":material/error:")
        if st.session_state.get("uq_seen_finished") != (run_id, job.started):
            st.session_state["uq_seen_finished"] = (run_id, job.started)
            st.rerun(scope="app")


progress_panel()
c1, c2 = st.columns([4, 1])
if c2.button("Delete this run", key="uq_delete", icon=":material/delete:"):
    try:
        runs.delete_run(run_id)
        st.session_state.pop("uq_run_id", None)
        st.rerun()
    except LabError as err:
        st.error(str(err))

done = len(store.done_indices())
if done == 0:
    st.info("This run has no answers yet.")
    st.stop()

# ------------------------------------------------------------------------------------------------
# 3. Correctness and 5. the table
st.header("3. Correctness")
c1, c2, c3 = st.columns(3)
judge = c1.selectbox(
    "Judge",
    list(correctness.JUDGES),
    key="uq_judge",
    help="auto: normalised reference contained in the answer, or SQuAD token F1 >= threshold. "
    "embedding: MiniLM cosine to the best reference >= threshold. llm: the Nature paper's "
    "yes/no prompt to the loaded model (run it below). Manual marks override every judge.",
)
f1_threshold = float(c2.slider("F1 threshold", 0.1, 1.0, correctness.F1_THRESHOLD, 0.05, key="uq_f1"))
emb_threshold = float(c3.slider("Embedding threshold", 0.3, 1.0, correctness.EMBEDDING_THRESHOLD, 0.05, key="uq_emb"))
if st.button("Run the LLM judge (loaded model)", key="uq_llm_judge", icon=":material/gavel:"):
    judge_lm = get_model()
    if judge_lm is not None:
        bar = st.progress(0.0, text="LLM judge...")
        runs.run_llm_judge(
            judge_lm, store, progress=lambda d, t: bar.progress(d / max(t, 1), text=f"LLM judge {d}/{t}")
        )
        bar.empty()

embedder = get_embedder()
if embedder is None:
    st.stop()
options = runs.EvalOptions(
    judge=judge,
    f1_threshold=f1_threshold,
    embedding_threshold=emb_threshold,
    judge_model=store.config.get("model", ""),
    seed=int(store.config["generation"]["seed"]),
)  # the CLI's --seed: same numbers
key = (
    run_id,
    done,
    json.dumps(store.marks(), sort_keys=True),
    json.dumps(store.llm_verdicts(options.judge_model)),
    json.dumps(options.__dict__, sort_keys=True),
)
cached = st.session_state.get("uq_eval")
if cached and cached[0] == key:
    evaluation = cached[1]
else:
    try:
        with st.spinner("Scoring answers..."):
            evaluation = runs.evaluate_run(store, embedder, options)
    except LabError as err:
        st.error(str(err), icon=":material/error:")
        st.stop()
    except Exception as err:  # noqa: BLE001 - a scoring bug must not hide the saved run behind a traceback
        st.error(
            f"Scoring failed ({type(err).__name__}: {err}); the run is saved and can be re-scored.",
            icon=":material/error:",
        )
        st.stop()
    st.session_state["uq_eval"] = (key, evaluation)
summary = evaluation.summary

st.subheader("Judge agreement")
st.caption("Pairs of judges on the questions both graded: share of equal verdicts and Cohen's kappa.")
st.dataframe(evaluation.agreement, hide_index=True, width="stretch")

st.header("The table")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Questions", f"{summary['n']}", help=f"{done} generated; graded: {summary['n_graded']}")
m2.metric("A1 (all)", f"{summary['A1']:.3f}")
m3.metric("A2 (usual, 50%)", f"{summary['A2']:.3f}", help=f"Retained half by {summary['usual_method']}")
m4.metric("A3 (semantic, 50%)", f"{summary['A3']:.3f}", help=f"Retained half by {summary['semantic_method']}")


def _ci(values) -> str:
    return "" if not values or any(pd.isna(v) for v in values) else f"[{values[0]:.3f}, {values[1]:.3f}]"


table = pd.DataFrame(
    [
        {
            "score": name,
            "kind": m["kind"],
            "acc@50%": m["acc50"],
            "acc CI": _ci(m["acc50_ci"]),
            "AUROC": m["auroc"],
            "AUROC CI": _ci(m["auroc_ci"]),
            "PRR": m["prr"],
            "PRR CI": _ci(m["prr_ci"]),
            "AUARC": m["auarc"],
            "AUARC CI": _ci(m["auarc_ci"]),
        }
        for name, m in summary["methods"].items()
    ]
)
st.dataframe(table, hide_index=True, width="stretch")
notes = (summary.get("score_info") or {}).get("notes") or {}
for name, note in notes.items():
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

st.subheader("Results (mark answers right or wrong: marks override the judge)")
view = evaluation.results.copy()
view["manual"] = view["manual"].map({True: "right", False: "wrong"}).fillna("")
edited = st.data_editor(
    view,
    key="uq_editor",
    hide_index=True,
    width="stretch",
    height=360,
    disabled=[c for c in view.columns if c != "manual"],
    column_config={"manual": st.column_config.SelectboxColumn("manual", options=["", "right", "wrong"])},
)
new_marks = {qid: {"right": True, "wrong": False}.get(mark) for qid, mark in zip(edited["id"], edited["manual"])}
new_marks = {qid: v for qid, v in new_marks.items() if v is not None}
if new_marks != store.marks():
    store.save_marks(new_marks)
    st.rerun()

st.subheader("Drill-down")
question_of = dict(zip(view["id"], view["question"]))
pick = st.selectbox("Question", list(view["id"]), key="uq_drill", format_func=lambda i: f"{i}: {question_of[i][:80]}")
record = next(r for r in evaluation.records if r.id == pick)
st.text(f"Question: {record.question}\nReferences: {' | '.join(record.references)}\nGraded answer: {record.answer}")
labels_of = evaluation.clusters.get(pick, [])
st.dataframe(
    pd.DataFrame(
        {
            "sample": record.samples,
            "cluster": labels_of if len(labels_of) == len(record.samples) else [None] * len(record.samples),
            "tokens": [len(t) for t in record.sample_token_logprobs],
        }
    ),
    hide_index=True,
    width="stretch",
)
row = evaluation.results.set_index("id").loc[pick]
st.dataframe(row.drop(["question", "reference", "answer"]).astype(str).rename("value").to_frame(), width="stretch")

st.subheader("Downloads")
d1, d2, d3 = st.columns(3)
d1.download_button("results.csv", runs.results_csv(evaluation), "results.csv", "text/csv", key="uq_dl_csv")
d2.download_button("summary.json", runs.summary_json(evaluation), "summary.json", "application/json", key="uq_dl_json")
d3.download_button("summary.md", runs.summary_md(evaluation), "summary.md", "text/markdown", key="uq_dl_md")
st.caption(
    f"Same numbers from the command line: `python -m engine uq --questions FILE --out DIR --samples "
    f"{store.config['generation']['samples']} --seed {store.config['generation']['seed']}` "
    f"(run {run_id})."
)
