"""Baselines (engine/uq/baselines.py): answer length, kernel language entropy, entropy + correctness probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engine.uq.baselines import (
    answer_lengths,
    entropy_probe_combination,
    kernel_language_entropy,
    semantic_kernel,
    von_neumann_entropy,
)
from engine.uq.estimators import cluster_entropy
from engine.uq.records import QuestionRecord


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_answer_length_in_tokens_and_characters():
    records = [
        QuestionRecord("a", "q?", [], " Paris ", [-0.1, -0.2], np.zeros((1, 2)), [], [], np.zeros((0, 1, 2))),
        QuestionRecord("b", "q?", [], "The city of Rome", [-1.0] * 5, np.zeros((1, 2)), [], [], np.zeros((0, 1, 2))),
    ]
    tokens, chars = answer_lengths(records)
    assert tokens.tolist() == [2, 5] and chars.tolist() == [5, 16]


def test_kle_of_identical_samples_is_zero_and_of_orthogonal_ones_log_k():
    rng = np.random.default_rng(0)
    for k in (2, 5, 10):
        same = np.repeat(unit(rng.normal(size=(1, 16))), k, axis=0)
        assert kernel_language_entropy(same) == pytest.approx(0.0, abs=1e-9)
        orthogonal = np.linalg.qr(rng.normal(size=(16, k)))[0].T * rng.uniform(0.5, 2.0, size=(k, 1))  # any norm
        assert kernel_language_entropy(orthogonal) == pytest.approx(math.log(k), abs=1e-9)
        assert kernel_language_entropy(orthogonal, kernel="heat", t=0.7) == pytest.approx(math.log(k), abs=1e-9)
    assert kernel_language_entropy(unit(rng.normal(size=(1, 4)))) == 0.0
    assert math.isnan(kernel_language_entropy(np.zeros((0, 4))))


def test_kle_equals_discrete_semantic_entropy_for_clean_clusters():
    """Samples identical inside a meaning cluster and orthogonal across: VNE = -sum_c (n_c/K) log(n_c/K)."""
    directions = np.eye(8)[:3]
    labels = np.array([0, 0, 1, 2, 2, 2, 0, 1, 0, 0])
    assert kernel_language_entropy(directions[labels]) == pytest.approx(cluster_entropy(labels), abs=1e-9)
    assert kernel_language_entropy(directions[labels], power=3) == pytest.approx(cluster_entropy(labels), abs=1e-9)


def test_kle_grows_with_disagreement_and_the_kernel_is_psd():
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(1, 32)))
    values = []
    for noise in (0.02, 0.1, 0.3, 3.0):
        samples = unit(base + noise * rng.normal(size=(10, 32)))
        values.append(kernel_language_entropy(samples))
        for options in ({}, {"power": 2}, {"kernel": "heat", "t": 2.0}):
            assert np.linalg.eigvalsh(semantic_kernel(samples, **options)).min() > -1e-10
    assert values == sorted(values) and 0 < values[0] < values[-1] < math.log(10)
    # the heat kernel of identical answers only tends to 0 as t grows (why it is not the default)
    same = np.repeat(base, 5, axis=0)
    heat = [kernel_language_entropy(same, kernel="heat", t=t) for t in (0.1, 1.0, 5.0)]
    assert heat == sorted(heat, reverse=True) and heat[0] > 0.1 and heat[-1] < 1e-6


def test_von_neumann_entropy_by_hand():
    assert von_neumann_entropy(np.diag([3.0, 1.0])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    with pytest.raises(ValueError, match="positive integer"):
        semantic_kernel(np.eye(3), power=0.5)


def test_entropy_probe_combination_beats_each_input_and_is_out_of_fold():
    rng = np.random.default_rng(0)
    n = 400
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    correct = (x1 + x2 + 0.3 * rng.normal(size=n) > 0).astype(float)
    entropy, probe = -x1 + 0.1 * rng.normal(size=n), 1 / (1 + np.exp(x2))  # both: higher = more likely wrong
    out = entropy_probe_combination(entropy, probe, correct, n_folds=5, seed=0)
    assert not out.note and np.isfinite(out.scores).all() and len(out.weights) == 5
    assert all(w[0] < 0 and w[1] < 0 for w in out.weights)  # more entropy / probe score -> less likely right
    auroc = lambda s: roc_auc_score(1 - correct, s)
    assert auroc(out.scores) > max(auroc(entropy), auroc(probe)) + 0.1
    # out-of-fold: flipping one question's label changes the other folds' fits, never its own score
    flipped = correct.copy()
    flipped[7] = 1 - flipped[7]
    again = entropy_probe_combination(entropy, probe, flipped, n_folds=5, seed=0)
    same_fold = out.folds == out.folds[7]
    np.testing.assert_allclose(again.scores[same_fold], out.scores[same_fold], rtol=1e-12)
    assert not np.allclose(again.scores[~same_fold], out.scores[~same_fold], rtol=1e-9)


def test_entropy_probe_combination_degrades_to_nan_with_a_note():
    few = entropy_probe_combination(np.ones(6), np.ones(6), np.ones(6))
    assert np.isnan(few.scores).all() and "at least 10" in few.note
    probe = np.r_[np.nan, np.zeros(19)]
    missing = entropy_probe_combination(np.zeros(20), probe, np.r_[np.ones(10), np.zeros(10)])
    assert np.isnan(missing.scores).all() and "probe" in missing.note
    one_class = entropy_probe_combination(np.arange(20.0), np.arange(20.0), np.ones(20))
    assert np.isnan(one_class.scores).all() and "all right" in one_class.note
