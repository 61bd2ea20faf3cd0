"""Explain -> simulate -> score: exact scores of hand-made predictions, detector rules, verdicts,
the LM simulator and explanation prompts (base, chat, vision-language) on tiny and real models."""

from __future__ import annotations

import numpy as np
import pytest

from engine.attention import self_explain
from engine.attention.maps import run_attention
from engine.core.errors import LabError


def test_rule_predictions_follow_detector_labels():
    tokens = [2, 5, 7, 8, 5, 9]
    q = [1, 2, 3, 4, 5]
    prev = self_explain.rule_prediction("previous_token", tokens, q)
    assert all(int(np.argmax(prev[i])) == i - 1 and prev[i].sum() == 1 for i in q)
    ind = self_explain.rule_prediction("induction", tokens, q)
    assert int(np.argmax(ind[4])) == 2 and int(np.argmax(ind[3])) == 0  # no earlier copy of t_3: BOS
    dup = self_explain.rule_prediction("duplicate_token", tokens, q)
    assert int(np.argmax(dup[4])) == 1 and int(np.argmax(dup[5])) == 0
    assert int(np.argmax(self_explain.rule_prediction("self", tokens, q)[3])) == 3
    assert int(np.argmax(self_explain.rule_prediction("bos_sink", tokens, q)[5])) == 0
    uni = self_explain.rule_prediction("uniform", tokens, q)
    assert uni[3].tolist() == pytest.approx([0.25] * 4)
    assert self_explain.query_positions(6, 10) == [1, 2, 3, 4, 5]
    assert self_explain.query_positions(101, 5) == [1, 26, 51, 75, 100]  # rows 1..100 at linspace(0, 99, 5) rounded


def test_score_prediction_top1_ties_and_correlation():
    a = np.array([[1.0, 0, 0], [0.2, 0.8, 0], [0.1, 0.6, 0.3]])
    perfect = {1: a[1, :2].copy(), 2: a[2].copy()}
    s = self_explain.score_prediction(a, perfect)
    assert s.top1 == 1.0 and s.correlation == pytest.approx(1.0) and s.n_queries == 2
    # uniform: row 1 ties 2 ways (1/2 credit), row 2 ties 3 ways (1/3)
    uni = {1: np.full(2, 0.5), 2: np.full(3, 1 / 3)}
    assert self_explain.score_prediction(a, uni).top1 == pytest.approx((1 / 2 + 1 / 3) / 2)
    bos = {1: np.array([1.0, 0]), 2: np.array([1.0, 0, 0])}
    sb = self_explain.score_prediction(a, bos)
    real = np.array([0.2, 0.8, 0.1, 0.6, 0.3])
    pred = np.array([1.0, 0, 1, 0, 0])
    assert sb.top1 == 0.0 and sb.correlation == pytest.approx(np.corrcoef(real, pred)[0, 1])


def scores(self_, det, bos, uni, control=None):
    top1 = {"self-explanation": self_, "detector label": det, "baseline: BOS": bos, "baseline: uniform": uni}
    if control is not None:
        top1[self_explain.CONTROL] = control
    return {name: self_explain.PredictionScore(value, float("nan"), 0) for name, value in top1.items()}


def test_verdicts():
    assert self_explain.verdict(scores(0.9, 0.5, 0.3, 0.1)) == "self-explanation predicts best"
    assert self_explain.verdict(scores(0.6, 0.9, 0.3, 0.1)).startswith("self-explanation beats the trivial baselines")
    assert self_explain.verdict(scores(0.3, 0.9, 0.3, 0.1)).startswith("detector label predicts better")
    assert self_explain.verdict(scores(0.3, 0.3, 0.3, 0.1)) == "nothing beats the trivial baseline"
    v = self_explain.verdict(scores(0.9, 0.99, 0.3, 0.1, control=0.88))
    assert v.startswith("explanation adds nothing over the simulator's prior") and "detector" in v


def test_explain_prompt_template_and_modes():
    assert (
        "{description}" in self_explain.EXPLAIN_COMPLETION_TEMPLATE
        and self_explain.EXPLAIN_COMPLETION_TEMPLATE.endswith(self_explain.COMPLETION_PREFIX)
    )
    text = self_explain.build_explain_prompt("A {description} B", "DESC")
    assert text == "A DESC B"
    assert "DESC" not in self_explain.build_explain_prompt("A {description} B", "DESC", mode="image")
    assert "DESC" in self_explain.build_explain_prompt("A {description} B", "DESC", mode="text+image")
    with pytest.raises(LabError):
        self_explain.build_explain_prompt("no placeholder", "DESC")


