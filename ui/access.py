"""What the shared lab server lets one person do, in one place for every view: whose runs they see and
change (engine.core.db), links to runs, the server's limits (engine.core.limits), their place in a
model's queue (engine.core.queue), their long jobs and disk quota, and the memory a job needs before
it starts (engine.core.memory).

Rules (issue 12): a person owns the runs they start; they see, stop, delete and mark their own runs,
shared runs read-only, and runs made outside the server (no owner) read-only. A link `?run=<id>` opens
a run; a private run of someone else opens a notice and nothing of it. A request over a server limit
is refused with a message naming the limit, never clamped in silence. The command line uses none of
this: it runs on a person's own machine and is not capped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from engine.core.db import RunAccess, lab_db
from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.limits import ServerLimits, limits_file, server_limits
from engine.core.memory import ensure_fits
from engine.core.model import LoadedModel
from engine.core.queue import FairLock, current_owner
from engine.core.runstore import RunFolder
from ui.identity import owner_id

LINK_PARAM = "run"  # ?run=<run id>: a link to a run (never an owner key)
PRIVATE_NOTICE = "This run is private to its owner."
LARGEST_LISTED = 5  # runs named when a person is over their disk quota
QUEUE_POLL_SECONDS = 0.3  # how often a waiting request's place in the queue is redrawn
R = TypeVar("R", bound=RunFolder)
_JOB_QUEUES: dict[str, tuple[FairLock, str]] = {}  # job key -> (the model's lock it waits on, its person)

# ------------------------------------------------------------------------------------------------
# People and runs


def me() -> str:
    """The person using this session (their owner id, engine.core.db)."""
    return owner_id()


def access_of(topic: str, run_id: str) -> RunAccess:
    return lab_db().access(topic, run_id)


def can_read(topic: str, run_id: str) -> bool:
    return access_of(topic, run_id).readable_by(me())


def can_write(topic: str, run_id: str) -> bool:
    """Whether this person may stop, delete, resume, share or mark the run (they own it)."""
    return access_of(topic, run_id).writable_by(me())


def readable(topic: str, runs: Sequence[R]) -> list[R]:
    """The runs this person may see: their own, shared ones and those made outside the server."""
    person = me()
    db = lab_db()
    return [run for run in runs if db.access(topic, run.run_id).readable_by(person)]


def deletable_strays(topic: str, strays: Sequence[R]) -> list[R]:
    """Unreadable folders this person may delete: theirs, or no one's (never another person's half-made run)."""
    person = me()
    db = lab_db()
    return [s for s in strays if db.access(topic, s.run_id).owner in (None, person)]


def owner_label(access: RunAccess) -> str:
    """Whose a run is, as this person sees it: "yours, private", "shared by Ada", "made outside the server"."""
    if access.owner is None:
        return "made outside the server (read-only)"
    if access.owner == me():
        return "yours, shared with the group" if access.shared else "yours, private"
    name = lab_db().name_of(access.owner) or f"person {access.owner[:8]}"
    return f"shared by {name} (read-only)"


def share_toggle(topic: str, run_id: str, key_prefix: str) -> RunAccess:
    """The owner's "Share with the group" toggle (a caption saying whose the run is for everyone else);
    the run's access after the change."""
    db, person = lab_db(), me()
    access = db.access(topic, run_id)
    if not access.writable_by(person):
        st.caption(f"This run is {owner_label(access)}: you can look, not change it.")
        return access
    shared = st.toggle(
        "Share with the group",
        value=access.shared,
        key=f"{key_prefix}_share_{run_id}",
        help="Shared runs are read-only for everyone else (they cannot stop, delete or mark them); "
        "private runs are seen by you only. A link to a private run shows others nothing of it.",
    )
    if shared != access.shared:
        db.set_shared(topic, run_id, person, shared)
        access = db.access(topic, run_id)
    return access


def claim_started_run(topic: str, run_id: str, fresh: bool, label: str = "") -> RunAccess:
    """Make the person who starts a run its owner, or refuse.

    `fresh`: the run's folder did not exist before this start; it becomes theirs (a row left by a folder
    deleted outside the server is dropped first). An existing run must be theirs already: run ids hash
    their inputs, so someone else's run with exactly these inputs is refused with a reason, never taken."""
    db, person = lab_db(), me()
    if fresh:
        db.forget_run(topic, run_id)
        return db.claim_run(topic, run_id, person, label)
    access = db.access(topic, run_id)
    if access.writable_by(person):
        return access
    if not access.readable_by(person):
        raise LabError(
            "Someone else already has a private run with exactly these settings (a run's id is a hash of its "
            "inputs). Change the seed to start your own."
        )
    raise LabError(
        f"A run with exactly these settings already exists and is {owner_label(access)}: open it from the "
        "list to look at it, or change the seed to start your own."
    )


