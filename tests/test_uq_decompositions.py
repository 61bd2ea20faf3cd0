"""Semantic / surface decompositions (engine/uq/decompositions.py) on synthetic hidden states where the truth is known.

Each sample's hidden state = meaning component (its meaning cluster's point, in the planted meaning
subspace A) + wording component (which style words it uses, in the planted wording subspace B) + the
question's content (constant over its samples, in the remaining dimensions C) + 0.01 noise. A, B and C
are orthogonal coordinate subspaces on randomly chosen dimensions: the decompositions standardise each
dimension, and a diagonal rescaling maps a coordinate subspace onto itself, so the planted truth is the
same subspace in the raw and in the standardised coordinates. The embedding of a sample is a linear
function of its meaning; its text is its cluster's word followed by its style words.
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from engine.uq.decompositions import (
    discriminant_decomposition,
    lexical_map_decomposition,
    score_columns,
    subspace_probes,
)
from engine.uq.estimators import best_variance_split
from engine.uq.subspace import embedding_map_decomposition, subspace_spreads

D, M, W, E = 24, 2, 4, 6  # hidden size, meaning dims, wording dims, embedding size
STYLE = ("qzx", "vwkj", "plmbr", "yth")
N_Q, K = 80, 8


@dataclasses.dataclass
class Planted:
    hidden: list
    embeddings: list
    clusters: list
    texts: list
    meaning: np.ndarray  # [D, M] planted meaning subspace
    wording: np.ndarray  # [D, W] planted wording subspace
    meaning_spread: np.ndarray  # per question: mean squared distance of the meaning components to their mean
    wording_spread: np.ndarray
    answer_hidden: np.ndarray  # [N_Q, D] the graded answer's state: its own meaning and wording
    answer_meaning: np.ndarray
    answer_bits: np.ndarray


def planted(n_q: int = N_Q, seed: int = 0) -> Planted:
    rng = np.random.default_rng(seed)
    dims = rng.permutation(D)
    basis = np.eye(D)[:, dims]
    a, b, c = basis[:, :M], basis[:, M : M + W], basis[:, M + W :]
    mix = rng.normal(size=(E, M))
    out = Planted([], [], [], [], a, b, np.zeros(n_q), np.zeros(n_q), np.zeros((n_q, D)), np.zeros((n_q, M)), [])
    for q in range(n_q):
        n_c = int(rng.integers(1, 4))
        points = rng.normal(size=M) + rng.normal(size=(n_c, M))
        words = ["".join(rng.choice(list(string.ascii_lowercase), 6)) for _ in range(n_c)]
        labels = rng.integers(0, n_c, size=K)
        rate = rng.uniform(0.03, 0.5)  # how often this question's answers add each style word
        bits = (rng.random(size=(K + 1, W)) < rate).astype(float)
        meaning, wording, content = points[labels], 2 * bits - 1, rng.normal(size=D - M - W)
        out.hidden.append(meaning @ a.T + wording[:K] @ b.T + content @ c.T + 0.01 * rng.normal(size=(K, D)))
        out.embeddings.append(meaning @ mix.T + 0.01 * rng.normal(size=(K, E)))
        out.clusters.append(labels)
        out.texts.append(
            [" ".join([words[lab]] + [STYLE[j] for j in range(W) if bits[i, j]]) for i, lab in enumerate(labels)]
        )
        out.meaning_spread[q] = np.sum(np.var(meaning, axis=0))
        out.wording_spread[q] = np.sum(np.var(wording[:K], axis=0))
        answer = points[0] + 0.3 * rng.normal(size=M)
        out.answer_meaning[q] = answer
        out.answer_hidden[q] = answer @ a.T + wording[K] @ b.T + content @ c.T
        out.answer_bits.append(bits[K])
    out.answer_bits = np.array(out.answer_bits)
    return out


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted()


def max_angle(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest principal angle (degrees) between two subspaces of equal dimension."""
    assert found.shape[1] == truth.shape[1]
    return float(np.degrees(subspace_angles(found, truth)).max())


def decompose(name: str, p: Planted, **kw):
    if name == "embedding_map":
        return embedding_map_decomposition(p.hidden, p.embeddings, **kw)
    if name == "discriminant":
        return discriminant_decomposition(p.hidden, p.clusters, **kw)
    return lexical_map_decomposition(p.hidden, p.texts, p.embeddings, p.clusters, **kw)


@pytest.mark.parametrize("name", ["discriminant", "lexical_map"])
def test_discriminant_and_lexical_map_recover_both_planted_subspaces(data, name):
    out = decompose(name, data)
    assert not out.note and out.semantic_ranks == [M] * 5 and out.surface_ranks == [W] * 5
    for fold in out.bases:
        assert max_angle(fold.semantic, data.meaning) < 2.0
        assert max_angle(fold.surface, data.wording) < 2.0
        assert np.abs(fold.semantic.T @ fold.surface).max() < 1e-8  # orthogonal by construction


def test_embedding_map_recovers_the_meaning_subspace_and_matches_subspace_py(data):
    """(a) holds here (the embedding is linear in the meaning component): semantic = A, the wording B lies
    in its surface complement; spreads identical to engine.uq.subspace.subspace_spreads."""
    out = decompose("embedding_map", data, seed=3)
    assert out.semantic_ranks == [M] * 5 and out.surface_ranks == [D - M] * 5
    for fold in out.bases:
        assert max_angle(fold.semantic, data.meaning) < 2.0
        assert np.degrees(subspace_angles(fold.surface, data.wording)).max() < 1.0  # B inside the complement
    reference = subspace_spreads(data.hidden, data.embeddings, n_folds=5, seed=3)
    np.testing.assert_array_equal(out.folds, reference.folds)
    np.testing.assert_allclose(out.semantic, reference.semantic, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out.surface, reference.surface, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out.share, out.semantic / (out.semantic + out.surface), rtol=1e-6)


