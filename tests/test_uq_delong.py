"""DeLong's paired AUROC test (engine/uq/delong.py) against sklearn and a 20,000-resample bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engine.uq.delong import delong_paired, structural_components
from engine.uq.metrics import metric_draws, resamples


def example(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    wrong = (rng.random(n) < 0.4).astype(float)
    a = wrong + 1.2 * rng.normal(size=n)
    b = 0.6 * a + wrong * 0.2 + 1.0 * rng.normal(size=n)  # correlated with a: the pairing matters
    b[:20] = np.round(b[:20])  # some ties
    return wrong, a, b


def test_aucs_are_sklearns():
    wrong, a, b = example()
    r = delong_paired(a, b, wrong)
    assert r.auc_a == pytest.approx(roc_auc_score(wrong, a), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(wrong, b), abs=1e-12)
    auc, v10, v01 = structural_components(np.stack([a, b]), wrong)
    np.testing.assert_allclose(v01.mean(axis=1), auc)  # both component means are the AUC


def test_delong_matches_a_20000_resample_bootstrap():
    wrong, a, b = example()
    r = delong_paired(a, b, wrong, alternative="two-sided")
    idx = resamples(wrong.size, 20_000, 1)
    correct = 1 - wrong
    boot = metric_draws(a, correct, idx)[1]["auroc"] - metric_draws(b, correct, idx)[1]["auroc"]
    boot = boot[~np.isnan(boot)]
    assert r.se == pytest.approx(np.std(boot, ddof=1), abs=0.01)
    low, high = np.percentile(boot, [2.5, 97.5])
    assert r.ci_low == pytest.approx(low, abs=0.01) and r.ci_high == pytest.approx(high, abs=0.01)
    one_sided = delong_paired(a, b, wrong, alternative="greater").p
    assert one_sided == pytest.approx((1 + np.sum(boot <= 0)) / (boot.size + 1), abs=0.01)
    assert 0.001 < one_sided < 0.5  # a moderate effect: the comparison is not trivially 0 vs 0


def test_identical_scores_and_one_class():
    wrong, a, _ = example()
    r = delong_paired(a, a.copy(), wrong)
    assert (r.estimate, r.ci_low, r.ci_high, r.p) == (0.0, 0.0, 0.0, 1.0)
    assert np.isnan(delong_paired(a, a, np.zeros_like(wrong)).p)