def forget_deleted(topic: str, run_id: str) -> None:
    """Drop a deleted run's ownership, marks and verdicts from the database."""
    lab_db().forget_run(topic, run_id)


# ------------------------------------------------------------------------------------------------
# Links


def linked_run_id() -> str | None:
    """The run id of this page's link (`?run=<id>`), or None."""
    value = st.query_params.get(LINK_PARAM)
    return str(value) if value else None


_SET_HERE = "_lab_link_set_here"  # the run id this session put in its own address bar


def set_link(run_id: str | None) -> None:
    """Make the address bar a link to the run shown (or to no run). A link the session sets itself is not
    "followed" on the next run (following one fills the form with the run's settings, which would undo
    what the person typed since)."""
    if run_id is None:
        st.query_params.pop(LINK_PARAM, None)
    elif st.query_params.get(LINK_PARAM) != run_id:
        st.query_params[LINK_PARAM] = run_id
    st.session_state[_SET_HERE] = run_id


def follow_link(topic: str, get: Callable[[str], R], key_prefix: str) -> tuple[R | None, bool]:
    """(the linked run when this person may read it and has not followed this link yet, blocked).

    blocked: the link names a run that is missing or private to someone else; a notice (and nothing of
    the run) is shown, with a button back to the page without the link, and the view shows no more."""
    run_id = linked_run_id()
    if run_id is None:
        return None, False
    try:
        run = get(run_id)
    except LabError:
        st.error(f"No saved run {run_id[:64]!r}: the link is wrong, or the run was deleted.", icon=":material/error:")
        _back_button(key_prefix)
        return None, True
    if not access_of(topic, run.run_id).readable_by(me()):
        st.warning(
            f"{PRIVATE_NOTICE} Ask them to share it with the group if you should see it.", icon=":material/lock:"
        )
        _back_button(key_prefix)
        return None, True
    seen_key = f"_{key_prefix}_link_followed"
    if st.session_state.get(seen_key) == run_id or st.session_state.get(_SET_HERE) == run_id:
        return None, False
    st.session_state[seen_key] = run_id
    return run, False


def _back_button(key_prefix: str) -> None:
    if st.button("Back to the page", key=f"{key_prefix}_link_back", icon=":material/arrow_back:"):
        set_link(None)
        st.rerun()


# ------------------------------------------------------------------------------------------------
# Server limits


def limits() -> ServerLimits:
    return server_limits()


def over_limit(name: str, value: float, what: str | None = None) -> str | None:
    """The message naming limit `name` when `value` exceeds it, else None."""
    try:
        limits().check(name, value, what)
    except LabError as err:
        return str(err)
    return None


def refuse_over(name: str, value: float, what: str | None = None) -> bool:
    """Show the message naming limit `name` (where this is called: next to its field or button) when
    `value` is over it; True when it was."""
    message = over_limit(name, value, what)
    if message:
        st.error(message, icon=":material/block:")
    return message is not None


def limit_note(name: str, unit: str = "") -> str:
    """The sentence " This server allows at most N <unit> (name)." for a help text (N from the limits file)."""
    return f" This server allows at most {getattr(limits(), name):,}{f' {unit}' if unit else ''} ({name})."


def token_count(lm: LoadedModel, text: str) -> int:
    """Tokens of `text` as the model reads it (with the tokenizer's special tokens, e.g. BOS)."""
    ids = lm.tokenizer(str(text), add_special_tokens=True)["input_ids"]
    return len(ids[0]) if ids and isinstance(ids[0], list) else len(ids)


def check_prompt_count(n: int) -> None:
    """LabError naming prompts_per_request when a request has more prompts."""
    limits().check("prompts_per_request", n, "Prompts in this request")


