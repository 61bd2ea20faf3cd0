"""Settings of the uncertainty experiment: what determines a run's text (`GenerationConfig`, part of the
run id) and how a run is graded and scored (`EvalOptions`).

The one place for each setting's default, bounds and help: the CLI derives its flags from these
dataclasses (engine.core.options), the page reads its widget bounds and help texts from them. No torch
here, so `python -m engine uq --help` stays instant.
"""

from __future__ import annotations

import dataclasses

from engine.core.errors import LabError
from engine.core.options import option
from engine.uq.correctness import EMBEDDING_THRESHOLD, F1_THRESHOLD, Judge

FEW_SHOT_TEMPLATE = (
    "Answer each question briefly, in a few words.\n\n"
    "Question: What is the capital of France?\nAnswer: Paris\n\n"
    "Question: Who wrote the play Romeo and Juliet?\nAnswer: William Shakespeare\n\n"
    "Question: How many legs does a spider have?\nAnswer: eight\n\n"
    "Question: {question}\nAnswer:"
)
USUAL_SCORE = "mean_token_nll"  # the default usual (token-level) score behind A2
SEMANTIC_SCORE = "semantic_entropy"  # the default semantic score behind A3
CURVE_BASELINES = ("answer_length_tokens", "kernel_language_entropy")  # baselines drawn in the rejection curves
DEFAULT_SCORES = (USUAL_SCORE, SEMANTIC_SCORE, *CURVE_BASELINES)  # every score named here (registered: tested)
CHAT_TEMPLATE = "Answer the following question as briefly as possible, in a few words.\nQuestion: {question}"

SAMPLES_RANGE = (1, 64)  # K
TEMPERATURE_RANGE = (0.05, 5.0)
MAX_NEW_TOKENS_RANGE = (1, 256)
# Questions decoded together (engine.uq.generation.auto_batch_questions): as many as this share of the free
# memory holds, at most this many (on a CPU the per-row cost dominates beyond a few questions).
BATCH_MEMORY_FRACTION = 0.25
BATCH_QUESTIONS_CPU = 8
BATCH_QUESTIONS_GPU = 64
CLI_FOLD_SEEDS = 10  # fold seeds averaged by `engine uq` and `engine uq-study` (the page: one, labelled so)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines a run's generated text (part of the run id: field names and values
    are hashed, so renaming a field renames every saved run)."""

    prompt_template: str = option(
        FEW_SHOT_TEMPLATE, "prompt template; {question} is replaced by the question", cli=False
    )
    samples: int = option(10, "K sampled answers per question (Farquhar et al. 2024: 10)")
    temperature: float = option(1.0, "sampling temperature of the K samples")
    top_p: float = option(1.0, "nucleus sampling of the K samples (1.0: off)")
    max_new_tokens: int = option(24, "answer length limit in tokens (answers also stop at a newline)")
    seed: int = option(0, "sampling seed (per question: seed and question index); also the scores' seed")
    hidden_layers: list[int] | None = option(
        None, "hidden_states indices kept per answer (None: default_hidden_layers)", cli=False
    )

    def validate(self) -> None:
        """LabError for a setting outside its range."""
        if "{question}" not in self.prompt_template:
            raise LabError("The prompt template must contain {question} where the question goes.")
        if not SAMPLES_RANGE[0] <= self.samples <= SAMPLES_RANGE[1]:
            raise LabError(f"The number of samples K must be between {SAMPLES_RANGE[0]} and {SAMPLES_RANGE[1]}.")
        if not TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]:
            raise LabError(
                f"The sampling temperature must be between {TEMPERATURE_RANGE[0]:g} and {TEMPERATURE_RANGE[1]:g}."
            )
        if not 0 < self.top_p <= 1:
            raise LabError("top_p must be in (0, 1].")
        if not MAX_NEW_TOKENS_RANGE[0] <= self.max_new_tokens <= MAX_NEW_TOKENS_RANGE[1]:
            raise LabError(f"max_new_tokens must be between {MAX_NEW_TOKENS_RANGE[0]} and {MAX_NEW_TOKENS_RANGE[1]}.")


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How generation is batched: speed only, never the text, so not part of the run id."""

    batch_questions: int = option(
        0,
        f"questions decoded together (0: as many as {BATCH_MEMORY_FRACTION * 100:g} percent of the free memory holds, "
        f"at most {BATCH_QUESTIONS_CPU} on a CPU and {BATCH_QUESTIONS_GPU} on a GPU); the answers do not depend on it",
    )


