"""What generation records per question: the contract between the generation pipeline and the scores.

The pipeline (engine/uq/generation.py) writes one `QuestionRecord` per question as it goes; the
estimators (engine/uq/estimators.py) read only these fields, so they never need the model again.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class QuestionRecord:
    """One question's graded answer, K samples, their token log-probs and hidden states.

    Hidden states are taken during generation (no second pass) at the layers `hidden_layers`
    of the run (same for every record): the state of the last generated token of each answer.
    """

    id: str
    question: str
    references: list[str]  # acceptable reference answers ([] when the set has none)
    answer: str  # the graded, low-temperature answer
    answer_token_logprobs: list[float]  # log p(token) for each generated token of `answer`
    answer_hidden: np.ndarray  # [n_layers, d] float32
    samples: list[str]  # K answers sampled at temperature T
    sample_token_logprobs: list[list[float]]  # per sample, log p(token) of each generated token
    sample_hidden: np.ndarray  # [K, n_layers, d] float32
    hidden_layers: list[int] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # wall time spent generating this record

    def problem(self) -> str | None:
        """Why these fields cannot come from one generation (shapes or lengths that disagree), else None."""
        answer, samples = np.asarray(self.answer_hidden), np.asarray(self.sample_hidden)
        if answer.ndim != 2:
            return f"answer_hidden has shape {list(answer.shape)}, not [n_layers, d]"
        if samples.shape != (len(self.samples), *answer.shape):
            return f"sample_hidden has shape {list(samples.shape)}, not [{len(self.samples)}, {answer.shape[0]}, d]"
        if len(self.sample_token_logprobs) != len(self.samples):
            return f"{len(self.sample_token_logprobs)} token log-prob lists for {len(self.samples)} samples"
        if self.hidden_layers and len(self.hidden_layers) != answer.shape[0]:
            return f"{len(self.hidden_layers)} hidden layers named for {answer.shape[0]} stored"
        return None
