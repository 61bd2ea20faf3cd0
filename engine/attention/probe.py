"""The external probe: a logistic model of where a head attends, from token features, fitted on train prompts.

Every (query i, key j <= i) pair of a prompt gets a feature vector phi(i, j) (FEATURES):
  dist_0 .. dist_7, dist_8+   one-hot distance i - j (the last bucket for 8 or more)
  bos                         j = 0
  same_token                  t_j = t_i, j < i
  after_copy                  j >= 1, t_{j-1} = t_i, j - 1 < i (the induction target)
  key_punct, key_newline      token j is punctuation / a line break (rules.is_punctuation)
  key_word_start              token j begins a word (its raw text starts with a space marker)
  key_capital, key_digit      token j starts with a capital letter / holds a digit
  query_punct                 token i is punctuation
  rel_pos                     j / i (0 at BOS, 1 at the query)
The head's real weight A[i, j] is a soft label: sklearn's LogisticRegression is fitted on each pair twice,
as y = 1 with sample weight A[i, j] and as y = 0 with weight 1 - A[i, j] (the Bernoulli cross-entropy
of the soft label), L2 penalty C = PROBE_C. The prediction for row i is the fitted probability
p(i, j) = sigmoid(w . phi(i, j) + b), normalised over j <= i.

Shapes: T tokens of a prompt; F = len(FEATURES); one prediction per query row i, weights [i + 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engine.attention.rules import is_punctuation

FEATURES: tuple[str, ...] = (
    *(f"dist_{d}" for d in range(8)),
    "dist_8+",
    "bos",
    "same_token",
    "after_copy",
    "key_punct",
    "key_newline",
    "key_word_start",
    "key_capital",
    "key_digit",
    "query_punct",
    "rel_pos",
)
PROBE_C = 1.0
_WORD_MARKERS = (" ", "\u2581", "\u0120")


def pair_features(token_ids: Sequence[int], tokens: Sequence[str], raw_tokens: Sequence[str], i: int) -> np.ndarray:
    """phi(i, j) for every key j <= i of query row i: [i + 1, F] float32 (module docstring)."""
    t = np.asarray(token_ids)
    j = np.arange(i + 1)
    out = np.zeros((i + 1, len(FEATURES)), dtype=np.float32)
    dist = i - j
    out[j, np.minimum(dist, 8)] = 1.0
    col = {name: k for k, name in enumerate(FEATURES)}
    out[0, col["bos"]] = 1.0
    out[:, col["same_token"]] = (t[: i + 1] == t[i]) & (j < i)
    out[1:, col["after_copy"]] = t[:i] == t[i]
    keys = [tokens[k] for k in j]
    out[:, col["key_punct"]] = [is_punctuation(k) for k in keys]
    out[:, col["key_newline"]] = ["\u21b5" in k for k in keys]
    out[:, col["key_word_start"]] = [str(raw_tokens[k]).startswith(_WORD_MARKERS) for k in j]
    out[:, col["key_capital"]] = [k[:1].isupper() for k in keys]
    out[:, col["key_digit"]] = [any(ch.isdigit() for ch in k) for k in keys]
    out[:, col["query_punct"]] = is_punctuation(tokens[i])
    out[:, col["rel_pos"]] = j / max(i, 1)
    return out


@dataclasses.dataclass
class Probe:
    """A fitted probe: its coefficients over FEATURES, intercept, and the train pairs it saw."""

    coef: np.ndarray  # [F]
    intercept: float
    n_pairs: int

    def predict(self, token_ids, tokens, raw_tokens, queries: Sequence[int]) -> dict[int, np.ndarray]:
        """{i: weights [i + 1]}: the fitted probabilities of row i, normalised over j <= i."""
        out = {}
        for i in queries:
            logits = pair_features(token_ids, tokens, raw_tokens, i) @ self.coef + self.intercept
            p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            out[i] = p / p.sum()
        return out

    def to_json(self) -> dict:
        return {
            "coef": dict(zip(FEATURES, map(float, self.coef))),
            "intercept": self.intercept,
            "n_pairs": self.n_pairs,
        }


def fit_probe(
    patterns: Sequence[np.ndarray],
    token_ids: Sequence[Sequence[int]],
    tokens: Sequence[Sequence[str]],
    raw_tokens: Sequence[Sequence[str]],
    queries: Sequence[Sequence[int]],
    c: float = PROBE_C,
) -> Probe:
    """Fit the probe on the (i, j <= i) pairs of the given query rows of these train prompts."""
    from sklearn.linear_model import LogisticRegression

    xs, ys = [], []
    for pattern, t, s, r, q in zip(patterns, token_ids, tokens, raw_tokens, queries):
        for i in q:
            xs.append(pair_features(t, s, r, i))
            ys.append(np.clip(np.asarray(pattern[i, : i + 1], dtype=np.float64), 0.0, 1.0))
    x = np.concatenate(xs)  # [N, F]
    y = np.concatenate(ys)  # [N]
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(
        np.concatenate([x, x]),
        np.concatenate([np.ones(len(y)), np.zeros(len(y))]),
        sample_weight=np.concatenate([y, 1.0 - y]) + 1e-12,
    )
    return Probe(model.coef_[0].astype(np.float64), float(model.intercept_[0]), int(len(y)))
