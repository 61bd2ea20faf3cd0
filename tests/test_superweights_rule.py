"""The super-weight rule on a tiny random Llama with planted truth: a super weight that makes ~3/4 of its
spike (a smaller spike survives its zeroing, as on SmolLM2) and a late weight that cancels the massive
activation. The rule must keep the first as a candidate and label the second as cancelling; the causal
test's verdicts follow the documented rule; the positive-control report is written from a control run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_superweights import PLANT, PROMPTS, one_torch_thread, planted_llama  # noqa: F401 (autouse fixture)

from engine.core import architecture, lm_eval
from engine.core.errors import LabError
from engine.superweights import confirm as cf
from engine.superweights import controls, detect
from engine.superweights.config import ConfirmationConfig

SECOND = 43  # a second input channel of the planted row: makes the spike that survives zeroing PLANT
CANCEL_LAYER, CANCEL_COL = 3, 99  # the late cancelling weight W_3[17, 99]
CANCEL = (CANCEL_LAYER, PLANT[1], CANCEL_COL)
TEXT = "The cat sat on the mat. Summer is hot. Winter is cold. Apple Inc. is a tech company. " * 6


def planted_with_cancelling():
    """PLANT (layer 1 W[17, 42] = 200) plus W[17, 43] = 60 on an input 43 equal to input 42 (same gate and up
    rows), and in layer 3 an MLP channel 99 that reads residual channel 17 (gate and up rows = e_17) with
    W_3[17, 99] set to remove 90% of the massive activation entering layer 3 at the spike token. (Behind
    RMSNorm, channel 99 reads about the same value wherever channel 17 dominates the residual, so it pushes
    back a fixed amount: 90% at the spike token, more where a smaller massive activation enters.)"""
    lm = planted_llama()
    layer, row, col = PLANT
    mlp1 = lm.model.model.layers[layer].mlp
    mlp3 = lm.model.model.layers[CANCEL_LAYER].mlp
    with torch.no_grad():
        mlp1.gate_proj.weight[SECOND] = mlp1.gate_proj.weight[col]
        mlp1.up_proj.weight[SECOND] = mlp1.up_proj.weight[col]
        mlp1.down_proj.weight[row, SECOND] = 60.0
        for proj in (mlp3.gate_proj, mlp3.up_proj):
            proj.weight[CANCEL_COL] = 0.0
            proj.weight[CANCEL_COL, row] = 1.0
    spike = detect.scan(lm, PROMPTS).layers[layer]
    ids = lm_eval.encode(lm, PROMPTS[spike.output_prompt])
    x3, _, residual = detect.down_and_residual(lm, ids, CANCEL_LAYER, spike.output_token, row)
    with torch.no_grad():
        mlp3.down_proj.weight[row, CANCEL_COL] = -0.9 * residual[CANCEL_LAYER - 1][0] / x3[CANCEL_COL].item()
    return lm


@pytest.fixture(scope="module")
def lm():
    return planted_with_cancelling()


@pytest.fixture(scope="module")
def detection(lm):
    return detect.detect(lm, PROMPTS, mode="absolute", absolute=10.0)


def test_the_rule_keeps_the_super_weight_and_labels_the_cancelling_weight(lm, detection):
    assert [c.coord for c in detection.candidates][:1] == [PLANT]
    assert CANCEL in {c.coord for c in detection.cancelling}
    assert CANCEL not in {c.coord for c in detection.candidates}
    assert PLANT not in {c.coord for c in detection.cancelling}
    sw_ = next(c for c in detection.candidates if c.coord == PLANT)
    cancel = next(c for c in detection.cancelling if c.coord == CANCEL)
    # a smaller spike survives zeroing the super weight, and it is kept all the same
    assert sw_.share == pytest.approx(200 / 260, abs=0.01) and abs(sw_.spike_left) > 10.0
    assert sw_.spike_left == pytest.approx((1 - sw_.share) * sw_.super_activation, rel=1e-3)
    # it makes the massive activation (adds to the residual, same sign), which persists afterwards
    assert sw_.residual_change * sw_.super_activation > 0 and sw_.persists_in_layers[:3] == [1, 2, 3]
    # the cancelling weight, later in the stack, pushes the incoming massive activation back
    assert cancel.layer > sw_.layer and cancel.residual_change * cancel.residual_in < 0
    assert -cancel.residual_change / cancel.residual_in > 0.5
    # the previous rule reported the cancelling weight and rejected the super weight (replayed)
    by_input = detect.detect(lm, PROMPTS, mode="absolute", absolute=10.0, column="input")
    previous = controls.previous_rule(by_input.scans, by_input.threshold)
    assert PLANT in previous.rejected and CANCEL in previous.candidates
    for coord, value in ((PLANT, 200.0), ((1, 17, SECOND), 60.0)):  # every zeroed weight restored
        assert architecture.down_weight(lm.model, coord[0])[coord[1], coord[2]].item() == value


def test_causal_test_on_an_untrained_model_confirms_nothing(lm, detection):
    """Zeroing the planted weight moves the perplexity of a random model far more than zeroing random weights
    of its matrix, but it does not *raise* it (an untrained model does not depend on its massive activation):
    the one-sided causal rule confirms no super weight here, and the cancelling weight keeps its label."""
    conf = cf.confirm(lm, detection, n_random=8, confirm_tokens=64, eval_text=TEXT)
    tests = {c.coord: t for c, t in zip(conf.proposals, conf.tests)}
    assert conf.verdict_of(CANCEL) == "cancelling weight"
    assert conf.super_weights == [] and conf.verdict_of(PLANT) == "not confirmed"
    planted = tests[PLANT]
    assert abs(np.log(planted.ratio)) > 100 * np.abs(np.log(planted.random_ratios)).max()
    assert len(set(planted.random_coords)) == 8 and (PLANT[1], PLANT[2]) not in planted.random_coords
    again = cf.causal_test(lm, *PLANT, lm_eval.eval_windows(lm, TEXT, 64, 63), n_random=8)
    assert again.random_coords == planted.random_coords and again.ratio == pytest.approx(planted.ratio, rel=1e-6)


def _test(ratio: float, randoms: list[float]) -> cf.CausalTest:
    coords = [(0, i) for i in range(len(randoms))]
    return cf.CausalTest(1, 17, 42, 10.0, 10.0 * ratio, coords, [10 * r for r in randoms])


def test_verdict_rule_by_hand(detection):
    cand = detection.candidates[0]
    cancel = detection.cancelling[0]
    controls_ = [0.999, 1.0, 1.001]
    assert cf.verdict(cand, _test(10.5, controls_))[0] == "super weight"
    assert cf.verdict(cand, _test(1.08, controls_))[0] == "weak effect"
    assert cf.verdict(cand, _test(1.0005, controls_))[0] == "not confirmed"  # within the random controls
    assert cf.verdict(cand, _test(3.0, [1.0, 3.5]))[0] == "not confirmed"  # a random weight does more
    assert cf.verdict(cancel, _test(10.5, controls_))[0] == "cancelling weight"  # never a super weight
    minor = type(cand)(**{**cand.__dict__, "role": "minor"})
    assert cf.verdict(minor, _test(10.5, controls_))[0] == "not confirmed"


def test_random_coordinates_are_seeded_distinct_and_exclude_the_weight():
    a = cf.random_coordinates((4, 5), 19, [(2, 3)], seed=0, layer=1)
    assert len(set(a)) == 19 and (2, 3) not in a and a == cf.random_coordinates((4, 5), 19, [(2, 3)], 0, 1)
    assert a != cf.random_coordinates((4, 5), 19, [(2, 3)], 0, 2)  # another layer, other controls
    with pytest.raises(LabError, match="Cannot draw"):
        cf.random_coordinates((4, 5), 20, [(2, 3)], 0, 1)


def test_bad_settings_are_refused(lm, detection):
    with pytest.raises(LabError, match="min_ratio"):
        cf.confirm(lm, detection, min_ratio=1.0)
    with pytest.raises(LabError, match="n_random"):
        cf.confirm(lm, detection, n_random=0)
    with pytest.raises(LabError, match="min_share"):
        detect.detect(lm, PROMPTS, min_share=0)
    with pytest.raises(LabError, match="column rule"):
        detect.detect(lm, PROMPTS, column="largest")


def test_control_report_is_written(lm, tmp_path):
    settings = ConfirmationConfig(n_random=3, confirm_tokens=32)
    control = controls.run_control(lm, settings, progress=lambda m: None)
    path = controls.write_report([control], tmp_path, settings, "python -m engine superweights-controls", 1.0)
    text = path.read_text()
    assert "| model | layer |" in text and "verdict before" in text and "python -m engine superweights-controls" in text
    assert (tmp_path / "positive_controls.png").read_bytes()[:4] == b"\x89PNG"
    table = control.table
    assert {"ppl_ratio", "random_ratio_mean", "verdict_before", "verdict_after"} <= set(table.columns)
    assert (table["n_random"] == 3).all() and len(table) >= 1
