"""Semantic uncertainty page: the method, the question set, generation (a background job of the core
runner, resumable) and the saved runs; the chosen run's grading and results are `ui.uq_results`.

On the shared server (ui.access): a person sees their own runs, shared runs and runs made outside the
server; only the owner stops, deletes or shares a run. `?uq_run=<id>` (or the older `?run=<id>`) opens
a run (a private run of someone else opens a notice and nothing of it); the address bar always names
the run shown, so a reload or a copied link shows it again (runs are on disk).

URL: `uq_run` (the run), `uq_limit`, `uq_prompt`, `uq_k`, `uq_temp`, `uq_max_new`, `uq_seed` (generation,
bound widgets), and the results' `uq_judge`, `uq_f1`, `uq_emb`, `uq_score` (ui.uq_results). Uploads and
generation settings are checked in Python against the engine's bounds (engine.uq.config) and the server's
limits (engine.core.limits): a bad value is named with the reason under its field and disables only
Generate; results on screen stay.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.options import default_of, help_of
from engine.uq import estimators, store
from engine.uq import jobs as uq_jobs
from engine.uq import questions as qmod
from engine.uq.config import (
    FEW_SHOT_TEMPLATE,
    MAX_NEW_TOKENS_RANGE,
    SAMPLES_RANGE,
    TEMPERATURE_RANGE,
    GenerationConfig,
)
from engine.uq.generation import default_template, job_key, row_bytes, run_for_model
from engine.uq.questions import QuestionSet
from engine.uq.store import UqRun
from ui import access, uq_results
from ui.fields import between, number_field
from ui.job_panel import job_panel, started_elsewhere_note
from ui.limits import question_row_limits
from ui.model_queue import watch_job_queue
from ui.models import current_choice, get_model, is_loaded

RUN_PARAM = "uq_run"  # ?uq_run=<run id>: the run shown (never an owner key)
PICK = "uq_run_pick"  # the run picker's value
PENDING = "_uq_pending_pick"  # a run to show, applied before the picker is drawn
JUST_STARTED = "_uq_just_started"  # the run this session started last
SEED_MAX = 2**31 - 1
TOPIC = store.STORE.topic  # the runs' topic in the lab database
DEFAULT_LIMIT = 50  # questions run by default (the first N)

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
        _select(linked.run_id)
    elif RUN_PARAM not in st.query_params and PICK not in st.session_state:
        mine = uq_jobs.latest_job_of(access.me())  # a reopened page finds the person's job again
        if mine is not None:
            _select(uq_jobs.run_id_of(mine))
    _apply_selection()
    _method()
    run = _saved_run()
    if run is not None:
        show_in_url(run.run_id)
        uq_job_note(run.run_id)
        writable = access.share_toggle(TOPIC, run.run_id, "uq").writable_by(access.me())
        _bad_records(run)
        _progress_panel(run, writable)
        uq_results.render(run)
        if writable:
            _delete_button(run)
    st.header("New run: 1. Question set")
    qset = _question_set()
    limit = _limit(qset) if qset is not None else None
    st.header("2. Generation")
    _generation(qset, limit)


def follow_link() -> tuple[UqRun | None, bool]:
    """(the run the address bar names when this person may read it and it is not the one already shown,
    blocked). `?run=<id>` (older links, ui.access) is followed once and turned into `?uq_run=<id>`.
    blocked: the link names a run that is missing or private to someone else; a notice (and nothing of
    the run) is shown, with a button back to the page without the link."""
    linked, blocked = access.follow_link(TOPIC, store.get_run, "uq")
    if blocked:
        return None, True
    if linked is not None:
        access.set_link(None)
        return linked, False
    run_id = st.query_params.get(RUN_PARAM)
    if not run_id:
        return None, False
    try:
        run = store.get_run(str(run_id))
    except LabError:
        st.error(
            f"No saved run {str(run_id)[:64]!r}: the link is wrong, or the run was deleted.", icon=":material/error:"
        )
        _back_button()
        return None, True
    if not access.can_read(TOPIC, run.run_id):
        st.warning(
            f"{access.PRIVATE_NOTICE} Ask them to share it with the group if you should see it.",
            icon=":material/lock:",
        )
        _back_button()
        return None, True
    if st.session_state.get("_uq_url_run") == run.run_id:
        return None, False  # already shown (the picker may have moved on in this rerun)
    return run, False


def show_in_url(run_id: str | None) -> None:
    """Make the address bar name the run shown (or no run)."""
    st.session_state["_uq_url_run"] = run_id
    if run_id is None:
        st.query_params.pop(RUN_PARAM, None)
    elif st.query_params.get(RUN_PARAM) != run_id:
        st.query_params[RUN_PARAM] = run_id


def _back_button() -> None:
    if st.button("Back to the page", key="uq_link_back", icon=":material/arrow_back:"):
        show_in_url(None)
        st.rerun()


def _select(run_id: str) -> None:
    """Show this run in the run picker from the next time the picker is drawn (in this script run when it
    is not drawn yet, else after a rerun). The picker's own value is set, not dropped: a dropped value
    is taken back from the browser, which still holds the run it showed before."""
    st.session_state[PENDING] = run_id


def _apply_selection() -> None:
    """Before the picker is drawn: the run chosen by `_select` becomes its value."""
    run_id = st.session_state.pop(PENDING, None)
    if run_id is not None:
        st.session_state["uq_run_id"] = run_id
        st.session_state[PICK] = run_id


def uq_job_note(shown: str) -> None:
    """When the person's latest generation is another run than the one shown: which is which."""

    def show() -> None:
        _select(uq_jobs.run_id_of(mine))

    mine = uq_jobs.latest_job_of(access.me())
    if mine is not None and (mine.running or uq_jobs.run_id_of(mine) == st.session_state.get(JUST_STARTED)):
        started_elsewhere_note(shown, mine, lambda job: f"run {uq_jobs.run_id_of(job)}", show)


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
    data = upload.getvalue()
    if access.refuse_over("upload_bytes", len(data), "Bytes of this file"):
        return None
    try:
        columns = _columns_picked(qmod.read_table(data, upload.name))
        # parsed once per file content, columns and limits; rows over this server's limits are skipped, named
        return qmod.load_questions(data, upload.name, limits=question_row_limits(), **columns)
    except LabError as err:
        st.error(f"{err}", icon=":material/error:")
        return None


