"""Uncertainty scores of generated answers, LM-Polygraph style: small estimators over shared statistics.

Every score is "higher = more uncertain" (confidences are negated). Each estimator declares the
statistics it needs ("answer_logprobs", "sample_embeddings", "clusters", "decomp_discriminant", ...) and
its kind: "usual" (token likelihoods and hidden-state scores, the A2 side), "semantic" (meaning clusters:
semantic entropy and its probes), "decomposition" (anything computed from a semantic / surface subspace
split, engine.uq.subspace and engine.uq.decompositions: the decomposition is what is on trial, so surface
spreads count here too) or "baseline" (what a semantic method has to beat, engine.uq.baselines).
`score_records` computes each statistic once per call (the samples of all questions are embedded in
one batched call) and returns one column per estimator. Estimators that cannot run on the given data
(too few questions for a probe or for cross-fitting, one SE class, no embedder) give a NaN column and
a note in `ScoreResult.info["notes"]`, never an error.

Correctness-dependent scores (the correctness probes and the entropy + probe combination) need the
labels of one judge: `score_records(..., correct=...)` or `Stats.with_labels(correct)` computes them;
without labels they are NaN with a note. The evaluation layer (engine.uq.evaluation) computes them per
judge, out-of-fold, reusing the label-free statistics (decompositions, entropies) of one `Stats`.

Refit variance: a cross-fitted score (one that needs a seeded statistic: a decomposition, its same-rank
controls, a probe; or the SEP) is the mean over the fold seeds seed, ..., seed + n_seeds - 1
(`Stats.seeded`: each seed refits the folds, subspaces and probes; clusters, entropies and hidden states are
shared); the per-seed columns are kept in `ScoreResult.seed_scores` [n_seeds, n] for the seed-to-seed
spread. Kinds: "control" marks the same-rank controls of a decomposition (random / PCA subspaces).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.uq.baselines import answer_lengths, entropy_probe_combination, kernel_language_entropy
from engine.uq.clustering import semantic_clusters
from engine.uq.decompositions import (
    CONTROLS,
    DECOMPOSITIONS,
    ProbeScores,
    discriminant_decomposition,
    full_state,
    lexical_map_decomposition,
    probe_scores,
    same_rank_control,
    subspace_probes,
)
from engine.uq.records import QuestionRecord
from engine.uq.subspace import Decomposition, embedding_map_decomposition, single_blas_thread

SCORES_VERSION = 3  # bump when a score's definition changes (for callers that cache scores)
EIGENSCORE_ALPHA = 1e-3  # Chen et al. 2024 (INSIDE): regulariser of the covariance's log-determinant
ScoreKind = Literal["usual", "semantic", "decomposition", "baseline", "control"]
SCORE_KINDS: tuple[ScoreKind, ...] = get_args(ScoreKind)
PROBED = ("semantic", "surface")  # the subspaces probed per decomposition (the full state: once, below)
NEEDS_LABELS = "needs correctness labels: computed per judge by the evaluation"


class Unavailable(Exception):
    """A statistic that cannot be computed on this data: its estimators give NaN and this note."""


@dataclasses.dataclass(frozen=True)
class Statistic:
    """A shared statistic: computed once per `Stats` (per fold seed when seeded, per judge when labelled)."""

    name: str
    compute: Callable[[Stats], object]
    labelled: bool = False  # depends on the correctness labels
    seeded: bool = False  # depends on the fold seed (cross-fitted)


@dataclasses.dataclass(frozen=True)
class Estimator:
    name: str
    kind: ScoreKind
    needs: tuple[str, ...]  # names of registered statistics (checked at registration: `statistics`)
    formula: str  # one line for the page
    compute: Callable[[Stats], np.ndarray]

    @property
    def statistics(self) -> tuple[Statistic, ...]:
        """The registered statistics this estimator needs, in `needs` order."""
        return tuple(STATISTICS[need] for need in self.needs)

    @property
    def needs_labels(self) -> bool:
        """Whether the score depends on the answers' correctness (computed per judge)."""
        return any(stat.labelled for stat in self.statistics)

    @property
    def cross_fitted(self) -> bool:
        """Whether the score is fitted on other questions (folds): it is the mean over the fold seeds."""
        return self.name == "sep" or any(stat.seeded for stat in self.statistics)