@pytest.mark.parametrize("name", ["embedding_map", "discriminant", "lexical_map"])
def test_spreads_track_the_planted_meaning_and_wording_spreads(data, name):
    out = decompose(name, data)
    single = np.array([len(set(c.tolist())) == 1 for c in data.clusters])
    assert spearmanr(out.semantic, data.meaning_spread).statistic > 0.9
    assert spearmanr(out.surface, data.wording_spread).statistic > 0.9
    assert abs(spearmanr(out.semantic, data.wording_spread).statistic) < 0.3
    assert np.all(out.semantic[single] < 1e-3)  # one meaning: (almost) no semantic spread
    assert np.all((out.share >= 0) & (out.share <= 1 + 1e-12))
    assert np.all(out.semantic + out.surface <= out.total * (1 + 1e-9) + 1e-12)


@pytest.mark.parametrize("name", ["discriminant", "lexical_map"])
def test_cross_fitting_never_uses_the_scored_questions_labels_or_texts(data, name):
    base = decompose(name, data, seed=5)
    target = 11
    clusters, texts = list(data.clusters), list(data.texts)
    clusters[target] = np.arange(K) % 3  # new meaning labels ...
    texts[target] = ["zzz qq " * (i + 1) for i in range(K)]  # ... and new texts for one question only
    changed = Planted(data.hidden, data.embeddings, clusters, texts, *dataclasses.astuple(data)[4:])
    out = decompose(name, changed, seed=5)
    same_fold = base.folds == base.folds[target]
    np.testing.assert_allclose(out.semantic[same_fold], base.semantic[same_fold], rtol=1e-10)
    np.testing.assert_allclose(out.surface[same_fold], base.surface[same_fold], rtol=1e-10)
    assert not np.allclose(out.surface[~same_fold], base.surface[~same_fold], rtol=1e-6)


def test_discriminant_rank_rule_rejects_clusters_unrelated_to_the_states(data):
    rng = np.random.default_rng(0)
    random_labels = [rng.integers(0, 3, size=K) for _ in data.clusters]
    out = discriminant_decomposition(data.hidden, random_labels)
    assert max(out.semantic_ranks) <= 2 and np.mean(out.semantic_ranks) < 1.5  # 1 is the floor
    planted_fit = discriminant_decomposition(data.hidden, data.clusters)
    assert all(b.info["ratios"][0] > 20 * b.info["null_ratio"] for b in planted_fit.bases)


def test_too_little_data_gives_nan_and_a_note(data):
    few = discriminant_decomposition(data.hidden[:6], data.clusters[:6])
    assert np.isnan(few.semantic).all() and "at least 10" in few.note
    one_meaning = [np.zeros(K, dtype=int)] * N_Q
    out = discriminant_decomposition(data.hidden, one_meaning)
    assert np.isnan(out.semantic).all() and "two meaning clusters" in out.note
    probes = subspace_probes(
        data.answer_hidden,
        out,
        se=data.answer_bits.sum(1),
        correct=data.answer_meaning[:, 0] > 0,
        se_split=best_variance_split,
    )
    assert np.isnan(probes.wrong["semantic"]).all() and "empty" in probes.notes["wrong_semantic"]
    assert np.isfinite(probes.wrong["full"]).all()  # the full state needs no subspace


def test_probes_show_where_the_information_lives(data):
    """Correctness is planted in the answer's meaning, high "SE" in its wording: each probe finds its target
    in the matching subspace and not in the other."""
    out = decompose("discriminant", data)
    correct = (data.answer_meaning[:, 0] > np.median(data.answer_meaning[:, 0])).astype(float)
    se = data.answer_bits.sum(1) + 0.1 * np.random.default_rng(1).normal(size=N_Q)
    probes = subspace_probes(data.answer_hidden, out, se=se, correct=correct, se_split=best_variance_split)
    wrong_auroc = {part: roc_auc_score(1 - correct, v) for part, v in probes.wrong.items()}
    assert wrong_auroc["semantic"] > 0.9 and wrong_auroc["full"] > 0.8 and wrong_auroc["surface"] < 0.7
    high = se > best_variance_split(se)
    se_auroc = {part: roc_auc_score(high, v) for part, v in probes.se.items()}
    assert se_auroc["surface"] > 0.9 and se_auroc["semantic"] < 0.7
    columns = score_columns(out, probes)
    assert {"discriminant_semantic_share", "correctness_probe_discriminant_semantic", "se_probe_full_state"} <= set(
        columns
    )
    # out-of-fold: flipping one question's label never changes its own score
    flipped = correct.copy()
    flipped[4] = 1 - flipped[4]
    again = subspace_probes(data.answer_hidden, out, correct=flipped, parts=("semantic",))
    same_fold = out.folds == out.folds[4]
    np.testing.assert_allclose(again.wrong["semantic"][same_fold], probes.wrong["semantic"][same_fold], rtol=1e-10)
    assert not again.se  # no SE target given: no SE probe