def _columns_picked(raw: pd.DataFrame) -> dict[str, str]:
    """Question / answer / id column pickers (guessed first): the columns chosen."""
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
    return {"question_col": qcol, "answer_col": acol if acol != none else "", "id_col": icol if icol != none else ""}


def _limit(qset: QuestionSet) -> int | None:
    """Warnings and a preview of the set, and how many of its questions to run (None: not a usable number;
    the reason is under the field)."""
    for message in qset.messages:
        st.warning(message, icon=":material/warning:")
    preview = qset.frame.head(200).assign(references=lambda f: f["references"].map(" | ".join))
    st.dataframe(preview, hide_index=True, width="stretch", height=220)
    graded = "" if qset.with_references == len(qset) else f", {qset.with_references:,} with reference answers"
    st.caption(f"{len(qset):,} questions{graded}.")
    default = max(min(len(qset), DEFAULT_LIMIT, access.limits().questions_per_run), 1)
    follow_question_set(qset, default)
    n, ok = number_field(
        st,
        "How many questions to run (the first N)",
        default,
        "uq_limit",
        between(
            "Questions to run",
            1,
            len(qset),
            integer=True,
            limit="questions_per_run",
            note=f" (this set has {len(qset):,} questions)",
        ),
        help="Questions of one run." + access.limit_note("questions_per_run", "questions"),
    )
    return int(n) if ok else None


