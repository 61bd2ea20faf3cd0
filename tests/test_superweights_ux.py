"""The super-weights tab: progress callbacks that leave every number unchanged, the figures
(integer layer axis, click-to-select a layer, perplexity-ratio bars), a reload / link that restores the
scan and the ablation without recomputing them, and validation that explains a refused value under its
field while the results on screen stay.

The page tests run the tab on a tiny random Gemma 3 (tests/tiny_models.py) with an absolute threshold low
enough that every layer "spikes", so a candidate exists and the ablation runs in seconds.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_superweights import PROMPTS, one_torch_thread, planted_llama  # noqa: F401 (autouse fixture)

from engine.superweights import ablation as ab
from engine.superweights import detect
from engine.superweights import quantize as swq
from ui import superweights_charts as view
from ui.fields import range_problem

TEXT = "The cat sat on the mat. Summer is hot. Winter is cold. " * 4


# ---------------------------------------------------------------------------------------------
# Engine: progress with steps, numbers unchanged


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))

    def check(self) -> None:
        """Counts never go back, one total throughout, the last call is (total, total)."""
        assert self.calls, "no progress reported"
        totals = {t for _, t, _ in self.calls}
        assert len(totals) == 1
        done = [d for d, _, _ in self.calls]
        assert done == sorted(done) and done[0] == 0
        assert self.calls[-1][:2] == (totals.pop(),) * 2


@pytest.fixture(scope="module")
def lm():
    return planted_llama()


@pytest.fixture(scope="module")
def candidates(lm):
    return detect.detect(lm, PROMPTS).candidates


def test_detection_reports_scans_times_prompts_and_finds_the_same(lm):
    rec = Recorder()
    with_progress = detect.detect(lm, PROMPTS, max_iterations=3, progress=rec)
    rec.check()
    assert rec.calls[-1][1] == 3 * len(PROMPTS)
    assert any("scan 2, prompt 2 of 2" in m for _, _, m in rec.calls)
    plain = detect.detect(lm, PROMPTS, max_iterations=3)
    assert with_progress.candidates == plain.candidates
    assert [s.frame().equals(t.frame()) for s, t in zip(with_progress.scans, plain.scans)] == [True] * len(plain.scans)


def test_ablation_reports_conditions_times_windows_with_identical_numbers(lm, candidates):
    rec = Recorder()
    kwargs = dict(k=3, eval_text=TEXT, window=32, max_tokens=64, max_new_tokens=2)
    table = ab.ablation_table(lm, candidates, progress=rec, **kwargs).table
    rec.check()
    n_windows = len(ab.eval_windows(lm, TEXT, 32, 64))
    assert rec.calls[-1][1] == len(table) * (n_windows + 1)
    assert any(m.startswith("super weight zeroed, window 1") for _, _, m in rec.calls)
    pd.testing.assert_frame_equal(table, ab.ablation_table(lm, candidates, **kwargs).table)


def test_quantization_reports_every_evaluation_with_identical_numbers(lm, candidates):
    rec = Recorder()
    kwargs = dict(eval_text=TEXT, window=32, max_tokens=40)
    table = swq.quantization_table(lm, candidates, [64, 1024], progress=rec, **kwargs)
    rec.check()
    n_windows = len(swq.eval_windows(lm, TEXT, 32, 40))
    assert rec.calls[-1][1] == (1 + 2 * 3) * n_windows
    assert any("block 1024, rtn: quantizing" in m for _, _, m in rec.calls)
    pd.testing.assert_frame_equal(table, swq.quantization_table(lm, candidates, [64, 1024], **kwargs))


# ---------------------------------------------------------------------------------------------
# Figures


def _layers_of(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def test_scan_chart_has_integer_layers_a_click_selection_and_the_highlight(lm):
    detection = detect.detect(lm, PROMPTS)
    n = len(detection.scans[0].layers)
    spec = view.scan_chart(detection, selected=2).to_dict()
    axes = [layer["encoding"]["x"] for layer in _layers_of(spec) if "x" in layer.get("encoding", {})]
    axes = [x for x in axes if x.get("field") == "layer"]
    assert axes and all(x["axis"]["values"] == list(range(n)) for x in axes)  # 0..L-1, never L
    assert all(x["scale"]["domain"] == [0, n - 1] for x in axes)
    params = [p["name"] for part in [spec, *_layers_of(spec)] for p in part.get("params", [])]
    assert view.LAYER_PICK in params
    assert "2" in str(spec) and "crimson" in str(spec)  # the selected layer's band
    assert "crimson" not in str(view.scan_chart(detection).to_dict())


def test_layer_from_selection_reads_the_clicked_layer():
    pick = view.LAYER_PICK
    assert view.layer_from_selection({"selection": {pick: [{"layer": 3, "curve": "max |output|"}]}}, 18) == 3
    assert view.layer_from_selection({"selection": {pick: []}}, 18) is None  # a click that cleared it
    assert view.layer_from_selection({"selection": {pick: [{"layer": 18}]}}, 18) is None  # not a layer
    assert view.layer_from_selection({"selection": {}}, 18) is None
    assert view.layer_from_selection(None, 18) is None


def test_ablation_chart_draws_the_perplexity_ratio_per_condition():
    table = pd.DataFrame(
        {"condition": ["original", "super weight zeroed"], "perplexity": [20.0, 400.0], "ppl_ratio": [1.0, 20.0]}
    )
    spec = view.ablation_chart(table).to_dict()
    bars = spec["layer"][0]["encoding"]
    assert bars["x"]["field"] == "ppl_ratio" and bars["x"]["scale"]["type"] == "log"
    assert bars["y"]["sort"] == ["original", "super weight zeroed"] and bars["y"]["axis"]["labelLimit"] == 0


def test_range_problem_says_why():
    assert range_problem("f", 5.0, 1.5, 1000.0) is None
    assert "between 1.5 and 1,000 (got 1)" in range_problem("f", 1.0, 1.5, 1000.0)
    assert "whole number" in range_problem("n", 2.5, 1, 10, integer=True)
    assert "enter a number" in range_problem("n", None, 1, 10)


# ---------------------------------------------------------------------------------------------
# The tab: reload / link, validation


def _tab_script():
    import streamlit as st

    from ui.models import render_sidebar
    from ui.superweights_view import render

    st.set_page_config(page_title="Super weights", layout="wide")
    render_sidebar()
    render()


SETTINGS = {"sw_mode": "absolute", "sw_absolute": "0.001", "sw_iters": "1", "sw_eval_tokens": "256"}


@pytest.fixture(scope="module")
def planted_gemma3_dir(tiny_gemma3_dir, tmp_path_factory):
    """The tiny random Gemma 3 with its strongest spike's weight, layer 1 W[43, 13], made 20x larger: a
    candidate needs a weight that makes most of its spike, and a random model has none to ablate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[43, 13] *= 20
    folder = tmp_path_factory.mktemp("planted") / "gemma3"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_gemma3_dir).save_pretrained(folder)
    return folder


