"""The attention page: the view in the URL (a link or a reload restores it), the layer and
head kept while the prompt is cleared, a click on a head selects it (the handler; the browser test clicks),
long prompts readable (token window, thinned labels), the token limit's messages true, bad numbers refused
next to their field with the results kept, figures first, and progress from the engine."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from engine.attention import self_explain
from engine.attention.maps import AttentionResult, run_attention
from ui.attention_charts import (
    HEAD_PICK,
    MAX_LABELS,
    head_chart,
    head_frame,
    head_from_selection,
    model_view_chart,
    scores_chart,
    thinned,
)

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "3_Attention_self_interpretation.py")
PROMPT = "The cat sat on the mat. The cat sat"


def tiny_app(model_dir, **params: str | list[str]) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["lab_model_choice"] = (str(model_dir), "none")
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def description(at: AppTest) -> str:
    return at.main.get("code")[0].value if at.main.get("code") else ""


def test_a_link_restores_prompt_layer_head_and_window(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT, att_layer="1", att_head="2", att_window=["2", "6"])
    assert at.text_area(key="att_prompt").value == PROMPT
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (1, 2)
    assert any("layer 1, head 2" in m.value for m in at.markdown)
    assert "cat@" in description(at)  # the description of the linked prompt, not the default one
    assert at.slider(key="att_window").value == (2, 6)
    assert any(s.value.startswith("Selected: **L1") and "H2" in s.value for s in at.caption)


def test_clearing_the_prompt_keeps_layer_and_head(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir)
    at.selectbox(key="att_layer").set_value(1)
    at.selectbox(key="att_head").set_value(3)
    at.run()
    at.text_area(key="att_prompt").set_value("  ").run()
    assert not at.exception and any("Empty prompt" in w.value for w in at.warning)
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (1, 3)
    assert not description(at)  # nothing stale of the previous prompt
    at.text_area(key="att_prompt").set_value(PROMPT).run()
    assert (at.selectbox(key="att_layer").value, at.selectbox(key="att_head").value) == (1, 3)
    assert any("layer 1, head 3" in m.value for m in at.markdown)


def test_a_bad_token_limit_is_refused_under_the_field_and_the_maps_stay(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT)
    before = description(at)
    assert before
    at.number_input(key="att_tokens").set_value(1).run()
    assert not at.exception
    assert any("token limit must be a whole number of at least 2" in e.value for e in at.error)
    assert any("last valid token limit, 64" in c.value for c in at.caption)
    assert description(at) == before  # the view on screen is kept, and said to be the last valid one


def test_the_truncation_note_names_the_real_limit(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt="one two three four five six seven eight nine ten", att_tokens="6")
    note = next(w.value for w in at.warning if "truncated" in w.value)
    assert "first 6 of" in note and "raise the Token limit (this server allows up to 256)" in note
    long = " ".join(["the cat sat on the mat"] * 60)  # over 256 tokens
    at.text_area(key="att_prompt").set_value(long)
    at.number_input(key="att_tokens").set_value(256)
    at.run()
    assert not at.exception
    note = next(w.value for w in at.warning if "truncated" in w.value)
    assert "first 256 of" in note and "256 tokens is this server's maximum (attention_tokens)" in note
    assert "raise" not in note
    maps_before = description(at)
    at.number_input(key="att_tokens").set_value(1000).run()  # over the limit: said under the field, then refused
    assert any("Over this server's limit of 256" in c.value for c in at.caption)
    assert any("attention_tokens" in e.value for e in at.error)
    # the maps on screen stay, marked as those of the last settings that worked
    assert description(at) == maps_before and at.get("vega_lite_chart")
    assert any("last prompt and token limit that worked (token limit 256" in i.value for i in at.info)


def test_a_valid_change_keeps_the_head_function_table_marked(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT)
    at.checkbox(key="att_hf_builtin").uncheck()
    at.number_input(key="att_hf_random").set_value(1)
    at.run()
    at.button(key="att_hf_run").click().run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "best label" in d.value.columns)
    assert "previous_token" not in table.columns and "best_label" not in table.columns  # columns named in words
    at.number_input(key="att_hf_random").set_value(2).run()  # valid, not run yet
    assert any("from the last run, with other prompts or settings" in i.value for i in at.info)
    pd.testing.assert_frame_equal(next(d.value for d in at.dataframe if "best label" in d.value.columns), table)


def test_a_bad_score_field_keeps_the_scores_on_screen_and_disables_the_button(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT, att_layer="1", att_head="2")
    at.number_input(key="att_score_queries").set_value(2).run()
    at.button(key="att_score_run").click().run()
    assert not at.exception and not at.error
    charts = len(at.get("vega_lite_chart"))
    assert any("beats the no-explanation control on" in m.value for m in at.markdown)  # one short verdict line
    at.number_input(key="att_score_queries").set_value(50).run()
    assert any("Query tokens per held-out prompt must be a whole number between 2 and 20" in e.value for e in at.error)
    assert next(b for b in at.button if b.key == "att_score_run").disabled
    assert any("top1 agreement" in d.value.columns for d in at.dataframe)  # the last scores stay
    assert len(at.get("vega_lite_chart")) == charts
    assert any("from the last run" in i.value for i in at.info)


def test_a_reload_gets_the_explanation_back_from_the_store(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT, att_layer="0", att_head="1")
    at.button(key="att_explain").click().run()
    said = [s.value for s in at.main.success]
    assert len(said) == 1
    again = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT, att_layer="0", att_head="1")  # a new session, same link
    assert [s.value for s in again.main.success] == said
    other = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT, att_layer="1", att_head="1")  # another head: not it
    assert not other.main.success


def test_no_raw_sentencepiece_markers_in_tables(embedded_lm):
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.query_params["att_prompt"] = "Hello world, hello again world"
    at.run()
    assert not at.exception
    for frame in at.dataframe:
        text = frame.value.astype(str).to_string()
        assert "\u2581" not in text


# ---------------------------------------------------------------------------------------------
# Charts and handlers (AppTest cannot click a chart: the handler is tested directly)


def test_head_from_selection_reads_streamlits_chart_state():
    state = {"selection": {HEAD_PICK: [{"layer_i": 3, "head_i": 1}]}}
    assert head_from_selection(state) == (3, 1)
    assert head_from_selection({"selection": {HEAD_PICK: [{"layer": 2, "head": 0}]}}) == (2, 0)
    assert head_from_selection({"selection": {HEAD_PICK: []}}) is None
    assert head_from_selection({"selection": {}}) is None and head_from_selection(None) is None


def fake_result(n: int = 256, layers: int = 3, heads: int = 2) -> AttentionResult:
    rng = np.random.default_rng(0)
    maps = np.tril(rng.random((layers, heads, n, n))).astype(np.float32)
    maps /= maps.sum(-1, keepdims=True)
    tokens = [f"t{i}" for i in range(n)]
    return AttentionResult(
        "fake", "", list(range(n)), tokens, tokens, tokens, maps, ["sliding_attention"] * layers, heads, 4, n, n
    )


def test_model_view_is_clickable_and_frames_the_selected_head():
    result = fake_result(n=40)
    spec = model_view_chart(result, ("fake", 40), False, True, selected=(2, 1)).to_dict()
    layers = spec["spec"]["layer"]
    params = [p for layer in layers for p in layer.get("params", [])] + spec.get("params", [])
    pick = next(p for p in params if p["name"] == HEAD_PICK)
    assert pick["select"]["fields"] == ["layer_i", "head_i"] and pick["select"]["on"] == "click"
    frame = next(layer for layer in layers if layer["mark"]["type"] == "rect" and layer["mark"].get("filled") is False)
    assert any("datum.layer_i == 2 && datum.head_i == 1" in str(t.get("filter")) for t in frame["transform"])
    assert spec["spec"]["width"] >= 50  # 3 layers fill the page width (capped at 140 px a head)


def test_long_prompts_get_a_token_window_and_thinned_labels():
    result = fake_result(n=256)
    with alt.data_transformers.disable_max_rows():  # as Streamlit and the PNG / SVG export do
        spec = head_chart(result, 0, 0, False, "0 to visible max").to_dict()
    x_labels, y_labels = spec["encoding"]["x"]["axis"]["values"], spec["encoding"]["y"]["axis"]["values"]
    assert len(x_labels) <= MAX_LABELS and len(y_labels) <= MAX_LABELS and y_labels[0] == "t0"
    assert spec["encoding"]["x"]["axis"]["labelLimit"] == 0  # never cut
    window = head_frame(result, 0, 0, False, (100, 140))
    assert window["i"].between(100, 140).all() and window["j"].between(100, 140).all()
    assert len(window) == 41 * 42 // 2
    assert len(thinned([str(i) for i in range(30)])) == 30 and len(thinned([str(i) for i in range(256)])) <= 40


def _evaluation(layer: int, head: int, self_top1: float, control_top1: float) -> self_explain.HeadEvaluation:
    scores = {
        "self-explanation": self_explain.PredictionScore(self_top1, 0.5, 8),
        "detector label": self_explain.PredictionScore(0.4, 0.3, 8),
        "baseline: BOS": self_explain.PredictionScore(0.3, 0.1, 8),
        "baseline: uniform": self_explain.PredictionScore(0.1, float("nan"), 8),
        self_explain.CONTROL: self_explain.PredictionScore(control_top1, 0.2, 8),
    }
    return self_explain.HeadEvaluation(layer, head, "attends to BOS", "bos_sink", scores, self_explain.verdict(scores))


def test_scores_chart_and_verdict_line():
    from ui.attention_scoring import verdict_line

    evaluations = [_evaluation(1, 2, 0.9, 0.2), _evaluation(0, 1, 0.2, 0.2)]
    table = self_explain.evaluations_table(evaluations)
    spec = scores_chart(table).to_dict()
    assert spec["encoding"]["x"]["field"] == "layer_head" and spec["encoding"]["xOffset"]["field"] == "predictor"
    assert spec["encoding"]["color"]["scale"]["domain"][:2] == ["self-explanation", "simulator, no explanation"]
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert set(data["layer_head"]) == {"1.2", "0.1"} and len(data) == 10
    assert verdict_line(evaluations).startswith("The self-explanation beats the no-explanation control on 1 of 2")


# ---------------------------------------------------------------------------------------------
# Progress from the engine (numbers unchanged)


def _calls() -> tuple[list, callable]:
    seen = []
    return seen, lambda done, total, message: seen.append((done, total, message))


def test_explaining_and_scoring_report_progress_without_changing_results(tiny_gemma3):
    result = run_attention(tiny_gemma3, PROMPT)
    seen, progress = _calls()
    with_bar = self_explain.explain_head(tiny_gemma3, result, 1, 2, progress=progress)
    assert with_bar.text == self_explain.explain_head(tiny_gemma3, result, 1, 2).text
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] and len(seen) >= 3
    heldout = self_explain.run_heldout(tiny_gemma3, self_explain.heldout_prompts(tiny_gemma3.tokenizer))
    labels = {(1, 2): "previous_token", (0, 0): "bos_sink"}
    seen, progress = _calls()
    kw = dict(heldout=heldout, max_queries=2, explanations={(0, 0): "It attends to the first token."})
    scored = self_explain.explain_and_score(tiny_gemma3, result, [(1, 2), (0, 0)], labels, progress=progress, **kw)
    plain = self_explain.explain_and_score(tiny_gemma3, result, [(1, 2), (0, 0)], labels, **kw)
    assert [e.scores for e in scored] == [e.scores for e in plain]
    total = 1 + 2 * len(heldout) * 2  # one explanation written (one reused), two simulator runs per held-out prompt
    assert [d for d, _, _ in seen] == list(range(total + 1)) and {t for _, t, _ in seen} == {total}


def test_a_very_long_prompt_is_left_out_of_the_link_with_a_note(tiny_gemma3_dir):
    at = tiny_app(tiny_gemma3_dir, att_prompt=PROMPT)
    long = " ".join(f"word{i}" for i in range(3000))
    at.text_area(key="att_prompt").set_value(long).run()
    assert not at.exception
    assert "att_prompt" not in at.query_params  # never a link of tens of kB
    assert any("too long for a link" in c.value for c in at.caption)
    at.text_area(key="att_prompt").set_value(PROMPT + " again").run()  # a short one is in the link again
    assert at.query_params.get("att_prompt") == PROMPT + " again"
    assert not any("too long for a link" in c.value for c in at.caption)
