"""The shared lab demo as two people see it: private and shared runs, links to runs, the
server's limits named when a request is over one, long jobs and disk quota per person, the model's
queue, and memory checked before a job.

Every test runs on a fresh cache (LAB_CACHE_DIR) with a limits file of small values (LAB_LIMITS_FILE),
so nothing here needs the embedded model; where a tokenizer or a forward pass is needed, a tiny random
model (tests/tiny_models.py) stands in.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.core.db import lab_db
from engine.core.errors import LabError
from engine.core.jobs import RUNNER
from engine.core.queue import FairLock, acting_as
from engine.core.runstore import RunFolder

ROOT = Path(__file__).resolve().parent.parent
UQ_PAGE = str(ROOT / "app_pages" / "2_Semantic_uncertainty.py")
ATTENTION_PAGE = str(ROOT / "app_pages" / "3_Attention_self_interpretation.py")
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdefgh"
ALICE = hashlib.sha256(ALICE_KEY.encode()).hexdigest()[:16]  # ui.identity.owner_id of the key
BOB = hashlib.sha256(BOB_KEY.encode()).hexdigest()[:16]
SMALL_LIMITS = {
    "prompt_tokens": 12,
    "attention_tokens": 8,
    "prompts_per_request": 2,
    "template_chars": 1000,
    "question_chars": 200,
    "references_per_question": 3,
    "reference_chars": 40,
    "samples": 5,
    "new_tokens": 16,
    "questions_per_run": 30,
    "upload_bytes": 3000,
    "grok_steps": 5000,  # the default run (3000 steps) is allowed
    "sweep_runs": 2,
    "jobs_per_person": 2,
    "disk_quota_bytes": 1000,
}
SECRET = "What is Alice's secret recipe?"


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A fresh cache and database, and the small limits."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    limits = tmp_path / "limits.toml"
    limits.write_text("".join(f"{name} = {value}\n" for name, value in SMALL_LIMITS.items()))
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    return tmp_path


def _grokking_tab():
    from ui.grokking_view import render

    render()


def _superweights_tab():
    import streamlit as st

    from ui.models import render_sidebar
    from ui.superweights_view import render

    st.set_page_config(page_title="Super weights", layout="wide")
    render_sidebar()
    render()


def session(script, owner_key: str, run: str | None = None, model_dir: Path | None = None) -> AppTest:
    """An AppTest session of one person (their owner key in the session, as ui.identity keeps it),
    opened at `?run=<run>` when given, with a tiny model chosen when given; run once."""
    if isinstance(script, str):
        at = AppTest.from_file(script, default_timeout=120)
    else:
        at = AppTest.from_function(script, default_timeout=120)
    at.session_state["_lab_owner_key"] = owner_key
    if model_dir is not None:
        at.session_state["lab_model_choice"] = (str(model_dir), "none")
    if run is not None:
        at.query_params["run"] = run
    at.run()
    assert not at.exception, at.exception
    return at


def page_text(at: AppTest) -> str:
    """Everything a person can read on the page: texts, messages, choices and tables."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "code", "info", "warning", "error"):
        parts += [str(element.value) for element in at.get(kind)]
    parts += [str(element.value) for element in at.get("success")]
    for box in [*at.selectbox, *at.multiselect, *at.radio]:
        parts += [str(option) for option in box.options]
    parts += [frame.value.to_string() for frame in at.dataframe]
    return "\n".join(parts)


def main_code(at: AppTest) -> list:
    """Code blocks of the page's body (the sidebar shows the person's owner key as code)."""
    return list(at.main.get("code"))


def keys(at: AppTest, kind: str = "button") -> set[str]:
    return {element.key for element in at.get(kind) if element.key}


def messages(at: AppTest, kind: str = "error") -> str:
    return "\n".join(str(element.value) for element in at.get(kind))


def hold(key: str) -> tuple[threading.Event, object]:
    """A job of the process's runner under `key` that runs until the event is set (a generation or a
    training in progress, without a model)."""
    release = threading.Event()
    job = RUNNER.start(key, lambda job: release.wait(60), label="held for a test", total=10)
    return release, job


# ------------------------------------------------------------------------------------------------
# People: private and shared runs, links


def _alices_uq_run():
    from engine.uq.config import GenerationConfig
    from engine.uq.store import open_run

    frame = pd.DataFrame({"id": ["s1"], "question": [SECRET], "references": [["apple pie"]]})
    run = open_run("tiny-model", frame, GenerationConfig(seed=7), source="alice-secret.csv", n_layers=2)
    lab_db().claim_run("uq", run.run_id, ALICE, "alice-secret.csv, K=10")
    return run


