"""The grokking tab as a person meets it: it leads with a figure, a run one started is found again in a new
tab (progress while it trains, what it kept once stopped), the progress says what the job is doing, a stopped
run's note, tiles and summary agree, and every table and legend is in words (no None, no raw column names)."""

from __future__ import annotations

import json
import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from engine.grokking.config import GrokConfig

SETTINGS = {"grok_p": "23", "grok_frac": "0.3", "grok_steps": "50000", "grok_eval": "10"}  # does not grok soon
PHASES = re.compile(
    r"^(Starting the training process|Building the data set and the model|Loading checkpoint \d+"
    r"|Training: step \d+ of at most \d+, (about [\d.]+ (s|min) left|estimating the time left…)"
    r"|Stopping at step \d+)"
)
RAW = ("max_ppl_ratio_test", "bos_over_median", "sink_share_max", "onset_step", "grok_95_step", "memorisation_step")


def _tab_app():
    from ui.grokking_view import render

    render()


def _open(params: dict[str, str], key: str | None = None) -> AppTest:
    """The tab opened with these query parameters, as the person whose owner key is `key` (None: a new one)."""
    at = AppTest.from_function(_tab_app, default_timeout=60)
    if key is not None:
        at.session_state["_lab_owner_key"] = key
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _wait(at: AppTest, done, seconds: float = 60.0) -> AppTest:
    end = time.monotonic() + seconds
    while not done(at) and time.monotonic() < end:
        time.sleep(0.5)
        at.run()
    return at


def _order(at: AppTest) -> list[str]:
    """The element types of the tab, top to bottom."""

    def walk(node, out: list[str]) -> list[str]:
        for child in getattr(node, "children", {}).values():
            out.append(f"{getattr(child, 'type', '')}:{getattr(child, 'key', '') or ''}")
            walk(child, out)
        return out

    return walk(at.main, [])


def _ancestors(at: AppTest, key: str) -> list[str] | None:
    """The block types around the element of `key`, outermost first (None: no such element)."""

    def find(node, path: list[str]) -> list[str] | None:
        for child in getattr(node, "children", {}).values():
            if getattr(child, "key", None) == key:
                return path
            found = find(child, [*path, str(getattr(child, "type", ""))])
            if found is not None:
                return found
        return None

    return find(at.main, [])


def _leads_with_a_chart(at: AppTest) -> bool:
    order = _order(at)
    charts = [i for i, e in enumerate(order) if "vega_lite_chart" in e]
    form = order.index("number_input:grok_p")
    return bool(charts) and charts[0] < form


def _progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def _has_stop(at: AppTest) -> bool:
    return any(b.key == "grok_stop" for b in at.button)


def _cells(at: AppTest) -> list:
    return [v for d in at.dataframe for v in d.value.astype(object).to_numpy().ravel().tolist()]