class UnknownStatistic(LabError):
    """An estimator registered with a dependency that is no registered statistic."""


ESTIMATORS: dict[str, Estimator] = {}
STATISTICS: dict[str, Statistic] = {}
_LABELLED: set[str] = set()  # statistics that depend on the correctness labels
_SEEDED: set[str] = set()  # statistics that depend on the fold seed (cross-fitted)


def _estimator(name: str, kind: ScoreKind, needs: Sequence[str | Statistic], formula: str):
    """Register `fn` as estimator `name`; every need (a statistic or its name) must already be registered."""
    names = tuple(need.name if isinstance(need, Statistic) else need for need in needs)
    unknown = [need for need in names if need not in STATISTICS]
    if unknown:
        raise UnknownStatistic(
            f"Estimator {name!r} needs unregistered statistic(s) {unknown}; register them with @_stat first "
            f"(registered: {sorted(STATISTICS)})."
        )
    if kind not in SCORE_KINDS:
        raise LabError(f"Estimator {name!r} has kind {kind!r}; choose one of {list(SCORE_KINDS)}.")

    def register(fn):
        ESTIMATORS[name] = Estimator(name, kind, names, formula, fn)
        return fn

    return register


def _stat(name: str, *, labelled: bool = False, seeded: bool = False):
    def register(fn):
        STATISTICS[name] = Statistic(name, fn, labelled, seeded)
        if labelled:
            _LABELLED.add(name)
        if seeded:
            _SEEDED.add(name)
        return fn

    return register


FULL_STATE = "full_state"  # the subspace name of the whole standardised state (no decomposition)


def spread_name(subspace: str) -> str:
    """The spread score through `subspace` ("{decomposition}_semantic", "{decomposition}_{control}", FULL_STATE)."""
    return f"{subspace}_spread"


def se_probe_name(subspace: str) -> str:
    """The semantic-entropy probe score on the answer state projected onto `subspace` (as spread_name)."""
    return f"se_probe_{subspace}"


def correctness_probe_name(subspace: str) -> str:
    """The correctness probe score on the answer state projected onto `subspace` (as spread_name)."""
    return f"correctness_probe_{subspace}"


