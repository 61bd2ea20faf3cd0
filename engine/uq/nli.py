"""Entailment judges for meaning clusters: any NLI model, or the loaded LM asked yes / no.

engine.uq.clustering.semantic_clusters(texts, entails=judge) puts two answers in one cluster when
judge(a, b) and judge(b, a) are both True (Farquhar et al. 2024's bidirectional entailment); it caches
each ordered pair, so a question with K samples costs at most K(K-1) calls.
- `load_nli(name)`: an NLI model given as a Hugging Face id or a local folder
  (AutoModelForSequenceClassification + its tokenizer, offline like every model of the lab), e.g. a
  DeBERTa MNLI model. judge(a, b) = True when the argmax of its logits on the pair (premise a,
  hypothesis b) is the label whose config.id2label name contains "entail" (not "not_entailment").
- `LMJudge(lm)`: the loaded causal LM itself as the judge, one forward pass a call: True when, after the
  prompt `LM_JUDGE_TEMPLATE`, its next-token logit for "yes" beats the one for "no" (the largest over
  the first tokens of " yes", "yes", " Yes", "Yes" against the same forms of "no"). An option, never the default study:
  up to K(K-1) = 90 forward passes a question at K = 10.
The offline default stays MiniLM-embedding clustering (engine.uq.clustering).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.registry import allow_download, resolve_source

LM_JUDGE_TEMPLATE = (
    "{context}Answer A: {premise}\nAnswer B: {hypothesis}\n"
    "If answer A is true, must answer B be true as well? Reply yes or no.\nReply:"
)


def _entailment_index(id2label: dict, name: str) -> int:
    """The label index whose name contains "entail" and is not a negation of it."""
    found = [
        int(i)
        for i, label in id2label.items()
        if "entail" in str(label).lower() and not str(label).lower().replace("-", "_").startswith(("not", "non"))
    ]
    if len(found) != 1:
        raise LabError(
            f"Model '{name}' is not an NLI model the lab can read: config.id2label {dict(id2label)} needs exactly "
            "one entailment label (e.g. 'entailment'); pick an MNLI / NLI model."
        )
    return found[0]


@dataclasses.dataclass
class NLIJudge:
    """judge(premise, hypothesis) -> True when the NLI model's top label is entailment."""

    name: str
    model: Any
    tokenizer: Any
    entail_index: int
    device: str = "cpu"
    max_length: int = 256
    calls: int = 0

    def probabilities(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Softmax over the model's labels for each (premise, hypothesis) pair: [len(pairs), n_labels]."""
        import torch

        if not pairs:
            return np.zeros((0, len(self.model.config.id2label)))
        premises, hypotheses = zip(*[(str(a), str(b)) for a, b in pairs])
        batch = self.tokenizer(
            list(premises),
            list(hypotheses),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**batch).logits
        self.calls += len(pairs)
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def __call__(self, premise: str, hypothesis: str) -> bool:
        probs = self.probabilities([(premise, hypothesis)])[0]
        return bool(int(np.argmax(probs)) == self.entail_index)


def load_nli(name: str, *, device: str = "cpu") -> NLIJudge:
    """An NLIJudge for the model `name` (HF id or local folder). A model that is not here gives a one-line
    LabError naming it and how to get it (engine.core.registry.resolve_source)."""
    source = resolve_source(name)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download())
        model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=not allow_download())
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabError(f"Cannot load the NLI model '{name}': {first}") from err
    index = _entailment_index(model.config.id2label, name)
    model.to(device).eval()
    return NLIJudge(name, model, tokenizer, index, device)


def _answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """First token of " yes", "yes", " Yes", "Yes" and of the same forms of "no", less any token both share
    (a tokenizer that splits " yes" into " " + "yes" would otherwise count the space for both)."""

    def first(words):
        return {ids[0] for ids in (tokenizer.encode(w, add_special_tokens=False) for w in words) if ids}

    yes, no = first((" yes", "yes", " Yes", "Yes")), first((" no", "no", " No", "No"))
    return sorted(yes - no), sorted(no - yes)


@dataclasses.dataclass
class LMJudge:
    """The loaded LM as an entailment judge (module docstring); `question` adds context to the prompt."""

    lm: LoadedModel
    question: str = ""
    template: str = LM_JUDGE_TEMPLATE
    calls: int = 0
    yes_ids: list[int] = dataclasses.field(default_factory=list)
    no_ids: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not self.yes_ids or not self.no_ids:
            self.yes_ids, self.no_ids = _answer_token_ids(self.lm.tokenizer)
        if not self.yes_ids or not self.no_ids:
            raise LabError(f"The tokenizer of '{self.lm.name}' has no distinct tokens for 'yes' and 'no'.")

    def for_question(self, question: str) -> LMJudge:
        """This judge with `question` as the prompt's context (engine.uq.estimators asks one per question)."""
        return dataclasses.replace(self, question=str(question), calls=0)

    def prompt(self, premise: str, hypothesis: str) -> str:
        context = f"Question: {self.question}\n" if self.question else ""
        return self.template.format(context=context, premise=str(premise).strip(), hypothesis=str(hypothesis).strip())

    def yes_margin(self, premise: str, hypothesis: str) -> float:
        """max logit over the "yes" tokens minus max logit over the "no" tokens, after the prompt."""
        import torch

        inputs = self.lm.prompt_inputs(self.prompt(premise, hypothesis))
        with self.lm.lock, torch.no_grad():
            out = self.lm.model(
                input_ids=inputs["input_ids"].to(self.lm.device),
                attention_mask=inputs["attention_mask"].to(self.lm.device),
            )
        logits = out.logits[0, -1].float()
        self.calls += 1
        return float(logits[self.yes_ids].max() - logits[self.no_ids].max())

    def __call__(self, premise: str, hypothesis: str) -> bool:
        return self.yes_margin(premise, hypothesis) > 0
