"""Three ways to split the samples' hidden states into a semantic and a surface subspace, and what each shows.

Notation: h = one sample's hidden state (one layer), z = (h - mu) / sigma its standardisation by the
mean and standard deviation of the training questions' samples (per dimension), d = hidden size.
Every basis below is orthonormal in z coordinates; the semantic and surface subspaces are orthogonal.

(a) embedding_map: ridge map W: z -> e onto the samples' sentence embeddings e (MiniLM, the meaning
    space); semantic S = its row space (top right singular vectors carrying `energy` of sum sigma^2),
    surface = the orthogonal complement of S (engine.uq.subspace.embedding_map_decomposition).
(b) discriminant (meaning-cluster discriminant): samples of one question in the same meaning cluster
    differ only in wording, samples in different clusters differ in meaning. Over the training questions,
        S_w = sum_q sum_c sum_{k in c} (z_k - m_c)(z_k - m_c)^T          (within-cluster scatter)
        S_b = sum_q sum_c n_c (m_c - m_q)(m_c - m_q)^T                  (between-cluster scatter)
    m_c = mean of cluster c of question q, m_q = mean of question q's samples, n_c = |c|. Semantic S =
    span of the top generalised eigenvectors v of S_b v = lambda (S_w + ridge * tr(S_w)/d * I) v (tr(S_w)
    floored at 1e-6 tr(S_w + S_b), for questions whose clusters hardly vary); r = the
    number of eigenvalues above the largest one seen when each question's cluster labels are shuffled
    among its samples (`n_null` shuffles: the between/within ratio that chance alone gives). Surface =
    top eigenvectors of (I - P_S) S_w (I - P_S) carrying `surface_energy` of its trace (the within-cluster,
    i.e. wording, directions outside S).
(c) lexical_map: surface features t of each sample's text = hashed character 2-4-gram counts (sklearn
    HashingVectorizer) reduced by TruncatedSVD. A different answer also changes characters, so only the
    variation inside meaning clusters counts as wording: t~ = t - mean of t over the sample's meaning
    cluster, z~ likewise. With the ridge map t^ = z~ W fitted from z~ to t~ (alpha as in (a)), surface L =
    the hidden-state directions that carry its prediction: top left singular vectors of Cov(z~, t^) =
    z~^T z~ W carrying `energy` of sum sigma^2 (weighting W by the data's covariance keeps directions
    in which the hidden states hardly vary out of L, where W itself is not identified). Semantic = the
    embedding map's row space U_e (as in (a)) with L projected out: the left singular vectors of
    (I - P_L) U_e whose singular value (cosine to the complement of L) is at least `keep`.

Per question q with samples z_1..z_K and centroid zbar (K >= 2), for a subspace with projector P:
    spread_P(q) = (1/K) sum_k ||P (z_k - zbar)||^2
    semantic spread = spread_{P_S}, surface spread = spread_{P_surface}, total = spread_I,
    semantic share = semantic spread / total (= 1 - surface share in (a), <= that in (b) and (c)).

Cross-fitted by engine.uq.subspace.cross_fit: questions are split into `n_folds` folds (question_folds);
each fold's questions are scored by the standardisation and subspaces fitted on the other folds only.

Subspace probes (`subspace_probes`): per fold, on the training questions, a StandardScaler +
LogisticRegression (its C chosen by an inner cross-validation on those questions only, `tuned_probe`) is
fitted on the graded answer's hidden state, standardised with that fold's mu and
sigma and projected onto the fold's semantic or surface basis (coordinates z @ B) or kept whole ("full"),
and scores the held-out fold. Targets: high semantic entropy (the SEP probe, arXiv 2406.15927: SE > a
split found on the training questions) and the answer being right (the p(IK) idea, Kadavath et al. 2022).
Both scores are "higher = more uncertain": P(high SE) and 1 - P(right). No question is scored by a probe,
a subspace or a standardisation that saw it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np

from engine.uq.subspace import (
    CannotFit,
    Decomposition,
    cross_fit,
    flatten,
    ridge_map,
    semantic_basis,
    single_blas_thread,
)

DECOMPOSITIONS = ("embedding_map", "discriminant", "lexical_map")
SUBSPACES = ("semantic", "surface", "full")


@dataclasses.dataclass
class ProbeScores:
    """Out-of-fold probe scores per subspace ("semantic", "surface", "full"); higher = more uncertain."""

    se: dict[str, np.ndarray]  # P(high semantic entropy | projected answer state)
    wrong: dict[str, np.ndarray]  # 1 - P(answer is right | projected answer state)
    folds: np.ndarray
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- shared helpers


def _top_energy(values: np.ndarray, energy: float) -> int:
    """The fewest of the (descending) non-negative `values` carrying `energy` of their sum."""
    values = np.maximum(values, 0.0)
    total = float(values.sum())
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(values) / total, energy - 1e-12) + 1)


# ---------------------------------------------------------------- (b) meaning-cluster discriminant


def _cluster_ids(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One id per (question, cluster label) pair, 0..n_clusters-1."""
    return np.unique(np.stack([groups, labels], axis=1), axis=0, return_inverse=True)[1].ravel()