def labelled_estimators() -> list[str]:
    """Names of the estimators that need correctness labels, in registry order."""
    return [name for name, e in ESTIMATORS.items() if e.needs_labels]


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
    correct: np.ndarray | None = None  # 1 / 0 per record, NaN where ungraded (None: no labels)
    values: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    parent: Stats | None = None  # with_labels: the label-free statistics are the parent's (computed once)
    n_seeds: int = 1  # cross-fitted scores: the mean over fold seeds seed, seed + 1, ..., seed + n_seeds - 1
    folds: np.ndarray | None = None  # fixed question folds (-1: train only) instead of seeded ones
    seed_base: Stats | None = None  # a fold seed's statistics: the seed-free ones are this one's
    seed_children: dict = dataclasses.field(default_factory=dict)  # offset -> that fold seed's statistics

    def __getitem__(self, key: str):
        if self.parent is not None and key not in _LABELLED:
            return self.parent[key]
        if self.seed_base is not None and key not in _SEEDED and key not in _LABELLED:
            return self.seed_base[key]  # a label-free statistic that no fold seed changes
        if key not in self.values:
            try:
                self.values[key] = STATISTICS[key].compute(self)
            except Unavailable as err:
                self.values[key] = err
        if isinstance(self.values[key], Unavailable):
            raise self.values[key]
        return self.values[key]

    def with_labels(self, correct) -> Stats:
        """These statistics with correctness labels (1 / 0, NaN = ungraded, one per record): the label-free
        ones stay this object's (computed here once, whichever labels ask), the labelled ones are new."""
        labels = np.asarray(correct, dtype=np.float64)
        if labels.shape != (len(self.records),):
            raise LabError(f"Got {labels.size} correctness labels for {len(self.records)} records.")
        base = self.parent or self
        info = {k: v for k, v in base.info.items() if k not in ("notes", "seconds", "formulas")}
        return dataclasses.replace(base, correct=labels, values={}, info=info, parent=base, seed_children={})

    def seeded(self, offset: int) -> Stats:
        """These statistics with fold seed `seed + offset`: the seed-free statistics (clusters, entropies,
        hidden states) stay those of offset 0, computed once; the cross-fitted ones are refitted."""
        if offset == 0:
            return self
        base = self.parent or self
        if offset not in base.seed_children:
            base.seed_children[offset] = dataclasses.replace(
                base, seed=base.seed + offset, values={}, info={}, parent=None, seed_base=base, seed_children={}
            )
        child = base.seed_children[offset]
        if self.parent is None:
            return child
        if offset not in self.seed_children:  # this labelled object's own (with_labels gives it a fresh dict)
            self.seed_children[offset] = child.with_labels(self.correct)
        return self.seed_children[offset]

    def drop_sample_arrays(self) -> None:
        """Forget the per-sample arrays (hidden states, embeddings, log-probs): what stays (decompositions,
        entropies, answer states) is what the labelled scores need; the rest is recomputed on demand."""
        for key in ("sample_hidden", "sample_embeddings", "sample_logprobs"):
            self.values.pop(key, None)

    def score(self, names: Sequence[str] | None = None) -> ScoreResult:
        """The named estimators' columns (all by default); NaN with a note where one is unavailable."""
        names = list(names) if names is not None else list(ESTIMATORS)
        unknown = [n for n in names if n not in ESTIMATORS]
        if unknown:
            raise LabError(f"Unknown uncertainty score(s) {unknown}; known: {list(ESTIMATORS)}.")
        self.info.setdefault("notes", {})
        self.info.setdefault("seconds", {})
        self.info.setdefault("formulas", {}).update({n: ESTIMATORS[n].formula for n in names})
        columns, per_seed = {}, {}
        for name in names:
            start = time.perf_counter()
            seeds = self.n_seeds if ESTIMATORS[name].cross_fitted else 1
            runs = [self._column(self.seeded(k), name) for k in range(seeds)]
            if seeds > 1:
                per_seed[name] = np.stack(runs)  # [n_seeds, n]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a question NaN under every seed stays NaN
                    columns[name] = np.nanmean(per_seed[name], axis=0)
            else:
                columns[name] = runs[0]
            self.info["seconds"][name] = time.perf_counter() - start
        ids = [str(r.id) for r in self.records]
        computed = (self.parent or self).values.get("clusters")
        clusters = {i: c.tolist() for i, c in zip(ids, computed)} if isinstance(computed, list) else {}
        scores = pd.DataFrame(columns, index=pd.Index(ids, name="id"))
        if self.parent is not None:  # the settings of the label-free statistics (decompositions) are the parent's
            shared = {k: v for k, v in self.parent.info.items() if k not in ("notes", "seconds", "formulas")}
            self.info = {**shared, **self.info}
        return ScoreResult(scores, clusters, self.info, per_seed)

    def _column(self, stats: Stats, name: str) -> np.ndarray:
        """One estimator's column on `stats` (this object or a fold seed's); NaN with a note here when it is
        unavailable; the settings of a fold seed's decompositions are kept under info["seeds"]."""
        try:
            for need in ESTIMATORS[name].needs:
                stats[need]
            column = np.asarray(ESTIMATORS[name].compute(stats), dtype=np.float64)
        except Unavailable as err:
            column = np.full(len(self.records), np.nan)
            self.info["notes"].setdefault(name, str(err))
        if stats is not self:
            for key, note in stats.info.get("notes", {}).items():
                self.info["notes"].setdefault(key, note)
        return column


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
    """Meaning clusters per question; an entailment judge with `for_question` (engine.uq.nli.LMJudge)
    gets each question as context."""
    if s.entails is not None:
        per_question = getattr(s.entails, "for_question", None)
        return [
            semantic_clusters(r.samples, entails=per_question(r.question) if per_question else s.entails)
            for r in s.records
        ]
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


