"""Entailment judges (engine/uq/nli.py): tiny random NLI models built from configs, the LM as judge, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch

from engine.core.errors import LabError
from engine.uq.clustering import semantic_clusters
from engine.uq.nli import LMJudge, NLIJudge, _entailment_index, load_nli

LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
ANSWERS = ["Paris", "It is Paris.", "London", "Paris", "Rome, Italy"]


def build_tiny_nli(folder: Path, arch: str, seed: int = 0) -> Path:
    """A 2-layer random sequence-classification model with MNLI-style labels, saved as an HF folder."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_models.build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    else:
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**common, type_vocab_size=0))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("arch", ["deberta-v2", "bert"])
def test_tiny_nli_model_loads_and_judges_pairs(tmp_path, arch):
    judge = load_nli(str(build_tiny_nli(tmp_path / arch, arch)))
    assert isinstance(judge, NLIJudge) and judge.entail_index == 2
    probs = judge.probabilities([("Paris", "It is Paris."), ("London", "Rome")])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0)
    verdicts = [judge(a, b) for a in ANSWERS[:3] for b in ANSWERS[:3]]
    assert all(type(v) is bool for v in verdicts)
    # the judge's answer is the argmax label of the same probabilities
    assert judge("Paris", "London") == (int(np.argmax(judge.probabilities([("Paris", "London")])[0])) == 2)
    judge.calls = 0
    labels = semantic_clusters(ANSWERS, entails=judge)
    assert labels.shape == (5,) and labels[0] == 0 and labels[3] == 0  # identical texts share a cluster unasked
    k_distinct = len(set(ANSWERS))
    assert 1 <= judge.calls <= k_distinct * (k_distinct - 1)  # clustering asks each ordered pair at most once


def test_missing_nli_model_names_itself_and_how_to_get_it():
    with pytest.raises(LabError) as err:
        load_nli("no-such-org/deberta-v3-mnli-missing")
    text = str(err.value)
    assert "no-such-org/deberta-v3-mnli-missing" in text and "hf download" in text and "\n" not in text


def test_model_without_an_entailment_label_is_refused(tmp_path):
    folder = build_tiny_nli(tmp_path / "plain", "bert")
    import json

    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LabError, match="entailment label"):
        load_nli(str(folder))


def test_entailment_label_is_found_by_name():
    assert _entailment_index({0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}, "m") == 0
    assert _entailment_index({0: "entailment", 1: "not_entailment"}, "m") == 0
    assert _entailment_index({0: "non-entailment", 1: "entailment"}, "m") == 1


def test_lm_as_entailment_judge(tiny_gemma3):
    judge = LMJudge(tiny_gemma3, question="What is the capital of France?")
    assert judge.yes_ids and judge.no_ids and not set(judge.yes_ids) & set(judge.no_ids)
    assert "Question: What is the capital of France?" in judge.prompt("Paris", "London")
    margin = judge.yes_margin("Paris", "London")
    assert np.isfinite(margin) and judge("Paris", "London") == (margin > 0)
    judge.calls = 0
    labels = semantic_clusters(["Paris", "London", "Rome"], entails=judge)
    assert labels.shape == (3,) and 1 <= judge.calls <= 3 * 2  # at most K(K-1) forward passes


def test_entailment_judge_from_the_eval_options(tmp_path, tiny_gemma3):
    from engine.uq.config import EvalOptions
    from engine.uq.evaluation import entailment_judge

    assert entailment_judge(EvalOptions()) is None  # MiniLM clusters: the offline default
    with pytest.raises(LabError) as err:
        entailment_judge(EvalOptions(nli_model="no-such-org/nli-missing"))
    assert "no-such-org/nli-missing" in str(err.value) and "hf download" in str(err.value)
    folder = str(build_tiny_nli(tmp_path / "nli", "bert"))
    assert isinstance(entailment_judge(EvalOptions(nli_model=folder)), NLIJudge)
    with pytest.raises(LabError, match="one entailment judge"):
        entailment_judge(EvalOptions(nli_model=folder, lm_entailment=True))
    with pytest.raises(LabError, match="language model"):
        entailment_judge(EvalOptions(lm_entailment=True))
    judge = entailment_judge(EvalOptions(lm_entailment=True), tiny_gemma3)
    assert isinstance(judge, LMJudge) and judge.question == ""
    assert judge.for_question("Capital of France?").question == "Capital of France?"


def test_a_question_aware_judge_gets_each_question():
    from engine.uq.estimators import score_records
    from engine.uq.records import QuestionRecord

    asked = []

    class Judge:
        def __init__(self, question: str = ""):
            self.question = question

        def for_question(self, question: str) -> Judge:
            return Judge(question)

        def __call__(self, a: str, b: str) -> bool:
            asked.append(self.question)
            return a.lower() == b.lower()

    records = [
        QuestionRecord(
            q,
            f"{q}?",
            [],
            "Paris",
            [-1.0],
            np.zeros((1, 4)),
            ["Paris", "paris", "Rome"],
            [[-1.0]] * 3,
            np.zeros((3, 1, 4)),
        )
        for q in ("first", "second")
    ]
    result = score_records(records, None, entails=Judge(), estimators=["discrete_semantic_entropy"])
    assert set(asked) == {"first?", "second?"} and result.clusters["first"] == [0, 0, 1]
