"""The grokking tab as issue 13 wants it: a bad field shows its reason under it and hides nothing else, the
view lives in the URL (a reload or a copied link shows the same run, settings and checkpoint), a click on a
curve selects a checkpoint (tested on the handler: AppTest cannot click a chart), labels are never cut."""

from __future__ import annotations

import json

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from engine.grokking.config import GrokConfig, is_prime, nearest_prime
from ui.grokking_charts import NEWEST

CONFIG = GrokConfig(p=23, train_frac=0.8, steps=200, eval_every=20, checkpoint_every=80)
URL_SETTINGS = {"grok_p": "23", "grok_frac": "0.8", "grok_steps": "200", "grok_eval": "20"}


def _tab_app():
    from ui.grokking_view import render

    render()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache holding one finished run made outside the server (readable by everyone)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("grok_ux_cache")))
        from engine.grokking import analysis as ga
        from engine.grokking import runs

        ga.run_experiment(CONFIG, threads=1)
        run = runs.run_for(CONFIG)
        assert run.is_finished() and run.checkpoint_steps() == [0, 80, 160, 200]
        yield run


def _open(params: dict[str, str]) -> AppTest:
    at = AppTest.from_function(_tab_app, default_timeout=60)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list:
    return list(at.get("vega_lite_chart")) + list(at.get("arrow_vega_lite_chart"))


def _chart_frames(chart) -> list:
    return [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]


def test_a_checkpoint_click_picks_the_nearest_checkpoint():
    from ui.grokking_charts import PICK, step_from_selection

    steps = [0, 80, 160, 200]
    assert step_from_selection({"selection": {PICK: [{"step": 100.0}]}}, steps) == 80
    assert step_from_selection({"selection": {PICK: [{"step": 130}]}}, steps) == 160
    assert step_from_selection({"selection": {PICK: [{"step": 120}]}}, steps) == 80  # a tie: the earlier one
    assert step_from_selection({"selection": {PICK: [{"step": 5000}]}}, steps) == 200
    assert step_from_selection({"selection": {PICK: []}}, steps) is None  # a click on nothing
    assert step_from_selection({"selection": {}}, steps) is None
    assert step_from_selection(None, steps) is None
    assert step_from_selection({"selection": {PICK: [{"step": 100}]}}, []) is None  # no checkpoint yet


def test_prime_suggestions_stay_within_the_fields_range():
    """The page shows the engine's refusal (one rule for the suggestion), and it stays within the field's range."""
    from engine.core.errors import FieldError
    from engine.grokking.config import validate
    from ui.grokking_form import P_MAX

    assert nearest_prime(2000) == 1999  # not 2003: the field stops at 2000
    assert nearest_prime(12) == 11 and nearest_prime(14) == 13 and nearest_prime(3) == 3
    for p in range(3, P_MAX + 1, 7):
        q = nearest_prime(p)
        assert is_prime(q) and 3 <= q <= P_MAX
    with pytest.raises(FieldError, match="try 1999") as refused:
        validate(GrokConfig(task="div", p=2000))
    assert refused.value.field == "p"
    validate(GrokConfig(task="div", p=13))
    validate(GrokConfig(task="add", p=12))


def test_the_url_restores_run_settings_and_checkpoint(cache):
    at = _open({"run": cache.run_id, **URL_SETTINGS, "grok_step": "80"})
    assert at.number_input(key="grok_p").value == 23 and at.number_input(key="grok_steps").value == 200
    assert at.selectbox(key="grok_step").value == 80
    assert any(s.value == "Checkpoint at step 80" for s in at.subheader)
    assert not at.warning  # the settings are the run's: no "settings differ"
    assert at.success and "Train accuracy reached" in at.success[0].value  # the run's summary, from disk
    # the red rule of the selected checkpoint is on the curves
    frames = [f for c in _charts(at) for f in _chart_frames(c) if "event" in f]
    assert frames and all(f.loc[f["event"] == "selected checkpoint", "step"].tolist() == [80] for f in frames)
    # a link with the run only (`?run=<id>`) fills the form with the run's settings
    at = _open({"run": cache.run_id})
    assert at.number_input(key="grok_p").value == 23 and at.number_input(key="grok_eval").value == 20
    assert at.selectbox(key="grok_step").value == NEWEST  # default: the newest checkpoint, followed while it trains
    assert any(s.value == "Checkpoint at step 200" for s in at.subheader)
    assert not at.warning