@_stat("answer_lengths")
def _answer_lengths(s: Stats) -> tuple[np.ndarray, np.ndarray]:
    return answer_lengths(s.records)


@_stat("correct", labelled=True)
def _correct(s: Stats) -> np.ndarray:
    if s.correct is None:
        raise Unavailable(NEEDS_LABELS)
    return s.correct


def _decomposition_info(s: Stats, fit: Decomposition) -> Decomposition:
    s.info.setdefault("decompositions", {})[fit.name] = {
        "folds": fit.folds.tolist(),
        "semantic_ranks": fit.semantic_ranks,
        "surface_ranks": fit.surface_ranks,
        "fold_info": [b.info for b in fit.bases],
        "note": fit.note,
    }
    return fit


def _fit(s: Stats, fit: Callable[[], Decomposition]) -> Decomposition:
    """A decomposition, its settings in info; "no hidden states / embeddings" becomes a note, not an error."""
    try:
        return _decomposition_info(s, fit())
    except ValueError as err:
        raise Unavailable(f"cannot fit: {err}") from err


@_stat("decomp_embedding_map", seeded=True)
def _decomp_embedding_map(s: Stats) -> Decomposition:
    hidden, embeddings = s["sample_hidden"], s["sample_embeddings"]
    return _fit(
        s, lambda: embedding_map_decomposition(hidden, embeddings, n_folds=s.n_folds, seed=s.seed, folds=s.folds)
    )


@_stat("decomp_discriminant", seeded=True)
def _decomp_discriminant(s: Stats) -> Decomposition:
    hidden, clusters = s["sample_hidden"], s["clusters"]
    return _fit(s, lambda: discriminant_decomposition(hidden, clusters, n_folds=s.n_folds, seed=s.seed, folds=s.folds))


@_stat("decomp_lexical_map", seeded=True)
def _decomp_lexical_map(s: Stats) -> Decomposition:
    hidden, embeddings, clusters = s["sample_hidden"], s["sample_embeddings"], s["clusters"]
    texts = [r.samples for r in s.records]
    return _fit(
        s,
        lambda: lexical_map_decomposition(
            hidden, texts, embeddings, clusters, n_folds=s.n_folds, seed=s.seed, folds=s.folds
        ),
    )


@_stat("full_state", seeded=True)
def _full_state(s: Stats) -> Decomposition:
    hidden = s["sample_hidden"]
    return _fit(s, lambda: full_state(hidden, n_folds=s.n_folds, seed=s.seed, folds=s.folds))


def _register_control_stat(name: str, kind: str) -> None:
    @_stat(f"control_{kind}_{name}", seeded=True)
    def _control(s: Stats) -> Decomposition:
        decomposition = s[f"decomp_{name}"]
        return _fit(s, lambda: same_rank_control(s["sample_hidden"], decomposition, kind, seed=s.seed))


for _name in DECOMPOSITIONS:
    for _kind in CONTROLS:
        _register_control_stat(_name, _kind)


def _probes(s: Stats, base: str, parts: tuple[str, ...], target: str) -> ProbeScores:
    """Out-of-fold SE ("se") or correctness ("wrong") probes on the `parts` of the decomposition `base`."""
    if target == "se":
        return subspace_probes(
            s["answer_hidden"], s[base], se=s["semantic_entropy"], se_split=best_variance_split, parts=parts
        )
    return subspace_probes(s["answer_hidden"], s[base], correct=s["correct"], parts=parts)