def test_simulator_and_pipeline_on_tiny_model(tiny_gemma3):
    lm = tiny_gemma3
    res = run_attention(lm, "The cat sat on the mat. The cat")
    queries = [1, 4, len(res.token_ids) - 1]
    preds = self_explain.simulate_with_lm(lm, "attends to the previous token", res, queries)
    assert sorted(preds) == queries
    for i, p in preds.items():
        assert p.shape == (i + 1,) and p.sum() == pytest.approx(1.0) and (p > 0).all()
    # identical token texts ('cat' at 2 and 9) share one candidate id, so they get equal weight
    last = preds[queries[-1]]
    assert res.tokens[2] == res.tokens[9] == "cat" and last[2] == pytest.approx(last[9])
    exp = self_explain.explain_head(lm, res, 1, 2, max_new_tokens=5)
    assert exp.text.startswith(self_explain.COMPLETION_PREFIX) and exp.mode == "text" and "1 The@1" in exp.prompt
    with pytest.raises(LabError, match="not a vision-language"):
        self_explain.explain_head(lm, res, 0, 0, mode="image")
    heldout = [run_attention(lm, "My sister planted tomatoes in the garden")]
    calls = []
    evals = self_explain.explain_and_score(
        lm,
        res,
        [(0, 1), (1, 3)],
        {(0, 1): "previous_token"},
        heldout=heldout,
        max_queries=3,
        max_new_tokens=4,
        progress=lambda k, n, what: calls.append((k, n)),
        explanations={(1, 3): "given"},
    )
    # steps: one explanation written (1.3's is given) + 2 heads x 1 held-out prompt x (explained + control)
    assert calls == [(k, 5) for k in range(6)]
    assert evals[1].explanation == "given" and evals[1].detector_label == "diffuse"
    table = self_explain.evaluations_table(evals)
    assert len(table) == 2 * 5 and set(table["predictor"]) == set(self_explain.PREDICTORS) | {self_explain.CONTROL}
    assert (table["n_queries"] == 3).all()
    # the detector rule for head 0.1 is scored exactly as score_prediction on the held-out map
    q = self_explain.query_positions(len(heldout[0].token_ids), 3)
    direct = self_explain.score_prediction(
        heldout[0].head(0, 1), self_explain.rule_prediction("previous_token", heldout[0].token_ids, q)
    )
    row = table[(table["layer.head"] == "0.1") & (table["predictor"] == "detector label")].iloc[0]
    assert row["top1_agreement"] == pytest.approx(direct.top1)


def test_chat_template_path(tiny_gemma3_dir):
    from engine.core.loading import load_model

    lm = load_model(str(tiny_gemma3_dir))
    lm.tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    assert lm.is_instruction_tuned and self_explain.default_template(lm) == self_explain.EXPLAIN_CHAT_TEMPLATE
    res = run_attention(lm, "The cat sat")
    exp = self_explain.explain_head(lm, res, 0, 0, max_new_tokens=3)
    assert exp.prompt.startswith("<|user|>") and exp.prompt.endswith("<|assistant|>")
    assert not exp.text.startswith(self_explain.COMPLETION_PREFIX)


def test_vlm_explains_from_png_heatmap(tiny_vlm_dir):
    from engine.core.loading import load_model

    lm = load_model(str(tiny_vlm_dir))
    res = run_attention(lm, "The cat sat on the mat")
    assert res.maps.shape[:2] == (2, 4)
    exp = self_explain.explain_head(lm, res, 1, 0, mode="image", max_new_tokens=3)
    assert exp.mode == "image" and "<start_of_image>" in exp.prompt and "0 \u27e8bos\u27e9 ->" not in exp.prompt
    both = self_explain.explain_head(lm, res, 1, 0, mode="text+image", max_new_tokens=3)
    assert "0 \u27e8bos\u27e9 ->" in both.prompt and self_explain.IMAGE_NOTE in both.prompt


def test_png_heatmap_renders_labels_and_values():
    from PIL import Image

    from engine.attention.png import heatmap_image, heatmap_png

    a = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0.0, 1.0, 0.0]])
    img = heatmap_image(a, ["\u27e8bos\u27e9", "cat", "sat"], cell=20)
    assert img.mode == "RGB" and img.width > 60 and img.height > 60
    png = heatmap_png(a, ["a", "b", "c"], hide_first_column=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    shown = Image.open(io.BytesIO(png)).convert("RGB")
    assert shown.width < img.width  # one column fewer


def test_real_model_detector_rule_beats_bos_on_previous_token_head(embedded_lm):
    """On held-out prompts, the previous-token rule predicts the strongest previous-token head far
    better than always-BOS, and the LM simulator runs on the real model (bounded: 3 queries)."""
    from engine.attention import head_functions

    tok = embedded_lm.tokenizer
    table = head_functions.run_prompt_set(embedded_lm, head_functions.builtin_prompts(tok, n_random=1, texts=False))
    layer, head, _ = table.ranking("previous_token", 1)[0]
    heldout = self_explain.run_heldout(embedded_lm, self_explain.heldout_prompts(tok)[:1], max_tokens=16)
    ev = self_explain.evaluate_explanation(
        embedded_lm,
        layer,
        head,
        "attends to the token just before the current one",
        "previous_token",
        heldout,
        max_queries=3,
        control=False,
    )
    assert ev.scores["detector label"].top1 >= 2 / 3
    assert ev.scores["detector label"].top1 > ev.scores["baseline: BOS"].top1
    assert 0.0 <= ev.scores["self-explanation"].top1 <= 1.0 and ev.scores["self-explanation"].n_queries == 3


def test_bad_simulation_template_is_a_lab_error(tiny_gemma3):
    res = run_attention(tiny_gemma3, "The cat sat")
    with pytest.raises(LabError, match="simulation template"):
        self_explain.simulate_with_lm(tiny_gemma3, "x", res, [1], template="{explanation} {nope}")
    preds = self_explain.simulate_with_lm(tiny_gemma3, "x", res, [2], template="{explanation} {{literal}} {token}:")
    assert preds[2].sum() == pytest.approx(1.0)
