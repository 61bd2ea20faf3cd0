"""The uncertainty page as issue 13 wants it: figures first (A1 / A2 / A3 with intervals, the rejection
curves with a score picker), the view in the URL (a reload or a link shows the same run and settings,
a private run's link shows nothing of it), bad numbers named under their field without hiding results,
and a run label that never shows a stale progress.

One run of four questions is generated once (tiny random model, K = 2) in a module-wide cache folder;
the page opens it from its link in a fresh AppTest session, as a reload would.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.core.db import lab_db

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "2_Semantic_uncertainty.py")
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdefgh"
ALICE = hashlib.sha256(ALICE_KEY.encode()).hexdigest()[:16]  # ui.identity.owner_id of the key
QUESTIONS = pd.DataFrame(
    {
        "id": ["q1", "q2", "q3", "q4"],
        "question": ["the cat", "the dog", "a bird?", "the sky"],
        "references": [["cat"], ["dog"], ["bird"], ["sky", "blue"]],
    }
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder for the whole module (runs, database), set as LAB_CACHE_DIR."""
    folder = tmp_path_factory.mktemp("uq_ux_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def run(cache, tiny_gemma3):
    """A finished run made outside the server (no owner: everyone reads it)."""
    from engine.uq.config import GenerationConfig
    from engine.uq.generation import generate_run, open_run_for

    made = open_run_for(tiny_gemma3, QUESTIONS, GenerationConfig(samples=2, max_new_tokens=4, seed=3), source="ux.csv")
    generate_run(tiny_gemma3, made)
    assert made.done() == 4
    return made


def _open(model_dir, params: dict[str, str], owner_key: str | None = None) -> AppTest:
    """A fresh session (as a reload or a colleague's browser) opened at the URL with `params`."""
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    if owner_key is not None:
        at.session_state["_lab_owner_key"] = owner_key
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list:
    return list(at.main.get("vega_lite_chart"))


def _kinds(at: AppTest) -> list[tuple[str, str]]:
    """(kind, header text or "") of the page's elements in reading order."""
    out = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if children is not None and not hasattr(node, "value"):
            for child in children.values():
                walk(child)
            return
        kind = node.type
        if kind == "vega_lite_chart":
            out.append(("chart", ""))
        elif kind == "header":
            out.append(("header", node.value))
        elif kind == "dataframe":
            out.append(("dataframe", ""))

    walk(at.main)
    return out


def _errors(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.error)


# ------------------------------------------------------------------------------------------------
# The page


def test_a_link_reopens_the_run_with_its_settings_figures_first(run, tiny_gemma3_dir, embedder):
    at = _open(
        tiny_gemma3_dir,
        {"uq_run": run.run_id, "uq_judge": "contains", "uq_k": "3", "uq_score": "semantic_entropy"},
    )
    assert at.selectbox(key="uq_run_pick").value == run.run_id
    assert at.query_params.get("uq_run") == run.run_id  # the address bar names the run shown
    assert at.selectbox(key="uq_judge").value == "contains"
    assert at.number_input(key="uq_k").value == 3
    assert at.multiselect(key="uq_score").value == ["semantic_entropy"]
    # figures first: the answer, A1/A2/A3 bars, the curves; the judge-agreement table in an expander below
    charts = _charts(at)
    assert len(charts) == 2, [type(c) for c in at.main]
    headers = [h.value for h in at.header]
    assert headers.index("The answer") < headers.index("The tables")
    order = _kinds(at)
    answer = order.index(("header", "The answer"))
    assert order.index(("chart", "")) > answer
    assert order.index(("chart", "")) < order.index(("header", "The tables")) < order.index(("dataframe", ""), answer)
    assert any(e.label == "Judge agreement" for e in at.expander)
    # a label never shows a stale progress; the status line is read from the run
    assert "done" not in at.selectbox(key="uq_run_pick").format_func(run.run_id)
    assert "Complete: 4 questions saved." in [c.value for c in at.caption]
    # the graded numbers are the ones of the chosen judge from the URL
    summary = at.session_state["_lab_slot_uq_eval"][-1][1].summary
    assert summary.judge == "contains"


def test_out_of_range_values_are_named_under_the_field_and_results_stay(run, tiny_gemma3_dir, embedder):
    at = _open(tiny_gemma3_dir, {"uq_run": run.run_id})
    charts_before = len(_charts(at))
    metrics_before = {m.label: m.value for m in at.metric}
    assert charts_before == 2 and metrics_before and not at.button(key="uq_start").disabled
    cases = [
        ("uq_k", 100000, "Samples K: 100,000 is over this server's limit of 20 (samples in"),
        ("uq_temp", 0.0, "Temperature must be between 0.05 and 5 (got 0)."),
        ("uq_max_new", 99999, "Max new tokens: 99,999 is over this server's limit of 64 (new_tokens in"),
        ("uq_limit", 100000, "Questions to run must be a whole number between 1 and 265 (this set has 265 questions)"),
        ("uq_limit", 1001, "Questions to run must be a whole number between 1 and 265 (this set has 265 questions)"),
        ("uq_seed", -1, "Seed must be a whole number between 0 and"),
    ]
    defaults = {"uq_k": 10, "uq_temp": 1.0, "uq_max_new": 24, "uq_limit": 50, "uq_seed": 0}
    for key, bad, message in cases:  # the bundled set (265 questions) is chosen
        at.number_input(key=key).set_value(bad).run()
        assert not at.exception, at.exception
        assert message in _errors(at), (key, _errors(at))
        assert at.number_input(key=key).value == bad  # the value typed, never an old one in silence
        assert at.button(key="uq_start").disabled  # only Generate is disabled ...
        assert len(_charts(at)) == charts_before  # ... the results stay on screen
        assert {m.label: m.value for m in at.metric} == metrics_before
        at.number_input(key=key).set_value(defaults[key]).run()
        assert message not in _errors(at)
    assert not at.button(key="uq_start").disabled


def test_the_engine_bound_is_named_when_it_is_the_tighter_one(run, tiny_gemma3_dir, embedder, tmp_path, monkeypatch):
    limits = tmp_path / "limits.toml"
    limits.write_text("samples = 1000\n")
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    at = _open(tiny_gemma3_dir, {"uq_run": run.run_id})
    at.number_input(key="uq_k").set_value(100).run()
    assert "Samples K must be a whole number between 1 and 64 (got 100)." in _errors(at)
    assert at.button(key="uq_start").disabled and len(_charts(at)) == 2


def test_a_private_runs_link_shows_nothing_of_it(cache, tiny_gemma3, tiny_gemma3_dir):
    from engine.uq.config import GenerationConfig
    from engine.uq.generation import open_run_for

    secret = QUESTIONS.assign(question=["Alice's secret recipe?"] * 4)
    private = open_run_for(tiny_gemma3, secret, GenerationConfig(seed=11), source="alice-secret.csv")
    lab_db().claim_run("uq", private.run_id, ALICE, "alice-secret.csv")
    bob = _open(tiny_gemma3_dir, {"uq_run": private.run_id}, owner_key=BOB_KEY)
    assert any("This run is private to its owner" in w.value for w in bob.warning)
    assert "uq_run_pick" not in {s.key for s in bob.selectbox} and "uq_start" not in {b.key for b in bob.button}
    assert "secret" not in "\n".join(str(e.value) for e in bob.main.get("markdown") + bob.main.get("caption"))
    alice = _open(tiny_gemma3_dir, {"uq_run": private.run_id}, owner_key=ALICE_KEY)
    assert alice.selectbox(key="uq_run_pick").value == private.run_id
    # an older ?run= link opens it too, and the address bar then names it the new way
    alice = _open(tiny_gemma3_dir, {"run": private.run_id}, owner_key=ALICE_KEY)
    assert alice.selectbox(key="uq_run_pick").value == private.run_id
    assert alice.query_params.get("uq_run") == private.run_id and "run" not in alice.query_params


def test_a_missing_runs_link_says_so(cache, tiny_gemma3_dir):
    at = _open(tiny_gemma3_dir, {"uq_run": "0123456789abcdef"})
    assert "No saved run" in _errors(at)
    assert "uq_run_pick" not in {s.key for s in at.selectbox}


# ------------------------------------------------------------------------------------------------
# Pieces, without a page


def test_run_label_and_status(run, tiny_gemma3):
    from engine.core.jobs import RUNNER
    from engine.uq import jobs as uq_jobs
    from engine.uq.config import GenerationConfig
    from engine.uq.generation import generate_run, job_key, open_run_for
    from ui.uq_runs import run_label

    label = run_label(run, "yours, private")
    assert run.run_id in label and "4 questions" in label and "K=2" in label and "done" not in label
    assert uq_jobs.status(run).line == "Complete: 4 questions saved."
    half = open_run_for(tiny_gemma3, QUESTIONS, GenerationConfig(samples=2, max_new_tokens=4, seed=5), source="ux.csv")
    generate_run(tiny_gemma3, half, limit=2)
    assert uq_jobs.status(half).line == "Complete: 2 of the set's 4 questions saved."
    half.set_status("stopped", 2, "2/4 questions")
    assert "Stopped: 2 of the set's 4 questions saved; press Generate" in uq_jobs.status(half).line
    half.set_status("running", 2, "2/4 questions")  # nobody writes it: the server stopped mid-run
    status = uq_jobs.status(half)
    assert status.state == "interrupted" and "press Generate with the same settings to resume" in status.line

    def fail(job):
        raise RuntimeError("out of memory")

    RUNNER.start(job_key(half.run_id), fail).wait(10)  # a job that failed is not "stopped"
    status = uq_jobs.status(half)
    assert status.state == "failed" and "RuntimeError: out of memory" in status.line


def _evaluation(run, embedder):
    from engine.uq.config import EvalOptions
    from engine.uq.evaluation import evaluate_run

    return evaluate_run(run, embedder, EvalOptions(seed=3, n_boot=50))


def test_page_figures_use_the_reports_builders(run, embedder):
    from engine.core.figures import chart_svg
    from engine.uq import report
    from ui.uq_results import a123_figure_frame, curves_for, score_choices

    evaluation = _evaluation(run, embedder)
    s = evaluation.summary
    frame = a123_figure_frame(evaluation)
    assert list(frame["judge"].unique())[0] == f"{s.judge} (chosen)"
    chosen = frame[frame["judge"] == f"{s.judge} (chosen)"].set_index("quantity")
    assert chosen.loc["A1", "value"] == s.A1 and chosen.loc["A3", "value"] == s.A3
    assert [chosen.loc["A1", "low"], chosen.loc["A1", "high"]] == pytest.approx(s.A1_ci, nan_ok=True)
    computed, default = score_choices(evaluation)
    assert default == report.curve_methods(evaluation) and set(default) <= set(computed)
    picked = [s.semantic_method, s.usual_method]
    curves = curves_for(evaluation, picked)
    assert list(dict.fromkeys(curves["method"])) == picked
    chart = report.curves_chart(curves, highlight=[s.usual_method, s.semantic_method], by_set=False)
    spec = chart.to_dict()
    text = str(spec)
    assert "curve_hover" in text and "'nearest': True" in text  # the tooltip works near a line
    assert "'labelLimit': 0" in text  # legend names are never cut
    assert "<svg" in chart_svg(chart) and "<svg" in chart_svg(report.a123_chart(frame, by_set=False))


def test_curves_fade_all_but_the_highlighted_scores():
    import numpy as np

    from engine.uq.report import curves_chart

    frame = pd.concat(
        pd.DataFrame({"method": m, "rejected_fraction": np.arange(4) / 4, "accuracy": [0.5, 0.6, 0.7, 1.0]})
        for m in ("mean_token_nll", "semantic_entropy", "answer_length_tokens")
    )
    spec = curves_chart(frame, highlight=["mean_token_nll", "semantic_entropy"], by_set=False).to_dict()
    line = spec["layer"][0]["encoding"]
    condition = line["opacity"]["condition"]
    assert condition["test"]["oneOf"] == ["mean_token_nll", "semantic_entropy"] and condition["value"] == 1.0
    assert line["opacity"]["value"] < 0.5  # the others faded
    rule = spec["layer"][2]
    assert [t["title"] for t in rule["encoding"]["tooltip"]][1:] == [
        "mean_token_nll",
        "semantic_entropy",
        "answer_length_tokens",
    ]


# ------------------------------------------------------------------------------------------------
# Jobs found again


def _held_job(run_id: str, owner: str):
    """A generation job of `run_id` started by `owner` that runs until the event is set."""
    import threading

    from engine.core.jobs import RUNNER
    from engine.uq.generation import job_key

    release = threading.Event()
    job = RUNNER.start(job_key(run_id), lambda job: release.wait(60), total=4, owner=owner)
    return job, release


def test_a_reopened_page_shows_the_persons_running_job_and_says_which_run_is_shown(run, tiny_gemma3, tiny_gemma3_dir):
    from engine.uq.config import GenerationConfig
    from engine.uq.generation import open_run_for

    mine = open_run_for(tiny_gemma3, QUESTIONS, GenerationConfig(samples=2, max_new_tokens=4, seed=21), source="a.csv")
    lab_db().claim_run("uq", mine.run_id, ALICE, "a.csv")
    newer = open_run_for(tiny_gemma3, QUESTIONS, GenerationConfig(samples=2, max_new_tokens=4, seed=22), source="b.csv")
    job, release = _held_job(mine.run_id, ALICE)
    try:
        # a closed tab opened again (no link): her running job's run, with its progress, not the newest run
        alice = _open(tiny_gemma3_dir, {}, owner_key=ALICE_KEY)
        assert alice.selectbox(key="uq_run_pick").value == mine.run_id
        assert alice.query_params.get("uq_run") == mine.run_id
        assert any("Generating: 0/4 questions saved." in c.value for c in alice.caption)
        bob = _open(tiny_gemma3_dir, {}, owner_key=BOB_KEY)  # nobody else is taken to it
        assert bob.selectbox(key="uq_run_pick").value == newer.run_id
        # a link to another run: that run is shown, and a note says which run her job is, with a way to it
        alice = _open(tiny_gemma3_dir, {"uq_run": run.run_id}, owner_key=ALICE_KEY)
        assert alice.selectbox(key="uq_run_pick").value == run.run_id
        note = [i.value for i in alice.info if "the job you started" in i.value]
        assert note and run.run_id in note[0] and mine.run_id in note[0] and "is running" in note[0]
        alice.button(key=f"_job_show_{job.key}").click().run()
        assert alice.selectbox(key="uq_run_pick").value == mine.run_id
        assert alice.query_params.get("uq_run") == mine.run_id
    finally:
        release.set()
        job.wait(10)


def test_the_progress_says_estimating_until_a_pace_is_measured():
    from engine.core.jobs import Job
    from ui.job_panel import ESTIMATING, progress_text

    job = Job(key="k", total=10, done=4, first_done=4)  # resumed at 4: no pace yet
    assert job.eta_seconds() is None and progress_text(job, "questions").endswith(ESTIMATING)
    job.progress(5, seconds=2.0)
    assert progress_text(job, "questions") == "5/10 questions · about 10 s left"


def test_engine_jobs_start_resume_stop_and_refuse_someone_elses_run(cache, tiny_gemma3):
    """engine.uq.jobs: a start makes the run its starter's and runs it in the background; the same inputs
    again resume it (nothing new when done); someone else's run of those inputs is refused, and only the
    owner stops a run; the person's job is found again."""
    from engine.core.errors import LabError
    from engine.uq import jobs as uq_jobs
    from engine.uq.config import GenerationConfig

    config = GenerationConfig(samples=2, max_new_tokens=2, seed=31)
    first = uq_jobs.start(tiny_gemma3, "carol", QUESTIONS, config, source="c.csv", limit=2)
    assert not first.resumed and not first.joined and first.line.startswith(f"Started run {first.run.run_id}")
    first.job.wait(120)
    assert uq_jobs.latest_job_of("carol") is first.job and uq_jobs.latest_job_of("dave") is None
    assert lab_db().access("uq", first.run.run_id).owner == "carol"
    assert uq_jobs.status(first.run).line == "Complete: 2 of the set's 4 questions saved."
    again = uq_jobs.start(tiny_gemma3, "carol", QUESTIONS, config, source="c.csv", limit=4)
    assert again.resumed and again.run.run_id == first.run.run_id
    again.job.wait(120)
    assert uq_jobs.status(again.run).state == "finished" and again.run.done() == 4
    with pytest.raises(LabError, match="Change the seed"):
        uq_jobs.start(tiny_gemma3, "dave", QUESTIONS, config, source="c.csv", limit=4)
    with pytest.raises(LabError, match="only its owner can stop it"):
        uq_jobs.stop("dave", first.run.run_id)
    assert uq_jobs.stop("carol", first.run.run_id) is False  # nothing runs: nothing to stop
