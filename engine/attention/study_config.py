"""Settings of the attention study (`python -m engine attention-study`, the page's "Whole model" view).

Imports neither torch nor numpy, so that `--help` stays instant.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from engine.attention.config import MAX_NEW_TOKENS, SCORE_QUERIES
from engine.core.embedded import EMBEDDED_LM
from engine.core.errors import LabError
from engine.core.options import option

StudyExplainMode = Literal["auto", "text", "image", "text+image"]

TRAIN_PROMPTS = 40
HELDOUT_PROMPTS = 20  # x 8 queries x 72 heads of Gemma 3 270M: about 1 h of the 2-core CPU (40 did not fit 90 min)
RANDOM_PROMPTS = 6
STUDY_MAX_TOKENS = 24
N_BOOT = 4000
N_PERM = 10000
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study runs; the defaults are the committed study (about 1 h of a 2-core CPU, Gemma 3 270M)."""

    model: str = option(EMBEDDED_LM, "model name, HF id or folder (any causal LM; a VLM is shown the heatmap too)")
    train: int = option(
        TRAIN_PROMPTS, "train prompts: the explanations are written and the external methods fitted on these"
    )
    heldout: int = option(HELDOUT_PROMPTS, "held-out prompts: every explainer is scored on these (disjoint from train)")
    random: int = option(
        RANDOM_PROMPTS, "random-token sequences repeated twice in each set (part of --train and --heldout)"
    )
    queries: int = option(SCORE_QUERIES, "query tokens scored per held-out prompt")
    max_tokens: int = option(STUDY_MAX_TOKENS, "token limit per prompt (BOS included)")
    heads: tuple[str, ...] = option((), "heads to study as LAYER.HEAD (default: all heads of the model)")
    max_heads: int | None = option(None, "study a seeded random sample of this many heads (the report says so)")
    explain_mode: StudyExplainMode = option(
        "auto", "what the model is shown of a head: auto = the text description, plus the heatmap PNG on a VLM"
    )
    max_new_tokens: int = option(MAX_NEW_TOKENS, "tokens the model may write per explanation")
    seed: int = option(0, "seed of the prompt split, the head sample, the other-head control and the bootstrap")
    n_boot: int = option(N_BOOT, "bootstrap resamples of the held-out prompts (shared by all heads)")
    out: str = option("reports/attention", "report folder: summary.md, heads.csv, atlas.png, ...")
    report_only: bool = option(
        False, "rebuild the report from the cached run of these settings (no explanation, no simulation)"
    )

    def validate(self) -> None:
        if self.queries < 1:
            raise LabError("--queries must be at least 1.")
        if self.max_tokens < 8:
            raise LabError("--max-tokens must be at least 8: the description needs a text and a repeated sequence.")
        if self.random < 0:
            raise LabError("--random must be 0 or more.")
        if self.max_heads is not None and self.max_heads < 1:
            raise LabError("--max-heads must be at least 1.")
        if self.n_boot < 100:
            raise LabError("--n-boot must be at least 100.")
        if self.max_new_tokens < 1:
            raise LabError("--max-new-tokens must be at least 1.")

    @property
    def reduced(self) -> bool:
        """True when this run is smaller than the committed study (fewer prompts, queries or heads)."""
        return (
            self.train < TRAIN_PROMPTS
            or self.heldout < HELDOUT_PROMPTS
            or self.queries < SCORE_QUERIES
            or bool(self.heads)
            or self.max_heads is not None
        )