def _group_means(z: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix

    n_ids = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=n_ids).astype(np.float64)
    onehot = csr_matrix((np.ones(ids.size), (ids, np.arange(ids.size))), shape=(n_ids, ids.size))
    return np.asarray(onehot @ z) / np.maximum(counts, 1)[:, None], counts


def _between_scatter(z: np.ndarray, groups: np.ndarray, labels: np.ndarray, question_mean: np.ndarray):
    """S_b = sum_c n_c (m_c - m_q)(m_c - m_q)^T and its degrees of freedom sum_q (C_q - 1)."""
    ids = _cluster_ids(groups, labels)
    means, counts = _group_means(z, ids)
    owner = np.zeros(means.shape[0], dtype=int)
    owner[ids] = groups
    dev = np.sqrt(counts)[:, None] * (means - question_mean[owner])
    return dev.T @ dev, means.shape[0] - np.unique(groups).size


def _shuffle_within(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each question's cluster labels permuted at random among its own samples (cluster sizes kept)."""
    base = np.argsort(groups, kind="stable")
    perm = np.lexsort((rng.random(groups.size), groups))
    out = np.empty_like(labels)
    out[base] = labels[perm]
    return out


def discriminant_decomposition(
    hidden: Sequence[np.ndarray],
    clusters: Sequence[Sequence[int]],
    *,
    n_folds: int = 5,
    seed: int = 0,
    rank: int | None = None,
    ridge: float = 0.1,
    n_null: int = 3,
    surface_energy: float = 0.95,
    folds: np.ndarray | None = None,
) -> Decomposition:
    """(b): semantic = top generalised eigenvectors of (S_b, S_w + lambda I); see the module docstring.

    `clusters[i]`: meaning-cluster label of each of question i's samples (engine.uq.clustering, the same
    clusters semantic entropy uses). `rank`: fixed semantic rank instead of the shuffled-label rule;
    `ridge`: lambda = ridge * tr(S_w) / d; `surface_energy`: share of the remaining within-cluster scatter
    the surface subspace keeps. A fold whose training questions all have a single meaning cluster cannot be
    fitted: its questions stay NaN, with a note.
    """
    from scipy.linalg import eigh

    labels = np.concatenate([np.asarray(c, dtype=int) for c, x in zip(clusters, hidden) if len(x)] or [[]])
    groups = np.repeat(np.arange(len(hidden)), [len(x) for x in hidden])
    if labels.size != groups.size:
        raise ValueError(f"got {labels.size} cluster labels for {groups.size} samples")
    rng = np.random.default_rng(seed)

    def fit(z, train):
        zt, g, lab = z[train], groups[train], labels[train]
        local_g = np.unique(g, return_inverse=True)[1]
        q_means, _ = _group_means(zt, local_g)
        resid = zt - q_means[local_g]
        total = resid.T @ resid  # S_w + S_b (within-question scatter), fixed under shuffles
        s_b, df_b = _between_scatter(zt, local_g, lab, q_means)
        if df_b == 0:
            raise CannotFit("no training question has samples in two meaning clusters")
        d = zt.shape[1]
        s_w = total - s_b
        # floor: with (almost) no wording variation (every cluster one sample) S_w is ~0, and S_w + lambda I
        # must stay positive definite
        lam = ridge * max(float(np.trace(s_w)), 1e-6 * float(np.trace(total)), 1e-12) / d
        try:
            values, vectors = eigh(s_b, s_w + lam * np.eye(d))
            null = 0.0
            for _ in range(n_null):
                b0, _df = _between_scatter(zt, local_g, _shuffle_within(lab, local_g, rng), q_means)
                top = eigh(b0, total - b0 + lam * np.eye(d), eigvals_only=True, subset_by_index=[d - 1, d - 1])
                null = max(null, float(top[0]))
        except np.linalg.LinAlgError as err:
            raise CannotFit(f"the within-cluster scatter is not positive definite ({str(err).split('.')[0]})") from err
        values, vectors = values[::-1], vectors[:, ::-1]
        r = int(np.sum(values > null)) if rank is None else int(rank)
        r = int(min(max(r, 1), df_b, d))
        semantic = np.linalg.qr(vectors[:, :r])[0]
        proj = np.eye(d) - semantic @ semantic.T
        w_vals, w_vecs = np.linalg.eigh(proj @ s_w @ proj)
        w_vals, w_vecs = w_vals[::-1], w_vecs[:, ::-1]
        s = min(_top_energy(w_vals, surface_energy), d - r)
        surface = np.linalg.qr(proj @ w_vecs[:, :s])[0] if s else np.zeros((d, 0))
        info = {"ratios": values[: r + 3].tolist(), "null_ratio": null, "lambda": lam, "df_between": int(df_b)}
        return semantic, surface, info

    return cross_fit("discriminant", hidden, n_folds, seed, fit, folds)


# ---------------------------------------------------------------- (c) lexical map


def text_features(texts: Sequence[str], n_features: int = 2**18):
    """Hashed character 2-4-gram counts of each text (within word boundaries), each row l2-normalised;
    sparse [n_texts, used hash buckets] (buckets no text uses are dropped: the SVD is then fast)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), n_features=n_features, alternate_sign=False, norm=None
    )
    grams = vectorizer.transform([str(t) for t in texts]).tocsc()
    return grams[:, np.flatnonzero(np.diff(grams.indptr))].tocsr()


def lexical_map_decomposition(
    hidden: Sequence[np.ndarray],
    texts: Sequence[Sequence[str]],
    embeddings: Sequence[np.ndarray],
    clusters: Sequence[Sequence[int]],
    *,
    n_folds: int = 5,
    seed: int = 0,
    n_components: int = 32,
    energy: float = 0.95,
    keep: float = 0.5,
    folds: np.ndarray | None = None,
) -> Decomposition:
    """(c): surface = row space of a ridge map from within-cluster hidden variation to within-cluster
    variation of the text's lexical features; semantic = the embedding map's row space with the surface
    one projected out (see the module docstring).

    `texts[i]`: question i's sample texts (same order as `hidden[i]`); `clusters[i]`: their meaning-cluster
    labels; `n_components`: TruncatedSVD size of the hashed n-gram features (fitted on the training
    samples); `keep`: least cosine between an embedding direction and the complement of the lexical
    subspace for it to stay semantic.
    """
    from sklearn.decomposition import TruncatedSVD

    flat_texts = [t for ts, x in zip(texts, hidden) if len(x) for t in ts]
    e = flatten(embeddings, "embeddings")
    groups = np.repeat(np.arange(len(hidden)), [len(x) for x in hidden])
    labels = np.concatenate([np.asarray(c, dtype=int) for c, x in zip(clusters, hidden) if len(x)] or [[]])
    if len(flat_texts) != groups.size or labels.size != groups.size:
        raise ValueError(f"got {len(flat_texts)} texts and {labels.size} cluster labels for {groups.size} samples")
    grams = text_features(flat_texts)
    cluster_ids = _cluster_ids(groups, labels)

    def fit(z, train):
        n_comp = int(min(n_components, train.sum() - 1, grams.shape[1] - 1))
        with np.errstate(divide="ignore", invalid="ignore"):  # explained variance of constant texts: 0 / 0
            lex = TruncatedSVD(n_components=max(n_comp, 1), random_state=seed).fit(grams[train]).transform(grams)
        ids = cluster_ids[train]
        within = lambda x: x - _group_means(x, ids)[0][ids]
        zw = within(z[train])
        lex_fit = ridge_map(zw, within(lex[train]), groups[train])
        left, sigma, _ = np.linalg.svd(zw.T @ (zw @ lex_fit.coef), full_matrices=False)  # [d, c]: Cov(z~, t^)
        surface = left[:, : min(_top_energy(sigma**2, energy), len(sigma))]
        emb_basis, emb_fit = semantic_basis(z[train], e[train], groups[train], energy=energy)
        outside = emb_basis - surface @ (surface.T @ emb_basis)
        left, cosines, _ = np.linalg.svd(outside, full_matrices=False)
        semantic = left[:, cosines >= keep]
        info = {
            "lexical_alpha": lex_fit.alpha,
            "embedding_alpha": emb_fit.alpha,
            "embedding_rank": emb_basis.shape[1],
            "cosines_outside_lexical": cosines.tolist(),
        }
        return semantic, surface, info

    return cross_fit("lexical_map", hidden, n_folds, seed, fit, folds)


# ---------------------------------------------------------------- subspace probes


def full_state(
    hidden: Sequence[np.ndarray], *, n_folds: int = 5, seed: int = 0, folds: np.ndarray | None = None
) -> Decomposition:
    """The folds and per-fold standardisation of `cross_fit` with empty subspaces: all that the full-state
    probes (subspace_probes(..., parts=("full",))) need, and the total spread (`Decomposition.total`),
    without fitting a decomposition."""

    def fit(z, train):
        empty = np.zeros((z.shape[1], 0))
        return empty, empty, {}

    return cross_fit("full_state", hidden, n_folds, seed, fit, folds)


ControlKind = Literal["random", "pca"]
CONTROLS: tuple[ControlKind, ...] = get_args(ControlKind)


def same_rank_control(
    hidden: Sequence[np.ndarray], decomposition: Decomposition, kind: ControlKind, *, seed: int = 0
) -> Decomposition:
    """A subspace of the same rank as `decomposition`'s semantic one in each fold, chosen without meaning:
    "random" = span of r standard normal directions (orthonormalised; default_rng(seed + fold)),
    "pca" = the top r principal directions of the fold's standardised training samples (eigenvectors of
    Z^T Z, Z = z of the training samples, centred). Same folds and standardisation; empty surface. A gain
    of the semantic subspace over these is a gain from meaning, not from having fewer dimensions."""
    ranks = decomposition.semantic_ranks
    counts = np.array([len(x) for x in hidden])
    groups = np.repeat(np.arange(len(hidden)), counts)
    folds = decomposition.folds

    def fit(z, train):
        fold = int(folds[groups[~train][0]])
        r = ranks[fold]
        d = z.shape[1]
        if r == 0:
            raise CannotFit(f"the {decomposition.name} semantic subspace of this fold is empty")
        if kind == "random":
            basis = np.linalg.qr(np.random.default_rng(seed + fold).normal(size=(d, r)))[0]
        else:
            zt = z[train] - z[train].mean(0)
            _values, vectors = np.linalg.eigh(zt.T @ zt)
            basis = vectors[:, ::-1][:, :r]
        return basis, np.zeros((d, 0)), {"rank": r}

    if not decomposition.bases:
        n = len(hidden)
        nan = np.full(n, np.nan)
        note = decomposition.note or "the decomposition was not fitted"
        return Decomposition(f"{decomposition.name}_{kind}", nan, nan.copy(), nan.copy(), np.full(n, -1), note=note)
    return cross_fit(f"{decomposition.name}_{kind}", hidden, len(decomposition.bases), seed, fit, folds)


PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0)  # inverse L2 strengths tried by the probes' inner cross-validation
INNER_FOLDS = 3


@dataclasses.dataclass
class TunedProbe:
    """StandardScaler + LogisticRegression whose C was chosen on the training questions only."""

    scaler: object
    model: object
    C: float

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.scaler.transform(x))


def tuned_probe(x_train: np.ndarray, y_train: np.ndarray) -> TunedProbe:
    """A probe whose L2 strength is chosen out-of-fold: standardise the training rows, then pick C from
    PROBE_CS by the least held-out log loss
        L(C) = -(1/N) sum_{inner folds f} sum_{i in f} [y_i log p_i + (1 - y_i) log(1 - p_i)],
    p_i from LogisticRegression(C) fitted on the other inner folds (StratifiedKFold(INNER_FOLDS), no
    shuffle), and refit on all training rows with that C. The test questions of the outer fold are never
    seen. With fewer than INNER_FOLDS questions in the smaller class: C = 1."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y_train, dtype=bool)
    scaler = StandardScaler().fit(x_train)
    x = scaler.transform(x_train)
    best = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if min(int(y.sum()), int((~y).sum())) >= INNER_FOLDS:
            loss = np.zeros(len(PROBE_CS))
            for inner, held in StratifiedKFold(INNER_FOLDS).split(x, y):
                for j, c in enumerate(PROBE_CS):
                    p = LogisticRegression(C=c, max_iter=2000).fit(x[inner], y[inner]).predict_proba(x[held])[:, 1]
                    p = np.clip(p, 1e-12, 1 - 1e-12)
                    loss[j] -= np.sum(np.where(y[held], np.log(p), np.log1p(-p)))
            best = float(PROBE_CS[int(np.argmin(loss))])
        model = LogisticRegression(C=best, max_iter=2000).fit(x, y)
    return TunedProbe(scaler, model, best)