def test_uq_private_run_link_share_and_read_only(lab):
    from engine.uq.generation import job_key

    run = _alices_uq_run()
    # Bob does not see Alice's private run in his list ...
    bob = session(UQ_PAGE, BOB_KEY)
    assert run.run_id not in page_text(bob) and "secret" not in page_text(bob)
    # ... and her run's link opens a notice and nothing of it.
    bob = session(UQ_PAGE, BOB_KEY, run=run.run_id)
    assert "This run is private to its owner" in messages(bob, "warning")
    text = page_text(bob)
    assert "secret" not in text and "alice-secret" not in text and "apple pie" not in text
    assert "uq_start" not in keys(bob) and "uq_run_pick" not in keys(bob, "selectbox")
    # Alice sees it, her link points at it, and she shares it.
    alice = session(UQ_PAGE, ALICE_KEY)
    assert alice.selectbox(key="uq_run_pick").value == run.run_id
    assert alice.query_params.get("uq_run") == run.run_id
    assert "yours, private" in page_text(alice)
    alice.toggle(key=f"uq_share_{run.run_id}").set_value(True).run()
    assert not alice.exception and lab_db().access("uq", run.run_id).shared
    # While its generation runs, Alice may stop and delete it; Bob sees it read-only.
    release, job = hold(job_key(run.run_id))
    try:
        alice.run()
        assert {"uq_stop", "uq_delete"} <= keys(alice)
        bob = session(UQ_PAGE, BOB_KEY, run=run.run_id)
        assert bob.selectbox(key="uq_run_pick").value == run.run_id
        assert "read-only" in page_text(bob)
        assert not {"uq_stop", "uq_delete"} & keys(bob)
        assert f"uq_share_{run.run_id}" not in keys(bob, "toggle")
        # Made private again: the link shows Bob nothing of it.
        alice.toggle(key=f"uq_share_{run.run_id}").set_value(False).run()
        bob = session(UQ_PAGE, BOB_KEY, run=run.run_id)
        assert "private to its owner" in messages(bob, "warning") and "secret" not in page_text(bob)
    finally:
        release.set()
        job.wait(10)


def _ownership_script():
    import streamlit as st

    from engine.core.errors import LabError
    from ui import access

    outcomes = []
    for run_id, fresh in st.session_state["claims"]:
        try:
            outcomes.append(access.claim_started_run("grokking", run_id, fresh).owner)
        except LabError as err:
            outcomes.append(str(err))
    st.session_state["outcomes"] = outcomes


def _claims(owner_key: str, claims: list[tuple[str, bool]]) -> list[str]:
    at = AppTest.from_function(_ownership_script, default_timeout=30)
    at.session_state["_lab_owner_key"] = owner_key
    at.session_state["claims"] = claims
    at.run()
    assert not at.exception, at.exception
    return at.session_state["outcomes"]


def test_starting_a_run_never_takes_someone_elses(lab):
    assert _claims(ALICE_KEY, [("aaaa", True), ("aaaa", False)]) == [ALICE, ALICE]
    private, made_outside = _claims(BOB_KEY, [("aaaa", False), ("bbbb", False)])
    assert "private run with exactly these settings" in private
    assert "made outside the server" in made_outside
    lab_db().set_shared("grokking", "aaaa", ALICE, True)
    assert "shared by" in _claims(BOB_KEY, [("aaaa", False)])[0]
    # A folder that is new again (its old one was deleted outside the server) belongs to whoever starts it.
    assert _claims(BOB_KEY, [("aaaa", True)]) == [BOB]


