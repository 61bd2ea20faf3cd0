"""Settings of the attention feature in one place: defaults, the choices as types, and the option
dataclasses the CLI derives its flags from and the page reads its help texts from.

Imports neither torch nor numpy, so that `python -m engine attention --help` stays instant.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from engine.core.options import option

DEFAULT_MAX_TOKENS = 64  # token limit of one prompt (BOS included)
TOP_K = 5  # attended tokens per query token in a head's text description
LABEL_THRESHOLD = 0.3  # a head is labelled by a function when its (ceiling-normalised) mean score reaches this

N_RANDOM = 2  # random-token sequences (repeated twice) in the head-function prompt set
RANDOM_LEN = 20  # random word tokens per sequence
RANDOM_SEED = 0  # seed of the first sequence (the next ones count up)

HELDOUT_RANDOM = 1  # held-out random-token sequences (repeated twice) beside the held-out texts
HELDOUT_RANDOM_LEN = 10
HELDOUT_SEED = 100
HELDOUT_MAX_TOKENS = 24  # token limit of a held-out prompt
DESCRIPTION_QUERIES = 32  # query lines of the description the model reads when it explains a head
MAX_NEW_TOKENS = 40  # tokens the model may write per explanation
SCORE_QUERIES = 8  # query tokens scored per held-out prompt
VERDICT_MARGIN = 0.05  # top-1 agreement a predictor must gain to count as better

PatternFunction = Literal["previous_token", "duplicate_token", "induction"]
HeadFunction = Literal["previous_token", "duplicate_token", "induction", "bos_sink", "self", "spread"]
HeadLabel = Literal["previous_token", "duplicate_token", "induction", "self", "bos_sink", "diffuse"]
RuleLabel = Literal[HeadLabel, "uniform"]  # a head label turned into a rule, or the uniform baseline
PromptKind = Literal["natural", "code", "list", "repeated-random", "random", "user"]
PromptSection = Literal["prompts", "heldout"]  # the two prompt sets of engine/data/attention_prompts.json
ExplainMode = Literal["text", "image", "text+image"]  # what the model is shown of the head
TemplateKind = Literal["chat", "completion"]  # explanation prompt: instruction-tuned or base model
Predictor = Literal[
    "self-explanation", "detector label", "baseline: BOS", "baseline: uniform", "simulator, no explanation"
]

RuleName = Literal[
    "bos_sink",
    "self",
    "previous_token",
    "previous_2",
    "previous_3",
    "duplicate_token",
    "induction",
    "punctuation",
    "recent_window",
    "uniform",
]  # the executable rules of engine.attention.rules (detector, self-rule explainer, baselines)
Explainer = Literal[
    "self-text",  # the model's free-text explanation, simulated by the model
    "self-rule",  # the library rule the model picks by its log-probabilities
    "detector",  # the library rule that fits the train prompts best
    "probe",  # a logistic probe on token features fitted on the train prompts
    "control: no explanation",  # the simulator with no explanation (once per prompt set)
    "control: other head",  # another head's self-text prediction
    "baseline: BOS",
    "baseline: uniform",
]

HIGHLIGHTED: tuple[HeadFunction, ...] = ("induction", "previous_token")  # whose top heads the page and CLI name
HIGHLIGHT_TOP = 3  # how many of them


@dataclasses.dataclass(frozen=True)
class MapOptions:
    """One forward pass over a prompt."""

    max_tokens: int = option(
        DEFAULT_MAX_TOKENS,
        "token limit per prompt: longer prompts are truncated to this many tokens (BOS included); cost grows with n²",
    )


@dataclasses.dataclass(frozen=True)
class PromptSetOptions:
    """The prompt set of the head-function table."""

    builtin: bool = option(
        True, "the built-in texts: natural sentences, code snippets and lists (engine/data/attention_prompts.json)"
    )
    random: int = option(
        N_RANDOM,
        f"random-token sequences repeated twice: BOS + {RANDOM_LEN} random word tokens + the same {RANDOM_LEN} "
        f"again (seeds {RANDOM_SEED}, {RANDOM_SEED + 1}, ...); induction heads light up on the second copy",
    )


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
    """Explain -> simulate -> score."""

    max_queries: int = option(
        SCORE_QUERIES,
        "query tokens scored per held-out prompt; bounds the cost: one simulator row per query token and "
        "predictor that uses the model",
        flag="--explain-queries",
    )
    control: bool = option(
        True, "also run the simulator with no explanation (its prior): an explanation tells something only above it"
    )
