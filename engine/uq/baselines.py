"""Baselines a semantic method has to beat: answer length, kernel language entropy, entropy + correctness probe.

All scores are "higher = more uncertain".
- Answer length (tokens and characters) of the graded answer. A recent study (arXiv 2508.08285) finds
  length heuristics rival semantic entropy on short-form QA. The sign is fixed beforehand, not fitted:
  longer = more uncertain (an AUROC below 0.5 then says the data run the other way).
- Kernel language entropy (KLE, Nikitin et al. 2024, arXiv 2405.20003): the von Neumann entropy
      VNE(K) = -tr(K log K) = -sum_i lambda_i log lambda_i
  of a unit-trace positive semi-definite kernel K over the K samples (lambda_i its eigenvalues).
  Kernel here ("cosine", the default): K = C / k with C_ij = (e_i . e_j)^p, the cosine similarities of
  the samples' unit-norm sentence embeddings raised elementwise to an integer power p (p = 1 default).
  Why: C is a Gram matrix (p >= 2: an elementwise power of one, PSD by the Schur product theorem) with
  unit diagonal, so K = C / k has unit trace without any tuning; identical answers give K = 11^T / k
  (one eigenvalue 1: VNE = 0); k mutually orthogonal answers give K = I / k (VNE = log k); and answers
  that are identical inside meaning clusters and orthogonal across them give exactly the discrete semantic
  entropy -sum_c (n_c/k) log(n_c/k), the paper's "KLE generalises SE" property. The paper's heat kernel
  exp(-t L) of the similarity graph's Laplacian L (`kernel="heat"`, weights max(cos, 0), no self-loops)
  needs a length scale t and never reaches 0 for identical answers (VNE -> 0 only as t -> infinity),
  so it is the option, not the default.
- Entropy + correctness probe (arXiv 2603.21172 finds the pair beats entropy alone): P(right) from a
  logistic regression on the two scores [entropy, probe score], each standardised, fitted out-of-fold by
  question (engine.uq.subspace.question_folds); the score is 1 - P(right). The probe score should itself
  be out-of-fold (decompositions.subspace_probes): then the only use of a question's label in its own
  score is through the other questions' probe scores, which the 2-weight combiner barely sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engine.uq.records import QuestionRecord
from engine.uq.subspace import question_folds


def answer_lengths(records: Sequence[QuestionRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, characters) of each record's graded answer: len(answer_token_logprobs), len(answer.strip())."""
    tokens = np.array([len(r.answer_token_logprobs) for r in records], dtype=np.float64)
    chars = np.array([len(r.answer.strip()) for r in records], dtype=np.float64)
    return tokens, chars


def von_neumann_entropy(kernel: np.ndarray) -> float:
    """-tr(K log K) of K / tr(K) (natural log; eigenvalues below 1e-12 count 0); NaN for an empty kernel."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.size == 0:
        return float("nan")
    trace = float(np.trace(kernel))
    if trace <= 0:
        return float("nan")
    lam = np.linalg.eigvalsh((kernel + kernel.T) / (2 * trace))
    lam = lam[lam > 1e-12]
    return float(max(-np.sum(lam * np.log(lam)), 0.0))


def semantic_kernel(embeddings: np.ndarray, *, kernel: str = "cosine", power: int = 1, t: float = 1.0) -> np.ndarray:
    """The k x k kernel over k samples from their sentence embeddings [k, e] (normalised here to unit
    length): "cosine": (e_i . e_j)^power; "heat": expm(-t L), L = D - W, W = max(cos, 0) off the diagonal."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    cos = np.clip(e @ e.T, -1.0, 1.0)
    if kernel == "cosine":
        if int(power) != power or power < 1:
            raise ValueError(f"the cosine kernel's power must be a positive integer (PSD), got {power}")
        return cos ** int(power)
    if kernel == "heat":
        w = np.maximum(cos, 0.0)
        np.fill_diagonal(w, 0.0)
        lam, vecs = np.linalg.eigh(np.diag(w.sum(1)) - w)
        return (vecs * np.exp(-t * lam)) @ vecs.T
    raise ValueError(f"unknown kernel {kernel!r}: 'cosine' or 'heat'")


def kernel_language_entropy(embeddings: np.ndarray, **kernel_options) -> float:
    """KLE of one question's samples: VNE of the unit-trace `semantic_kernel` (module docstring). NaN for
    no samples, 0 for one."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        return float("nan")
    return von_neumann_entropy(semantic_kernel(e, **kernel_options))


@dataclasses.dataclass
class Combination:
    """Out-of-fold 1 - P(right | entropy, probe score) per question; per-fold weights (standardised inputs)."""

    scores: np.ndarray
    folds: np.ndarray
    weights: list[list[float]] = dataclasses.field(default_factory=list)  # [w_entropy, w_probe] per fold
    note: str = ""


def entropy_probe_combination(
    entropy: np.ndarray, probe: np.ndarray, correct: np.ndarray, *, n_folds: int = 5, seed: int = 0
) -> Combination:
    """Logistic regression of correctness on [entropy, probe score], fitted out-of-fold (module docstring).

    Questions without a label (NaN in `correct`: ungraded) are left out of the fits and still scored. All
    NaN with a note when there are fewer than 2 * n_folds graded questions, an input score has NaN, or a
    training fold has answers of one class only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.column_stack([np.asarray(entropy, dtype=np.float64), np.asarray(probe, dtype=np.float64)])
    y = np.asarray(correct, dtype=np.float64)
    n = len(y)
    out = Combination(np.full(n, np.nan), np.full(n, -1))
    labelled = ~np.isnan(y)
    if labelled.sum() < 2 * n_folds or n_folds < 2:
        out.note = (
            f"needs at least {2 * max(n_folds, 2)} graded questions for {n_folds}-fold fitting; got {labelled.sum()}"
        )
        return out
    if np.isnan(x).any():
        missing = [name for name, col in (("entropy", x[:, 0]), ("probe", x[:, 1])) if np.isnan(col).any()]
        out.note = f"some questions have no {' / '.join(missing)} value"
        return out
    folds = question_folds(n, n_folds, seed)
    for fold in range(n_folds):
        train, test = (folds != fold) & labelled, folds == fold
        labels = y[train] > 0.5
        if labels.all() or not labels.any():
            out.note = f"fold {fold}: the training answers are all {'right' if labels.all() else 'wrong'}"
            out.scores[:], out.weights = np.nan, []
            return out
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], labels)
        out.scores[test] = 1.0 - model.predict_proba(x[test])[:, 1]
        out.weights.append(model[-1].coef_[0].tolist())
    out.folds = folds
    return out