def test_grokking_private_run_link_share_and_read_only(lab):
    from engine.grokking import runs
    from engine.grokking.config import GrokConfig

    config = GrokConfig(p=29, seed=7, steps=200)
    run = runs.open_run(config)
    lab_db().claim_run("grokking", run.run_id, ALICE, config.describe())
    bob = session(_grokking_tab, BOB_KEY)
    assert "p=29" not in page_text(bob)
    bob = session(_grokking_tab, BOB_KEY, run=run.run_id)
    assert "private to its owner" in messages(bob, "warning")
    assert "p=29" not in page_text(bob) and "grok_start" not in keys(bob)

    alice = session(_grokking_tab, ALICE_KEY, run=run.run_id)
    assert any("p=29" in c.value for c in alice.caption)  # "Showing: ..." the linked run
    alice.toggle(key=f"grok_share_{run.run_id}").set_value(True).run()
    assert lab_db().access("grokking", run.run_id).shared
    release, job = hold(f"grokking:{config.key()}")
    try:
        alice.run()
        assert "grok_stop" in keys(alice)
        alice.selectbox(key="grok_reopen").set_value(run.run_id).run()
        assert "grok_delete" in keys(alice)
        bob = session(_grokking_tab, BOB_KEY, run=run.run_id)
        assert any("p=29" in c.value for c in bob.caption)
        assert "grok_stop" not in keys(bob) and f"grok_share_{run.run_id}" not in keys(bob, "toggle")
        bob.selectbox(key="grok_reopen").set_value(run.run_id).run()
        assert "grok_delete" not in keys(bob)
    finally:
        release.set()
        job.wait(10)


# ------------------------------------------------------------------------------------------------
# Limits: each refusal names its limit


def test_uq_limits_are_named(lab):
    at = session(UQ_PAGE, ALICE_KEY)
    at.number_input(key="uq_k").set_value(8).run()
    assert "samples" in messages(at)
    assert next(b for b in at.button if b.key == "uq_start").disabled
    at.number_input(key="uq_k").set_value(5)
    at.number_input(key="uq_max_new").set_value(20).run()
    assert "new_tokens" in messages(at) and "samples" not in messages(at)
    at.number_input(key="uq_max_new").set_value(8)
    at.text_area(key="uq_prompt").set_value("Q: {question}\nA:" + " pad" * 300).run()
    assert "template_chars" in messages(at)
    at.text_area(key="uq_prompt").set_value("Q: {question}\nA:")
    at.number_input(key="uq_limit").set_value(40).run()
    assert "questions_per_run" in messages(at)

    at.number_input(key="uq_limit").set_value(10)
    at.radio(key="uq_source").set_value("Upload a file").run()
    for content, limit in (
        (b"question,answer\n" + b"Is this big?,yes\n" * 300, "upload_bytes"),
        (b"question,answer\nWhich colours?,red|green|blue|white\n", "references_per_question"),
        (b"question,answer\nWhich one?," + b"x" * 60 + b"\n", "reference_chars"),
        (b"question,answer\n" + b"Why" * 80 + b"?,because\n", "question_chars"),
    ):
        at.file_uploader(key="uq_upload").upload("q.csv", content, "text/csv").run()
        assert not at.exception
        assert limit in messages(at), (limit, messages(at))
    at.file_uploader(key="uq_upload").upload("q.csv", b"question,answer\nWhich one?,this\n", "text/csv").run()
    assert not at.error and "1 questions." in [c.value for c in at.caption]


def test_uq_prompt_over_the_token_limit_starts_nothing(lab, tiny_gemma3_dir):
    from engine.uq import store

    at = session(UQ_PAGE, ALICE_KEY, model_dir=tiny_gemma3_dir)
    at.number_input(key="uq_k").set_value(2)
    at.number_input(key="uq_max_new").set_value(4)
    at.text_area(key="uq_prompt").set_value("Answer briefly, in a few words, the question below.\nQ: {question}\nA:")
    at.run()
    at.button(key="uq_start").click().run()
    assert not at.exception
    assert "prompt_tokens" in messages(at) and "longest question" in messages(at)
    assert store.list_runs() == [] and lab_db().jobs_of(ALICE) == []


def test_a_new_uq_run_is_owned_before_its_folder_exists(lab, tiny_gemma3_dir, monkeypatch):
    """Nobody may list another person's run as no one's: the owner is recorded before the folder is made
    (the soak found a colleague's picker showing a run between its creation and its claim)."""
    from engine.uq import generation, store

    owners_when_made = []

    def open_run(*args, **kwargs):
        located = store.run_for(*args[:3], n_layers=kwargs.get("n_layers"))
        owners_when_made.append((located.exists(), lab_db().access("uq", located.run_id).owner))
        return store.open_run(*args, **kwargs)

    monkeypatch.setattr(generation, "open_run", open_run)
    monkeypatch.delenv("LAB_LIMITS_FILE")  # the server's own limits: the bundled questions fit
    at = session(UQ_PAGE, ALICE_KEY, model_dir=tiny_gemma3_dir)
    at.number_input(key="uq_k").set_value(2)
    at.number_input(key="uq_max_new").set_value(2)
    at.number_input(key="uq_limit").set_value(1)
    at.run()
    at.button(key="uq_start").click().run()
    assert not at.exception and not at.error, messages(at)
    assert owners_when_made == [(False, ALICE)]  # no folder yet, and already Alice's
    (run,) = store.list_runs()
    assert lab_db().access("uq", run.run_id).owner == ALICE
    bob = session(UQ_PAGE, BOB_KEY)
    assert run.run_id not in page_text(bob)
    job = RUNNER.running(generation.job_key(run.run_id))
    if job is not None:
        job.wait(60)  # the one-question generation ends before the cache folder goes