def prompt_lengths(lm: LoadedModel, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt as the model reads it."""
    return [token_count(lm, prompt) for prompt in prompts]


def check_prompt_tokens(lengths: Sequence[int], names: Sequence[str]) -> None:
    """LabError naming prompt_tokens for the first prompt longer than it."""
    limit = limits()
    for name, n in zip(names, lengths):
        limit.check("prompt_tokens", n, f"Tokens of {name}")


def check_question_set(frame: Any) -> None:
    """LabError naming the limit when an uploaded question set has a question longer than question_chars,
    more references than references_per_question, or a reference longer than reference_chars (frame:
    columns id, question, references as engine.uq.questions makes them)."""
    limit = limits()
    for qid, question, references in zip(frame["id"], frame["question"], frame["references"]):
        limit.check("question_chars", len(question), f"Characters of question {qid}")
        limit.check("references_per_question", len(references), f"References of question {qid}")
        for reference in references:
            limit.check("reference_chars", len(reference), f"Characters of a reference of question {qid}")


# ------------------------------------------------------------------------------------------------
# Long jobs and disk


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    for file in Path(path).rglob("*"):
        with contextlib.suppress(OSError):
            if file.is_file():
                total += file.stat().st_size
    return total


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_quota(person: str | None = None) -> None:
    """LabError when the person's runs take more than their disk quota, listing their largest runs
    (nothing is deleted for them: they choose)."""
    person = person or me()
    db = lab_db()
    quota = db.quota_of(person, limits().disk_quota_bytes)
    used = db.usage(person)
    if used <= quota:
        return
    largest = "; ".join(
        f"{topic} run {run_id}{f' ({label})' if label else ''}: {_size(nbytes)}"
        for topic, run_id, label, nbytes in db.runs_of(person)[:LARGEST_LISTED]
    )
    raise LabError(
        f"Your runs take {_size(used)}, over your disk quota of {_size(quota)} on this server "
        f"(disk_quota_bytes in {limits_file().name}): delete some to start a new one. Your largest runs: {largest}."
    )


def check_jobs(person: str | None = None) -> None:
    """LabError when the person already runs jobs_per_person long jobs in this server process."""
    person = person or me()
    running = lab_db().jobs_of(person, pid=os.getpid())
    limit = limits().jobs_per_person
    if len(running) >= limit:
        names = ", ".join(label or key for key, label in running)
        raise LabError(
            f"You already run {len(running)} long job(s) ({names}); this server allows {limit} at once per "
            f"person (jobs_per_person in {limits_file().name}). Wait for one to end, or stop one."
        )


def is_my_job(key: str) -> bool:
    """Whether the running job of `key` was started by this person (in this server process)."""
    return any(job_key == key for job_key, _ in lab_db().jobs_of(me(), pid=os.getpid()))


def start_job(
    key: str,
    start: Callable[[], Job],
    *,
    label: str,
    lock: FairLock | None = None,
    writes: Callable[[], Sequence[tuple[str, RunFolder]]] = tuple,
    person: str | None = None,
) -> Job:
    """Start a long job for this person: `start()` starts it on engine.core.jobs.RUNNER under `key`
    (the running job of `key` is returned instead, uncounted, when there is one).

    Refused (LabError) when they already run jobs_per_person jobs. While it runs, the database lists it
    as theirs (engine.core.db jobs table, with this process's pid); when it ends, the size of every
    (topic, run folder) that `writes()` returns is recorded against their disk quota. `lock`: the
    model's queue the job waits in (`job_queue_note` tells its place)."""
    running = RUNNER.running(key)
    if running is not None:
        return running
    person = person or me()
    check_jobs(person)
    db = lab_db()
    db.job_started(key, person, label, os.getpid())
    if lock is not None:
        _JOB_QUEUES[key] = (lock, current_owner())

    def ended() -> None:
        db.job_ended(key)
        _JOB_QUEUES.pop(key, None)
        for topic, folder in writes():
            if folder.path.is_dir():
                db.set_bytes(topic, folder.run_id, folder_bytes(folder.path))

    try:
        job = start()
    except BaseException:
        ended()
        raise

    def watch() -> None:
        job.wait()
        ended()

    threading.Thread(target=watch, name=f"lab-job-end-{key}", daemon=True).start()
    return job


# ------------------------------------------------------------------------------------------------
# The model's queue


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def busy_text(place: int) -> str:
    return f"The model is busy: you are {ordinal(place)} in the queue."


def job_queue_note(key: str) -> str:
    """The suffix " · waiting for the model: 3rd in the queue" while job `key` waits for its model, else ""."""
    entry = _JOB_QUEUES.get(key)
    if entry is None:
        return ""
    lock, person = entry
    place = lock.place(person)
    return f" · waiting for the model: {ordinal(place)} in the queue" if place and place > 1 else ""


@contextlib.contextmanager
def queue_notice(lm: LoadedModel) -> Iterator[None]:
    """Around a page computation that uses the model: while it waits for someone else's use of the model,
    a note above it says the person's place in the queue (redrawn as the queue moves)."""
    lock, person = lm.lock, current_owner()
    if not lock.queue():
        yield
        return
    slot = st.empty()
    slot.info(busy_text(len(lock.queue()) + 1), icon=":material/hourglass_top:")
    done = threading.Event()
    try:
        from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

        ctx = get_script_run_ctx()
    except ImportError:  # pragma: no cover - streamlit moved it
        ctx = None

    def watch() -> None:
        shown = None
        while not done.wait(QUEUE_POLL_SECONDS):
            place = lock.place(person)
            if place != shown and place is not None and place > 1:
                with contextlib.suppress(Exception):  # the page may have moved on: a stale note is harmless
                    slot.info(busy_text(place), icon=":material/hourglass_top:")
                shown = place

    watcher = threading.Thread(target=watch, name="lab-queue-note", daemon=True)
    if ctx is not None:
        add_script_run_ctx(watcher, ctx)
        watcher.start()
    try:
        yield
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        slot.empty()


# ------------------------------------------------------------------------------------------------
# Memory a job needs, estimated before it starts (refused with the numbers by ensure_fits)

ACTIVATION_COPIES = 4  # [rows, T, D] tensors alive at once in a layer: residual, norm, attention out, q/k/v
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes the estimates need, from the model's text config."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    value_bytes: int  # bytes of one activation in the model's dtype


def model_shape(lm: LoadedModel) -> ModelShape:
    """The model's sizes (GPT-2's n_layer / n_head / n_embd / n_inner names too; kv_heads = heads without GQA)."""
    cfg = lm.text_config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    return ModelShape(
        layers=int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 1)),
        heads=heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or hidden // max(heads, 1)),
        hidden=hidden,
        intermediate=int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden),
        vocab=int(getattr(cfg, "vocab_size", 0)),
        value_bytes=DTYPE_BYTES.get(lm.dtype, 4),
    )