def _register_probe_stats(name: str, base: str, parts: tuple[str, ...]) -> None:
    _stat(f"se_probes_{name}", seeded=True)(lambda s: _probes(s, base, parts, "se"))
    _stat(f"correctness_probes_{name}", labelled=True, seeded=True)(lambda s: _probes(s, base, parts, "wrong"))


for _name in DECOMPOSITIONS:
    _register_probe_stats(_name, f"decomp_{_name}", PROBED)
    for _kind in CONTROLS:
        _register_probe_stats(f"{_name}_{_kind}", f"control_{_kind}_{_name}", ("semantic",))
_register_probe_stats("full_state", "full_state", ("full",))


@_stat("combination", labelled=True, seeded=True)
def _combination(s: Stats):
    probe = s["correctness_probes_full_state"].wrong["full"]
    return entropy_probe_combination(s["semantic_entropy"], probe, s["correct"], n_folds=s.n_folds, seed=s.seed)


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
    LogisticRegression (C chosen by an inner cross-validation, decompositions.tuned_probe) is fitted on
    their features, and the held-out fold gets its P(SE > threshold).
    No question is ever scored by a probe that saw it. All NaN (with a note) when there are fewer than
    2 * n_folds questions or a training fold has a single SE class.
    """
    from sklearn.model_selection import StratifiedKFold

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
        scores[test] = probe_scores(x[train], y, x[test])
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


@_estimator(
    "se_probe_full_state",
    "semantic",
    ("answer_hidden", "semantic_entropy", "se_probes_full_state"),
    "semantic entropy probe on the whole standardised answer state, question folds (the subspace probes' control)",
)
def _se_probe_full_state(s: Stats) -> np.ndarray:
    return _probe_column(s, "se_probe_full_state", s["se_probes_full_state"], "se", "full")


def _probe_column(s: Stats, column: str, probes: ProbeScores, target: str, part: str) -> np.ndarray:
    _note(s, column, "; ".join(filter(None, (probes.notes.get(k, "") for k in ("all", target, f"{target}_{part}")))))
    return getattr(probes, target)[part]


DECOMPOSITION_SUBSPACES = {  # the semantic subspace of each decomposition, in a few words (formulas)
    "embedding_map": "row space of a ridge map hidden state -> MiniLM embedding",
    "discriminant": "top generalised eigenvectors of (between-, within-meaning-cluster scatter + ridge)",
    "lexical_map": "embedding-map directions with a hidden -> character n-gram map's directions projected out",
}


def _register_decomposition(name: str) -> None:
    """The spreads, share and subspace probes of one decomposition (engine.uq.decompositions.score_columns)."""
    stat = f"decomp_{name}"
    what = DECOMPOSITION_SUBSPACES[name]

    def spread(column: str, attribute: str):
        def compute(s: Stats) -> np.ndarray:
            fit = s[stat]
            _note(s, column, fit.note)
            return getattr(fit, attribute)

        return compute

    for column, attribute, formula in (
        (spread_name(f"{name}_semantic"), "semantic", f"(1/K) sum_k ||P_S (z_k - zbar)||^2, S = {what}"),
        (
            spread_name(f"{name}_surface"),
            "surface",
            f"(1/K) sum_k ||P_U (z_k - zbar)||^2, U = surface subspace of {name}",
        ),
        (f"{name}_semantic_share", "share", f"semantic spread / total spread (1/K) sum_k ||z_k - zbar||^2 ({name})"),
    ):
        _estimator(column, "decomposition", ("sample_hidden", stat), formula)(spread(column, attribute))
    for part in PROBED:
        se_column, wrong_column = se_probe_name(f"{name}_{part}"), correctness_probe_name(f"{name}_{part}")
        _estimator(
            se_column,
            "decomposition",
            ("answer_hidden", "semantic_entropy", f"se_probes_{name}"),
            f"out-of-fold P(high SE | answer state projected onto the {part} subspace of {name})",
        )(lambda s, c=se_column, p=part: _probe_column(s, c, s[f"se_probes_{name}"], "se", p))
        _estimator(
            wrong_column,
            "decomposition",
            ("answer_hidden", "correct", f"correctness_probes_{name}"),
            f"out-of-fold 1 - P(right | answer state projected onto the {part} subspace of {name}), per judge",
        )(lambda s, c=wrong_column, p=part: _probe_column(s, c, s[f"correctness_probes_{name}"], "wrong", p))


for _name in DECOMPOSITIONS:
    _register_decomposition(_name)


def _register_controls(name: str) -> None:
    """Same-rank controls of one decomposition's semantic subspace (decompositions.same_rank_control): the
    spread and both probes through a random and a PCA subspace of the same rank, per fold."""
    for kind in CONTROLS:
        stat, what = f"control_{kind}_{name}", f"a {kind} subspace of the rank of {name}'s semantic one"
        spread = spread_name(f"{name}_{kind}")

        def compute_spread(s: Stats, column=spread, stat=stat) -> np.ndarray:
            fit = s[stat]
            _note(s, column, fit.note)
            return fit.semantic

        _estimator(spread, "control", ("sample_hidden", stat), f"(1/K) sum_k ||P (z_k - zbar)||^2, P onto {what}")(
            compute_spread
        )
        probes = f"{name}_{kind}"
        se_column, wrong_column = se_probe_name(probes), correctness_probe_name(probes)
        _estimator(
            se_column,
            "control",
            ("answer_hidden", "semantic_entropy", f"se_probes_{probes}"),
            f"out-of-fold P(high SE | answer state projected onto {what})",
        )(lambda s, c=se_column, p=probes: _probe_column(s, c, s[f"se_probes_{p}"], "se", "semantic"))
        _estimator(
            wrong_column,
            "control",
            ("answer_hidden", "correct", f"correctness_probes_{probes}"),
            f"out-of-fold 1 - P(right | answer state projected onto {what}), per judge",
        )(lambda s, c=wrong_column, p=probes: _probe_column(s, c, s[f"correctness_probes_{p}"], "wrong", "semantic"))


for _name in DECOMPOSITIONS:
    _register_controls(_name)


@_estimator(
    "full_state_spread",
    "baseline",
    ("sample_hidden", "full_state"),
    "(1/K) sum_k ||z_k - zbar||^2 over the whole standardised state (the spreads' control without decomposition)",
)
def _full_state_spread(s: Stats) -> np.ndarray:
    fit = s["full_state"]
    _note(s, "full_state_spread", fit.note)
    return fit.total


@_estimator(
    "correctness_probe_full_state",
    "baseline",
    ("answer_hidden", "correct", "correctness_probes_full_state"),
    "p(IK)-style probe: out-of-fold 1 - P(right | whole standardised answer state), per judge",
)
def _correctness_probe_full_state(s: Stats) -> np.ndarray:
    return _probe_column(s, "correctness_probe_full_state", s["correctness_probes_full_state"], "wrong", "full")


@_estimator("answer_length_tokens", "baseline", ("answer_lengths",), "tokens of the graded answer (longer = less sure)")
def _answer_length_tokens(s: Stats) -> np.ndarray:
    return s["answer_lengths"][0]


@_estimator(
    "answer_length_chars", "baseline", ("answer_lengths",), "characters of the graded answer (longer = less sure)"
)
def _answer_length_chars(s: Stats) -> np.ndarray:
    return s["answer_lengths"][1]


@_estimator(
    "kernel_language_entropy",
    "baseline",
    ("sample_embeddings",),
    "KLE (arXiv 2405.20003): -tr(K log K), K = cosine kernel of the samples' MiniLM embeddings / K",
)
def _kernel_language_entropy(s: Stats) -> np.ndarray:
    return np.array([kernel_language_entropy(e) for e in s["sample_embeddings"]])


@_estimator(
    "entropy_probe_combination",
    "baseline",
    ("semantic_entropy", "correct", "correctness_probes_full_state", "combination"),
    "out-of-fold 1 - P(right | semantic entropy, full-state correctness probe), logistic regression, per judge",
)
def _entropy_probe_combination(s: Stats) -> np.ndarray:
    combination = s["combination"]
    _note(s, "entropy_probe_combination", combination.note)
    return combination.scores


# ---------------------------------------------------------------- entry point


@dataclasses.dataclass
class ScoreResult:
    scores: pd.DataFrame  # index: record id; one column per estimator; higher = more uncertain
    clusters: dict[str, list[int]]  # record id -> cluster label of each sample
    info: dict  # layer used, method notes, per-estimator notes and timings
    seed_scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # cross-fitted: [n_seeds, n]

    @property
    def kinds(self) -> dict[str, ScoreKind]:
        """Column -> its estimator's kind (for metrics.comparison and paired.verdict)."""
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