def test_grokking_step_and_sweep_limits_are_named(lab):
    at = session(_grokking_tab, ALICE_KEY)
    assert "sweep_runs" in messages(at)  # the default sweep: 3 seeds x 2 weight decays > 2 runs
    assert at.button(key="grok_sweep_start").disabled  # shown greyed out; nothing else on screen is hidden
    at.text_input(key="grok_sweep_seeds").set_value("0").run()
    assert "sweep_runs" not in messages(at) and not at.button(key="grok_sweep_start").disabled
    at.number_input(key="grok_steps").set_value(6000).run()
    assert "grok_steps" in messages(at) and at.button(key="grok_start").disabled


def test_over_quota_is_refused_listing_the_largest_runs(lab):
    from engine.grokking import runs
    from engine.grokking.config import GrokConfig

    db = lab_db()
    db.claim_run("uq", "0123456789ab", ALICE, "big questions")
    db.set_bytes("uq", "0123456789ab", 5000)
    db.claim_run("grokking", "ba9876543210", ALICE, "small run")
    db.set_bytes("grokking", "ba9876543210", 10)
    at = session(_grokking_tab, ALICE_KEY)
    at.number_input(key="grok_steps").set_value(100).run()
    at.button(key="grok_start").click().run()
    assert not at.exception
    error = messages(at)
    assert "disk_quota_bytes" in error and "0123456789ab (big questions)" in error and "ba9876543210" in error
    assert error.index("0123456789ab") < error.index("ba9876543210")  # largest first
    assert not runs.run_for(GrokConfig(steps=100)).exists()  # nothing was started or created
    assert RUNNER.get(f"grokking:{GrokConfig(steps=100).key()}") is None


def test_jobs_per_person_refuses_a_third_job_on_the_page(lab):
    db = lab_db()
    db.job_started("held-1", ALICE, "first job", os.getpid())
    db.job_started("held-2", ALICE, "second job", os.getpid())
    db.job_started("elsewhere", ALICE, "a job of a dead server", os.getpid() + 100_000)  # not counted
    at = session(_grokking_tab, ALICE_KEY)
    at.number_input(key="grok_steps").set_value(100).run()
    at.button(key="grok_start").click().run()
    error = messages(at)
    assert "jobs_per_person" in error and "first job" in error and "second job" in error
    db.job_ended("held-1")
    db.job_ended("held-2")


def test_start_on_ones_own_running_run_is_not_a_new_job(lab):
    """The soak test: pressing Start in a second tab for a run that is already training showed the
    jobs_per_person refusal, although nothing new would start."""
    from engine.grokking.config import GrokConfig
    from engine.grokking.runs import open_run

    run = open_run(GrokConfig(steps=4000), owner=ALICE)  # her run, started (its folder exists)
    lab_db().claim_run("grokking", run.run_id, ALICE, "her run")
    key = f"grokking:{run.run_id}"
    release, _ = hold(key)  # the run "training" (a held job under the run's job key)
    try:
        lab_db().job_started(key, ALICE, "training", os.getpid())
        lab_db().job_started("held-2", ALICE, "second job", os.getpid())  # Alice is at her limit of 2
        second = session(_grokking_tab, ALICE_KEY)
        second.number_input(key="grok_steps").set_value(4000).run()
        second.button(key="grok_start").click().run()
        assert not second.exception and "jobs_per_person" not in messages(second)
        other = GrokConfig(steps=4000, seed=7)  # a new run is still refused
        second.number_input(key="grok_seed").set_value(other.seed).run()
        assert second.number_input(key="grok_seed").value == other.seed  # not undone by the run's own link
        second.button(key="grok_start").click().run()
        assert "jobs_per_person" in messages(second)
    finally:
        release.set()
        lab_db().job_ended(key)
        lab_db().job_ended("held-2")


