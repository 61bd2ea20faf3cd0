"""Four sessions at once in one process (AppTest instances in threads), as in the shared lab demo.

Two attention sessions with different prompts, a super-weight scan and an uncertainty run go at the
same time. Each must finish, see only its own inputs and results, get the same results as the same
work done alone, and the process must hold one copy of the embedded model.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from engine.core.embedded import EMBEDDED_LM
from engine.core.jobs import RUNNER
from engine.core.model import LoadedModel
from engine.uq import store
from engine.uq.generation import job_key

ROOT = Path(__file__).resolve().parent.parent
ATTENTION = str(ROOT / "app_pages" / "3_Attention_self_interpretation.py")
UQ = str(ROOT / "app_pages" / "2_Semantic_uncertainty.py")
CSV = b"question,answer\nWhat is the capital of France?,Paris\nHow many legs does a spider have?,eight|8\n"


def _superweights_tab():
    import streamlit as st

    from ui.models import render_sidebar
    from ui.superweights_view import render

    st.set_page_config(page_title="Super weights", layout="wide")
    render_sidebar()
    render()


def attention_session(prompt: str) -> tuple:
    at = AppTest.from_file(ATTENTION, default_timeout=600)
    at.run()
    at.text_area(key="att_prompt").set_value(prompt).run()
    assert not at.exception and not at.error, (list(at.exception), [e.value for e in at.error])
    at.selectbox(key="att_layer").set_value(5)
    at.selectbox(key="att_head").set_value(1)
    at.run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "attended #1" in d.value.columns)
    return at.code[0].value, table.reset_index(drop=True)


def superweights_session() -> tuple:
    at = AppTest.from_function(_superweights_tab, default_timeout=600)
    at.run()
    at.text_area(key="sw_prompts").input("Apple Inc. is a worldwide tech company.").run()
    at.button(key="sw_scan").click().run()
    assert not at.exception, at.exception
    scan = next(d.value for d in at.dataframe if "max |output|" in d.value.columns)
    return (scan.reset_index(drop=True),)


def uq_session() -> tuple:
    at = AppTest.from_file(UQ, default_timeout=600)
    at.run()
    at.radio(key="uq_source").set_value("Upload a file").run()
    at.file_uploader(key="uq_upload").upload("two.csv", CSV, "text/csv").run()
    at.number_input(key="uq_k").set_value(3)
    at.number_input(key="uq_max_new").set_value(8)
    at.button(key="uq_start").click().run()
    assert not at.exception, at.exception
    run_id = at.session_state["uq_run_id"]
    job = RUNNER.get(job_key(run_id))
    if job is not None:
        job.wait(600)
        assert job.error is None
    at.run()
    assert not at.exception, at.exception
    records = store.get_run(run_id).load_records()
    answers = tuple((r.id, r.answer, tuple(r.samples)) for r in records)
    return run_id, answers


def _app_test_on(get_option):
    return lambda name: True if name == "global.appTest" else get_option(name)


def _loaded_copies() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, LoadedModel) and o.name == EMBEDDED_LM)


def _equal(a, b) -> bool:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        return True
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_four_sessions_at_once(tmp_path, monkeypatch):
    # Runs go to a fresh cache; the converted model is linked in so nothing converts again.
    from engine.core.embedded import prepare_embedded

    (tmp_path / "models").symlink_to(prepare_embedded().parent)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    copies_before = _loaded_copies()
    jobs = {
        "attention A": (attention_session, ("Alice met Bob in Paris. Alice thanked Bob.",)),
        "attention B": (attention_session, ("def add(a, b):\n    return a + b\nadd(1, 2)",)),
        "superweights": (superweights_session, ()),
        "uncertainty": (uq_session, ()),
    }
    together: dict[str, tuple] = {}
    errors: dict[str, BaseException] = {}

    def work(name, fn, args):
        try:
            together[name] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors[name] = err

    # AppTest turns its "global.appTest" option on for each run by patching streamlit's config.get_option
    # process-wide and restoring it afterwards: with runs in threads, one run's restore switches the option
    # off under another run, which then fails to record its widgets' format functions (a KeyError inside
    # AppTest, not in the app). Holding the option on for the whole test makes every restore harmless.
    from streamlit import config

    monkeypatch.setattr(config, "get_option", _app_test_on(config.get_option))
    threads = [threading.Thread(target=work, args=(n, fn, a)) for n, (fn, a) in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    assert set(together) == set(jobs)  # all four finished

    # Each session sees its own inputs only.
    desc_a, desc_b = together["attention A"][0], together["attention B"][0]
    assert "Alice" in desc_a and "Alice" not in desc_b
    assert "add" in desc_b and "add" not in desc_a

    # One copy of the model in the process, shared by every session.
    assert _loaded_copies() - copies_before <= 1

    # The same work done alone gives the same results (the uncertainty run is reopened from its
    # cache by the same configuration, so it is compared record by record instead).
    for name in ("attention A", "attention B", "superweights"):
        fn, args = jobs[name]
        assert _equal(together[name], fn(*args)), name
    run_id, answers = together["uncertainty"]
    store.delete_run(run_id)
    alone_id, alone_answers = uq_session()
    assert alone_id == run_id and alone_answers == answers
