"""Meaning clusters of sampled answers: by sentence-embedding similarity or by bidirectional entailment.

Semantic entropy (Kuhn et al. 2023; Farquhar et al. 2024, Nature) needs the K samples of a question
grouped by meaning. Two ways here:
- embeddings (default, offline): average-linkage agglomerative clustering on cosine distance, merging
  while distance < 1 - threshold (so two answers share a cluster when their average cosine similarity
  exceeds `threshold`);
- `entails(a, b) -> bool` (an NLI model wrapper): Farquhar et al.'s greedy algorithm, each unassigned
  sample opens a cluster that takes every later unassigned sample entailing it both ways.
Empty / whitespace-only answers all share one cluster of their own (in both modes). Labels are
renumbered by first appearance (0, 1, 2, ...), so the output is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.core.errors import LabError


def _by_first_appearance(labels) -> np.ndarray:
    """Relabel so the first sample's cluster is 0, the next new one 1, ..."""
    mapping: dict = {}
    return np.array([mapping.setdefault(label, len(mapping)) for label in labels], dtype=int)


def _embedding_labels(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    if len(embeddings) == 1:
        return np.zeros(1, dtype=int)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1.0 - threshold
    )
    return model.fit_predict(np.asarray(embeddings, dtype=np.float64))


def _entailment_labels(texts: list[str], entails: Callable[[str, str], bool]) -> np.ndarray:
    """Farquhar et al. 2024: i joins the cluster opened by j < i when i and j entail each other."""
    labels = [-1] * len(texts)
    cache: dict[tuple[str, str], bool] = {}

    def equivalent(a: str, b: str) -> bool:
        if a == b:
            return True
        for pair in ((a, b), (b, a)):
            if pair not in cache:
                cache[pair] = bool(entails(*pair))
            if not cache[pair]:
                return False
        return True

    next_label = 0
    for i, text in enumerate(texts):
        if labels[i] != -1:
            continue
        labels[i] = next_label
        for j in range(i + 1, len(texts)):
            if labels[j] == -1 and equivalent(text, texts[j]):
                labels[j] = next_label
        next_label += 1
    return np.array(labels, dtype=int)


def semantic_clusters(
    texts: list[str],
    embeddings: np.ndarray | None = None,
    *,
    entails: Callable[[str, str], bool] | None = None,
    threshold: float = 0.8,
) -> np.ndarray:
    """Cluster label (int, by first appearance) of each text; see the module docstring for the rules.

    `embeddings`: unit-norm sentence embeddings [len(texts), dim] (engine.core.embedder.embed). Used when
    `entails` is None. `threshold`: cosine similarity above which answers mean the same (0..1).
    """
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros(0, dtype=int)
    if not 0.0 <= threshold <= 1.0:
        raise LabError(f"The similarity threshold must be in [0, 1], got {threshold}.")
    empty = np.array([not t.strip() for t in texts])
    filled = np.flatnonzero(~empty)
    raw = np.full(len(texts), -1, dtype=int)  # -1: the empty-answer cluster
    if filled.size:
        if entails is not None:
            raw[filled] = _entailment_labels([texts[i] for i in filled], entails)
        else:
            if embeddings is None:
                raise LabError("semantic_clusters needs the samples' embeddings or an entailment function.")
            embeddings = np.asarray(embeddings)
            if embeddings.shape[0] != len(texts):
                raise LabError(f"Got {embeddings.shape[0]} embeddings for {len(texts)} texts.")
            raw[filled] = _embedding_labels(embeddings[filled], threshold)
    return _by_first_appearance(raw.tolist())
