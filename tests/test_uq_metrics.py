"""A1 / A2 / A3, AUROC, PRR, AUARC and bootstrap intervals (engine/uq/metrics.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from engine.core.errors import LabError
from engine.uq.metrics import (
    _batch_metrics,
    accuracy_curve,
    comparison,
    method_metrics,
    rejection_curves,
    retained_mask,
    summary_markdown,
)


def test_retained_mask_breaks_ties_by_position():
    assert retained_mask([1, 0, 0, 0, 2]).tolist() == [False, True, True, True, False]  # ceil(5/2) = 3
    assert retained_mask([0, 1, 1, 1]).tolist() == [True, True, False, False]  # the earlier tie is kept
    assert retained_mask([np.nan, 5, 1, 3]).tolist() == [False, False, True, True]  # NaN: most uncertain
    unc = np.random.default_rng(0).integers(0, 4, 101).astype(float)
    keep = retained_mask(unc)
    assert keep.sum() == 51 and (unc[keep] <= np.quantile(unc, 0.5)).all()


def test_a1_a2_a3_with_ties():
    correct = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    scores = pd.DataFrame(
        {
            "mean_token_nll": [0.1, 0.1, 0.1, 0.1, 0.9, 0.9],  # a 4-way tie across the cut: 3 of its 4 kept
            "semantic_entropy": [0.0, 1.0, 0.0, 0.5, 2.0, 0.0],  # kept: q0, q2, q5
        },
        index=[f"q{i}" for i in range(6)],
    )
    c = comparison(scores, correct, n_boot=50)
    assert c["A1"] == pytest.approx(0.5)
    assert c["A2"] == pytest.approx(3 / 4)  # tie-averaged: 3 of the tied 4 are right, whichever 3 are kept
    assert c["A3"] == pytest.approx(2 / 3)
    assert c["methods"]["mean_token_nll"]["n_tied_at_cutoff"] == 4
    assert c["methods"]["semantic_entropy"]["n_tied_at_cutoff"] == 0
    assert c["methods"]["semantic_entropy"]["kind"] == "semantic"
    assert c["usual_method"] == "mean_token_nll" and c["n"] == 6


def test_auroc_is_sklearns_including_ties_and_resamples():
    rng = np.random.default_rng(0)
    unc = rng.integers(0, 5, 80).astype(float)
    correct = (rng.random(80) < 0.6).astype(float)
    m = method_metrics(unc, correct, n_boot=10)
    assert m["auroc"] == pytest.approx(roc_auc_score(1 - correct, unc))
    idx = rng.integers(0, 80, size=(20, 80))  # the vectorised bootstrap path gives sklearn's value per resample
    batch = _batch_metrics(unc[idx], correct[idx])["auroc"]
    np.testing.assert_allclose(batch, [roc_auc_score(1 - correct[i], unc[i]) for i in idx], atol=1e-12)


def test_prr_oracle_random_and_auarc():
    correct = np.array([1, 0, 1, 0], dtype=float)
    oracle = method_metrics(1 - correct, correct, n_boot=0)
    assert oracle["prr"] == pytest.approx(1.0)
    assert oracle["auarc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert oracle["auroc"] == pytest.approx(1.0) and oracle["acc50"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    correct = (rng.random(4000) < 0.5).astype(float)
    assert abs(method_metrics(rng.random(4000), correct, n_boot=0)["prr"]) < 0.08
    assert method_metrics(correct, correct, n_boot=0)["prr"] == pytest.approx(-1.0, abs=0.15)  # anti-oracle


def test_accuracy_curve_averages_ties():
    correct = np.array([1, 0, 0, 1, 1])
    np.testing.assert_allclose(accuracy_curve(np.zeros(5), correct), np.full(5, 0.6))
    np.testing.assert_allclose(accuracy_curve([0, 1, 2, 3, 4], correct), [1, 0.5, 1 / 3, 0.5, 0.6])


def test_bootstrap_interval_contains_point_and_is_seeded():
    rng = np.random.default_rng(2)
    correct = (rng.random(150) < 0.6).astype(float)
    unc = rng.normal(size=150) - correct  # informative
    a = method_metrics(unc, correct, n_boot=300, seed=5)
    b = method_metrics(unc, correct, n_boot=300, seed=5)
    c = method_metrics(unc, correct, n_boot=300, seed=6)
    assert a == b and a["auroc_ci"] != c["auroc_ci"]
    for name in ("acc50", "auroc", "prr", "auarc"):
        lo, hi = a[f"{name}_ci"]
        assert lo < a[name] < hi
    assert a["auroc"] > 0.6


def test_comparison_all_correct_is_nan_not_a_crash():
    scores = pd.DataFrame(
        {"mean_token_nll": [0.3, 0.1, 0.2], "semantic_entropy": [0.0, 0.0, 1.0]}, index=["a", "b", "c"]
    )
    c = comparison(scores, [True, True, True], n_boot=20)
    m = c["methods"]["mean_token_nll"]
    assert np.isnan(m["auroc"]) and np.isnan(m["prr"]) and np.isnan(m["auroc_ci"][0])
    assert c["A1"] == 1.0 and c["A2"] == 1.0 and m["auarc"] == 1.0
    json.dumps(c)  # JSON-serialisable (NaN as NaN)
    assert "n/a" in summary_markdown(c)


def test_comparison_aligns_series_by_id_and_rejects_bad_input():
    scores = pd.DataFrame({"mean_token_nll": [0.1, 0.9], "semantic_entropy": [0.9, 0.1]}, index=["a", "b"])
    c = comparison(scores, pd.Series({"b": False, "a": True}), n_boot=0)
    assert c["A2"] == 1.0 and c["A3"] == 0.0
    assert c["methods"]["semantic_entropy"]["auroc"] == 0.0
    with pytest.raises(LabError, match="not among"):
        comparison(scores, [True, False], semantic="sep")
    with pytest.raises(LabError, match="No correctness"):
        comparison(scores, pd.Series({"a": True}))
    nan_col = scores.assign(sep=np.nan)
    assert np.isnan(comparison(nan_col, [True, False], n_boot=5)["methods"]["sep"]["acc50"])


def test_rejection_curves_and_summary():
    scores = pd.DataFrame(
        {"mean_token_nll": [0.1, 0.2, 0.3, 0.4], "semantic_entropy": [0.4, 0.3, 0.2, 0.1], "sep": np.nan},
        index=list("abcd"),
    )
    correct = [True, True, False, False]
    curves = rejection_curves(scores, correct)
    assert list(curves.columns) == ["method", "rejected_fraction", "accuracy"]
    nll = curves[curves.method == "mean_token_nll"]
    assert nll.rejected_fraction.tolist() == [0, 0.25, 0.5, 0.75]
    assert nll.accuracy.tolist() == pytest.approx([0.5, 2 / 3, 1.0, 1.0])
    assert "sep" not in set(curves.method)  # an all-NaN score has no curve
    c = comparison(scores, correct, n_boot=20)
    text = summary_markdown(c)
    assert "**A1** = 0.500" in text and "**A2** = 1.000" in text and "**A3** = 0.000" in text
    assert "| semantic_entropy | semantic |" in text


def test_a1_interval_and_shared_draws():
    rng = np.random.default_rng(4)
    correct = rng.random(120) < 0.6
    scores = pd.DataFrame({"mean_token_nll": rng.normal(size=120), "semantic_entropy": rng.normal(size=120) - correct})
    draws: dict = {}
    c = comparison(scores, correct, n_boot=200, seed=3, draws=draws)
    lo, hi = c["A1_ci"]
    assert lo < c["A1"] < hi and set(draws) == {"mean_token_nll", "semantic_entropy"}
    # the drawn metrics are the ones method_metrics reports on its own
    assert c["methods"]["semantic_entropy"] == {
        "kind": "semantic",
        **method_metrics(scores["semantic_entropy"], correct.astype(float), n_boot=200, seed=3),
    }


def evaluation_records(n: int = 24):
    from engine.uq.records import QuestionRecord

    rng = np.random.default_rng(5)
    cities = ["Paris", "London", "Rome", "Berlin", "the city of Paris"]
    records = []
    for i in range(n):
        samples = [str(c) for c in rng.choice(cities[: 2 + i % 4], size=4)]
        records.append(
            QuestionRecord(
                f"q{i}",
                f"question {i}?",
                ["Paris"] if i % 3 else ["London town"],
                samples[0] + (" town" if i % 5 == 0 else ""),
                list(-rng.random(1 + i % 3)),
                rng.normal(size=(3, 8)).astype(np.float32),
                samples,
                [list(-rng.random(2)) for _ in samples],
                rng.normal(size=(4, 3, 8)).astype(np.float32),
                [2, 5, 8],
            )
        )
    return records


def test_summary_has_paired_differences_verdict_and_a_table_per_judge(embedder, tmp_path):
    from engine.uq.config import EvalOptions
    from engine.uq.evaluation import evaluate_records
    from engine.uq.export import write_outputs

    evaluation = evaluate_records(evaluation_records(), embedder, EvalOptions(n_boot=100, n_seeds=2))
    paths = write_outputs(evaluation, tmp_path)
    summary = json.loads(paths[1].read_text())
    # the decomposition ran: the pre-registered contrasts are written, columns named as in results.csv
    contrasts = summary["contrasts"]
    assert {c["family"] for c in contrasts} >= {"primary", "same-rank control", "exploratory"}
    columns = set(evaluation.results.columns)
    primary = [c for c in contrasts if c["family"] == "primary"]
    assert len(primary) == 9 and all({c["enhanced"], c["baseline"]} <= columns for c in primary)
    assert any(c["baseline"] == "full_state_spread" for c in primary) and all(c["one_sided"] for c in primary)
    assert {
        "name",
        "enhanced",
        "baseline",
        "metric",
        "estimate",
        "ci_low",
        "ci_high",
        "p",
        "p_holm",
        "family",
        "one_sided",
    } <= set(primary[0])
    seeded = [c for c in primary if c.get("n_seeds")]
    assert seeded and all(c["n_seeds"] == 2 for c in seeded)  # the seed-to-seed spread of each contrast
    assert summary["n_seeds"] == 2
    assert summary["methods"]["mean_token_nll"]["diff_vs_usual"] is None  # the usual score itself
    for name, m in summary["methods"].items():
        if name != "mean_token_nll":
            assert set(m["diff_vs_usual"]) == {"acc50", "auroc"}, name  # AUARC is described, not tested
            for d in m["diff_vs_usual"].values():
                assert set(d) == {"estimate", "ci_low", "ci_high", "p", "p_holm"}
    semantic = summary["methods"]["semantic_entropy"]
    assert semantic["diff_vs_usual"]["acc50"]["estimate"] == pytest.approx(summary["A3"] - summary["A2"])
    assert [t["judge"] for t in summary["judges"]] == ["auto", "contains", "f1", "embedding"]
    assert summary["judges"][0]["A1"] == summary["A1"] and summary["judges"][0]["A3"] == summary["A3"]
    assert summary["verdict"]["answer"] in ("useful", "not useful", f"inconclusive at n = {summary['n']}")
    assert summary["length"]["sentence"]
    text = paths[2].read_text()
    assert summary["verdict"]["sentence"] in text.split("\n\n")[1]  # the answer leads
    assert "## A1 / A2 / A3 under each judge" in text and "| contains | 24 |" in text and "| embedding | 24 |" in text
    assert "Δ AUROC" in text
    judges = evaluation.summary.judges_table()
    assert list(judges["judge"]) == ["auto (chosen)", "contains", "f1", "embedding"]
    assert {"ΔAUROC", "ΔAUROC CI", "ΔAUROC p (Holm)"} <= set(evaluation.summary.methods_table().columns)
    # judge "f1" grades by the F1 threshold (not by F1 > 0), and ungraded answers never crash the probes
    records = evaluation_records()
    records[1].answer = "the city of Paris town"  # F1 0.4 against "Paris": wrong at the 0.5 threshold
    records[2].references = []  # ungraded
    f1 = evaluate_records(records, embedder, EvalOptions(judge="f1", n_boot=20)).results.set_index("id")
    assert f1.loc["q1", "f1"] == pytest.approx(0.4) and f1.loc["q1", "judge"] is False
    graded = f1.drop(index="q2")
    assert (graded["judge"] == (graded["f1"] > EvalOptions().f1_threshold)).all()
    assert f1.loc["q2", "correct"] is None and f1["correctness_probe_full_state"].notna().all()


def test_tie_averaged_acc50_is_the_mean_over_random_tie_orders():
    from engine.uq.metrics import acc50, acc50_draws, resample_counts

    unc = np.array([0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.2])  # k = ceil(7/2) = 4: the cut falls inside the 0.5 tie
    correct = np.array([1, 0, 1, 1, 0, 0, 0], dtype=float)
    rng = np.random.default_rng(0)
    orders = [correct[np.lexsort((rng.random(unc.size), unc))][:4].mean() for _ in range(20_000)]
    # exact: 2 certain ones (1 right) + 2 of the 4 tied (2 right of 4): (1 + 2 * 2/4) / 4 = 0.5
    assert acc50(unc, correct) == pytest.approx(0.5)
    assert acc50(unc, correct) == pytest.approx(np.mean(orders), abs=0.005)
    assert method_metrics(unc, correct, n_boot=0)["acc50"] == pytest.approx(0.5)  # the same in the metrics table
    # a resample as counts: the same as the metric on the explicit resampled list
    counts = resample_counts(unc.size, 50, 3)
    for row in counts[:10]:
        idx = np.repeat(np.arange(unc.size), row)
        assert acc50_draws(unc, correct, row[None])[0] == pytest.approx(acc50(unc[idx], correct[idx]))