def follow_question_set(qset: QuestionSet, default: int) -> None:
    """When another question set is chosen, "How many questions" starts again at its default (a number
    typed for the last set is not refused for this one); the first set seen keeps the value of the URL."""
    seen = (qset.source, len(qset))
    last = st.session_state.get("_uq_limit_set")
    st.session_state["_uq_limit_set"] = seen
    if last is not None and last != seen:
        st.session_state["uq_limit"] = default


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
        help=access.limit_note("template_chars", "characters").strip(),
        bind="query-params",
    )
    over = access.refuse_over("template_chars", len(template), "Characters of the prompt template")
    if "{question}" not in template:
        st.error("The prompt template must contain {question} where the question goes.", icon=":material/block:")
        over = True
    c1, c2, c3, c4 = st.columns(4)
    k, k_ok = number_field(
        c1,
        "Samples K",
        _default("samples"),
        "uq_k",
        between("Samples K", *SAMPLES_RANGE, integer=True, limit="samples"),
        help=_help("samples", "samples"),
    )
    temperature, t_ok = number_field(
        c2,
        "Temperature",
        _default("temperature"),
        "uq_temp",
        between("Temperature", *TEMPERATURE_RANGE),
        step=0.1,
        help=_help("temperature"),
    )
    max_new, m_ok = number_field(
        c3,
        "Max new tokens",
        _default("max_new_tokens"),
        "uq_max_new",
        between("Max new tokens", *MAX_NEW_TOKENS_RANGE, integer=True, limit="new_tokens"),
        help=_help("max_new_tokens", "new_tokens"),
    )
    seed, s_ok = number_field(
        c4, "Seed", _default("seed"), "uq_seed", between("Seed", 0, SEED_MAX, integer=True), help=_help("seed")
    )
    over |= not (k_ok and t_ok and m_ok and s_ok)
    start = st.button(
        "Generate (or resume)",
        key="uq_start",
        type="primary",
        disabled=qset is None or limit is None or over,
        icon=":material/play_arrow:",
    )
    if not start or qset is None or limit is None or over:
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
        config.validate()
        _check_request(lm, qset, limit, config)
        _start(lm, qset, limit, config)
    except LabError as err:
        st.error(str(err), icon=":material/error:")


def _check_request(lm: LoadedModel, qset: QuestionSet, limit: int, config: GenerationConfig) -> None:
    """LabError naming the limit when the prompt of the longest question is over prompt_tokens, or with
    the numbers when one question's K + 1 decoding rows would not fit in memory (engine.uq.generation.row_bytes:
    KV cache 2 x layers x kv_heads x head_dim x (prompt + new tokens) x bytes, and [vocab] float32 logits)."""
    questions = qset.frame["question"].head(limit)
    longest = max(questions, key=len, default="")
    tokens = len(lm.prompt_inputs(config.prompt_template.replace("{question}", longest))["input_ids"][0])
    access.limits().check("prompt_tokens", tokens, "Tokens of the prompt (the template with the longest question)")
    rows = config.samples + 1  # the smallest batch the engine decodes: one question's K + 1 rows
    need = rows * row_bytes(lm, tokens, config)
    access.ensure_memory(lm, need, f"generating {rows} answers of up to {config.max_new_tokens} tokens")


def _start(lm: LoadedModel, qset: QuestionSet, limit: int, config: GenerationConfig) -> None:
    """Start (or resume) the run of these inputs for this person (engine.uq.jobs) and show it."""
    try:
        started = uq_jobs.start(lm, access.me(), qset.frame, config, source=qset.source or "default", limit=limit)
    except LabError:
        located = run_for_model(lm, qset.frame, config)
        if located.exists() and access.can_read(TOPIC, located.run_id):
            _select(located.run_id)  # the existing run with these inputs, read-only
        raise
    watch_job_queue(started.job.key, lm.lock)
    st.session_state[JUST_STARTED] = started.run.run_id
    st.toast(started.line)
    _select(started.run.run_id)
    st.rerun()