def _session(model_dir, params: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_function(_tab_script, default_timeout=300)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    for name, value in (params or {}).items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _frame(at: AppTest, column: str) -> pd.DataFrame | None:
    return next((d.value for d in at.dataframe if column in d.value.columns), None)


def _ablation_frame(at: AppTest) -> pd.DataFrame | None:
    return _frame(at, "perplexity ratio, ablated / original")


def _errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def _ablate(at: AppTest) -> AppTest:
    """Press Run ablation, wait for its background job, and draw the page again (as the job panel does)."""
    from engine.core.jobs import RUNNER

    at.button(key="sw_ablate").click().run()
    assert not at.exception, at.exception
    for job in RUNNER.jobs():
        if job.key.startswith("sw-ablation-"):
            job.wait(300)
    return at.run()


def test_settings_from_the_link_and_a_reload_bring_back_scan_layer_and_ablation(planted_gemma3_dir, monkeypatch):
    at = _session(planted_gemma3_dir, SETTINGS)
    assert at.radio(key="sw_mode").value == "absolute" and at.number_input(key="sw_absolute").value == 0.001
    assert _frame(at, "max |output|") is None  # settings alone do not scan
    at.button(key="sw_scan").click().run()
    assert not at.exception, at.exception
    scan = _frame(at, "max |output|")
    assert scan is not None and at.query_params.get("sw_scanned") == "1"
    assert _frame(at, "persists in layers") is not None
    _ablate(at)
    ablated = _ablation_frame(at)
    assert ablated is not None and at.query_params.get("sw_ablated") == "1"
    other = 1 - at.selectbox(key="sw_layer").value  # the layer the page did not select by itself (2 layers)

    # the reload: a new session opened at the same URL (the layer picked too) computes nothing again
    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed instead of served from the results of these inputs")

    monkeypatch.setattr(detect, "detect", no_recompute)
    monkeypatch.setattr(ab, "ablation_table", no_recompute)
    again = _session(planted_gemma3_dir, {**SETTINGS, "sw_scanned": "1", "sw_ablated": "1", "sw_layer": str(other)})
    pd.testing.assert_frame_equal(_frame(again, "max |output|"), scan)
    pd.testing.assert_frame_equal(_ablation_frame(again), ablated)
    assert again.selectbox(key="sw_layer").value == other
    assert any(f"Layer {other}:" in c.value for c in again.caption)


def test_a_refused_value_is_explained_under_its_field_and_the_results_stay(planted_gemma3_dir):
    at = _session(planted_gemma3_dir, SETTINGS)
    at.button(key="sw_scan").click().run()
    _ablate(at)
    scan, ablated = _frame(at, "max |output|"), _ablation_frame(at)
    assert scan is not None and ablated is not None

    at.number_input(key="sw_k").set_value(-5).run()
    assert not at.exception, at.exception
    assert "k must be a whole number between 0 and 100,000 (got -5)" in _errors(at)
    assert at.button(key="sw_ablate").disabled and not at.button(key="sw_scan").disabled
    pd.testing.assert_frame_equal(_ablation_frame(at), ablated)  # still on screen, marked as the last one
    assert any("last ablation" in i.value for i in at.info)
    assert at.number_input(key="sw_k").value == -5  # never silently put back

    at.number_input(key="sw_iters").set_value(0).run()
    assert "Max iterations must be a whole number between 1 and 10 (got 0)" in _errors(at)
    assert at.button(key="sw_scan").disabled
    pd.testing.assert_frame_equal(_frame(at, "max |output|"), scan)
    assert any("Showing the last scan" in i.value for i in at.info)

    at.number_input(key="sw_iters").set_value(1).run()
    at.number_input(key="sw_k").set_value(0).run()
    assert not _errors(at) and not at.button(key="sw_ablate").disabled
    pd.testing.assert_frame_equal(_ablation_frame(at), ablated)


def test_a_reload_during_the_ablation_finds_its_progress_then_its_result(planted_gemma3_dir, monkeypatch):
    """The ablation runs as the person's job: a reload while it runs shows its progress (not an empty
    section), and the result when it is done, without a second ablation."""
    import threading

    from engine.core.jobs import RUNNER

    gate, calls = threading.Event(), []
    real = ab.ablation_table

    def gated(*args, **kwargs):
        calls.append(1)
        kwargs["progress"](0, 15, "waiting")
        assert gate.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(ab, "ablation_table", gated)
    at = _session(planted_gemma3_dir, {**SETTINGS, "sw_k": "7"})  # inputs no other test ablates
    at.button(key="sw_scan").click().run()
    at.button(key="sw_ablate").click().run()
    assert not at.exception, at.exception
    assert at.query_params.get("sw_ablated") == "1"
    params = {name: str(value) for name, value in at.query_params.items()}
    (job,) = [j for j in RUNNER.jobs() if j.key.startswith("sw-ablation-") and j.running]
    try:
        reload = _session(planted_gemma3_dir, params)  # the reload, while it runs
        bars = [p.text for p in reload.get("progress")]
        assert any("The ablation: 0/15 steps · waiting · estimating…" in (t or "") for t in bars), bars
        assert _ablation_frame(reload) is None
    finally:
        gate.set()
    job.wait(300)
    reload.run()
    assert not reload.exception, reload.exception
    assert _ablation_frame(reload) is not None and len(calls) == 1


def test_a_valid_change_keeps_the_last_results_marked_until_run_again(planted_gemma3_dir):
    at = _session(planted_gemma3_dir, SETTINGS)
    at.button(key="sw_scan").click().run()
    _ablate(at)
    ablated = _ablation_frame(at)
    at.number_input(key="sw_k").set_value(50).run()  # valid: the chart stays, marked, until Run ablation
    assert not at.exception and not _errors(at)
    pd.testing.assert_frame_equal(_ablation_frame(at), ablated)
    assert any("last ablation, computed with other settings" in i.value for i in at.info)
    assert at.query_params.get("sw_ablated") is None
    # 20 prompts: the server's limit of 16 is named under the field before Scan; the scan stays
    scan = _frame(at, "max |output|")
    at.text_area(key="sw_prompts").input("\n".join(f"prompt {i}" for i in range(20))).run()
    assert "prompts_per_request" in _errors(at) and at.button(key="sw_scan").disabled
    pd.testing.assert_frame_equal(_frame(at, "max |output|"), scan)


def _gate(monkeypatch, module, name: str, total: int):
    """Replace module.name by a version that reports (0, total, "waiting") and waits for the returned event."""
    import threading

    gate, calls = threading.Event(), []
    real = getattr(module, name)

    def gated(*args, **kwargs):
        calls.append(1)
        kwargs["progress"](0, total, "waiting")
        assert gate.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, gated)
    return gate, calls


