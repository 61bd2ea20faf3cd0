"""Paired comparison with the usual score (engine/uq/paired.py): DeLong and bootstrap differences, Holm, the
reachability check, the minimal detectable effect, the verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.core.errors import LabError
from engine.uq.metrics import method_metrics, retained_mask
from engine.uq.paired import (
    DIFF_METRICS,
    PairedDifference,
    against_length,
    attainable_floor,
    differences_vs_usual,
    holm,
    mde,
    paired_differences,
    require_reachable,
    score_kind,
    verdict,
)

N = 300


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    correct = (rng.random(N) < 0.55).astype(float)
    usual = rng.normal(size=N)  # carries no information about correctness
    return rng, correct, usual


def test_identical_scores_differ_by_exactly_zero():
    _, correct, usual = data()
    frame = pd.DataFrame({"mean_token_nll": usual, "copy": usual.copy()})
    diffs = differences_vs_usual(frame, correct, n_boot=500, seed=3)["copy"]
    for m in DIFF_METRICS:
        d = diffs[m]
        assert d.estimate == 0 and d.ci_low <= 0 <= d.ci_high and (d.ci_low, d.ci_high) == (0, 0)
        assert d.p == 1 and d.p_holm == 1
    assert diffs["acc50"].n_boot_used == 500 and diffs["auroc"].method == "delong"


def test_correctness_plus_noise_is_significantly_better():
    rng, correct, usual = data()
    informed = (1 - correct) + 0.8 * rng.normal(size=N)  # the wrong answers score higher
    diffs = paired_differences(informed, usual, correct, n_boot=1000, seed=0)
    for m in DIFF_METRICS:
        d = diffs[m]
        assert d.estimate > 0.1 and d.ci_low > 0 and d.p < 0.01, (m, d)
    # the estimates are the differences of the metrics metrics.method_metrics reports
    a, b = method_metrics(informed, correct, n_boot=0), method_metrics(usual, correct, n_boot=0)
    for m in DIFF_METRICS:
        assert diffs[m].estimate == pytest.approx(a[m] - b[m], abs=1e-12)
    # A3 - A2 is the accuracy on the ceil(n/2) least uncertain (metrics.retained_mask, ties by order)
    a3, a2 = correct[retained_mask(informed)].mean(), correct[retained_mask(usual)].mean()
    assert diffs["acc50"].estimate == pytest.approx(a3 - a2, abs=1e-12)


def test_pairing_narrows_the_interval():
    """Two nearly identical scores: their individual intervals are wide, the paired one is tight."""
    rng, correct, _ = data(1)
    base = (1 - correct) + 2.0 * rng.normal(size=N)
    other = base + 0.05 * rng.normal(size=N)
    paired = paired_differences(other, base, correct, n_boot=1000, seed=0)["auroc"]
    single = method_metrics(base, correct, n_boot=1000, seed=0)["auroc_ci"]
    assert (paired.ci_high - paired.ci_low) < 0.2 * (single[1] - single[0])
    assert paired.ci_low <= 0 <= paired.ci_high


def test_holm_against_a_hand_computation():
    # sorted: 0.01 * 4 = 0.04; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> max(0.09, 0.08) = 0.09; 0.2 * 1 = 0.2
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.2, np.nan]), [0.04, 0.09, 0.09, 0.2, np.nan])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1, never below the previous step
    np.testing.assert_allclose(holm([0.003]), [0.003])
    assert np.isnan(holm([np.nan, np.nan])).all()


def test_holm_runs_over_all_compared_scores_per_metric_and_skips_nan_scores():
    rng, correct, usual = data(2)
    frame = pd.DataFrame(
        {
            "mean_token_nll": usual,
            "good": (1 - correct) + rng.normal(size=N),
            "noise": rng.normal(size=N),
            "missing": np.full(N, np.nan),
        },
        index=[f"q{i}" for i in range(N)],
    )
    series = pd.Series(correct, index=frame.index).sample(frac=1.0, random_state=0)  # by question id, shuffled
    diffs = differences_vs_usual(frame, series, n_boot=400, seed=1)
    in_order = differences_vs_usual(frame, correct, n_boot=400, seed=1)
    assert diffs["good"]["auroc"] == in_order["good"]["auroc"]  # the Series is aligned by question id
    assert set(diffs) == {"good", "noise", "missing"}
    assert all(math.isnan(d.estimate) and math.isnan(d.p_holm) for d in diffs["missing"].values())
    for m in DIFF_METRICS:
        raw = [diffs["good"][m].p, diffs["noise"][m].p]
        np.testing.assert_allclose([diffs["good"][m].p_holm, diffs["noise"][m].p_holm], holm(raw))
    assert diffs["good"]["acc50"].as_dict().keys() == {"estimate", "ci_low", "ci_high", "p", "p_holm"}
    with pytest.raises(LabError, match="usual score"):
        differences_vs_usual(frame, series, usual="nope")


def test_score_kinds():
    assert score_kind("mean_token_nll") == "usual" and score_kind("eigenscore") == "usual"
    assert score_kind("semantic_entropy") == "semantic" and score_kind("sep") == "semantic"
    assert score_kind("embedding_map_surface_spread") == "decomposition"  # not a semantic score
    for name in (
        "discriminant_semantic_share",
        "lexical_map_surface_spread",
        "correctness_probe_embedding_map_semantic",
    ):
        assert score_kind(name) == "decomposition"
    assert score_kind("lexical_similarity") == "usual"  # not the lexical_map decomposition
    for name in ("answer_length_tokens", "kernel_language_entropy", "entropy_probe_combination"):
        assert score_kind(name) == "baseline"
    assert score_kind("something_else") == "other"


def diff(estimate, low, high, p_holm):
    return {"acc50": PairedDifference(estimate, low, high, p_holm, p_holm)}


def test_verdict_rule():
    useful = verdict(
        {
            "discriminant_semantic_spread": diff(0.05, 0.02, 0.08, 0.01),
            "lexical_map_semantic_share": diff(0.01, -0.02, 0.04, 0.6),
        },
        400,
    )
    assert useful.answer == "useful" and useful.best == "discriminant_semantic_spread"
    assert useful.sentence.startswith("Useful: `discriminant_semantic_spread`") and "+0.050" in useful.sentence

    not_useful = verdict(
        {
            "discriminant_semantic_spread": diff(-0.03, -0.07, 0.01, 0.4),
            "embedding_map_semantic_spread": diff(-0.01, -0.04, 0.019, 0.9),
            "semantic_entropy": diff(0.1, 0.05, 0.15, 0.001),  # a semantic score winning is not the question
        },
        1000,
    )
    assert not_useful.answer == "not useful" and not_useful.best == "embedding_map_semantic_spread"
    assert "ruled out" in not_useful.sentence

    unsure = verdict({"discriminant_semantic_spread": diff(0.01, -0.01, 0.03, 0.2)}, 265)
    assert unsure.answer == "inconclusive at n = 265" and unsure.sentence.startswith("Inconclusive at n = 265")
    # a positive but non-significant gain, or a significant loss, is not "useful"
    assert verdict({"discriminant_semantic_share": diff(0.04, -0.001, 0.08, 0.06)}, 80).answer.startswith("inconcl")
    assert verdict({"discriminant_semantic_share": diff(-0.04, -0.08, -0.01, 0.01)}, 80).answer == "not useful"

    none = verdict({"semantic_entropy": diff(0.1, 0.05, 0.15, 0.001)}, 50)
    assert none.answer == "inconclusive at n = 50" and "no decomposition score" in none.sentence
    nan = verdict({"discriminant_semantic_spread": diff(float("nan"), float("nan"), float("nan"), float("nan"))}, 9)
    assert nan.answer == "inconclusive at n = 9"
    # explicit kinds override the name rules
    assert verdict({"custom": diff(0.05, 0.02, 0.08, 0.01)}, 400, kinds={"custom": "decomposition"}).answer == "useful"


def test_verdict_end_to_end_on_planted_scores():
    rng, correct, usual = data(4)
    frame = pd.DataFrame(
        {
            "mean_token_nll": usual,
            "discriminant_semantic_spread": (1 - correct) + 0.7 * rng.normal(size=N),
            "lexical_map_semantic_spread": rng.normal(size=N),
        }
    )
    result = verdict(differences_vs_usual(frame, correct, n_boot=500), N)
    assert result.answer == "useful" and result.best == "discriminant_semantic_spread"
    frame["discriminant_semantic_spread"] = rng.normal(size=N)
    result = verdict(differences_vs_usual(frame, correct, n_boot=500), N)
    assert result.answer == f"inconclusive at n = {N}"  # 300 questions cannot rule out a 2-point gain


def test_verdict_with_one_class_of_answers_is_inconclusive():
    flat = {"discriminant_semantic_spread": diff(0.0, 0.0, 0.0, 1.0)}  # every difference 0: nothing to rank
    assert verdict(flat, 12).answer == "not useful"  # the bare rule
    one_class = verdict(flat, 12, n_right=0)
    assert one_class.answer == "inconclusive at n = 12" and "every graded answer is wrong" in one_class.sentence


def test_against_length_says_when_no_semantic_method_beats_answer_length():
    rng, correct, usual = data(5)
    length = (1 - correct) + 1.0 * rng.normal(size=N)  # answer length that carries the signal
    frame = pd.DataFrame(
        {
            "mean_token_nll": usual,
            "answer_length_tokens": length,
            "answer_length_chars": rng.normal(size=N),
            "semantic_entropy": rng.normal(size=N),
            "discriminant_semantic_spread": length + 0.3 * rng.normal(size=N),
        }
    )
    check = against_length(frame, correct)
    assert not check.beaten and check.length_score == "answer_length_tokens"
    assert check.sentence.startswith("No semantic method beats answer length") and check.best in frame.columns
    frame["semantic_entropy"] = (1 - correct) + 0.2 * rng.normal(size=N)  # now far better than length
    check = against_length(frame, correct)
    assert check.beaten and check.best == "semantic_entropy" and check.difference.ci_low > 0
    assert "beat answer length" in check.sentence
    assert against_length(frame.drop(columns=["answer_length_tokens", "answer_length_chars"]), correct).sentence == (
        "No length check: answer length was not computed."
    )


def test_planted_truth_reaches_p_holm_below_001_in_a_family_of_40():
    """A score = correctness label + small noise beats a useless reference in a family of 40 scores."""
    rng, correct, usual = data(6)
    columns = {"mean_token_nll": usual, "planted": (1 - correct) + 0.3 * rng.normal(size=N)}
    columns.update({f"noise_{i}": rng.normal(size=N) for i in range(39)})
    diffs = differences_vs_usual(pd.DataFrame(columns), correct, n_boot=20_000, seed=0)
    assert len(diffs) == 40
    for m in DIFF_METRICS:
        assert diffs["planted"][m].p_holm < 0.01 and diffs["planted"][m].ci_low > 0, (m, diffs["planted"][m])
        assert diffs["planted"][m].mde > 0
    # the old floor (1000 resamples, +1, two-sided, Holm over 40) could never go below 40 * 2 / 1001 = 0.08


def test_a_family_that_cannot_reach_alpha_is_refused_with_the_numbers():
    rng, correct, usual = data(7)
    frame = pd.DataFrame({"mean_token_nll": usual, **{f"s{i}": rng.normal(size=N) for i in range(34)}})
    with pytest.raises(LabError, match=r"alpha = 0\.05: 34 tests with 1000 bootstrap resamples.*0\.0679 >= 0\.05"):
        differences_vs_usual(frame, correct, n_boot=1000)
    require_reachable("f", 34, method="bootstrap", n_boot=20_000, alternative="two-sided")  # 0.0034 < 0.05
    require_reachable("f", 10**6, method="delong", n_boot=0, alternative="greater")  # DeLong has no floor
    assert attainable_floor("bootstrap", 999, "greater") == pytest.approx(1e-3)


def test_mde_matches_the_normal_formula():
    # one-sided at alpha = 0.05, power 0.8: (1.6449 + 0.8416) * SE; a family of 10 tests at alpha / 10
    assert mde(0.01) == pytest.approx(0.024865, abs=1e-5)
    assert mde(0.01, family_size=10) == pytest.approx((2.575829 + 0.841621) * 0.01, abs=1e-5)
    assert mde(0.01, alternative="two-sided") == pytest.approx((1.959964 + 0.841621) * 0.01, abs=1e-5)


def test_identical_scores_give_an_interval_covering_zero_in_each_test():
    _, correct, usual = data(8)
    for alternative in ("greater", "two-sided"):
        d = paired_differences(usual, usual.copy(), correct, n_boot=2000, alternative=alternative)
        for m in DIFF_METRICS:
            assert d[m].ci_low <= 0 <= d[m].ci_high and d[m].p == 1, (m, alternative)
