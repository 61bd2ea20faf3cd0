"""Uncertainty scores of generated answers, LM-Polygraph style: small estimators over shared statistics.

Every score is "higher = more uncertain" (confidences are negated). Each estimator declares the
statistics it needs ("answer_logprobs", "sample_embeddings", "clusters", "sample_hidden", ...);
`score_records` computes each statistic once per call (the samples of all questions are embedded in
one batched call) and returns one column per estimator. Estimators that cannot run on the given data
(too few questions for a probe or for cross-fitting, one SE class, no embedder) give a NaN column and
a note in `ScoreResult.info["notes"]`, never an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.clustering import semantic_clusters
from engine.uq.records import QuestionRecord
from engine.uq.subspace import single_blas_thread, subspace_spreads

SCORES_VERSION = 1  # bump when a score's definition changes (for callers that cache scores)
EIGENSCORE_ALPHA = 1e-3  # Chen et al. 2024 (INSIDE): regulariser of the covariance's log-determinant


class Unavailable(Exception):
    """A statistic that cannot be computed on this data: its estimators give NaN and this note."""


@dataclasses.dataclass(frozen=True)
class Estimator:
    name: str
    kind: str  # "usual" | "semantic"
    needs: tuple[str, ...]
    formula: str  # one line for the page
    compute: Callable[[Stats], np.ndarray]


ESTIMATORS: dict[str, Estimator] = {}
_STATS: dict[str, Callable[[Stats], object]] = {}


def _estimator(name: str, kind: str, needs: tuple[str, ...], formula: str):
    def register(fn):
        ESTIMATORS[name] = Estimator(name, kind, needs, formula, fn)
        return fn

    return register


def _stat(name: str):
    def register(fn):
        _STATS[name] = fn
        return fn

    return register


@dataclasses.dataclass
class Stats:
    """The run's inputs and settings; statistics computed on first access and kept (stats["clusters"])."""

    records: list[QuestionRecord]
    embedder: object = None
    entails: Callable[[str, str], bool] | None = None
    layer_position: int = 0
    n_folds: int = 5
    seed: int = 0
    threshold: float = 0.8
    values: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str):
        if key not in self.values:
            try:
                self.values[key] = _STATS[key](self)
            except Unavailable as err:
                self.values[key] = err
        if isinstance(self.values[key], Unavailable):
            raise self.values[key]
        return self.values[key]


# ---------------------------------------------------------------- shared statistics


@_stat("answer_logprobs")
def _answer_logprobs(s: Stats) -> list[np.ndarray]:
    return [np.asarray(r.answer_token_logprobs, dtype=np.float64) for r in s.records]


@_stat("sample_logprobs")
def _sample_logprobs(s: Stats) -> list[list[np.ndarray]]:
    return [[np.asarray(lp, dtype=np.float64) for lp in r.sample_token_logprobs] for r in s.records]


@_stat("sample_embeddings")
def _sample_embeddings(s: Stats) -> list[np.ndarray]:
    """Unit-norm MiniLM embeddings [K_i, e] of each question's samples: one batched call, unique texts once."""
    if s.embedder is None:
        raise Unavailable("no sentence embedder was given")
    from engine.core.embedder import embed

    unique = sorted({t for r in s.records for t in r.samples})
    vectors = np.asarray(embed(s.embedder, unique)) if unique else np.zeros((0, 1), dtype=np.float32)
    row = {t: i for i, t in enumerate(unique)}
    return [vectors[[row[t] for t in r.samples]] for r in s.records]


@_stat("clusters")
def _clusters(s: Stats) -> list[np.ndarray]:
    if s.entails is not None:
        return [semantic_clusters(r.samples, entails=s.entails) for r in s.records]
    embeddings = s["sample_embeddings"]
    return [semantic_clusters(r.samples, e, threshold=s.threshold) for r, e in zip(s.records, embeddings)]


def _at_layer(hidden: np.ndarray, position: int, leading: int) -> np.ndarray:
    hidden = np.asarray(hidden, dtype=np.float64)
    if hidden.size == 0:
        return np.zeros((0, 0))
    return hidden[:, position] if leading else hidden[position]


@_stat("sample_hidden")
def _sample_hidden(s: Stats) -> list[np.ndarray]:
    return [_at_layer(r.sample_hidden, s.layer_position, 1) for r in s.records]


@_stat("answer_hidden")
def _answer_hidden(s: Stats) -> np.ndarray:
    return np.stack([_at_layer(r.answer_hidden, s.layer_position, 0) for r in s.records])