def _running(prefix: str):
    from engine.core.jobs import RUNNER

    (job,) = [j for j in RUNNER.jobs() if j.key.startswith(prefix) and j.running]
    return job


def test_the_quantization_runs_as_a_job_a_reload_finds_and_its_person_stops(planted_gemma3_dir, monkeypatch):
    """Run quantization no longer blocks the page: its progress comes back after a reload (before: the
    reload lost it), Stop ends it at its next step with its weights restored, and says so."""
    gate, calls = _gate(monkeypatch, swq, "quantization_table", 9)
    at = _session(planted_gemma3_dir, {**SETTINGS, "sw_q_tokens": "256"})
    at.button(key="sw_scan").click().run()
    at.button(key="sw_quant").click().run()
    assert not at.exception, at.exception
    assert at.query_params.get("sw_quantized") == "1"
    job = _running("sw-quantization-")
    try:
        reload = AppTest.from_function(_tab_script, default_timeout=300)
        reload.session_state["lab_model_choice"] = (str(planted_gemma3_dir), "none")
        reload.session_state["_lab_owner_key"] = at.session_state["_lab_owner_key"]
        for name, value in at.query_params.items():
            reload.query_params[name] = str(value)
        reload.run()
        bars = [p.text for p in reload.get("progress")]
        assert any("The quantization: 0/9 steps · waiting · estimating…" in (t or "") for t in bars), bars
        reload.button(key="sw_quantization_stop").click().run()
        assert job.stopping
    finally:
        gate.set()
    job.wait(300)
    assert job.state == "stopped" and job.result is None and len(calls) == 1
    reload.run()
    assert not reload.exception, reload.exception
    assert any("The quantization stopped at 0/9" in i.value for i in reload.info), [i.value for i in reload.info]
    assert reload.query_params.get("sw_quantized") is None  # a reload does not start it again