def test_a_fresh_tab_leads_with_a_preview_above_the_form(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = _open({})
    assert _leads_with_a_chart(at)  # (before: nothing to see until a run, the form first)
    assert not any("Press Start to train" in i.value for i in at.info)


def _started(tmp_path, monkeypatch) -> AppTest:
    """A new person's tab with SETTINGS, Start pressed."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    at = _open(SETTINGS)
    at.button(key="grok_start").click().run()
    assert not at.exception
    return at


def _training(at: AppTest) -> bool:
    return _has_stop(at) and not any("No evaluation" in i.value for i in at.info)


def test_the_progress_says_what_the_job_is_doing(tmp_path, monkeypatch):
    """Starting the process, building or loading, then steps with the time left or "estimating": never "step 0"
    with no word for the 45 s before the first row, nor a time left grown from the wait."""
    at = _started(tmp_path, monkeypatch)
    seen = list(_progress_texts(at))
    end = time.monotonic() + 90
    while not any(t.startswith("Training: step") for t in seen) and time.monotonic() < end:
        time.sleep(0.5)
        seen += _progress_texts(at.run())
    assert seen and all(PHASES.match(t) for t in seen), seen
    assert seen[0].startswith(("Starting the training process", "Building the data set"))
    assert any(t.startswith("Training: step") for t in seen)
    at.button(key="grok_stop").click().run()


def test_a_run_is_found_again_by_its_person(tmp_path, monkeypatch):
    """A new tab with the same settings and no ?run=: the person's run with its progress and Stop (before:
    "Press Start to train"); someone else with the same settings sees nothing of it."""
    first = _started(tmp_path, monkeypatch)
    key = first.session_state["_lab_owner_key"]
    again = _open(SETTINGS, key)
    assert not any("Press Start to train" in i.value for i in again.info)
    assert _has_stop(again) and _progress_texts(again)
    assert any("your run, found again" in c.value for c in again.caption)
    other = _open(SETTINGS)
    assert not _has_stop(other) and not other.warning and not _progress_texts(other)
    _wait(again, _training, 90)
    assert _leads_with_a_chart(again)  # its curves lead the tab
    again.button(key="grok_stop").click().run()  # the person stops it from the new tab
    _wait(again, lambda a: any("Press Start to resume" in w.value for w in a.warning), 60)
    assert any("Press Start to resume" in w.value for w in _open(SETTINGS, key).warning)  # found again, stopped


def test_a_stopped_run_says_the_same_step_in_its_note_tiles_and_summary(tmp_path, monkeypatch):
    """After Stop: "stopped at step 387" came with a tile "Last step 350" and "did not grok by step 350"; now the
    note names the last checkpoint kept (where Start resumes) and the last evaluation the tiles and summary show."""
    at = _started(tmp_path, monkeypatch)
    _wait(at, _training, 90)
    at.button(key="grok_stop").click().run()
    _wait(at, lambda a: any("Press Start to resume" in w.value for w in a.warning), 60)
    warning = next(w.value for w in at.warning if "Press Start to resume" in w.value)
    step = int(re.search(r"Stopped at step (\d+):", warning).group(1))
    evaluated = int(re.search(r"the curves and the summary end at step (\d+)", warning).group(1))
    (tile,) = [m for m in at.metric if m.label == "Last evaluated step"]
    assert int(tile.value) == evaluated <= step
    assert f"checkpoint {step} is the last kept" in warning
    from engine.grokking.runs import list_runs

    (run,) = list_runs()
    assert run.checkpoint_steps()[-1] == step and int(run.metrics()["step"].iloc[-1]) == evaluated
    summary = at.success[0].value
    assert f"did not grok by step {evaluated}" in summary
    if evaluated != step:
        assert summary.startswith(f"Up to step {evaluated} (the last evaluation before the stop at step {step})")


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    """A finished tiny LLM-shaped run made outside the server (everyone may read it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("grok_llm_labels")))
        from engine.grokking import analysis as ga
        from engine.grokking import runs

        config = GrokConfig(
            model="llm",
            p=7,
            n_layers=4,
            d_model=16,
            n_heads=4,
            d_mlp=32,
            steps=20,
            eval_every=10,
            checkpoint_every=10,
        )
        ga.run_experiment(config, threads=1)
        yield runs.run_for(config)


def test_every_legend_and_table_is_in_words(llm_run):
    at = _open({"run": llm_run.run_id})
    charts = list(at.get("vega_lite_chart")) + list(at.get("arrow_vega_lite_chart"))
    assert len(charts) >= 7
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    shown = json.dumps([json.loads(c.proto.spec) for c in charts])
    shown += " ".join(convert_arrow_bytes_to_pandas_df(d.data.data).to_csv() for c in charts for d in c.proto.datasets)
    for d in at.dataframe:
        shown += " " + d.value.to_csv()
    for raw in RAW:
        assert raw not in shown, raw
    assert "attention share on BOS, largest over layers" in shown and "largest over layers" in shown
    cells = _cells(at)
    assert cells and not [c for c in cells if c is None or c != c or c in ("None", "nan", "")]
    around = _ancestors(at, "grok_export")  # "Open checkpoint 20 in the first tab": a row of its own, never cut
    assert around is not None and "column" not in around, around


def test_a_running_sweep_is_found_again_by_its_person(tmp_path, monkeypatch):
    """A new tab of the same person, without the sweep's inputs: their running sweep, its progress and Stop."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    first = _open({**SETTINGS, "grok_sweep_seeds": "1,2", "grok_sweep_wds": "1.0"})
    first.button(key="grok_sweep_start").click().run()
    assert not first.exception and any(b.key == "grok_sweep_stop" for b in first.button)
    again = _open({}, first.session_state["_lab_owner_key"])
    assert any(b.key == "grok_sweep_stop" for b in again.button)
    assert any("sweep that is still running" in c.value for c in again.caption)
    assert not any(b.key == "grok_sweep_stop" for b in _open({}).button)  # someone else: nothing of it
    again.button(key="grok_sweep_stop").click().run()
    _wait(again, lambda a: not any(b.key == "grok_sweep_stop" for b in a.button), 60)
