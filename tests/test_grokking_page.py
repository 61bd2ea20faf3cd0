"""AppTest of the grokking tab: start a short run, see live curves and the summary, a sweep, bad input."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "1_Super_weights_and_grokking.py")


def _tab_app():
    from ui.grokking_view import render

    render()


def _wait(at: AppTest, done, seconds: float = 90.0) -> AppTest:
    """Rerun the script (as the page's polling fragment would) until done(at) or the time is up."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        at.run()
        if done(at):
            break
    return at


def _filled(frac: float, steps: int, eval_every: int | None = None) -> AppTest:
    """The tab with p = 23 and these settings."""
    at = AppTest.from_function(_tab_app, default_timeout=60)
    at.run()
    assert not at.exception
    at.number_input(key="grok_p").set_value(23)
    at.number_input(key="grok_frac").set_value(frac)
    at.number_input(key="grok_steps").set_value(steps)
    if eval_every is not None:
        at.number_input(key="grok_eval").set_value(eval_every)
    return at.run()


def _started(frac: float, steps: int, eval_every: int | None = None) -> AppTest:
    """The tab with p = 23 and these settings, Start pressed."""
    at = _filled(frac, steps, eval_every)
    at.button(key="grok_start").click().run()
    assert not at.exception
    return at


def test_start_a_short_run_see_curves_summary_and_a_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = _started(0.8, 200, 20)
    _wait(at, lambda a: len(a.success) > 0)
    assert not at.exception
    summary = at.success[0].value
    assert "Train accuracy reached 99% at step" in summary and "super weight (causal)" in summary
    assert len(at.get("vega_lite_chart")) + len(at.get("arrow_vega_lite_chart")) >= 7  # 3 curves + 4 measure panels
    assert int(at.metric[0].value) == 200  # the run went to its last step
    # the sweep of the same configuration (1 seed x 1 weight decay) reopens the cached run at once
    at.text_input(key="grok_sweep_seeds").set_value("0")
    at.text_input(key="grok_sweep_wds").set_value("1.0")
    at.run()
    at.button(key="grok_sweep_start").click().run()
    _wait(at, lambda a: len(a.info) and any("runs grokked" in i.value for i in a.info), 30)
    texts = " ".join(i.value for i in at.info)
    assert "0 of 1 runs grokked" in texts and "no connection found" in texts.lower()
    (table,) = [d.value for d in at.dataframe if "weight decay" in d.value.columns]  # the sweep's, in words
    assert "grokked at step (test 95%)" in table.columns and "onset_step" not in table.columns
    assert not [v for v in table.astype(object).to_numpy().ravel() if v is None or v != v or v == "None"]


def test_bad_input_shows_a_reason_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = AppTest.from_function(_tab_app, default_timeout=60)
    at.run()
    at.selectbox(key="grok_task").set_value("div")
    at.number_input(key="grok_p").set_value(12)
    at.run()
    assert not at.exception
    assert "not prime (try 11)" in at.error[0].value
    assert at.button(key="grok_start").disabled  # nothing can start; the rest of the tab stays
    assert at.button(key="grok_sweep_start").disabled
    at.number_input(key="grok_p").set_value(13)
    at.number_input(key="grok_frac").set_value(1.0)
    at.run()
    assert "strictly between 0 and 1" in at.error[0].value
    assert at.button(key="grok_start").disabled


def test_full_page_renders_with_both_tabs(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    assert any(b.key == "grok_start" for b in at.button)


def test_stop_button_keeps_a_resumable_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = _started(0.3, 50_000)  # does not grok soon: the run is still going when stopped
    _wait(at, lambda a: any(b.key == "grok_stop" for b in a.button), 30)
    at.button(key="grok_stop").click().run()
    _wait(at, lambda a: any("Press Start to resume" in w.value for w in a.warning), 30)
    assert not at.exception
    warning = next(w.value for w in at.warning if "Press Start to resume" in w.value)
    step = int(warning.split("Stopped at step ")[1].split(":")[0])
    assert f"checkpoint {step} is the last kept, and Start resumes from it" in warning
    from engine.grokking.config import GrokConfig
    from engine.grokking.runs import list_runs

    config = GrokConfig(p=23, train_frac=0.3, steps=50_000)
    (cache,) = [run for run in list_runs() if run.grok_config == config]  # the person's run: owner in its key
    assert cache.checkpoint_steps()[-1] == step
    cache.load_model(step)  # the checkpoint of the stop is usable


def test_a_child_ended_for_being_slow_to_stop_leaves_the_run_stopped_not_failed(tmp_path, monkeypatch):
    """On a busy server a (niced) training child may not stop within the grace and is ended (StopTimeout):
    the user asked to stop, so the run says stopped at its last checkpoint, with no error (the soak saw
    "Run failed" after Stop)."""
    import functools

    from engine.core.processes import run_in_process
    from engine.grokking import jobs

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(jobs, "run_in_process", functools.partial(run_in_process, grace_s=0.0))  # ended at once
    at = _started(0.3, 50_000, 10)

    def training(a: AppTest) -> bool:  # the Stop button is there and a checkpoint was saved
        return any(b.key == "grok_stop" for b in a.button) and not any("No evaluation" in i.value for i in a.info)

    _wait(at, training, 60)
    at.button(key="grok_stop").click().run()
    _wait(at, lambda a: any("Press Start to resume" in w.value for w in a.warning), 30)
    assert not at.exception and not at.error, [e.value for e in at.error]
    warning = next(w.value for w in at.warning if "Press Start to resume" in w.value)
    from engine.grokking.runs import list_runs

    (run,) = list_runs()
    assert "its last checkpoint" in run.status()["message"]  # written by the job, not by the child
    step = int(warning.split("Stopped at step ")[1].split(":")[0])
    assert f"checkpoint {step} is the last kept, and Start resumes from it" in warning
    assert run.status()["state"] == "stopped" and step == run.checkpoint_steps()[-1]


def test_a_sweep_ended_for_being_slow_to_stop_leaves_its_run_stopped(tmp_path, monkeypatch):
    """The sweep's child ended after the stop's grace (StopTimeout): no error, and the run it was training
    says stopped at its last checkpoint, not "running" (which would keep the run list polling)."""
    import functools

    from engine.core.processes import run_in_process
    from engine.grokking import jobs
    from engine.grokking.runs import list_runs

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(jobs, "run_in_process", functools.partial(run_in_process, grace_s=0.0))
    at = _filled(0.3, 50_000, 10)
    at.text_input(key="grok_sweep_seeds").set_value("1,2")
    at.text_input(key="grok_sweep_wds").set_value("1.0")
    at.run()
    at.button(key="grok_sweep_start").click().run()
    _wait(at, lambda a: any(run.checkpoint_steps() for run in list_runs()), 60)
    at.button(key="grok_sweep_stop").click().run()
    _wait(at, lambda a: not any(b.key == "grok_sweep_stop" for b in a.button), 30)
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = list_runs()  # both made when the sweep started; the second never trained
    (trained,) = [run for run in runs if run.checkpoint_steps()]
    assert trained.status()["state"] == "stopped" and trained.status()["step"] == trained.checkpoint_steps()[-1]
    assert len(runs) == 2 and not [run for run in runs if run.status().get("state") == "running"]


def test_llm_preset_trains_and_exports_a_checkpoint_for_the_first_tab(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = AppTest.from_function(_tab_app, default_timeout=60)
    at.run()
    at.button(key="grok_llm_preset").click().run()
    assert at.selectbox(key="grok_model").value == "llm" and at.number_input(key="grok_layers").value == 4
    assert any("one-hot MLP default takes about" in c.value for c in at.caption)
    assert not any("under a minute" in c.value for c in at.caption)
    at.number_input(key="grok_p").set_value(7)
    at.number_input(key="grok_steps").set_value(20)
    at.number_input(key="grok_eval").set_value(10)
    at.number_input(key="grok_d_model").set_value(16)
    at.number_input(key="grok_d_mlp").set_value(32)
    at.checkbox(key="grok_suppress").check()
    at.run()
    assert not at.exception and not at.error
    at.button(key="grok_start").click().run()
    _wait(at, lambda a: len(a.success) > 0, 120)
    assert not at.exception
    assert "super weight (scan + causal" in at.success[0].value
    at.selectbox(key="grok_step").set_value(20).run()  # the selected checkpoint is the one exported
    at.button(key="grok_export").click().run()
    folder = next(s.value for s in at.success if "Other (HF id or local folder)" in s.value)
    path = Path(folder.split("`")[1])
    assert (path / "config.json").is_file() and path.name == "step_0000020"