@_stat("semantic_entropy")
def _semantic_entropy_stat(s: Stats) -> np.ndarray:
    return np.array([cluster_entropy(c, lps) for c, lps in zip(s["clusters"], s["sample_logprobs"])])


@_stat("subspace")
def _subspace(s: Stats):
    fit = subspace_spreads(s["sample_hidden"], s["sample_embeddings"], n_folds=s.n_folds, seed=s.seed)
    s.info["subspace"] = {
        "folds": fit.folds.tolist(),
        "ranks": fit.ranks,
        "ridge_alphas": fit.alphas,
        "heldout_r2": fit.heldout_r2,
    }
    return fit


# ---------------------------------------------------------------- formulas used by the estimators


def cluster_entropy(labels: Sequence[int], token_logprobs: Sequence[Sequence[float]] | None = None) -> float:
    """Semantic entropy -sum_c p_c log p_c over the meaning clusters of K samples (natural log).

    With `token_logprobs` (likelihood-weighted, Kuhn et al. 2023 / Farquhar et al. 2024 code):
    p_c = sum_{k in c} exp(lbar_k) / sum_k exp(lbar_k), lbar_k = mean token log-prob of sample k
    (length-normalised); a sample without tokens gets the mean lbar of the others. Without: p_c = |c| / K
    (discrete semantic entropy). NaN for no samples.
    """
    from scipy.special import logsumexp

    labels = np.asarray(labels, dtype=int)
    if labels.size == 0:
        return float("nan")
    if token_logprobs is None:
        weights = np.zeros(labels.size)
    else:
        weights = np.array([np.mean(lp) if len(lp) else np.nan for lp in token_logprobs], dtype=np.float64)
        weights[np.isnan(weights)] = np.nanmean(weights) if np.isfinite(weights).any() else 0.0
    log_p = np.array([logsumexp(weights[labels == c]) for c in np.unique(labels)])
    log_p -= logsumexp(log_p)
    return float(max(-np.sum(np.exp(log_p) * log_p), 0.0))


def eigenscore(hidden: np.ndarray, alpha: float = EIGENSCORE_ALPHA) -> float:
    """INSIDE EigenScore (Chen et al. 2024): (1/K) log det(C + alpha I) = mean_i log(lambda_i + alpha).

    C = np.cov(H) = H^T J_d H / (d - 1) is the K x K covariance of the K samples' hidden states H [K, d],
    each sample centred over its d features (the paper's J_d, the authors' np.cov); identical samples
    give rank 1. Natural log (their code uses log10: a constant factor). NaN for K < 2.
    """
    hidden = np.asarray(hidden, dtype=np.float64)
    if hidden.shape[0] < 2:
        return float("nan")
    eig = np.linalg.eigvalsh(np.cov(hidden) + alpha * np.eye(hidden.shape[0]))
    return float(np.mean(np.log(np.maximum(eig, 1e-300))))


_rouge = None


def mean_pairwise_rouge_l(texts: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score package) over the K(K-1)/2 pairs of samples; identical texts count 1."""
    global _rouge
    if len(texts) < 2:
        return float("nan")
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"])
    unique, counts = np.unique(np.asarray(texts, dtype=object).astype(str), return_counts=True)
    total = float(np.sum(counts * (counts - 1) / 2))  # identical pairs: similarity 1
    for i, j in itertools.combinations(range(len(unique)), 2):
        total += counts[i] * counts[j] * _rouge.score(unique[i], unique[j])["rougeL"].fmeasure
    k = len(texts)
    return total / (k * (k - 1) / 2)


def best_variance_split(values: np.ndarray) -> float | None:
    """Threshold splitting `values` into two groups with the least total within-group squared error.

    SEP paper (arXiv 2406.15927) binarises semantic entropy this way; midpoint between the two sorted
    values around the best split. None when all values are equal.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    cuts = np.flatnonzero(np.diff(v) > 0)  # split after index i
    if cuts.size == 0:
        return None
    n = v.size
    csum, csq = np.cumsum(v), np.cumsum(v**2)
    left_n = cuts + 1
    left = csq[cuts] - csum[cuts] ** 2 / left_n
    right = (csq[-1] - csq[cuts]) - (csum[-1] - csum[cuts]) ** 2 / (n - left_n)
    best = cuts[np.argmin(left + right)]
    return float((v[best] + v[best + 1]) / 2)