def probe_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """P(y = 1 | x) for `x_test` from `tuned_probe` fitted on the training rows."""
    return tuned_probe(x_train, y_train).predict_proba(x_test)[:, 1]


def subspace_probes(
    answer_hidden: np.ndarray,
    decomposition: Decomposition,
    *,
    se: np.ndarray | None = None,
    correct: np.ndarray | None = None,
    se_split: Callable[[np.ndarray], float | None] | None = None,
    parts: Sequence[str] = SUBSPACES,
) -> ProbeScores:
    """Out-of-fold SE probe and correctness probe on each subspace of `decomposition` (module docstring).

    `answer_hidden` [n, d]: the graded answer's hidden state per question (same layer as the samples');
    `se`: semantic entropy per question and `se_split`: the threshold rule for "high SE" applied to the
    training questions' SE (engine.uq.estimators.best_variance_split, as the SEP estimator does; passed in
    so this module does not import the estimators); `correct`: 1/0 per question. Either target may be None
    (its probes are skipped); a question whose target is NaN (an ungraded answer) is left out of the
    training folds and still scored. `parts`: subspaces to probe ("full" = the whole standardised state: the same
    for every decomposition, so ask for it once). A fold whose training questions have a single class, an
    empty subspace or an unfitted fold gives NaN there, with a note.
    """
    x_all = np.asarray(answer_hidden, dtype=np.float64)
    n = len(decomposition.folds)
    targets = {}
    if se is not None:
        if se_split is None:
            raise ValueError("the SE probe needs `se_split` (estimators.best_variance_split)")
        targets["se"] = np.asarray(se, dtype=np.float64)
    if correct is not None:
        targets["wrong"] = np.asarray(correct, dtype=np.float64)
    out = ProbeScores({}, {}, decomposition.folds.copy())
    for target in targets:
        for part in parts:
            getattr(out, target)[part] = np.full(n, np.nan)
    if not decomposition.bases:
        out.notes["all"] = decomposition.note or "the decomposition was not fitted"
        return out

    def note(key: str, text: str) -> None:
        out.notes[key] = "; ".join(filter(None, [out.notes.get(key, ""), text]))

    with single_blas_thread():
        for fold, basis in enumerate(decomposition.bases):
            test = np.flatnonzero(decomposition.folds == fold)
            train_all = np.flatnonzero(decomposition.folds != fold)  # fold -1: training only (cross_fit)
            z = basis.standardise(x_all)
            for target, values in targets.items():
                train = train_all[~np.isnan(values[train_all])]  # questions with a label (e.g. graded) only
                if target == "se":
                    threshold = se_split(values[train])
                    y = values[train] > threshold if threshold is not None else np.zeros(train.size, bool)
                else:
                    y = values[train] > 0.5
                if y.all() or not y.any():
                    note(target, f"fold {fold}: a single class among the training questions")
                    continue
                for part in parts:
                    features = z if part == "full" else z @ getattr(basis, part)
                    if features.shape[1] == 0:
                        note(f"{target}_{part}", f"fold {fold}: the {part} subspace is empty")
                        continue
                    p = probe_scores(features[train], y, features[test])
                    getattr(out, target)[part][test] = p if target == "se" else 1.0 - p
    return out


def score_columns(decomposition: Decomposition, probes: ProbeScores | None = None) -> dict[str, np.ndarray]:
    """Named score columns (higher = more uncertain): '<name>_semantic_spread', '<name>_surface_spread',
    '<name>_semantic_share', and per probed subspace 'se_probe_<name>_<part>' and
    'correctness_probe_<name>_<part>' ('..._full_state' for the whole state, without the name)."""
    name = decomposition.name
    columns = {
        f"{name}_semantic_spread": decomposition.semantic,
        f"{name}_surface_spread": decomposition.surface,
        f"{name}_semantic_share": decomposition.share,
    }
    if probes is not None:
        for target, label in (("se", "se_probe"), ("wrong", "correctness_probe")):
            for part, values in getattr(probes, target).items():
                suffix = "full_state" if part == "full" else f"{name}_{part}"
                columns[f"{label}_{suffix}"] = values
    return columns
