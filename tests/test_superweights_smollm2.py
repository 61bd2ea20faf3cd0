"""Positive control on a real model: SmolLM2-135M-Instruct's known super weight, layer 11 W_down[507, 1229].

The detector must find it through the activations (the matrix's largest |w| is elsewhere, column 1487),
keep it although a smaller spike survives its zeroing, label the late layer-28 weight W[507, 678] that
cancels the massive activation as cancelling, and the causal test must confirm the first and not the
second, against random weights of the same matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.lm_eval import eval_windows
from engine.superweights import confirm as cf
from engine.superweights import detect

SUPER = (11, 507, 1229)
CANCEL = (28, 507, 678)


@pytest.fixture(scope="module")
def detection(smollm2_lm):
    return detect.detect(smollm2_lm, max_iterations=2)  # round 0 proposes the super weight, round 1 the cancelling one


def test_detector_and_super_activation_fire_on_the_known_super_weight(smollm2_lm, detection):
    assert [c.coord for c in detection.candidates] == [SUPER]
    found = detection.candidates[0]
    assert found.weight == pytest.approx(5.88, abs=0.01)
    assert found.super_activation == pytest.approx(24022, rel=0.02) and found.token == 0
    assert found.persists_in_layers == list(range(11, 30))  # massive through the end of the stack
    assert found.share == pytest.approx(0.73, abs=0.02)  # a smaller spike (27%) survives: not a reason to reject
    assert found.residual_change * found.super_activation > 0  # it makes the massive activation
    top = detect.top_weights(smollm2_lm, 11, 1)
    assert int(top.loc[0, "col"]) == 1487 and found.rank > 1  # found through the activations, not max |w|


def test_the_late_cancelling_weight_is_labelled_not_called_a_super_weight(detection):
    assert CANCEL in {c.coord for c in detection.cancelling}
    assert CANCEL not in {c.coord for c in detection.candidates}
    cancel = next(c for c in detection.cancelling if c.coord == CANCEL)
    assert cancel.residual_in > 10_000 and cancel.residual_change < -0.4 * cancel.residual_in


def test_causal_test_confirms_the_super_weight_against_random_weights(smollm2_lm, detection):
    windows = eval_windows(smollm2_lm, None, window=512, max_tokens=511)
    base = None
    tests = {}
    for coord in (SUPER, CANCEL):
        tests[coord] = cf.causal_test(smollm2_lm, *coord, windows, base, n_random=3, seed=0)
        base = tests[coord].base_ppl
    assert base == pytest.approx(36.0, rel=0.03)
    sup, cancel = tests[SUPER], tests[CANCEL]
    assert sup.ratio > 3.0  # zeroing one of 135M weights: perplexity x4.3
    assert np.abs(sup.random_ratios - 1).max() < 1e-3 and np.abs(cancel.random_ratios - 1).max() < 1e-3
    assert abs(cancel.ratio - 1) < 0.05  # the cancelling weight's zeroing barely matters
    candidate = detection.candidates[0]
    assert cf.verdict(candidate, sup)[0] == "super weight"
    assert cf.verdict(next(c for c in detection.cancelling if c.coord == CANCEL), cancel)[0] == "cancelling weight"