def sep_out_of_fold(features: np.ndarray, se: np.ndarray, *, n_folds: int = 5, seed: int = 0):
    """Semantic entropy probe (arXiv 2406.15927), scored out-of-fold: (P(high SE), folds, note).

    Questions are split by a seeded StratifiedKFold; for each fold the SE threshold
    (`best_variance_split`) is found on the training questions only, a StandardScaler +
    LogisticRegression is fitted on their features, and the held-out fold gets its P(SE > threshold).
    No question is ever scored by a probe that saw it. All NaN (with a note) when there are fewer than
    2 * n_folds questions or a training fold has a single SE class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    se = np.asarray(se, dtype=np.float64)
    n = len(se)
    scores, folds = np.full(n, np.nan), np.full(n, -1)
    if n < 2 * n_folds or n_folds < 2:
        return scores, folds, f"needs at least {2 * max(n_folds, 2)} questions for {n_folds}-fold probes; got {n}"
    if np.isnan(se).any():
        return scores, folds, "some questions have no semantic entropy (no samples)"
    split = best_variance_split(se)
    if split is None:
        return scores, folds, "every question has the same semantic entropy: a single class, no probe"
    strata = se > split
    n_splits = min(n_folds, int(min(strata.sum(), (~strata).sum())))
    if n_splits < 2:
        return scores, folds, "one of the two SE classes has a single question: no probe"
    x = np.asarray(features, dtype=np.float64)
    for fold, (train, test) in enumerate(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, strata)):
        threshold = best_variance_split(se[train])
        y = se[train] > threshold if threshold is not None else np.zeros(len(train), bool)
        if y.all() or not y.any():
            return np.full(n, np.nan), np.full(n, -1), f"fold {fold}: a single SE class among training questions"
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y)
        scores[test] = probe.predict_proba(x[test])[:, 1]
        folds[test] = fold
    note = "" if n_splits == n_folds else f"{n_splits} folds (the smaller SE class has {n_splits} questions)"
    return scores, folds, note


# ---------------------------------------------------------------- the estimators


def _note(s: Stats, name: str, note: str) -> None:
    if note:
        s.info.setdefault("notes", {})[name] = note


def _nan_mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@_estimator("mean_token_nll", "usual", ("answer_logprobs",), "-(1/T) sum_t log p(y_t | y_<t, x) of the graded answer")
def _mean_token_nll(s: Stats) -> np.ndarray:
    return np.array([-_nan_mean(list(lp)) for lp in s["answer_logprobs"]])


@_estimator(
    "max_seq_prob", "usual", ("answer_logprobs",), "-prod_t p(y_t | y_<t, x) = -exp(sum_t log p) of the graded answer"
)
def _max_seq_prob(s: Stats) -> np.ndarray:
    return np.array([-np.exp(np.sum(lp)) for lp in s["answer_logprobs"]])


@_estimator(
    "predictive_entropy",
    "usual",
    ("sample_logprobs",),
    "naive predictive entropy, length-normalised: -(1/K) sum_k (1/T_k) sum_t log p(s_k,t) over the K samples",
)
def _predictive_entropy(s: Stats) -> np.ndarray:
    return np.array([-_nan_mean([float(np.mean(lp)) for lp in lps if len(lp)]) for lps in s["sample_logprobs"]])


@_estimator("lexical_similarity", "usual", (), "1 - mean ROUGE-L F1 over all pairs of samples")
def _lexical_similarity(s: Stats) -> np.ndarray:
    return np.array([1.0 - mean_pairwise_rouge_l(r.samples) for r in s.records])


@_estimator(
    "eigenscore",
    "usual",
    ("sample_hidden",),
    "INSIDE EigenScore: (1/K) log det(Cov(samples' hidden states) + 1e-3 I), K x K covariance",
)
def _eigenscore(s: Stats) -> np.ndarray:
    return np.array([eigenscore(h) for h in s["sample_hidden"]])


@_estimator(
    "semantic_entropy",
    "semantic",
    ("clusters", "sample_logprobs", "semantic_entropy"),
    "-sum_c p_c log p_c, p_c = share of exp(mean token log-prob) of the samples in meaning cluster c",
)
def _semantic_entropy(s: Stats) -> np.ndarray:
    return s["semantic_entropy"]


@_estimator(
    "discrete_semantic_entropy", "semantic", ("clusters",), "-sum_c p_c log p_c, p_c = |c| / K (cluster counts)"
)
def _discrete_semantic_entropy(s: Stats) -> np.ndarray:
    return np.array([cluster_entropy(c) for c in s["clusters"]])


@_estimator(
    "sep",
    "semantic",
    ("answer_hidden", "semantic_entropy"),
    "semantic entropy probe: out-of-fold logistic regression P(high SE | graded answer's hidden state)",
)
def _sep(s: Stats) -> np.ndarray:
    with single_blas_thread():
        scores, folds, note = sep_out_of_fold(s["answer_hidden"], s["semantic_entropy"], n_folds=s.n_folds, seed=s.seed)
    s.info["sep"] = {"folds": folds.tolist()}
    _note(s, "sep", note)
    return scores


def _subspace_estimator(name: str, part: str, formula: str) -> None:
    def compute(s: Stats) -> np.ndarray:
        _note(s, name, s["subspace"].note)
        return getattr(s["subspace"], part)

    _estimator(name, "semantic", ("sample_hidden", "sample_embeddings", "subspace"), formula)(compute)


_subspace_estimator(
    "semantic_subspace_spread",
    "semantic",
    "spread of the samples' hidden states inside the semantic subspace "
    "(row space of a cross-fitted hidden->meaning map)",
)
_subspace_estimator(
    "surface_subspace_spread",
    "surface",
    "for contrast: spread of the samples' hidden states in the surface subspace "
    "(orthogonal complement of the semantic one)",
)


# ---------------------------------------------------------------- entry point


@dataclasses.dataclass
class ScoreResult:
    scores: pd.DataFrame  # index: record id; one column per estimator; higher = more uncertain
    clusters: dict[str, list[int]]  # record id -> cluster label of each sample
    info: dict  # layer used, method notes, per-estimator notes and timings

    @property
    def kinds(self) -> dict[str, str]:
        """Column -> "usual" | "semantic" (for metrics.comparison)."""
        return {name: ESTIMATORS[name].kind for name in self.scores.columns if name in ESTIMATORS}


def _layer_position(records: list[QuestionRecord], layer: int | None) -> tuple[int, int]:
    """(position in the records' hidden arrays, model layer index); default: the middle stored layer."""
    n_stored = np.asarray(records[0].answer_hidden).shape[0]
    layers = list(records[0].hidden_layers) or list(range(n_stored))
    if layer is None:
        position = len(layers) // 2
    elif layer in layers:
        position = layers.index(layer)
    else:
        raise LabError(f"Layer {layer} was not stored for these records; stored layers: {layers}.")
    return position, int(layers[position])


def score_records(
    records: list[QuestionRecord],
    embedder=None,
    *,
    entails: Callable[[str, str], bool] | None = None,
    layer: int | None = None,
    n_folds: int = 5,
    seed: int = 0,
    threshold: float = 0.8,
    estimators: Sequence[str] | None = None,
) -> ScoreResult:
    """Every estimator in ESTIMATORS (or those named) on `records`; see the module docstring.

    `embedder`: sentence-transformers model (engine.embedder.load_embedder) for meaning clusters and
    the subspace target; `entails(a, b) -> bool` switches clustering to bidirectional entailment;
    `layer`: model layer of the stored hidden states (default: the middle stored one); `n_folds`,
    `seed`: cross-fitting of the probe and the subspace map; `threshold`: cosine similarity of one meaning.
    """
    records = list(records)
    if not records:
        raise LabError("No questions to score.")
    ids = [str(r.id) for r in records]
    if len(set(ids)) != len(ids):
        raise LabError("Question ids must be unique.")
    names = list(estimators) if estimators is not None else list(ESTIMATORS)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise LabError(f"Unknown uncertainty score(s) {unknown}; known: {list(ESTIMATORS)}.")
    position, layer_index = _layer_position(records, layer)
    stats = Stats(records, embedder, entails, position, n_folds, seed, threshold)
    stats.info.update(
        version=SCORES_VERSION,
        layer=layer_index,
        clustering="bidirectional entailment"
        if entails is not None
        else f"MiniLM cosine, average linkage, similarity > {threshold}",
        semantic_entropy_weights="length-normalised: exp(mean token log-prob) per sample",
        eigenscore_alpha=EIGENSCORE_ALPHA,
        formulas={n: ESTIMATORS[n].formula for n in names},
        notes={},
        seconds={},
    )
    columns = {}
    for name in names:
        start = time.perf_counter()
        try:
            for need in ESTIMATORS[name].needs:
                stats[need]
            columns[name] = np.asarray(ESTIMATORS[name].compute(stats), dtype=np.float64)
        except Unavailable as err:
            columns[name] = np.full(len(records), np.nan)
            stats.info["notes"][name] = str(err)
        stats.info["seconds"][name] = time.perf_counter() - start
    computed = stats.values.get("clusters")
    clusters = {i: c.tolist() for i, c in zip(ids, computed)} if isinstance(computed, list) else {}
    scores = pd.DataFrame(columns, index=pd.Index(ids, name="id"))
    return ScoreResult(scores, clusters, stats.info)
