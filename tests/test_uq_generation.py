"""Generation records: log-probs are the raw-logit log-softmax of the chosen tokens, hidden states are the
last answer token's, sampling is seeded per question, and answers stop at a newline."""

import numpy as np
import pytest
import torch

from engine.core.errors import LabError
from engine.uq.config import GenerationConfig, default_hidden_layers
from engine.uq.generation import build_prompt, generate_record

PROMPT = "Question: {question}\nAnswer:"


def test_default_layers():
    assert default_hidden_layers(18) == [9, 14, 18]
    assert default_hidden_layers(2) == [1, 2]


def test_greedy_row_matches_a_teacher_forced_forward_pass(tiny_gemma3):
    lm = tiny_gemma3
    config = GenerationConfig(prompt_template=PROMPT, samples=3, max_new_tokens=6, seed=1)
    record = generate_record(lm, "what is the sky", config, qid="q", index=0)
    ids = lm.tokenizer(build_prompt(lm, PROMPT, "what is the sky"), return_tensors="pt").input_ids
    # greedy continuation by HF generate with raw logits, as an independent reference
    out = lm.model.generate(
        ids, do_sample=False, max_new_tokens=6, output_logits=True, return_dict_in_generate=True, pad_token_id=0
    )
    new = out.sequences[0, ids.shape[1] :]
    n = len(record.answer_token_logprobs)
    assert n >= 1
    expected = [torch.log_softmax(out.logits[t][0].float(), -1)[new[t]].item() for t in range(n)]
    np.testing.assert_allclose(record.answer_token_logprobs, expected, rtol=1e-4, atol=1e-5)
    full = torch.cat([ids[0], new[:n]])[None]
    with torch.no_grad():
        hs = lm.model(input_ids=full, output_hidden_states=True).hidden_states
    for j, layer in enumerate(record.hidden_layers):
        np.testing.assert_allclose(record.answer_hidden[j], hs[layer][0, -1].numpy(), rtol=1e-3, atol=1e-4)
    assert record.sample_hidden.shape == (3, len(record.hidden_layers), lm.text_config.hidden_size)
    assert all(lp <= 0 for lps in record.sample_token_logprobs for lp in lps)


def test_seeded_per_question(tiny_gemma3):
    config = GenerationConfig(prompt_template=PROMPT, samples=6, max_new_tokens=5, seed=3)
    a = generate_record(tiny_gemma3, "the cat", config, index=2)
    b = generate_record(tiny_gemma3, "the cat", config, index=2)
    c = generate_record(tiny_gemma3, "the cat", config, index=3)
    assert a.samples == b.samples and a.sample_token_logprobs == b.sample_token_logprobs
    assert np.array_equal(a.sample_hidden, b.sample_hidden)
    assert a.sample_token_logprobs != c.sample_token_logprobs


def test_config_validation(tiny_gemma3):
    with pytest.raises(LabError, match="question"):
        generate_record(tiny_gemma3, "x", GenerationConfig(prompt_template="no placeholder"))
    with pytest.raises(LabError, match="layers"):
        generate_record(tiny_gemma3, "x", GenerationConfig(prompt_template=PROMPT, hidden_layers=[99]))


def test_real_model_brief_answer_stops_at_newline(embedded_lm):
    config = GenerationConfig(samples=3, max_new_tokens=10, seed=0)
    record = generate_record(embedded_lm, "What is the capital of France?", config, index=0)
    assert record.answer == "Paris"
    assert "\n" not in record.answer and all("\n" not in s for s in record.samples)
    assert record.hidden_layers == [9, 14, 18] and record.sample_hidden.shape == (3, 3, 640)
    assert len(record.answer_token_logprobs) == 1 and -3 < record.answer_token_logprobs[0] < 0


def test_bf16_model_records_float32_hidden_states(tiny_gemma3, monkeypatch):
    """On CUDA the lab loads models in bf16: a row that ends after the first decoding step must still
    store its hidden state (numpy has no bf16). Every token after the first is made to end the answer."""
    import copy
    import dataclasses

    from engine.uq import generation

    lm = dataclasses.replace(tiny_gemma3, model=copy.deepcopy(tiny_gemma3.model).to(torch.bfloat16))
    calls = {"n": 0}

    def newline(self, token):
        calls["n"] += 1
        return (calls["n"] > 3, "x")  # 3 rows: step 0 goes on, step 1 ends every row

    monkeypatch.setattr(generation._NewlineTable, "__call__", newline)
    config = GenerationConfig(prompt_template=PROMPT, samples=2, max_new_tokens=6, seed=0)
    record = generate_record(lm, "the cat", config, index=0)
    assert len(record.answer_token_logprobs) == 2  # the first token, then the ending token's text "x"
    assert record.answer_hidden.dtype == np.float32 and np.isfinite(record.answer_hidden).all()
    assert np.isfinite(record.sample_hidden).all()