def test_a_tab_reopened_without_its_link_finds_the_persons_ablation(planted_gemma3_dir, monkeypatch):
    """A new tab with no link (no scan on it) shows the person's ablation: its progress while it runs, its
    result when it is done (before: only "Press Scan"); someone else's new tab shows nothing of it."""
    gate, calls = _gate(monkeypatch, ab, "ablation_table", 15)
    at = _session(planted_gemma3_dir, {**SETTINGS, "sw_k": "11"})  # inputs no other test ablates
    at.button(key="sw_scan").click().run()
    at.button(key="sw_ablate").click().run()
    job = _running("sw-ablation-")
    try:
        again = AppTest.from_function(_tab_script, default_timeout=300)
        again.session_state["lab_model_choice"] = (str(planted_gemma3_dir), "none")
        again.session_state["_lab_owner_key"] = at.session_state["_lab_owner_key"]
        again.run()
        assert not again.exception, again.exception
        assert any("Your ablation (running), found again" in h.value for h in again.subheader)
        bars = [p.text for p in again.get("progress")]
        assert any("The ablation: 0/15 steps · waiting" in (t or "") for t in bars), bars
        other = _session(planted_gemma3_dir)
        assert not other.get("progress") and not any("found again" in h.value for h in other.subheader)
    finally:
        gate.set()
    job.wait(300)
    again.run()
    assert not again.exception, again.exception
    assert any("Your ablation (done), found again" in h.value for h in again.subheader)
    assert _ablation_frame(again) is not None and len(calls) == 1


