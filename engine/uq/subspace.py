"""Semantic vs surface subspaces of hidden states: the cross-fitting every decomposition shares, and
decomposition (a), the embedding map.

Method (a) (the seed idea: decompose the latent space into a meaning part and a lexical/surface part):
1. Standardise the samples' hidden states h (one layer) and fit a ridge map W: h -> e onto their
   sentence embeddings e (all-MiniLM-L6-v2, the "meaning" space); alpha by validation error on
   held-out questions (`ridge_map`).
2. Semantic subspace S = row space of W: its top-r right singular vectors, r = the fewest carrying
   `energy` (95%) of sum(sigma^2), or a fixed `rank`. Surface subspace = the orthogonal complement of S.
3. Per question, spread = mean squared distance of its K samples to their centroid (= trace of their
   covariance), after projection onto S (semantic spread) or onto its complement (surface spread);
   the two add up to the total spread (Pythagoras).
Cross-fitted (`cross_fit`, used by every decomposition of engine.uq.decompositions): questions are split
into `n_folds` folds (by question, so all samples of a question stay together); each fold's questions are
scored by the standardisation and subspaces fitted on the other folds only, never on their own samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

RIDGE_ALPHAS = tuple(10.0 ** np.arange(-1, 7))  # 0.1 .. 1e6


@dataclasses.dataclass
class SubspaceSpreads:
    """Per-question spreads (NaN where not computed), the fold that scored each question (-1: none)."""

    semantic: np.ndarray
    surface: np.ndarray
    folds: np.ndarray
    ranks: list[int] = dataclasses.field(default_factory=list)  # semantic rank r per fold
    alphas: list[float] = dataclasses.field(default_factory=list)  # ridge alpha per fold
    heldout_r2: list[float] = dataclasses.field(default_factory=list)  # R^2 of W on the fold it scores
    note: str = ""


def question_folds(n_questions: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of each question (sklearn KFold over questions, shuffled with `seed`)."""
    from sklearn.model_selection import KFold

    folds = np.empty(n_questions, dtype=int)
    for fold, (_, test) in enumerate(KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n_questions))):
        folds[test] = fold
    return folds


@dataclasses.dataclass
class RidgeMap:
    """e ~ (z - z_mean) @ coef + e_mean; coef [d, e]; alpha picked by validation on held-out groups."""

    coef: np.ndarray
    z_mean: np.ndarray
    e_mean: np.ndarray
    alpha: float

    def predict(self, z: np.ndarray) -> np.ndarray:
        return (z - self.z_mean) @ self.coef + self.e_mean


class _RidgePath:
    """Centred ridge fits of e on z for every alpha from one eigendecomposition of the smaller Gram
    matrix: Zc^T Zc (d x d, primal) or Zc Zc^T (n x n, dual); coef = left @ diag(1/(lam+alpha)) @ proj."""

    def __init__(self, z: np.ndarray, e: np.ndarray):
        self.z_mean, self.e_mean = z.mean(0), e.mean(0)
        zc, ec = z - self.z_mean, e - self.e_mean
        dual = zc.shape[0] < zc.shape[1]
        lam, vecs = np.linalg.eigh(zc @ zc.T if dual else zc.T @ zc)
        self.lam = np.maximum(lam, 0.0)
        self.left = zc.T @ vecs if dual else vecs  # [d, m]
        self.proj = vecs.T @ ec if dual else vecs.T @ (zc.T @ ec)  # [m, e]

    def coef(self, alpha: float) -> np.ndarray:
        return self.left @ (self.proj / (self.lam + alpha)[:, None])

    def validation_sse(self, z: np.ndarray, e: np.ndarray, alphas) -> np.ndarray:
        """||t - F D P||^2 for each alpha (D = diag 1/(lam+alpha)), expanded so each alpha costs O(m^2)."""
        feats, target = (z - self.z_mean) @ self.left, e - self.e_mean
        cross = np.sum((feats.T @ target) * self.proj, axis=1)  # diag(F^T t P^T)
        quad = (feats.T @ feats) * (self.proj @ self.proj.T)
        inv = 1.0 / (self.lam[None, :] + np.asarray(alphas, dtype=np.float64)[:, None])  # [n_alphas, m]
        return np.sum(target**2) - 2 * inv @ cross + np.einsum("aj,jk,ak->a", inv, quad, inv)