def test_start_job_counts_a_persons_jobs_and_records_run_sizes(lab):
    from ui import access

    db = lab_db()
    folder = RunFolder(lab / "cache" / "grokking" / "00aa")
    folder.path.mkdir(parents=True)
    (folder.path / "weights.bin").write_bytes(b"\0" * 1234)
    db.claim_run("grokking", folder.run_id, "carol", "a run")
    release = threading.Event()

    def start(key: str, writes=tuple):
        return access.start_job(
            key,
            lambda: RUNNER.start(key, lambda job: release.wait(30)),
            label=key,
            writes=writes,
            person="carol",
        )

    first = start("carol-1", writes=lambda: [("grokking", folder)])
    second = start("carol-2")
    assert sorted(k for k, _ in db.jobs_of("carol", pid=os.getpid())) == ["carol-1", "carol-2"]
    assert start("carol-1") is first  # the running job of a key is returned, not counted again
    with pytest.raises(LabError, match="jobs_per_person"):
        start("carol-3")
    release.set()
    first.wait(10)
    second.wait(10)
    deadline = time.monotonic() + 10
    while db.jobs_of("carol") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.jobs_of("carol") == []
    assert db.access("grokking", folder.run_id).bytes == 1234  # recorded against carol's quota
    assert RUNNER.get("carol-3") is None


def test_too_many_or_too_long_scan_prompts(lab, tiny_gemma3_dir):
    at = session(_superweights_tab, ALICE_KEY, model_dir=tiny_gemma3_dir)
    at.text_area(key="sw_prompts").input("one\ntwo\nthree").run()
    assert not at.exception and "prompts_per_request" in messages(at)  # under the field, before Scan
    assert at.button(key="sw_scan").disabled
    at.text_area(key="sw_prompts").input("The cat sat on the mat. " * 6).run()
    at.button(key="sw_scan").click().run()
    assert not at.exception and "prompt_tokens" in messages(at)
    assert not any("max |output|" in d.value.columns for d in at.dataframe)  # no scan ran


def test_attention_prompt_and_head_function_limits(lab, tiny_gemma3_dir):
    at = session(ATTENTION_PAGE, ALICE_KEY, model_dir=tiny_gemma3_dir)
    at.text_area(key="att_prompt").set_value("The cat sat on the mat. The dog sat on the rug.").run()
    assert not at.exception
    assert "attention_tokens" in messages(at) and not main_code(at)  # refused: no maps, no description
    at.text_area(key="att_prompt").set_value("The cat sat").run()
    assert not at.exception and "attention_tokens" not in messages(at) and main_code(at)
    # the built-in head-function set (8 texts + 2 random sequences) is over prompts_per_request = 2
    assert "prompts_per_request" in messages(at)
    assert next(b for b in at.button if b.key == "att_hf_run").disabled
    at.checkbox(key="att_hf_builtin").uncheck()
    at.number_input(key="att_hf_random").set_value(0)
    at.text_area(key="att_hf_user").set_value("Apple Inc. is a worldwide tech company. " * 4).run()
    assert "prompt_tokens" in messages(at)
    at.text_area(key="att_hf_user").set_value("the cat\nthe dog").run()
    assert not at.error and not next(b for b in at.button if b.key == "att_hf_run").disabled


# ------------------------------------------------------------------------------------------------
# Memory and the queue


def test_a_forward_that_would_not_fit_is_refused_with_the_numbers(lab, tiny_gemma3_dir, monkeypatch):
    at = session(ATTENTION_PAGE, ALICE_KEY, model_dir=tiny_gemma3_dir)
    at.text_area(key="att_prompt").set_value("The cat sat").run()
    assert main_code(at)  # loaded and computed with the real free memory
    monkeypatch.setattr("engine.core.memory.available_memory_bytes", lambda: 1000)
    at.text_area(key="att_prompt").set_value("The dog sat").run()
    assert not at.exception
    error = messages(at)
    assert "Not enough memory" in error and "attention maps of" in error and "GiB" in error


def test_memory_estimates_follow_their_formulas(tiny_gemma3):
    from ui import access

    shape = access.model_shape(tiny_gemma3)
    cfg = tiny_gemma3.text_config
    assert (shape.layers, shape.kv_heads, shape.vocab) == (
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        cfg.vocab_size,
    )
    assert access.attention_maps_bytes(shape, 10) == shape.layers * shape.heads * 100 * 4
    # head functions keep every prompt's maps: more prompts, more memory
    assert access.head_functions_bytes(tiny_gemma3, [10, 10]) > access.head_functions_bytes(tiny_gemma3, [10])
    assert access.attention_forward_bytes(tiny_gemma3, 64) > 16 * access.attention_maps_bytes(shape, 16)


