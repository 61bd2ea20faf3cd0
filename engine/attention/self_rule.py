"""The self-rule explainer: the model picks its head's rule from the library by its own log-probabilities.

The model reads the same prompt it reads to explain the head (self_explain: the head's text description,
ending "This head attends to" for a base model; a chat model gets the chat prompt and then that
sentence start as its answer). Each library rule r (rules.RULE_TEXTS) is a continuation c_r of that
prompt x, scored by its mean log-probability per token:
    s(r) = (1 / |c_r|) Σ_m log p(c_r[m] | x, c_r[<m])
(length-normalised, so a long description is not penalised for its length). The pick is argmax_r s(r);
its prediction is the rule's weights (rules.predict), scored exactly, with no simulator noise. The
external detector picks the best rule of the same library on train prompts, so this explainer can at
best tie it: the study reports how often the model picks the detector's rule against chance.

The prompt x runs once with a KV cache, repeated over the R continuations, which run as one right-padded
batch [R, C] (pads after the text, so they change no earlier position).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from engine.attention.config import RuleName
from engine.attention.rules import RULE_TEXTS, RULES
from engine.attention.self_explain import (
    COMPLETION_PREFIX,
    EXPLAIN_COMPLETION_TEMPLATE,
    build_explain_prompt,
    cache_of,
    with_cache,
)
from engine.core.model import LoadedModel

# scorer(prefix text, continuations) -> mean log-probability per token of each continuation after the prefix
Scorer = Callable[[str, Sequence[str]], Sequence[float]]


@dataclasses.dataclass(frozen=True)
class RuleChoice:
    """The rule the model picked and every rule's mean log-probability per token."""

    rule: RuleName
    logprobs: dict[RuleName, float]


def rule_prompt(lm: LoadedModel, description: str) -> str:
    """The text the model reads before a rule: the explanation prompt and the sentence start
    "This head attends to" (in the completion template already; after the chat prompt otherwise)."""
    if lm.is_instruction_tuned:
        from engine.attention.self_explain import EXPLAIN_CHAT_TEMPLATE

        return lm.chat_text(build_explain_prompt(EXPLAIN_CHAT_TEMPLATE, description)) + COMPLETION_PREFIX
    return build_explain_prompt(EXPLAIN_COMPLETION_TEMPLATE, description)


def continuation_logprobs(lm: LoadedModel, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]):
    """Per continuation, log p of each of its tokens after the prefix: a list of arrays [C_r]."""
    import torch

    width = max(len(c) for c in continuations)
    n = len(continuations)
    ids = torch.full((n, width), lm.pad_id, dtype=torch.long)
    mask = torch.ones((n, len(prefix_ids) + width), dtype=torch.long)
    for k, cont in enumerate(continuations):
        ids[k, : len(cont)] = torch.as_tensor(list(cont), dtype=torch.long)
        mask[k, len(prefix_ids) + len(cont) :] = 0
    prefix = torch.as_tensor([list(prefix_ids)], dtype=torch.long, device=lm.device)
    with lm.lock, torch.no_grad():
        first = lm.model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        cache = cache_of(first)
        cache.batch_repeat_interleave(n)
        logits = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=True, **with_cache(lm, cache)
        ).logits  # [R, C, V]
    head = torch.log_softmax(first.logits[0, -1].float(), dim=-1)  # predicts each continuation's first token
    rest = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for k, cont in enumerate(continuations):
        lp = [float(head[cont[0]])] + [float(rest[k, m - 1, cont[m]]) for m in range(1, len(cont))]
        out.append(np.asarray(lp))
    return out


def lm_scorer(lm: LoadedModel) -> Scorer:
    """The model's own scorer: mean log-probability per token of each continuation (module docstring)."""
    tok = lm.tokenizer

    def score(prefix: str, continuations: Sequence[str]) -> list[float]:
        prefix_ids = tok(prefix, add_special_tokens=not lm.is_instruction_tuned)["input_ids"]
        conts = [tok(c, add_special_tokens=False)["input_ids"] or [lm.pad_id] for c in continuations]
        return [float(lp.mean()) for lp in continuation_logprobs(lm, prefix_ids, conts)]

    return score


def choose_rule(prefix: str, scorer: Scorer, rules: Sequence[RuleName] = RULES) -> RuleChoice:
    """argmax over the library of the scorer's mean log-probability of " " + the rule's text after `prefix`
    (ties go to the earlier rule of the library)."""
    values = [float(v) for v in scorer(prefix, [" " + RULE_TEXTS[r] for r in rules])]
    if len(values) != len(rules):
        raise ValueError(f"the scorer gave {len(values)} values for {len(rules)} rules")
    logprobs = dict(zip(rules, values))
    return RuleChoice(rules[int(np.argmax(values))], logprobs)