def test_every_table_of_the_tab_is_in_words(planted_gemma3_dir):
    """Scan, candidates, weights, ablation (with its continuations and stopwords) and quantization: no raw
    column name (before: ppl_ratio, persists_in_layers, held_weights...), no "None", "nan" or empty cell
    (before: the original row's block size and bits, an empty "persists in layers")."""
    from engine.core.jobs import RUNNER

    at = _session(planted_gemma3_dir, {**SETTINGS, "sw_q_tokens": "256"})
    at.button(key="sw_scan").click().run()
    at.button(key="sw_wstats").click().run()
    _ablate(at)
    at.button(key="sw_quant").click().run()
    for job in RUNNER.jobs():
        if job.key.startswith("sw-quantization-"):
            job.wait(300)
    at.run()
    assert not at.exception, at.exception
    frames = [d.value for d in at.dataframe]
    assert len(frames) >= 8, [list(f.columns) for f in frames]
    columns = [c for f in frames for c in f.columns]
    assert not [c for c in columns if "_" in str(c)], columns
    assert "perplexity ratio vs original" in columns and "persists in layers" in columns
    cells = [v for f in frames for v in f.astype(object).to_numpy().ravel().tolist()]
    assert not [c for c in cells if c is None or c != c or str(c).strip() in ("None", "nan", "")]


def test_a_stopped_job_ends_stopped_with_every_weight_restored(lm, candidates):
    """engine.superweights.jobs: a stop ends the computation at its next step, without a result, and the
    weight edits in flight are undone bit for bit."""
    import torch

    from engine.superweights import jobs

    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    kept, started = [], []

    def stop_at_second_forward(module, args):  # a stop asked while the ablation evaluates
        started.append(1)
        if len(started) == 2:
            jobs.RUNNER.stop(jobs.job_key("ablation", ("stop test",)))

    handle = lm.model.register_forward_pre_hook(stop_at_second_forward)
    try:
        job = jobs.start_ablation(lm, ("stop test",), candidates, k=3, scale=0.0, max_tokens=64, keep=kept.append)
        assert job.wait(120)
    finally:
        handle.remove()
    assert job.state == "stopped" and job.result is None and not kept and not job.error
    assert all(torch.equal(p, before[name]) for name, p in lm.model.named_parameters())
    assert jobs.kind_of(job.key) == "ablation" and jobs.kind_of("grokking:x") is None