def _picker_script():
    import streamlit as st

    from ui.grokking_run_panel import checkpoint_picker

    st.session_state["n"] = st.session_state.get("n", 0) + 1  # one more checkpoint every rerun, as while training
    st.write(f"shown {checkpoint_picker(list(range(0, 100 * st.session_state['n'], 100)))}")


def test_the_checkpoint_picker_follows_the_newest_until_one_is_picked():
    at = AppTest.from_function(_picker_script).run()
    assert at.markdown[0].value == "shown 0" and at.selectbox(key="grok_step").value == NEWEST
    at.run().run()  # three checkpoints: the view follows without the page writing a step into the widget
    assert at.markdown[0].value == "shown 200" and at.selectbox(key="grok_step").value == NEWEST
    at.selectbox(key="grok_step").set_value(100).run()
    at.run()
    assert at.markdown[0].value == "shown 100"  # a picked checkpoint stays while newer ones arrive
    at.selectbox(key="grok_step").set_value(NEWEST).run()
    assert at.markdown[0].value == "shown 500"  # six reruns: checkpoints 0 to 500


def test_picking_a_checkpoint_updates_its_detail(cache):
    at = _open({"run": cache.run_id, **URL_SETTINGS})
    at.selectbox(key="grok_step").set_value(160).run()
    assert any(s.value == "Checkpoint at step 160" for s in at.subheader)
    detail = next(d.value for d in at.dataframe if "max/median" in d.value.columns)
    from engine.grokking import runs

    measures = runs.run_for(CONFIG).measures()
    expected = measures[measures["step"] == 160]["max_over_median"].round(6).tolist()
    assert detail["max/median"].round(6).tolist() == expected


def test_a_bad_field_keeps_the_run_and_disables_only_start(cache):
    at = _open({"run": cache.run_id, **URL_SETTINGS})
    n_charts = len(_charts(at))
    assert n_charts >= 7 and not at.button(key="grok_start").disabled
    at.number_input(key="grok_steps").set_value(0).run()
    assert not at.exception
    assert any("Max steps must be >= 1" in e.value for e in at.error)
    assert at.button(key="grok_start").disabled  # Start is off ...
    assert len(_charts(at)) == n_charts  # ... the run's charts stay
    assert at.success and "Train accuracy reached" in at.success[0].value  # and its summary
    assert any(s.key == "grok_reopen" for s in at.selectbox)  # and the run list
    assert any(t.key == "grok_sweep_seeds" for t in at.text_input)  # and the sweep's inputs
    assert at.button(key="grok_sweep_start").disabled  # the sweep runs these settings: off too
    # an out-of-range p for ÷: the reason under the field, a suggestion the field accepts
    at.number_input(key="grok_steps").set_value(200)
    at.selectbox(key="grok_task").set_value("div")
    at.number_input(key="grok_p").set_value(2000)
    at.run()
    errors = " ".join(e.value for e in at.error)
    assert "2000 is not prime (try 1999)" in errors and "2003" not in errors
    assert len(_charts(at)) == n_charts
    at.number_input(key="grok_p").set_value(2001).run()
    assert any("p must be between 3 and 2,000" in e.value for e in at.error)
    assert at.button(key="grok_start").disabled


def test_labels_are_not_cut_and_every_chart_can_be_saved(cache):
    at = _open({"run": cache.run_id, **URL_SETTINGS})
    charts = _charts(at)
    specs = [json.loads(c.proto.spec) for c in charts]
    text = json.dumps(specs)
    assert "per matr" not in text.replace("per matrix", "")  # no cut title
    assert "Weight outliers: max|w| / median|w| per matrix" in text
    for spec in specs:
        dumped = json.dumps(spec)
        assert '"labelLimit": 0' in dumped and '"titleLimit": 0' in dumped
        assert '"title": "events"' in dumped  # the event lines have a legend
    downloads = {d.key for d in at.get("download_button")}
    for key in ("grok_chart_acc", "grok_chart_loss", "grok_chart_norm", "grok_chart_m_ratio", "grok_chart_m_act"):
        assert {f"{key}_png", f"{key}_svg", f"{key}_csv"} <= downloads
    assert "one-hot MLP" in at.selectbox(key="grok_model").options
    text = " ".join(m.value for m in at.markdown)
    assert "under a minute" not in text and "about 20 s on an idle 2-core CPU" in text


