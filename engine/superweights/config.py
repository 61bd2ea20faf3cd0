"""Super-weight settings in one place: the paper's constants, the choices as types, and the config
dataclasses the CLI derives its flags from (`engine.core.options`) and the tab reads its help texts from.

Torch-free on purpose: `python -m engine superweights --help` imports this module only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, get_args

from engine.core.options import option

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."  # the paper's prompt
ABSOLUTE_THRESHOLD = 50.0  # the paper's fixed threshold on max |down_proj output|
RELATIVE_FACTOR = 5.0  # default: a layer's max |output| >= 5 x the median over layers of that max
PERSIST_FACTOR = 10.0  # residual |h[t, r]| >= 10 x median |h| of that layer counts as "massive"
MAX_ITERATIONS = 5  # rounds of the iterative procedure (zero, re-scan)
MIN_SHARE = 0.5  # a candidate makes at least half of its spike: W[r, c] x[t, c] / y[t, r] >= 0.5

CONFIRM_RATIO = 2.0  # causal test: zeroing a super weight at least doubles the perplexity...
CONFIRM_RANDOM = 10  # ...and raises it more than zeroing any of this many random weights of the same matrix
CONFIRM_TOKENS = 512  # tokens of the bundled text (one window, BOS included) for the causal test
CONFIRM_SEED = 0  # seed of the random control weights

PAPER_TOPK_FRACTION = 1e-6  # the paper's "other weights" baseline: this fraction of the decoder linear weights
SCALE_RANGE = (0.0, 3.0)  # super-weight scales the paper sweeps
DEFAULT_SCALE = 2.0
RESTORE_SA_FRACTION = 0.5  # also restore y[t, r] where |original y[t, r]| >= 0.5 x |super activation|
EVAL_WINDOW = 512  # perplexity window (tokens, BOS included)
EVAL_TOKENS = 4096  # tokens of the bundled text for perplexity (about the whole text)

DEFAULT_BLOCK_SIZES = (64, 256, 1024, 4096)
DEFAULT_BITS = 4
CLIP_FRACTION = 1e-4  # largest |w| of each matrix held in full precision by the "+ outliers" method

# How the input channel c of a spike y[t, r] is read: the input that contributes most to it,
# argmax_c |W[r, c] x[t, c]| (default), or the largest input argmax_c |x[t, c]| (the paper's reading).
ColumnRule = Literal["contribution", "input"]
COLUMN_RULES: tuple[ColumnRule, ...] = get_args(ColumnRule)

# What a proposed weight does to the massive activation, read from activations in the original model:
# it makes it ("candidate"), it pushes an incoming one back towards zero ("cancelling"), or it carries
# less than MIN_SHARE of its own spike ("minor").
Role = Literal["candidate", "cancelling", "minor"]

# The causal test's verdict (engine.superweights.confirm): a super weight (share >= MIN_SHARE, perplexity
# ratio >= CONFIRM_RATIO and above every random control), a weak effect (a candidate above every random
# control but below CONFIRM_RATIO), a cancelling weight, or not confirmed.
Verdict = Literal["super weight", "weak effect", "cancelling weight", "not confirmed"]

ThresholdMode = Literal["relative", "absolute"]
THRESHOLD_MODES: tuple[ThresholdMode, ...] = get_args(ThresholdMode)
DEFAULT_MODE: ThresholdMode = "relative"  # works across model scales; "absolute" is the paper's

QuantMethod = Literal["rtn", "rtn, super weight held", "rtn, super weight + outliers held"]
METHODS: tuple[QuantMethod, ...] = get_args(QuantMethod)

# original | super weight(s) zeroed | zeroed, super activation restored | k largest others zeroed | scaled
ConditionKind = Literal["original", "zero", "zero_restore_sa", "zero_topk_others", "scale"]


def number(value: float) -> str:
    """A constant as the docs write it: 5, 0.5, 1e-6 (not 5.0 or 1e-06)."""
    return re.sub(r"e(-?)\+?0*(\d)", r"e\1\2", f"{value:g}")


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Settings of `engine.superweights.detect.detect` (its keyword arguments, by name)."""

    mode: ThresholdMode = option(
        DEFAULT_MODE,
        f"relative: a layer spikes when max |down_proj output| >= factor x median over layers; "
        f"absolute: >= a fixed value (the paper's {number(ABSOLUTE_THRESHOLD)})",
        flag="--threshold",
    )
    factor: float = option(RELATIVE_FACTOR, "relative threshold: x median over layers")
    absolute: float = option(ABSOLUTE_THRESHOLD, f"absolute threshold (paper: {number(ABSOLUTE_THRESHOLD)})")
    max_iterations: int = option(MAX_ITERATIONS, "rounds of the iterative procedure (zero the weight, re-scan)")
    persist_factor: float = option(
        PERSIST_FACTOR, "residual |h[t, r]| >= this x median |h| counts as a persisting massive activation", cli=False
    )
    column: ColumnRule = option(
        "contribution",
        "input channel of a spike: contribution = argmax_c |W[r, c] x[t, c]|, input = argmax_c |x[t, c]| (paper)",
    )
    min_share: float = option(
        MIN_SHARE, "a candidate makes at least this share of its spike, W[r, c] x[t, c] / y[t, r]"
    )


@dataclasses.dataclass(frozen=True)
class ConfirmationConfig:
    """Settings of `engine.superweights.confirm.confirm` (its keyword arguments, by name)."""

    min_ratio: float = option(CONFIRM_RATIO, "causal test: perplexity ratio a super weight's zeroing reaches at least")
    n_random: int = option(CONFIRM_RANDOM, "causal test: random weights of the same matrix zeroed one at a time")
    confirm_tokens: int = option(CONFIRM_TOKENS, "causal test: tokens of the bundled text (one window)")
    seed: int = option(CONFIRM_SEED, "causal test: seed of the random control weights")


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """Settings of `engine.superweights.ablation.ablation_table` (its keyword arguments, by name)."""

    k: int | None = option(
        None, f"other weights to zero (default: {number(PAPER_TOPK_FRACTION)} of the decoder linear weights)"
    )
    scales: tuple[float, ...] = option(
        (DEFAULT_SCALE,),
        f"super-weight scale in [{number(SCALE_RANGE[0])}, {number(SCALE_RANGE[1])}]",
        cli=False,  # the CLI repeats --scale (one value each) instead of a comma-separated list
    )
    max_tokens: int = option(EVAL_TOKENS, "tokens of the bundled text for perplexity", flag="--eval-tokens")
    window: int = option(EVAL_WINDOW, "perplexity window (tokens)")


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """Settings of `engine.superweights.quantize.quantization_table` (its keyword arguments, by name)."""

    block_sizes: tuple[int, ...] = option(DEFAULT_BLOCK_SIZES, "RTN block sizes (weights per block)")
    bits: int = option(DEFAULT_BITS, "bits per weight", cli=False)
    clip_fraction: float = option(CLIP_FRACTION, "fraction of the largest |w| of each matrix held", cli=False)
    methods: tuple[QuantMethod, ...] = option(METHODS, "RTN variants", cli=False)