def ridge_map(z: np.ndarray, e: np.ndarray, groups: np.ndarray | None = None, alphas=RIDGE_ALPHAS) -> RidgeMap:
    """Multi-output ridge regression z -> e (= sklearn Ridge(alpha) with intercept).

    alpha: the least validation error on a held-out third of the groups (the first split of a
    GroupKFold(3)); `groups` = the question of each sample (default: every sample its own group), so
    near-duplicate samples of one question never sit on both sides (generalised / leave-one-out CV
    picks far too small an alpha then: measured held-out R^2 -2.1 vs +0.08 on Gemma 3 270M).
    """
    from sklearn.model_selection import GroupKFold

    groups = np.arange(len(z)) if groups is None else np.asarray(groups)
    best = float(alphas[0])
    if len(alphas) > 1 and len(np.unique(groups)) >= 3:
        train, valid = next(GroupKFold(3).split(z, groups=groups))
        sse = _RidgePath(z[train], e[train]).validation_sse(z[valid], e[valid], alphas)
        best = float(alphas[int(np.argmin(sse))])
    path = _RidgePath(z, e)
    return RidgeMap(path.coef(best), path.z_mean, path.e_mean, best)


def semantic_basis(z: np.ndarray, e: np.ndarray, groups=None, *, rank: int | None = None, energy: float = 0.95):
    """Orthonormal basis [d, r] of the row space of the ridge map z -> e (its top singular directions)."""
    fit = ridge_map(z, e, groups)
    left, sigma, _ = np.linalg.svd(fit.coef, full_matrices=False)  # coef [d, e]: column space = row space of W
    if rank is None:
        share = np.cumsum(sigma**2) / max(float(np.sum(sigma**2)), 1e-300)
        rank = int(np.searchsorted(share, energy - 1e-12) + 1)
    rank = int(min(max(rank, 1), left.shape[1]))
    return left[:, :rank], fit


def _spreads(z: np.ndarray, groups: np.ndarray, basis: np.ndarray, n_groups: int):
    """Mean squared distance to the group centroid: inside span(basis), and in its complement."""
    counts = np.bincount(groups, minlength=n_groups).astype(float)
    centroids = np.zeros((n_groups, z.shape[1]))
    np.add.at(centroids, groups, z)
    centroids /= np.maximum(counts, 1)[:, None]
    resid = z - centroids[groups]
    sem = np.sum((resid @ basis) ** 2, axis=1)
    total = np.sum(resid**2, axis=1)
    per = lambda v: np.bincount(groups, weights=v, minlength=n_groups) / np.maximum(counts, 1)  # noqa: E731
    semantic = per(sem)
    return semantic, np.maximum(per(total) - semantic, 0.0)


def single_blas_thread():
    """A context that limits BLAS to one thread: the matrices here are small, and on a busy 2-core
    machine multithreaded OpenBLAS spin-waits (measured: 240 s instead of 2.5 s for 200 x 10 samples)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class CannotFit(Exception):
    """A fold cannot be fitted (e.g. no training question with two meaning clusters): its questions stay NaN."""


@dataclasses.dataclass
class FoldBasis:
    """One fold's fit (on the other folds' questions): z = (h - mean) / scale; orthonormal bases in z."""

    mean: np.ndarray
    scale: np.ndarray
    semantic: np.ndarray  # [d, r]
    surface: np.ndarray  # [d, s], orthogonal to `semantic`
    info: dict = dataclasses.field(default_factory=dict)

    def standardise(self, hidden: np.ndarray) -> np.ndarray:
        return (np.asarray(hidden, dtype=np.float64) - self.mean) / self.scale


@dataclasses.dataclass
class Decomposition:
    """Per-question spreads of one decomposition (NaN where not scored) and each fold's subspaces."""

    name: str
    semantic: np.ndarray
    surface: np.ndarray
    total: np.ndarray
    folds: np.ndarray  # fold that scored each question (-1: none)
    bases: list[FoldBasis] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def share(self) -> np.ndarray:
        """semantic spread / total spread (NaN where the total is 0 or not computed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.total > 0, self.semantic / self.total, np.nan)

    @property
    def semantic_ranks(self) -> list[int]:
        return [b.semantic.shape[1] for b in self.bases]

    @property
    def surface_ranks(self) -> list[int]:
        return [b.surface.shape[1] for b in self.bases]


def flatten(per_question: Sequence, what: str) -> np.ndarray:
    """The per-question arrays [K_i, ...] stacked into one [sum K_i, ...] (empty ones skipped)."""
    parts = [np.asarray(x, dtype=np.float64) for x in per_question if len(x)]
    if not parts:
        raise ValueError(f"no {what}")
    return np.concatenate(parts)


def _complement(basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the orthogonal complement of span(basis) (basis orthonormal [d, r])."""
    full = np.linalg.qr(basis, mode="complete")[0] if basis.shape[1] else np.eye(basis.shape[0])
    return full[:, basis.shape[1] :]