def test_every_form_field_carries_its_value_as_its_default(cache):
    """A browser that mounts a field without the run that set its value (a busy server stops runs for newer
    ones) shows the widget's default and sends it back: a field whose default is None came back empty
    ("Layers: enter a number.", found by benchmarks/soak). Every number field of a fresh form has a default
    equal to the value the server uses, and so do the LLM-shaped model's fields."""
    at = _open({})
    fields = [n for n in at.number_input if n.key.startswith("grok_")]
    assert {"grok_layers", "grok_p", "grok_steps"} <= {n.key for n in fields}
    for field in fields:
        assert field.proto.HasField("default"), f"{field.key} has no default"
        assert field.proto.default == field.value, field.key
    at.button(key="grok_llm_preset").click().run()
    assert at.selectbox(key="grok_model").value == "llm"
    llm_fields = {n.key: n for n in at.number_input if n.key in ("grok_d_model", "grok_heads", "grok_d_mlp")}
    assert len(llm_fields) == 3
    for key, field in llm_fields.items():
        assert field.proto.HasField("default") and field.proto.default == field.value, key


def test_the_engines_refusal_shows_under_the_field_it_names():
    """validate's FieldError names the field (here the heads, which must split d_model into even halves for
    RoPE): its message is drawn right under that field, not above Start."""
    at = _open({})
    at.button(key="grok_llm_preset").click().run()
    at.number_input(key="grok_d_model").set_value(30).run()
    assert at.button(key="grok_start").disabled

    def walk(node, out: list) -> list:
        for child in getattr(node, "children", {}).values():
            out.append(child)
            walk(child, out)
        return out

    order = walk(at.main, [])
    heads = next(i for i, e in enumerate(order) if getattr(e, "key", None) == "grok_heads")
    after = order[heads + 1]
    assert after.type == "error", order[heads : heads + 3]
    assert "must split into 4 heads of an even size" in after.value


def test_the_sink_task_preset_sets_the_studys_control_arm_and_its_link():
    """The preset of the task that needs a sink (engine.grokking.config.SINK_TASK_PRESET) fills every field it
    names, the configuration is valid (Start on), and the link carries the markov sequence."""
    from engine.grokking.config import SINK_TASK_PRESET

    at = _open({})
    at.button(key="grok_sink_preset").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="grok_model").value == "llm"
    assert at.selectbox(key="grok_context").value == "markov"
    numbers = {n.key: n.value for n in at.number_input}
    assert numbers["grok_seq_len"] == SINK_TASK_PRESET["seq_len"] and numbers["grok_p"] == SINK_TASK_PRESET["p"]
    assert numbers["grok_layers"] == SINK_TASK_PRESET["n_layers"] and numbers["grok_lr"] == SINK_TASK_PRESET["lr"]
    assert numbers["grok_warmup"] == SINK_TASK_PRESET["warmup_steps"]
    assert numbers["grok_clip"] == SINK_TASK_PRESET["grad_clip"]
    assert not at.button(key="grok_start").disabled
    link = {k: v for k, v in at.run().query_params.items()}
    assert "markov" in str(link.get("grok_context")), sorted(link)
    colleague = _open(link)  # the link opens the same settings
    assert colleague.selectbox(key="grok_context").value == "markov"
    assert {n.key: n.value for n in colleague.number_input}["grok_seq_len"] == SINK_TASK_PRESET["seq_len"]
    at.number_input(key="grok_seq_len").set_value(200).run()  # past the model's positions: refused under it
    assert at.button(key="grok_start").disabled
    assert any("Tokens per sequence" in e.value for e in at.error)
