"""The attention page's "Whole model" view (ui.attention_study) on a tiny random Gemma 3 (2 layers x 4
heads) and a tiny study: the atlas and the verdict of a report of the loaded model, with the reduced label;
"no study for this model yet" with the button when none exists; a run started from the page shows its
progress, is found again by a reload, and then shows the atlas; a request over the server's limit is refused
with the limit named; a click on an atlas cell selects that head."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.attention import jobs as study_jobs
from engine.attention import study
from engine.attention.study_config import StudyConfig
from engine.attention.study_result import _clean
from engine.core.jobs import RUNNER
from ui import attention_study
from ui.attention_atlas import NOT_STUDIED, NOT_STUDIED_COLOUR, atlas_chart, atlas_frame
from ui.attention_charts import HEAD_PICK

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "3_Attention_self_interpretation.py")
OWNER_KEY = "atlas-tester-key-0123456789"
TINY = dict(max_tokens=10, max_new_tokens=2)  # StudyConfig settings the page does not show, made tiny
FIELDS = dict(att_study_heads_n="2", att_study_train="3", att_study_heldout="4", att_study_random="1")
FIELDS |= dict(att_study_queries="2")  # the tiny study the page runs (2 sampled heads of 8)


@pytest.fixture
def lab(monkeypatch, tmp_path):
    """A fresh cache (the database and the study's cache) and an empty report folder for each test."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(attention_study, "REPORT_DIR", tmp_path / "report")
    monkeypatch.setattr(attention_study, "FIXED", TINY)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_result(tiny_gemma3_dir, tmp_path_factory):
    """A finished tiny study of 3 heads of the tiny model (its own cache folder)."""
    import os

    from engine.core.loading import load_model

    old = os.environ.get("LAB_CACHE_DIR")
    os.environ["LAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("study_cache"))
    try:
        lm = load_model(str(tiny_gemma3_dir))
        config = StudyConfig(
            model=lm.name, heads=("0.1", "1.0", "1.2"), train=3, heldout=4, random=1, queries=2, n_boot=200, **TINY
        )
        return study.run_study(lm, config)
    finally:
        if old is None:
            os.environ.pop("LAB_CACHE_DIR")
        else:
            os.environ["LAB_CACHE_DIR"] = old


def write_report(folder: Path, result, reduced: bool) -> None:
    """atlas.json as engine.attention.study_report.write_report writes it (the file the view reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _clean({**result.to_json(), "reduced": reduced, "command": "python -m engine attention-study --tiny"})
    (folder / "atlas.json").write_text(json.dumps(data), encoding="utf-8")


def open_page(model_dir, **params: str) -> AppTest:
    """A fresh session (a reload, a new tab) of the same person at a URL with `params`, on the Whole model tab."""
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    at.session_state["_lab_owner_key"] = OWNER_KEY
    for name, value in {"att_prompt": "The cat sat on the mat. The cat", **params}.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_a_report_of_the_loaded_model_shows_the_atlas_verdict_and_the_reduced_label(lab, tiny_gemma3_dir, tiny_result):
    write_report(lab / "report", tiny_result, reduced=True)
    at = open_page(tiny_gemma3_dir)
    assert not at.error
    assert any(
        w.startswith("**REDUCED RUN, not the study:**") and "3 chosen heads of 8" in w for w in texts(at.warning)
    )
    assert any(m == f"**Verdict.** {tiny_result.verdict}" for m in texts(at.markdown))
    assert any("the committed report" in c and "--tiny" in c for c in texts(at.caption))
    assert any("3 of 8 heads studied" in c for c in texts(at.caption))
    heads = next(d.value for d in at.dataframe if "detector title" in d.value.columns)  # columns in words
    assert heads["layer.head"].tolist() == ["0.1", "1.0", "1.2"]
    contrasts = next(d.value for d in at.dataframe if "p (Holm)" in d.value.columns)
    assert contrasts["contrast"].iloc[0] == "top-1: self-text - better external"
    assert not any("_" in c for c in contrasts.columns) and "None" not in contrasts.to_string()
    assert not any("No study for this model yet" in i for i in texts(at.info))
    # the same report as a full run: no label
    write_report(lab / "report", tiny_result, reduced=False)
    at = open_page(tiny_gemma3_dir)
    assert not any("REDUCED RUN" in w for w in texts(at.warning))


def test_a_report_of_another_model_is_not_shown(lab, tiny_gemma3_dir, tiny_result):
    other = dict(tiny_result.__dict__, model="someone/else")
    write_report(lab / "report", type(tiny_result)(**other), reduced=True)
    at = open_page(tiny_gemma3_dir)
    assert any(i.startswith("No study for this model yet") for i in texts(at.info))
    button = at.button(key="att_study_run")
    assert button.label == "Run the study" and not button.disabled
    assert not any("REDUCED RUN" in w for w in texts(at.warning))


def test_a_run_from_the_page_shows_progress_is_found_after_a_reload_then_shows_the_atlas(
    lab, tiny_gemma3_dir, monkeypatch
):
    release = threading.Event()
    real = study_jobs.run_study

    def held(lm, config, progress, stop, elsewhere=None):  # the real study, once the test has seen it running
        progress(0, 1, "waiting for the test")
        release.wait(120)
        return real(lm, config, progress, stop, elsewhere=elsewhere)

    monkeypatch.setattr(study_jobs, "run_study", held)
    at = open_page(tiny_gemma3_dir, **FIELDS)
    assert any(i.startswith("No study for this model yet") for i in texts(at.info))
    at.button(key="att_study_run").click().run()
    assert not at.exception and not at.error
    job = study_jobs.latest_job_of(attention_study_owner(), ("" + str(tiny_gemma3_dir), "none"))
    try:
        assert job is not None and job.running
        bars = at.get("progress")
        assert bars and "The study:" in bars[0].proto.text and "waiting for the test" in bars[0].proto.text
        assert at.button(key="att_study_run").disabled  # one run at a time
        assert any("Your study of" in c and "2 sampled heads" in c for c in texts(at.caption))
        # a reload (a new session of the same person, the same URL) finds the running job again
        again = open_page(tiny_gemma3_dir, **FIELDS)
        assert again.get("progress") and "The study:" in again.get("progress")[0].proto.text
        assert again.button(key="att_study_stop") is not None
    finally:
        release.set()
    assert job.wait(300) and job.state == "finished", job.error
    again.run()
    assert not again.exception and not again.error
    assert any(m.startswith("**Verdict.**") for m in texts(again.markdown))
    assert any("REDUCED RUN" in w for w in texts(again.warning))  # a page run is smaller than the study
    assert any("finished run of the settings below" in c for c in texts(again.caption))
    assert any("2 of 8 heads studied" in c for c in texts(again.caption))
    assert again.get("vega_lite_chart")


def attention_study_owner() -> str:
    import hashlib

    return hashlib.sha256(OWNER_KEY.encode()).hexdigest()[:16]  # ui.identity.owner_id of the key


def test_a_study_over_the_server_limit_is_refused_naming_it(lab, tiny_gemma3_dir, monkeypatch):
    limits = lab / "limits.toml"
    limits.write_text("study_heads = 2\nstudy_prompts = 6\n", encoding="utf-8")
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    at = open_page(tiny_gemma3_dir, **{**FIELDS, "att_study_heads_n": "3"})
    assert any("study_heads" in e and "3" in e for e in texts(at.error))
    assert at.button(key="att_study_run").disabled
    at = open_page(tiny_gemma3_dir, **FIELDS)  # 2 heads fit; 3 + 4 prompts do not
    assert any("study_prompts" in e and "7" in e for e in texts(at.error))
    assert at.button(key="att_study_run").disabled
    assert not RUNNER.jobs() or all(not j.key.startswith(study_jobs.KEY_PREFIX) or not j.running for j in RUNNER.jobs())


def _click_script() -> None:
    """A page run in which the atlas's chart state holds a click on cell (layer 1, head 2): the atlas's
    on_select handler runs, then the page's pickers are drawn (as Streamlit orders a click's rerun)."""
    import streamlit as st

    from ui.attention_charts import HEAD_PICK
    from ui.attention_common import HEAD_TAB, Q
    from ui.attention_study import ATLAS_KEY, atlas_click
    from ui.attention_view import _pick_head

    shape = st.session_state["shape"]
    st.session_state[ATLAS_KEY] = {"selection": {HEAD_PICK: [{"layer": 1, "head": 2}]}}
    atlas_click(shape)
    _pick_head(shape)
    st.tabs([HEAD_TAB, "Whole model"], key="att_tab", bind=Q, default="Whole model")


def test_a_click_on_an_atlas_cell_selects_that_head(lab, tiny_gemma3_dir, tiny_result):
    """AppTest cannot click a chart: the atlas is drawn with its click handler (atlas_click: the chart state
    of ATLAS_KEY, the cells' fields layer / head), which is run here on a click's chart state: the head is
    selected, in the URL, and its view (the All heads tab) opens."""
    from ui.attention_common import Shape

    write_report(lab / "report", tiny_result, reduced=True)
    at = open_page(tiny_gemma3_dir)
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (0, 0)
    assert any("Click a cell" in c for c in texts(at.caption))
    clicked = AppTest.from_function(_click_script)
    clicked.session_state["shape"] = Shape(["L0", "L1"], [f"H{h}" for h in range(4)], [[0, 1], [2, 3]])
    clicked.run()
    assert not clicked.exception, clicked.exception
    assert (clicked.selectbox(key="att_layer").value, clicked.selectbox(key="att_head").value) == (1, 2)
    clicked.run()  # AppTest shows the URL a run wrote from the next run on
    assert clicked.query_params.get("att_layer") == "1" and clicked.query_params.get("att_head") == "2"
    assert clicked.session_state["att_tab"] == "All heads" and clicked.query_params.get("att_tab") == "All heads"


def test_the_atlas_has_every_head_marks_the_unstudied_and_is_clickable(tiny_result):
    frame = atlas_frame(tiny_result, 2, 4)
    assert len(frame) == 8 and frame[["layer", "head"]].drop_duplicates().shape[0] == 8
    studied = frame[frame["best external function"] != NOT_STUDIED]
    assert studied["layer.head"].tolist() == ["0.1", "1.0", "1.2"]
    assert (frame.loc[frame["best external function"] == NOT_STUDIED, "self vs control"] == NOT_STUDIED).all()
    spec = atlas_chart(frame, selected=(1, 2)).to_dict()
    params = [p for layer in spec["layer"] for p in layer.get("params", [])] + spec.get("params", [])
    pick = next(p for p in params if p["name"] == HEAD_PICK)
    assert pick["select"]["fields"] == ["layer", "head"] and pick["select"]["on"] == "click"
    cells = spec["layer"][0]["encoding"]
    assert cells["x"]["field"] == "layer" and cells["y"]["field"] == "head"  # layers as columns
    assert "datum.layer == 1 && datum.head == 2" in json.dumps(cells["stroke"])
    # "not studied" is a legend entry, and every legend sits below the grid (a legend on the right is cut at
    # the grid's height in Streamlit's renderer, which hid "not studied")
    assert cells["color"]["scale"]["domain"][-1] == NOT_STUDIED
    assert cells["color"]["scale"]["range"][-1] == NOT_STUDIED_COLOUR
    shape = spec["layer"][1]["encoding"]["shape"]
    assert cells["color"]["legend"]["orient"] == "bottom" and shape["legend"]["orient"] == "bottom"
    every = studied.assign(layer=[0, 0, 0], head=[0, 1, 2])
    domain = atlas_chart(every).to_dict()["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert NOT_STUDIED not in domain and domain == list(dict.fromkeys(domain))


def test_study_jobs_join_stop_by_the_owner_only_and_count_against_jobs_per_person(lab, tiny_gemma3, monkeypatch):
    """engine.attention.jobs: the same settings join the running job (whoever asks); only its owner stops it,
    and a stopped study ends "stopped" with no result; a person's second job is refused naming jobs_per_person;
    each person finds their own job again."""
    from engine.core.errors import LabError

    limits = lab / "limits.toml"
    limits.write_text("jobs_per_person = 1\n", encoding="utf-8")
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    release = threading.Event()
    real = study_jobs.run_study

    def held(lm, config, progress, stop, elsewhere=None):
        release.wait(120)
        return real(lm, config, progress, stop, elsewhere=elsewhere)

    monkeypatch.setattr(study_jobs, "run_study", held)
    config = StudyConfig(model=tiny_gemma3.name, train=3, heldout=4, random=1, queries=2, max_heads=1, **TINY)
    model = (tiny_gemma3.name, tiny_gemma3.quantization)
    job, joined = study_jobs.start(tiny_gemma3, "alice", config)
    try:
        assert not joined and job.running and job.owner == "alice"
        again, joined = study_jobs.start(tiny_gemma3, "bob", config)
        assert joined and again is job
        with pytest.raises(LabError, match="jobs_per_person"):
            study_jobs.start(tiny_gemma3, "alice", dataclasses.replace(config, seed=1))
        with pytest.raises(LabError, match="only they can stop it"):
            study_jobs.stop("bob", job.key)
        assert study_jobs.latest_job_of("alice", model) is job and study_jobs.latest_job_of("bob", model) is None
        assert study_jobs.latest_job_of("alice", ("another model", "none")) is None
        assert study_jobs.study_of(job).config == config
        assert study_jobs.stop("alice", job.key)
    finally:
        release.set()
    assert job.wait(120) and job.state == "stopped" and job.result is None
    assert not study_jobs.stop("alice", job.key)  # nothing runs now


def test_a_second_models_report_in_a_subfolder_is_found(lab, tiny_result, tiny_gemma3_dir):
    from engine.core.loading import load_model

    lm = load_model(str(tiny_gemma3_dir))
    root = lab / "report"
    write_report(root / "other_model", tiny_result, reduced=True)  # e.g. reports/attention/smollm2
    found = attention_study.report_for(lm)
    assert found is not None and "other_model" in found.source and found.reduced
    (root / "other_model" / "atlas.json").unlink()
    assert attention_study.report_for(lm) is None
