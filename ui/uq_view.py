"""Semantic uncertainty page: the method, the question set, generation (a background job of the core
runner, resumable) and the saved runs; the chosen run's grading and results are `ui.uq_results`.

On the shared server (ui.access): a person sees their own runs, shared runs and runs made outside the
server; only the owner stops, deletes or shares a run. `?uq_run=<id>` (or the older `?run=<id>`) opens
a run (a private run of someone else opens a notice and nothing of it); the address bar always names
the run shown, so a reload or a copied link shows it again (runs are on disk).

URL: `uq_run` (the run), `uq_limit`, `uq_prompt`, `uq_k`, `uq_temp`, `uq_max_new`, `uq_seed` (generation,
bound widgets), the results' `uq_judge`, `uq_f1`, `uq_emb`, `uq_score` (ui.uq_results), and `uq_blind`: the
blind marking view instead of the results (ui.uq_marking, with its own parameters). Uploads and
generation settings are checked in Python against the engine's bounds (engine.uq.config) and the server's
limits (engine.core.limits): a bad value is named with the reason under its field and disables only
Generate; results on screen stay.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.uq import estimators
from engine.uq import jobs as uq_jobs
from ui import access, uq_marking, uq_results
from ui.uq_new_run import generation, limit_field, question_set
from ui.uq_runs import (
    PICK,
    RUN_PARAM,
    TOPIC,
    apply_selection,
    bad_records,
    delete_button,
    follow_link,
    progress_panel,
    saved_run,
    select,
    show_in_url,
    uq_job_note,
)

METHOD = (
    "- **Generation**: per question one greedy graded answer and K samples at temperature T, several "
    "questions per decoding step; answers stop at the first newline. Token log-probs are the model's raw "
    "distribution (T = 1) of the chosen tokens; hidden states of each answer's last token are kept at a few "
    "layers, captured during generation (no second pass).\n"
    "- **Usual scores** (kind *usual*): mean token NLL (behind A2), negated max sequence probability, naive "
    "predictive entropy, 1 - ROUGE-L similarity of samples, EigenScore (INSIDE).\n"
    "- **Semantic scores** (kind *semantic*): semantic entropy over meaning clusters of the samples (weighted "
    "and discrete, Farquhar et al. 2024; behind A3), semantic entropy probes (arXiv 2406.15927).\n"
    "- **Decompositions** (kind *decomposition*) of the hidden-state space into a semantic and a surface "
    "subspace, each cross-fitted by question: (a) the row space of a ridge map to sentence embeddings, (b) a "
    "discriminant of meaning clusters (between- vs within-cluster scatter), (c) a lexical map to character "
    "n-grams projected out of (a). Per question: the samples' spread in each subspace, the semantic share, and "
    "probes (semantic entropy, correctness) trained on each subspace. Formulas: the expander under the results.\n"
    "- **Baselines** (kind *baseline*): answer length, kernel language entropy, entropy + correctness probe.\n"
    "- **Statistics**: the retained half is a stable sort by (uncertainty, position), keeping ceil(n/2). "
    "Accuracy at 50% coverage, AUROC for detecting wrong answers, PRR and AUARC with 95% bootstrap intervals; "
    "every score against mean token NLL as a *paired* bootstrap difference (same question resamples) with a "
    "Holm-adjusted p-value, under each automatic judge.\n"
    "- Every score is *higher = more uncertain*."
)


def render() -> None:
    """The whole page below its title: the run shown and its results first, then a new run's form."""
    linked, blocked = follow_link()
    if blocked:
        return
    if linked is not None:
        select(linked.run_id)
    elif RUN_PARAM not in st.query_params and PICK not in st.session_state:
        mine = uq_jobs.latest_job_of(access.me())  # a reopened page finds the person's job again
        if mine is not None:
            select(uq_jobs.run_id_of(mine))
    _method()
    shown = st.container()  # the run shown and its results lead; the form below fills them
    st.header("New run: 1. Question set")
    qset = question_set()
    limit = limit_field(qset) if qset is not None else None
    st.header("2. Generation")
    generation(qset, limit)  # a start selects its run: applied before the picker is drawn
    apply_selection()
    with shown:
        run = saved_run()
        if run is None:
            return
        show_in_url(run.run_id)
        uq_job_note(run.run_id)
        writable = access.share_toggle(TOPIC, run.run_id, "uq").writable_by(access.me())
        bad_records(run)
        progress_panel(run, writable)
        if run.done() and uq_marking.blind_toggle():
            uq_marking.render(run)  # the results (every judge's verdict) stay hidden while marking
        else:
            uq_results.render(run)
        if writable:
            delete_button(run)


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
