"""Uncertainty estimators on hand-made records with exactly known values (engine/uq/estimators.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.core.errors import LabError
from engine.uq.clustering import semantic_clusters
from engine.uq.decompositions import CONTROLS
from engine.uq.estimators import (
    EIGENSCORE_ALPHA,
    ESTIMATORS,
    STATISTICS,
    UnknownStatistic,
    _estimator,
    best_variance_split,
    cluster_entropy,
    eigenscore,
    mean_pairwise_rouge_l,
    score_records,
    sep_out_of_fold,
)
from engine.uq.records import QuestionRecord

D = 8


def record(
    qid="q",
    samples=("a", "b"),
    sample_lps=None,
    answer_lps=(-1.0,),
    sample_hidden=None,
    answer_hidden=None,
    layers=(2, 5, 8),
) -> QuestionRecord:
    k = len(samples)
    rng = np.random.default_rng(abs(hash(qid)) % 2**32)
    return QuestionRecord(
        id=qid,
        question=f"question {qid}?",
        references=["x"],
        answer=samples[0] if samples else "",
        answer_token_logprobs=list(answer_lps),
        answer_hidden=rng.normal(size=(len(layers), D)).astype(np.float32) if answer_hidden is None else answer_hidden,
        samples=list(samples),
        sample_token_logprobs=[[-1.0]] * k if sample_lps is None else [list(x) for x in sample_lps],
        sample_hidden=rng.normal(size=(k, len(layers), D)).astype(np.float32)
        if sample_hidden is None
        else sample_hidden,
        hidden_layers=list(layers),
    )


def exact_meaning(a: str, b: str) -> bool:
    """A fake NLI model: two answers entail each other when they are the same word ignoring case."""
    return a.strip(" .").lower() == b.strip(" .").lower()


def test_logprob_scores_have_exact_values():
    rec = record(
        answer_lps=[-1.0, -2.0, -3.0], samples=["a", "b", "c"], sample_lps=[[-1.0, -1.0], [-2.0], [-3.0, -3.0, -3.0]]
    )
    scores = score_records([rec], None, estimators=["mean_token_nll", "max_seq_prob", "predictive_entropy"]).scores
    assert scores.loc["q", "mean_token_nll"] == pytest.approx(2.0)
    assert scores.loc["q", "max_seq_prob"] == pytest.approx(-math.exp(-6.0))  # negated confidence
    assert scores.loc["q", "predictive_entropy"] == pytest.approx(2.0)  # length-normalised: (1 + 2 + 3) / 3
    empty = score_records([record(answer_lps=[])], None, estimators=["mean_token_nll"]).scores
    assert np.isnan(empty.loc["q", "mean_token_nll"])


def test_lexical_similarity_rouge_l():
    assert mean_pairwise_rouge_l(["the cat sat", "the cat sat", "The cat sat."]) == pytest.approx(1.0)
    assert mean_pairwise_rouge_l(["red apple", "blue sky"]) == pytest.approx(0.0)
    # "the cat sat" vs "the cat ran": LCS 2 of 3 tokens -> F = 2/3; pairs (a, a) = 1, (a, b) twice
    assert mean_pairwise_rouge_l(["the cat sat", "the cat sat", "the cat ran"]) == pytest.approx((1 + 2 * 2 / 3) / 3)
    rec = record(samples=["the cat sat", "the cat ran"])
    assert score_records([rec], None, estimators=["lexical_similarity"]).scores.iloc[0, 0] == pytest.approx(1 / 3)
    assert np.isnan(mean_pairwise_rouge_l(["alone"]))


def test_eigenscore_on_a_known_covariance():
    # three zero-mean, orthogonal rows: np.cov(H) = diag(2 c_k^2 / 5) for d = 6
    c = np.array([1.0, 2.0, 3.0])
    h = np.zeros((3, 6))
    for k in range(3):
        h[k, 2 * k], h[k, 2 * k + 1] = c[k], -c[k]
    np.testing.assert_allclose(np.cov(h), np.diag(2 * c**2 / 5), atol=1e-12)
    assert eigenscore(h) == pytest.approx(np.mean(np.log(2 * c**2 / 5 + EIGENSCORE_ALPHA)))
    # identical samples: every entry of C is the row's variance (centred over features, as in INSIDE),
    # so C = var * 11^T has one eigenvalue K var and K - 1 zeros
    same = np.tile(np.arange(6.0), (4, 1))
    var = np.var(np.arange(6.0), ddof=1)
    assert eigenscore(same) == pytest.approx(
        (math.log(4 * var + EIGENSCORE_ALPHA) + 3 * math.log(EIGENSCORE_ALPHA)) / 4
    )
    # through score_records at the chosen layer (layer 8 = position 2)
    hidden = np.zeros((3, 3, D))
    hidden[:, 2, :6] = h
    rec = record(samples=["a", "b", "c"], sample_hidden=hidden)
    at_8 = score_records([rec], None, layer=8, estimators=["eigenscore"]).scores.iloc[0, 0]
    assert at_8 == pytest.approx(eigenscore(hidden[:, 2]))
    at_5 = score_records([rec], None, estimators=["eigenscore"]).scores.iloc[0, 0]  # default: middle layer 5
    assert at_5 == pytest.approx(math.log(EIGENSCORE_ALPHA))  # all-zero states there


def test_cluster_entropy_zero_log_k_and_likelihood_weights():
    assert cluster_entropy([0, 0, 0, 0], [[-0.1], [-2.0], [-5.0], [-1.0]]) == pytest.approx(0.0)
    assert cluster_entropy([0, 1, 2, 3], [[-1.0]] * 4) == pytest.approx(math.log(4))
    assert cluster_entropy([0, 1, 2]) == pytest.approx(math.log(3))  # discrete
    assert cluster_entropy([0, 0, 1]) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    # length-normalised weights: exp(mean token log-prob) = 0.3, 0.3, 0.4 -> p = (0.6, 0.4)
    lps = [[math.log(0.3)] * 2, [math.log(0.3)], [math.log(0.4)] * 5]
    assert cluster_entropy([0, 0, 1], lps) == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))
    # a sample without tokens gets the mean weight of the others
    assert cluster_entropy([0, 1], [[-1.0], []]) == pytest.approx(math.log(2))


def test_semantic_entropy_through_score_records(embedder):
    same = record("same", samples=["Paris"] * 5, sample_lps=[[-0.1], [-2.0], [-0.5], [-3.0], [-1.0]])
    distinct = record("distinct", samples=["Paris", "London", "Tokyo", "a banana"], sample_lps=[[-1.0]] * 4)
    result = score_records([same, distinct], embedder, estimators=["semantic_entropy", "discrete_semantic_entropy"])
    assert result.scores.loc["same"].tolist() == pytest.approx([0.0, 0.0])
    assert result.scores.loc["distinct"].tolist() == pytest.approx([math.log(4), math.log(4)])
    assert result.clusters == {"same": [0] * 5, "distinct": [0, 1, 2, 3]}
    fake = score_records([distinct], None, entails=exact_meaning, estimators=["semantic_entropy"])
    assert fake.scores.iloc[0, 0] == pytest.approx(math.log(4))
    assert fake.info["clustering"] == "bidirectional entailment"


def test_clusters_by_embedding(embedder):
    from engine.core.embedder import embed

    texts = ["Paris", "paris.", "It is Paris", "London", "london"]
    assert semantic_clusters(texts, embed(embedder, texts)).tolist() == [0, 0, 0, 1, 1]
    texts = ["", "Paris", "  ", "London", "paris"]
    assert semantic_clusters(texts, embed(embedder, texts)).tolist() == [0, 1, 0, 2, 1]  # empties: own cluster
    assert semantic_clusters(["x"], np.ones((1, 3))).tolist() == [0]
    with pytest.raises(LabError):
        semantic_clusters(["a", "b"])


def test_clusters_by_bidirectional_entailment():
    calls = []

    def entails(a, b):
        calls.append((a, b))
        return (a, b) == ("a dog", "an animal") or exact_meaning(a, b)

    labels = semantic_clusters(["a dog", "an animal", "A dog.", "", "an animal", "cat"], entails=entails)
    assert labels.tolist() == [0, 1, 0, 2, 1, 3]  # one-way entailment is not the same meaning
    assert ("an animal", "an animal") not in calls  # identical texts need no NLI call


def test_best_variance_split():
    assert best_variance_split(np.array([0.0, 0.0, 0.0, 1.0, 1.1])) == pytest.approx(0.5)
    assert best_variance_split(np.array([0.2, 0.2])) is None


def test_sep_is_scored_out_of_fold():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from engine.uq.decompositions import tuned_probe

    n, rng = 30, np.random.default_rng(1)
    se = np.where(rng.random(n) < 0.5, 0.0, 1.0) + rng.random(n) * 0.1
    features = np.eye(n)  # each question has its own direction: only a probe that saw it could know it
    scores, folds, note = sep_out_of_fold(features, se, n_folds=5, seed=0)
    assert note == "" and sorted(np.bincount(folds).tolist()) == [6] * 5
    for fold in range(5):
        test, train = folds == fold, folds != fold
        assert np.ptp(scores[test]) < 1e-9  # a never-seen direction: the same prediction for all held out
        y = se[train] > best_variance_split(se[train])
        probe = tuned_probe(features[train], y)  # C chosen inside the training questions only
        np.testing.assert_allclose(scores[test], probe.predict_proba(features[test])[:, 1])
    in_sample = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features, se > 0.5)
    assert np.ptp(in_sample.predict_proba(features)[:, 1]) > 0.2  # in-sample the probe would memorise


def test_sep_too_few_questions_or_one_class():
    scores, _, note = sep_out_of_fold(np.ones((6, 3)), np.arange(6.0), n_folds=5)
    assert np.isnan(scores).all() and "at least 10" in note
    scores, _, note = sep_out_of_fold(np.random.default_rng(0).normal(size=(20, 3)), np.zeros(20))
    assert np.isnan(scores).all() and "single class" in note


def test_score_records_shape_layer_and_graceful_nans(embedder):
    recs = [record(f"q{i}", samples=["Paris", "London"] if i % 2 else ["Paris", "paris"]) for i in range(4)]
    result = score_records(recs, embedder)
    assert list(result.scores.columns) == list(ESTIMATORS)
    assert list(result.scores.index) == ["q0", "q1", "q2", "q3"]
    assert result.info["layer"] == 5  # the middle stored layer
    assert result.kinds["semantic_entropy"] == "semantic" and result.kinds["eigenscore"] == "usual"
    for name in ("sep", "embedding_map_semantic_spread", "embedding_map_surface_spread"):  # 4 questions: too few
        assert result.scores[name].isna().all() and "at least" in result.info["notes"][name]
    assert result.scores["discrete_semantic_entropy"].tolist() == pytest.approx([0, math.log(2)] * 2)
    no_embedder = score_records(recs, None, estimators=["semantic_entropy", "mean_token_nll"])
    assert (
        no_embedder.scores["semantic_entropy"].isna().all()
        and "embedder" in no_embedder.info["notes"]["semantic_entropy"]
    )
    single = score_records([record(f"s{i}", samples=["Paris"]) for i in range(12)], embedder)  # K = 1
    assert single.scores[["eigenscore", "lexical_similarity", "embedding_map_semantic_spread"]].isna().all().all()
    assert (single.scores["semantic_entropy"] == 0).all() and "single class" in single.info["notes"]["sep"]
    with pytest.raises(LabError, match="stored layers"):
        score_records(recs, embedder, layer=3)
    with pytest.raises(LabError, match="Unknown"):
        score_records(recs, embedder, estimators=["nope"])


def test_every_estimator_has_a_kind_and_the_surface_spread_is_no_semantic_score():
    from engine.uq.estimators import SCORE_KINDS, labelled_estimators

    assert {e.kind for e in ESTIMATORS.values()} == set(SCORE_KINDS)
    kinds = {name: e.kind for name, e in ESTIMATORS.items()}
    for decomposition in ("embedding_map", "discriminant", "lexical_map"):
        for part in ("semantic_spread", "surface_spread", "semantic_share"):
            assert kinds[f"{decomposition}_{part}"] == "decomposition"
        for probe in ("se_probe", "correctness_probe"):
            for subspace in ("semantic", "surface"):
                assert kinds[f"{probe}_{decomposition}_{subspace}"] == "decomposition"
    assert kinds["se_probe_full_state"] == "semantic" and kinds["correctness_probe_full_state"] == "baseline"
    for name in ("answer_length_tokens", "answer_length_chars", "kernel_language_entropy", "entropy_probe_combination"):
        assert kinds[name] == "baseline"
    assert "semantic_subspace_spread" not in ESTIMATORS  # one set of columns for decomposition (a)
    assert set(labelled_estimators()) == {n for n in ESTIMATORS if n.startswith("correctness_probe_")} | {
        "entropy_probe_combination"
    }


def study_records(n: int = 30, k: int = 4) -> list[QuestionRecord]:
    """Questions whose samples are a few city names; hidden states random, so every method can be fitted."""
    rng = np.random.default_rng(3)
    cities = ["Paris", "paris", "the city of Paris", "London", "Rome", "Berlin"]
    out = []
    for i in range(n):
        samples = [str(c) for c in rng.choice(cities[: 2 + i % 5], size=k)]
        out.append(
            record(
                f"s{i}",
                samples=samples,
                sample_lps=[list(-rng.random(2)) for _ in samples],
                answer_lps=list(-rng.random(1 + i % 4)),
            )
        )
    return out


def test_decompositions_probes_and_baselines_in_score_records(embedder):
    from engine.uq.estimators import NEEDS_LABELS, labelled_estimators, scoring_stats

    recs = study_records()
    result = score_records(recs, embedder)
    assert list(result.scores.columns) == list(ESTIMATORS)
    labelled = labelled_estimators()
    for name in labelled:  # no correctness labels: NaN with a note, never an error
        assert result.scores[name].isna().all() and result.info["notes"][name] == NEEDS_LABELS
    for name in ESTIMATORS:
        if name not in labelled:
            assert result.scores[name].notna().sum() >= 25, (name, result.info["notes"].get(name))
    np.testing.assert_array_equal(result.scores["answer_length_tokens"], [len(r.answer_token_logprobs) for r in recs])
    np.testing.assert_array_equal(result.scores["answer_length_chars"], [len(r.answer) for r in recs])
    controls = {f"{name}_{kind}" for name in ("embedding_map", "discriminant", "lexical_map") for kind in CONTROLS}
    assert (
        set(result.info["decompositions"]) == {"embedding_map", "discriminant", "lexical_map", "full_state"} | controls
    )
    share = result.scores["discriminant_semantic_share"].dropna()
    assert ((share >= 0) & (share <= 1 + 1e-9)).all()
    # with labels (NaN = ungraded): the labelled columns, and the label-free statistics computed once
    correct = np.array([i % 3 != 0 for i in range(len(recs))], dtype=float)
    correct[4] = np.nan
    stats = scoring_stats(recs, embedder)
    first, second = stats.with_labels(correct), stats.with_labels(1 - np.nan_to_num(correct))
    a = first.score(labelled)
    assert first["decomp_discriminant"] is second["decomp_discriminant"] is stats["decomp_discriminant"]
    for name in labelled:
        assert a.scores[name].notna().all(), (name, a.info["notes"].get(name))  # the ungraded one is scored too
    b = second.score(["correctness_probe_full_state"])
    assert not np.allclose(a.scores["correctness_probe_full_state"], b.scores["correctness_probe_full_state"])
    full = score_records(recs, embedder, correct=correct, estimators=["correctness_probe_full_state"])
    np.testing.assert_allclose(full.scores.iloc[:, 0], a.scores["correctness_probe_full_state"])
    with pytest.raises(LabError, match="labels"):
        stats.with_labels([1.0, 0.0])


def test_cross_fitted_scores_are_the_mean_over_fold_seeds(embedder):
    """n_seeds refits every cross-fitted score with seeds seed .. seed + n - 1; the column is their mean."""
    recs = study_records()
    names = ["mean_token_nll", "discriminant_semantic_spread", "se_probe_full_state", "correctness_probe_full_state"]
    correct = np.array([float(i % 3 == 0) for i in range(len(recs))])
    result = score_records(recs, embedder, estimators=names, n_seeds=3, correct=correct)
    assert "mean_token_nll" not in result.seed_scores  # not fitted: one value
    for name in names[1:]:
        per_seed = result.seed_scores[name]
        assert per_seed.shape == (3, len(recs))
        np.testing.assert_allclose(result.scores[name], per_seed.mean(axis=0))
        one = score_records(recs, embedder, estimators=[name], seed=1, correct=correct).scores[name]
        np.testing.assert_allclose(per_seed[1], one)  # the second fold seed is seed 1's single fit
    assert np.ptp(result.seed_scores["se_probe_full_state"], axis=0).max() > 0  # refitting varies


def test_every_estimator_need_is_a_registered_statistic():
    for name, estimator in ESTIMATORS.items():
        assert [stat.name for stat in estimator.statistics] == list(estimator.needs)
        assert all(need in STATISTICS for need in estimator.needs), name


def test_labels_and_seeds_follow_the_statistics():
    assert ESTIMATORS["correctness_probe_full_state"].needs_labels
    assert ESTIMATORS["entropy_probe_combination"].needs_labels
    assert not ESTIMATORS["semantic_entropy"].needs_labels
    assert ESTIMATORS["embedding_map_semantic_spread"].cross_fitted
    assert not ESTIMATORS["mean_token_nll"].cross_fitted
    assert ESTIMATORS["sep"].cross_fitted


def test_registering_an_estimator_with_an_unknown_need_raises():
    before = dict(ESTIMATORS)
    with pytest.raises(UnknownStatistic, match="answer_logprob"):
        _estimator("misspelt_need", "usual", ("answer_logprob",), "x")
    with pytest.raises(LabError, match="kind"):
        _estimator("bad_kind", "sematic", ("answer_logprobs",), "x")
    assert ESTIMATORS == before


def test_an_estimator_may_name_its_statistics_by_object():
    try:
        _estimator("typed_need", "usual", (STATISTICS["answer_logprobs"],), "x")(lambda s: np.zeros(1))
        assert ESTIMATORS["typed_need"].needs == ("answer_logprobs",)
    finally:
        ESTIMATORS.pop("typed_need", None)