def _default(name: str):
    return default_of(GenerationConfig, name)


def _help(name: str, limit: str | None = None) -> str:
    """An option's help from the engine, with the server's limit on it when there is one."""
    return help_of(GenerationConfig, name).capitalize() + "." + (access.limit_note(limit) if limit else "")


# ------------------------------------------------------------------------------------------------
# Saved runs


def _saved_run() -> UqRun | None:
    """The run picker over the saved runs (None when there is none); strays can be deleted."""
    _strays()
    saved = {run.run_id: run for run in access.readable(TOPIC, store.list_runs())}
    if not saved:
        st.info("No saved run yet.")
        return None
    ids = list(saved)
    labels = {
        run_id: run_label(run, access.owner_label(access.access_of(TOPIC, run_id))) for run_id, run in saved.items()
    }
    wanted = st.session_state.get("uq_run_id")
    if st.session_state.get(PICK) not in ids:
        st.session_state.pop(PICK, None)
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(wanted) if wanted in ids else 0,
        key=PICK,
        format_func=labels.get,
        help="Runs are saved question by question in cache/uq/ and resume. You see your own runs, runs shared "
        "with the group and runs made outside the server.",
    )
    st.session_state["uq_run_id"] = run_id
    return saved[run_id]


def run_label(run: UqRun, owner: str) -> str:
    """The picker's line for a run: what it is and whose, never its progress (a label does not refresh
    while a run generates; the progress is the status line under the picker, redrawn from the run)."""
    cfg = run.config
    generation = cfg.get("generation") or {}
    return (
        f"{run.run_id} · {cfg.get('model')} · {cfg.get('source')} · {cfg.get('n_questions')} questions · "
        f"K={generation.get('samples')} · {cfg.get('created')} · {owner}"
    )


def _bad_records(run: UqRun) -> None:
    """Records that cannot be read (a crash, a full disk): named, and generated again on resume."""
    bad = run.bad_records()
    if bad:
        listed = "; ".join(f"question {b.index + 1} ({b.reason})" for b in bad[:5]) + (" …" if len(bad) > 5 else "")
        st.warning(
            f"{len(bad)} saved record(s) cannot be read and will be generated again when the run resumes "
            f"(press Generate): {listed}.",
            icon=":material/build:",
        )


def _strays() -> None:
    strays = access.deletable_strays(TOPIC, store.stray_runs())
    if not strays:
        return
    with st.expander(f"{len(strays)} saved folder(s) in cache/uq/ from an older version", icon=":material/history:"):
        st.caption("They cannot be opened: " + ", ".join(s.run_id for s in strays))
        if st.button("Delete them", key="uq_delete_strays", icon=":material/delete:"):
            for stray in strays:
                try:
                    store.delete_run(stray)
                    access.forget_deleted(TOPIC, stray.run_id)
                except LabError as err:
                    st.error(str(err))
            st.rerun()


def _progress_panel(run: UqRun, writable: bool) -> None:
    """The run's status line and, while it generates in this process, its job panel (progress, ETA once
    measured, the place in the model's queue, Stop for the owner)."""
    job_panel(
        job_key(run.run_id),
        what="Generation",
        unit="questions",
        can_stop=writable,
        widget_key="uq",
        status=lambda _job: uq_jobs.status(run).line,
    )


def _delete_button(run: UqRun) -> None:
    _, right = st.columns([4, 1])
    if right.button("Delete this run", key="uq_delete", icon=":material/delete:"):
        try:
            store.delete_run(run.run_id)
            access.forget_deleted(TOPIC, run.run_id)
            show_in_url(None)
            st.session_state.pop("uq_run_id", None)
            st.session_state.pop(PICK, None)
            st.rerun()
        except LabError as err:
            st.error(str(err))