def test_place_in_the_queue_words():
    from ui import access

    assert [access.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 103)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "103rd",
    ]
    assert access.busy_text(3) == "The model is busy: you are 3rd in the queue."


def test_a_waiting_job_shows_its_place_in_the_queue(lab):
    from ui import access

    lock = FairLock()
    held, release = threading.Event(), threading.Event()

    def other_person() -> None:
        with acting_as("dora"), lock:
            held.set()
            release.wait(10)

    threading.Thread(target=other_person, daemon=True).start()
    held.wait(5)

    def work(job) -> None:
        with lock:
            pass

    with acting_as("erin"):
        job = access.start_job(
            "erin-job", lambda: RUNNER.start("erin-job", work), label="erin's job", lock=lock, person="erin"
        )
    deadline = time.monotonic() + 5
    while lock.place("erin") != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert access.job_queue_note("erin-job") == " · waiting for the model: 2nd in the queue"
    release.set()
    job.wait(5)
    assert job.state == "finished"


def _queue_script():
    import threading
    import time

    import streamlit as st

    from engine.core.queue import FairLock, acting_as
    from ui import model_queue

    class Model:  # all queue_notice reads of a LoadedModel
        lock = FairLock()

    lm = Model()
    held = threading.Event()

    def other_person() -> None:
        with acting_as("someone else"), lm.lock:
            held.set()
            time.sleep(1.0)

    threading.Thread(target=other_person, daemon=True).start()
    held.wait(5)
    places, original = [], model_queue.busy_text
    model_queue.busy_text = lambda place: places.append(place) or original(place)
    try:
        with model_queue.queue_notice(lm), lm.lock:  # waits for the other person's request
            st.session_state["served"] = True
    finally:
        model_queue.busy_text = original
    st.session_state["places"] = places
    st.write("done")


def test_a_page_request_that_waits_shows_its_place():
    at = AppTest.from_function(_queue_script, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["served"] and set(at.session_state["places"]) == {2}
    assert not at.info  # the note is gone once the request was served


def test_the_server_refuses_a_long_question_instead_of_cutting_it():
    """The parser cuts only beyond MAX_QUESTION_CHARS (the CLI's cap); the server's question_chars is lower, so
    a question over the server limit reaches the check whole and is refused naming the limit (not cut)."""
    from engine.core.limits import DEFAULT_FILE, ServerLimits, _read
    from engine.uq.questions import MAX_QUESTION_CHARS, load_questions

    shipped = ServerLimits(**_read(DEFAULT_FILE))
    assert shipped.question_chars < MAX_QUESTION_CHARS
    qset = load_questions(b"question,answer\n" + b"y" * (shipped.question_chars + 1) + b"?,a\n", "q.csv")
    assert len(qset.frame["question"][0]) == shipped.question_chars + 2 and not qset.messages
    with pytest.raises(LabError, match="question_chars"):
        shipped.check("question_chars", len(qset.frame["question"][0]), "Characters of question q")


def test_an_error_in_a_fragment_rerun_is_one_line_not_a_traceback(tmp_path):
    """Fragments rerun on their own, outside the page's guarded() block (the soak test saw a traceback box from a
    polling fragment): ui.errors.lab_fragment guards each rerun."""
    script = tmp_path / "page.py"
    script.write_text(
        "import streamlit as st\n"
        "from ui.errors import lab_fragment\n"
        "from engine.core.errors import LabError\n"
        "@lab_fragment()\n"
        "def poll():\n"
        "    boom, lab = st.button('boom', key='boom'), st.button('lab', key='lab')\n"
        "    if boom:\n"
        "        raise ValueError('secret /srv/path')\n"
        "    if lab:\n"
        "        raise LabError('That run is gone.')\n"
        "poll()\n"
    )
    at = AppTest.from_file(str(script), default_timeout=30)
    at.run()
    at.button(key="boom").click().run()
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "Something went wrong (error " in shown and "/srv/path" not in shown
    at.button(key="lab").click().run()
    assert not at.exception and [e.value for e in at.error] == ["That run is gone."]


def test_the_server_config_hides_tracebacks_and_skips_the_full_gc_after_every_run():
    """The shared server's .streamlit/config.toml: no traceback reaches a browser, and no full garbage
    collection after every script or fragment run (each held the GIL for about half a second with the model
    loaded, so polling panels froze other people's pages in the soak test)."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["client"]["showErrorDetails"] == "none"
    assert config["runner"]["postScriptGC"] is False
