"""The uncertainty page's new run: the question set (the bundled one, or an upload read under this
server's limits: every problem named with its line, bad rows skipped) and the generation settings, and
the button that starts or resumes the run as the person's job (engine.uq.jobs).

Generation settings are checked in Python against the engine's bounds (engine.uq.config) and the server's
limits (engine.core.limits): a bad value is named with the reason under its field and disables only
Generate; results on screen stay.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.options import default_of, help_of
from engine.uq import jobs as uq_jobs
from engine.uq import questions
from engine.uq.config import (
    FEW_SHOT_TEMPLATE,
    MAX_NEW_TOKENS_RANGE,
    SAMPLES_RANGE,
    TEMPERATURE_RANGE,
    GenerationConfig,
)
from engine.uq.generation import default_template, row_bytes, run_for_model
from engine.uq.questions import QuestionSet
from ui import access
from ui.fields import between, number_field
from ui.limits import question_row_limits
from ui.model_queue import watch_job_queue
from ui.models import current_choice, get_model, is_loaded
from ui.uq_runs import JUST_STARTED, TOPIC, select

SEED_MAX = 2**31 - 1


DEFAULT_LIMIT = 50  # questions run by default (the first N)


def question_set() -> QuestionSet | None:
    source = st.radio("Questions", ["Bundled default set", "Upload a file"], key="uq_source", horizontal=True)
    if source == "Bundled default set":
        qset = questions.default_questions()
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
        columns = _columns_picked(questions.read_table(data, upload.name))
        # parsed once per file content, columns and limits; rows over this server's limits are skipped, named
        return questions.load_questions(data, upload.name, limits=question_row_limits(), **columns)
    except LabError as err:
        st.error(f"{err}", icon=":material/error:")
        return None


def _columns_picked(raw: pd.DataFrame) -> dict[str, str]:
    """Question / answer / id column pickers (guessed first): the columns chosen."""
    guessed = questions.guess_columns(raw)
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


def limit_field(qset: QuestionSet) -> int | None:
    """Warnings and a preview of the set, and how many of its questions to run (None: not a usable number;
    the reason is under the field)."""
    for message in qset.messages:
        st.warning(message, icon=":material/warning:")
    preview = qset.frame.head(200).assign(references=lambda f: f["references"].map(" | ".join))
    st.dataframe(preview, hide_index=True, width="stretch", height=220)
    graded = "" if qset.with_references == len(qset) else f", {qset.with_references:,} with reference answers"
    st.caption(f"{len(qset):,} questions{graded}.")
    default = max(min(len(qset), DEFAULT_LIMIT, access.limits().questions_per_run), 1)
    followquestion_set(qset, default)
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


def followquestion_set(qset: QuestionSet, default: int) -> None:
    """When another question set is chosen, "How many questions" starts again at its default (a number
    typed for the last set is not refused for this one); the first set seen keeps the value of the URL."""
    seen = (qset.source, len(qset))
    last = st.session_state.get("_uq_limit_set")
    st.session_state["_uq_limit_set"] = seen
    if last is not None and last != seen:
        st.session_state["uq_limit"] = default


def generation(qset: QuestionSet | None, limit: int | None) -> None:
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
            select(located.run_id)  # the existing run with these inputs, read-only
        raise
    watch_job_queue(started.job.key, lm.lock)
    st.session_state[JUST_STARTED] = started.run.run_id
    st.toast(started.line)
    select(started.run.run_id)


def _default(name: str):
    return default_of(GenerationConfig, name)


def _help(name: str, limit: str | None = None) -> str:
    """An option's help from the engine, with the server's limit on it when there is one."""
    return help_of(GenerationConfig, name).capitalize() + "." + (access.limit_note(limit) if limit else "")