def scoring_stats(
    records: list[QuestionRecord],
    embedder=None,
    *,
    entails: Callable[[str, str], bool] | None = None,
    layer: int | None = None,
    n_folds: int = 5,
    seed: int = 0,
    threshold: float = 0.8,
    correct=None,
    n_seeds: int = 1,
    folds: np.ndarray | None = None,
) -> Stats:
    """The statistics of `records`, computed on first use (`Stats.score` gives the columns).

    `embedder`: sentence-transformers model (engine.core.embedder.load_embedder) for meaning clusters and
    the embedding targets; `entails(a, b) -> bool` switches clustering to bidirectional entailment
    (engine.uq.nli); `layer`: model layer of the stored hidden states (default: the middle stored one);
    `n_folds`, `seed`: cross-fitting of the probes and decompositions; `threshold`: cosine similarity of
    one meaning; `correct`: 1 / 0 per record (NaN: ungraded) for the correctness-dependent scores;
    `n_seeds`: every cross-fitted score is the mean over the fold seeds seed .. seed + n_seeds - 1 (the
    per-seed columns in ScoreResult.seed_scores); `folds`: fixed question folds (fold -1: only trained on).
    """
    records = list(records)
    if not records:
        raise LabError("No questions to score.")
    ids = [str(r.id) for r in records]
    if len(set(ids)) != len(ids):
        raise LabError("Question ids must be unique.")
    position, layer_index = _layer_position(records, layer)
    if n_seeds < 1:
        raise LabError("The number of fold seeds must be at least 1.")
    stats = Stats(records, embedder, entails, position, n_folds, seed, threshold, n_seeds=n_seeds, folds=folds)
    stats.info.update(
        version=SCORES_VERSION,
        layer=layer_index,
        clustering="bidirectional entailment"
        if entails is not None
        else f"MiniLM cosine, average linkage, similarity > {threshold}",
        semantic_entropy_weights="length-normalised: exp(mean token log-prob) per sample",
        eigenscore_alpha=EIGENSCORE_ALPHA,
        fold_seeds=list(range(seed, seed + n_seeds)),
        notes={},
        seconds={},
    )
    return stats if correct is None else stats.with_labels(correct)


def score_records(
    records: list[QuestionRecord],
    embedder=None,
    *,
    entails: Callable[[str, str], bool] | None = None,
    layer: int | None = None,
    n_folds: int = 5,
    seed: int = 0,
    threshold: float = 0.8,
    correct=None,
    estimators: Sequence[str] | None = None,
    n_seeds: int = 1,
) -> ScoreResult:
    """Every estimator in ESTIMATORS (or those named) on `records`: `scoring_stats(...).score(estimators)`
    (see there and the module docstring). Without `correct` the correctness-dependent scores are NaN."""
    stats = scoring_stats(
        records,
        embedder,
        entails=entails,
        layer=layer,
        n_folds=n_folds,
        seed=seed,
        threshold=threshold,
        correct=correct,
        n_seeds=n_seeds,
    )
    return stats.score(estimators)
