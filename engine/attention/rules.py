"""The library of executable attention rules and the external detector that picks one per head.

A rule maps a prompt's tokens and a query row i to predicted weights over keys j <= i [i + 1]:
  bos_sink          j = 0
  self              j = i
  previous_token    j = i - 1;  previous_2: j = i - 2;  previous_3: j = i - 3
  duplicate_token   the latest j < i with t_j = t_i
  induction         the latest j <= i with t_{j-1} = t_i, j - 1 < i (the token after an earlier copy)
  punctuation       the latest j < i whose token is punctuation or a line break (end of a clause/sentence)
  recent_window     1/w on each of j = i-w+1 .. i (w = RECENT_WINDOW, fewer at the start)
  uniform           1/(i+1) on every j <= i
A rule with no target in a row (no earlier copy, no punctuation, i < k) puts all weight on BOS, as
self_explain.rule_prediction does; on the labels both know, the two give the same weights.

The detector (`fit_rule`) is the rule with the highest top-1 agreement (self_explain.pooled_score) on the
train prompts, ties broken by the Pearson correlation of weights: the best-fitting rule of the library.

Shapes: T tokens of a prompt; one prediction per query row i, a weight vector [i + 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import get_args

import numpy as np

from engine.attention.config import RuleName
from engine.attention.self_explain import PredictionScore, pooled_score

RULES: tuple[RuleName, ...] = get_args(RuleName)
RECENT_WINDOW = 4
PUNCTUATION = frozenset(".,;:!?\u21b5")  # readable token texts: '\u21b5' is a line break (maps.readable_token)

# What the rule says, as a continuation of "This head attends to" (read by the self-rule explainer).
RULE_TEXTS: dict[RuleName, str] = {
    "bos_sink": "the first token of the text (the beginning-of-sequence token), whatever the current token is.",
    "self": "the current token itself.",
    "previous_token": "the previous token, the one just before the current token.",
    "previous_2": "the token two positions before the current token.",
    "previous_3": "the token three positions before the current token.",
    "duplicate_token": "an earlier copy of the same token as the current token.",
    "induction": "the token that came right after an earlier copy of the current token.",
    "punctuation": "the most recent punctuation mark or end of a sentence before the current token.",
    "recent_window": "the last few tokens, spread over the current token and the three before it.",
    "uniform": "all earlier tokens about equally.",
}
RULE_TITLES: dict[RuleName, str] = {
    "bos_sink": "BOS / sink",
    "self": "self",
    "previous_token": "previous token",
    "previous_2": "2nd previous",
    "previous_3": "3rd previous",
    "duplicate_token": "same token",
    "induction": "induction",
    "punctuation": "punctuation",
    "recent_window": "recent window",
    "uniform": "uniform",
}


def is_punctuation(token: str) -> bool:
    """A readable token made only of punctuation marks or line breaks (spaces ignored)."""
    text = token.strip()
    return bool(text) and all(ch in PUNCTUATION for ch in text)


def _target(rule: RuleName, t: Sequence[int], tokens: Sequence[str], i: int) -> int | None:
    """The one key a single-target rule points to from row i (None: no target in this row)."""
    if rule == "bos_sink":
        return 0
    if rule == "self":
        return i
    if rule in ("previous_token", "previous_2", "previous_3"):
        k = {"previous_token": 1, "previous_2": 2, "previous_3": 3}[rule]
        return i - k if i - k >= 0 else None
    if rule == "duplicate_token":
        return next((j for j in range(i - 1, -1, -1) if t[j] == t[i]), None)
    if rule == "induction":
        return next((j for j in range(i, 0, -1) if t[j - 1] == t[i]), None)
    if rule == "punctuation":
        return next((j for j in range(i - 1, -1, -1) if is_punctuation(tokens[j])), None)
    raise ValueError(rule)


def rule_weights(rule: RuleName, token_ids: Sequence[int], tokens: Sequence[str], i: int) -> np.ndarray:
    """Predicted weights [i + 1] of one rule on query row i (module docstring)."""
    if rule == "uniform":
        return np.full(i + 1, 1.0 / (i + 1))
    w = np.zeros(i + 1)
    if rule == "recent_window":
        lo = max(0, i - RECENT_WINDOW + 1)
        w[lo:] = 1.0 / (i + 1 - lo)
        return w
    target = _target(rule, token_ids, tokens, i)
    w[0 if target is None else target] = 1.0
    return w


def predict(rule: RuleName, token_ids: Sequence[int], tokens: Sequence[str], queries: Sequence[int]) -> dict:
    """{i: weights [i + 1]} of one rule on the query rows of one prompt."""
    return {i: rule_weights(rule, token_ids, tokens, i) for i in queries}


@dataclasses.dataclass(frozen=True)
class RuleFit:
    """The detector's choice for one head: the best rule and every rule's train score."""

    rule: RuleName
    train: dict[RuleName, PredictionScore]


def fit_rule(
    patterns: Sequence[np.ndarray],
    token_ids: Sequence[Sequence[int]],
    tokens: Sequence[Sequence[str]],
    queries: Sequence[Sequence[int]],
    rules: Sequence[RuleName] = RULES,
) -> RuleFit:
    """The rule with the highest pooled top-1 agreement on these (train) prompts, ties by correlation
    (NaN counts as -1); patterns [T, T] per prompt with its token ids, readable tokens and query rows."""
    train = {
        rule: pooled_score(list(patterns), [predict(rule, t, s, q) for t, s, q in zip(token_ids, tokens, queries)])
        for rule in rules
    }

    def key(rule: RuleName) -> tuple[float, float]:
        score = train[rule]
        return (round(score.top1, 12), -1.0 if math.isnan(score.correlation) else score.correlation)

    return RuleFit(max(rules, key=key), train)