def cross_fit(
    name: str,
    hidden: Sequence[np.ndarray],
    n_folds: int,
    seed: int,
    fit: Callable[[np.ndarray, np.ndarray], tuple],
    folds: np.ndarray | None = None,
) -> Decomposition:
    """Standardise and fit `fit(z, train) -> (semantic [d, r], surface [d, s], info)` per fold on the other
    folds' samples (`train`: sample mask; `fit` raises CannotFit for a fold it cannot fit); spreads of the
    held-out fold's questions in those subspaces. `hidden[i]`: question i's sample states [K_i, d].
    `folds`: fixed question folds instead of `question_folds(n, n_folds, seed)`; a question in fold -1 is
    only ever trained on (fit on one set, apply to another: folds = -1 for the first, 0 for the second)."""
    n = len(hidden)
    nan = np.full(n, np.nan)
    if folds is None and (n < 2 * n_folds or n_folds < 2):
        note = f"needs at least {2 * max(n_folds, 2)} questions to cross-fit with {n_folds} folds; got {n}"
        return Decomposition(name, nan, nan.copy(), nan.copy(), np.full(n, -1), note=note)
    counts = np.array([len(x) for x in hidden])
    h = flatten(hidden, "hidden states")
    groups = np.repeat(np.arange(n), counts)
    if folds is None:
        folds = question_folds(n, n_folds, seed)
    else:
        folds = np.asarray(folds, dtype=int)
        n_folds = int(folds.max()) + 1
    out = Decomposition(name, nan, nan.copy(), nan.copy(), folds)
    notes: dict[str, list[str]] = {}  # why a fold could not be fitted -> those folds
    with single_blas_thread():
        for fold in range(n_folds):
            train = folds[groups] != fold
            mean, std = h[train].mean(0), h[train].std(0)
            scale = np.where(std > 1e-8, std, 1.0)
            z = (h - mean) / scale
            scored = np.flatnonzero(folds == fold)
            try:
                semantic, surface, info = fit(z, train)
            except CannotFit as err:
                notes.setdefault(str(err), []).append(str(fold))
                d = h.shape[1]
                out.bases.append(FoldBasis(mean, scale, np.zeros((d, 0)), np.zeros((d, 0)), {"error": str(err)}))
                continue
            out.bases.append(FoldBasis(mean, scale, semantic, surface, info))
            test = ~train
            local = np.searchsorted(scored, groups[test])
            sem, rest = _spreads(z[test], local, semantic, len(scored))
            surf, _ = _spreads(z[test], local, surface, len(scored))
            out.semantic[scored], out.surface[scored], out.total[scored] = sem, surf, sem + rest
    too_few = counts < 2
    out.semantic[too_few] = out.surface[too_few] = out.total[too_few] = np.nan
    out.note = "; ".join(f"{why} (fold{'s' * (len(f) > 1)} {', '.join(f)} of {n_folds})" for why, f in notes.items())
    return out


def embedding_map_decomposition(
    hidden: Sequence[np.ndarray],
    embeddings: Sequence[np.ndarray],
    *,
    n_folds: int = 5,
    seed: int = 0,
    rank: int | None = None,
    energy: float = 0.95,
    folds: np.ndarray | None = None,
) -> Decomposition:
    """(a), cross-fitted (module docstring): semantic = row space of the ridge map z -> sentence embedding,
    surface = its complement. `hidden[i]` [K_i, d], `embeddings[i]` [K_i, e]. Each fold's info: the ridge
    "alpha" and "heldout_r2", the map's R^2 on the samples of the fold it scores."""
    from sklearn.metrics import r2_score

    e = flatten(embeddings, "embeddings")
    groups = np.repeat(np.arange(len(hidden)), [len(x) for x in hidden])

    def fit(z, train):
        basis, ridge = semantic_basis(z[train], e[train], groups[train], rank=rank, energy=energy)
        test = ~train
        r2 = float(r2_score(e[test], ridge.predict(z[test]))) if test.sum() > 1 else float("nan")
        return basis, _complement(basis), {"alpha": ridge.alpha, "heldout_r2": r2}

    return cross_fit("embedding_map", hidden, n_folds, seed, fit, folds)


def subspace_spreads(
    hidden: list[np.ndarray],
    embeddings: list[np.ndarray],
    *,
    n_folds: int = 5,
    seed: int = 0,
    rank: int | None = None,
    energy: float = 0.95,
) -> SubspaceSpreads:
    """(a)'s spreads with the map's per-fold rank, alpha and held-out R^2 (`embedding_map_decomposition`).

    `hidden[i]`: question i's sample hidden states [K_i, d]; `embeddings[i]`: their sentence embeddings
    [K_i, e]. Fewer than 2 * n_folds questions: all NaN with a note (too few to cross-fit).
    """
    fit = embedding_map_decomposition(hidden, embeddings, n_folds=n_folds, seed=seed, rank=rank, energy=energy)
    out = SubspaceSpreads(
        fit.semantic,
        fit.surface,
        fit.folds,
        ranks=fit.semantic_ranks,
        alphas=[b.info["alpha"] for b in fit.bases],
        heldout_r2=[b.info["heldout_r2"] for b in fit.bases],
        note=fit.note,
    )
    if fit.bases and min(fit.semantic_ranks) >= fit.bases[0].mean.size:
        out.note = "the semantic subspace spans every hidden dimension: the surface spread is 0"
    return out