def default_hidden_layers(n_layers: int) -> list[int]:
    """Middle, ~3/4 depth and last layer (indices into `hidden_states`, 0 = embeddings)."""
    return sorted({n_layers // 2, round(3 * n_layers / 4), n_layers})


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How a run's answers are graded and its scores compared (the page and the CLI alike)."""

    judge: Judge = option(
        "auto",
        "correctness judge: auto = normalised reference contained in the answer, or SQuAD token F1 > the F1 "
        "threshold; contains / f1 = either alone; embedding = MiniLM cosine to the best reference >= the "
        "embedding threshold; llm = the Nature paper's yes/no prompt to a language model. Manual marks "
        "override every judge",
    )
    f1_threshold: float = option(F1_THRESHOLD, "token F1 above which an answer is right (judges f1 and auto)")
    embedding_threshold: float = option(
        EMBEDDING_THRESHOLD, "MiniLM cosine similarity from which an answer is right (judge embedding)"
    )
    judge_model: str = option("", "model whose saved verdicts judge llm uses (default: the generating model)")
    usual: str = option(USUAL_SCORE, "usual (token-level) score behind A2")
    semantic: str = option(SEMANTIC_SCORE, "semantic score behind A3")
    n_boot: int = option(
        1000, "bootstrap resamples of the questions behind the 95 percent intervals", flag="--bootstrap"
    )
    n_boot_test: int = option(
        20_000,
        "bootstrap resamples behind every paired accuracy-at-50-percent test and its interval (a family of m "
        "tests needs more than 2 m / alpha for two-sided tests)",
        flag="--bootstrap-test",
    )
    seed: int = option(0, "bootstrap and cross-fitting seed")
    n_seeds: int = option(
        1,
        "fold seeds of every cross-fitted score (probes, subspaces): the score is the mean over the seeds seed .. "
        "seed + n - 1; the contrasts report the seed-to-seed spread (1: a single fit, the page's default; the "
        f"command line and the study use {CLI_FOLD_SEEDS})",
        flag="--fold-seeds",
    )
    n_folds: int = option(5, "question folds of the cross-fitted scores (SEP, subspaces)", cli=False)
    cluster_threshold: float = option(0.8, "MiniLM cosine above which two samples share a meaning", cli=False)
    layer: int | None = option(
        None, "stored hidden layer for EigenScore / SEP / subspaces (None: the middle one)", cli=False
    )
    nli_model: str = option(
        "",
        "NLI model (Hugging Face id or local folder, e.g. a DeBERTa MNLI model) whose bidirectional entailment "
        "forms the meaning clusters instead of MiniLM similarity (empty: MiniLM, offline)",
    )
    lm_entailment: bool = option(
        False,
        "the generating language model judges entailment for the meaning clusters (up to K(K-1) forward "
        "passes a question; slow, never in the default study)",
    )


MARK_SAMPLE_RANGE = (1, 100_000)  # answers drawn at random for hand marks (at most the run's graded answers)
MARK_EXTRA_RANGE = (0, 100_000)  # extra answers from the judges' disagreement stratum
MARK_SEED_RANGE = (0, 2**32 - 1)  # numpy default_rng seeds


@dataclasses.dataclass(frozen=True)
class MarkSample:
    """Which answers of a run are drawn to be marked by hand (engine.uq.handmarks.draw_sample)."""

    n_random: int = option(150, "answers drawn at random (a simple random sample of the graded answers)", flag="--n")
    n_disagreement: int = option(
        50, "extra answers drawn from those the automatic judges disagree on (oversampled)", flag="--disagreements"
    )
    sample_seed: int = option(0, "seed of the draw (numpy default_rng)")

    def validate(self) -> None:
        """LabError for a setting outside its range."""
        for name, value, (low, high) in (
            ("The random sample size", self.n_random, MARK_SAMPLE_RANGE),
            ("The number of extra disagreements", self.n_disagreement, MARK_EXTRA_RANGE),
            ("The sample seed", self.sample_seed, MARK_SEED_RANGE),
        ):
            if not low <= value <= high:
                raise LabError(f"{name} must be between {low:,} and {high:,} (got {value:,}).")