def activation_bytes(shape: ModelShape, tokens: int, rows: int = 1) -> int:
    """One forward pass over [rows, T] tokens: ACTIVATION_COPIES x [rows, T, D] plus the MLP's 2 x [rows, T, I]
    (gate and up projections) in the model's dtype, the [rows, H, T, T] attention scores of one layer in
    float32, and the float32 logits [rows, V] of the last position."""
    per_token = ACTIVATION_COPIES * shape.hidden + 2 * shape.intermediate
    scores = shape.heads * tokens * tokens * 4
    return rows * (tokens * per_token * shape.value_bytes + scores + shape.vocab * 4)


def attention_maps_bytes(shape: ModelShape, tokens: int) -> int:
    """All attention maps of one prompt kept as float32 numpy: [L, H, T, T] x 4 bytes."""
    return shape.layers * shape.heads * tokens * tokens * 4


def attention_forward_bytes(lm: LoadedModel, tokens: int) -> int:
    """An eager forward that returns every map (engine.attention.maps.forward_attentions): the model's
    [L, H, T, T] maps in its dtype, their stacked copy and the float32 result, plus the forward's
    activations."""
    shape = model_shape(lm)
    maps_in_dtype = shape.layers * shape.heads * tokens * tokens * shape.value_bytes
    return 2 * maps_in_dtype + attention_maps_bytes(shape, tokens) + activation_bytes(shape, tokens)


def head_functions_bytes(lm: LoadedModel, tokens: Sequence[int]) -> int:
    """Head functions over N prompts of T_1..T_N tokens: every prompt's [L, H, T_i, T_i] float32 maps are
    kept until the table is built, on top of one forward at the longest prompt."""
    shape = model_shape(lm)
    kept = sum(attention_maps_bytes(shape, t) for t in tokens)
    return kept + (attention_forward_bytes(lm, max(tokens)) if tokens else 0)


def scan_bytes(lm: LoadedModel, tokens: int) -> int:
    """A super-weight scan at its longest prompt of T tokens: one prompt at a time, the hooks keep maxima only."""
    return activation_bytes(model_shape(lm), tokens)


def ensure_memory(lm: LoadedModel, need_bytes: float, what: str) -> None:
    """LabError with the numbers when `need_bytes` would not fit in the memory free where the model runs."""
    ensure_fits(need_bytes, lm.device, what)
