"""Semantic / surface subspace decomposition on synthetic data with a planted meaning direction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from engine.uq.subspace import RIDGE_ALPHAS, _RidgePath, ridge_map, subspace_spreads

N_Q, K, D, E, M = 60, 8, 24, 6, 2  # questions, samples, hidden dim, embedding dim, meaning dim


def planted(seed: int = 0):
    """hidden = A m + B s: meaning m (drives the embedding) and surface s in orthogonal directions.

    Question q's samples vary in meaning with variance v[q] and in surface form with w[q] (independent).
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0]
    a, b = basis[:, :M], basis[:, M : M + 10]
    mix = rng.normal(size=(E, M))
    v, w = rng.uniform(0.05, 2.0, N_Q), rng.uniform(0.05, 2.0, N_Q)
    hidden, emb = [], []
    for q in range(N_Q):
        m = rng.normal(size=M) + np.sqrt(v[q]) * rng.normal(size=(K, M))
        s = rng.normal(size=10) + np.sqrt(w[q]) * rng.normal(size=(K, 10))
        hidden.append(m @ a.T + s @ b.T + 0.01 * rng.normal(size=(K, D)))
        emb.append(m @ mix.T + 0.01 * rng.normal(size=(K, E)))
    return hidden, emb, v, w


def test_ridge_map_matches_sklearn_ridge_primal_and_dual():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    for n, d in ((50, 7), (12, 30)):  # n > d: d x d eigenproblem; n < d: n x n (dual)
        z, e = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
        fit = ridge_map(z, e)
        ref = Ridge(alpha=fit.alpha).fit(z, e)
        np.testing.assert_allclose(fit.coef, ref.coef_.T, atol=1e-8)
        np.testing.assert_allclose(fit.predict(z), ref.predict(z), atol=1e-8)
        zv, ev = rng.normal(size=(6, d)), rng.normal(size=(6, 3))
        path, alphas = _RidgePath(z, e), [0.1, 3.0, 100.0]
        direct = [np.sum((ev - Ridge(alpha=a).fit(z, e).predict(zv)) ** 2) for a in alphas]
        np.testing.assert_allclose(path.validation_sse(zv, ev, alphas), direct, rtol=1e-8)


def test_ridge_alpha_is_chosen_on_held_out_questions():
    hidden, emb, _, _ = planted()
    z, e = np.concatenate(hidden), np.concatenate(emb)
    groups = np.repeat(np.arange(N_Q), K)
    by_question = ridge_map(z, e, groups)
    assert by_question.alpha in RIDGE_ALPHAS
    assert np.mean((by_question.predict(z) - e) ** 2) < 0.05 * np.var(e, axis=0).sum()  # a good map


def test_semantic_spread_tracks_planted_meaning_variance():
    hidden, emb, v, w = planted()
    out = subspace_spreads(hidden, emb, n_folds=5, seed=0)
    assert out.ranks == [M] * 5  # the map's row space is the planted meaning plane
    assert min(out.heldout_r2) > 0.9
    assert spearmanr(out.semantic, v).statistic > 0.8
    assert abs(spearmanr(out.semantic, w).statistic) < 0.35
    assert spearmanr(out.surface, w).statistic > 0.8
    assert abs(spearmanr(out.surface, v).statistic) < 0.35


def test_cross_fitting_never_uses_the_scored_questions_samples():
    hidden, emb, _, _ = planted(1)
    base = subspace_spreads(hidden, emb, n_folds=5, seed=3)
    assert sorted(np.bincount(base.folds).tolist()) == [N_Q // 5] * 5
    target = 7
    scrambled = list(emb)
    scrambled[target] = np.random.default_rng(9).normal(size=emb[target].shape) * 50  # its meaning labels only
    out = subspace_spreads(hidden, scrambled, n_folds=5, seed=3)
    same_fold = base.folds == base.folds[target]
    # the map that scores the target's fold never saw the target's embeddings: that whole fold is unchanged
    np.testing.assert_allclose(out.semantic[same_fold], base.semantic[same_fold], rtol=1e-10)
    np.testing.assert_allclose(out.surface[same_fold], base.surface[same_fold], rtol=1e-10)
    # ... while the other folds' maps did see them
    assert not np.allclose(out.semantic[~same_fold], base.semantic[~same_fold], rtol=1e-6)


def test_too_few_questions_and_full_rank_subspace():
    hidden, emb, _, _ = planted()
    few = subspace_spreads(hidden[:6], emb[:6], n_folds=5)
    assert np.isnan(few.semantic).all() and np.isnan(few.surface).all() and "at least 10" in few.note
    narrow = [h[:, :4] for h in hidden]  # 4 hidden dims < 6 embedding dims: the map can span all of them
    out = subspace_spreads(narrow, emb, n_folds=5, rank=4)
    assert out.surface == pytest.approx(np.zeros(N_Q), abs=1e-9) and "surface spread is 0" in out.note
