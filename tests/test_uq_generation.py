"""Generation records: log-probs are the raw-logit log-softmax of the chosen tokens, hidden states are the
last answer token's, sampling is seeded per question, and answers stop at a newline."""

import numpy as np
import pytest
import torch

from engine.core.errors import LabError
from engine.uq.config import GenerationConfig, default_hidden_layers
from engine.uq.generation import QuestionItem, build_prompt, generate_record, generate_records

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


QUESTIONS = ["the cat", "what is the capital of France and why", "a", "one two three four five six", "the sky is"]


def _same_records(a, b, atol=1e-4):
    """Same answer texts and token counts; token log-probs within `atol`, hidden states within float noise."""
    assert a.keys() == b.keys()
    for index in a:
        x, y = a[index], b[index]
        assert (x.answer, x.samples) == (y.answer, y.samples), index
        for lx, ly in zip(
            [x.answer_token_logprobs, *x.sample_token_logprobs], [y.answer_token_logprobs, *y.sample_token_logprobs]
        ):
            assert len(lx) == len(ly)
            np.testing.assert_allclose(lx, ly, rtol=0, atol=atol)
        for hx, hy in [(x.answer_hidden, y.answer_hidden), (x.sample_hidden, y.sample_hidden)]:
            assert np.abs(hx - hy).max() <= 1e-5 * np.abs(hy).max()  # float noise of the residual stream's scale


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_batch_size_does_not_change_the_records(tiny_gemma3, temperature, top_p):
    """Questions of different prompt lengths, left-padded together: same texts, log-probs within 1e-4 as one
    question per batch, whichever questions share a batch (each question samples from its own generator)."""
    config = GenerationConfig(
        prompt_template=PROMPT, samples=4, max_new_tokens=8, seed=7, temperature=temperature, top_p=top_p
    )
    items = [QuestionItem(i, q, f"q{i}") for i, q in enumerate(QUESTIONS)]
    one = dict(generate_records(tiny_gemma3, items, config, batch_questions=1))
    assert sorted(one) == list(range(len(QUESTIONS)))
    _same_records(one, dict(generate_records(tiny_gemma3, items, config, batch_questions=4)))
    _same_records(one, dict(generate_records(tiny_gemma3, items[::-1], config, batch_questions=3)))
    single = generate_record(tiny_gemma3, QUESTIONS[2], config, qid="q2", index=2)
    _same_records({2: one[2]}, {2: single})
    assert single.id == "q2" and single.seconds > 0


def test_real_model_batch_of_four_equals_one_at_a_time(embedded_lm):
    questions = [
        "What is the capital of France?",
        "Who wrote Hamlet?",
        "What color is the sky?",
        "How many legs does a dog have?",
    ]
    items = [QuestionItem(i, q) for i, q in enumerate(questions)]
    config = GenerationConfig(samples=4, max_new_tokens=8, seed=0)
    one = dict(generate_records(embedded_lm, items, config, batch_questions=1))
    four = dict(generate_records(embedded_lm, items, config, batch_questions=4))
    _same_records(one, four)
    assert one[0].answer == "Paris"


def test_sampling_weights_are_the_tempered_nucleus_distribution():
    """`_weights`: raw log-probs by logsumexp, greedy = argmax, and a CDF whose increments are
    softmax(log_softmax(logits) / T) restricted to the top-p nucleus (the law the samples are drawn from)."""
    from engine.uq.generation import _weights

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in [(1.0, 1.0), (0.5, 1.0), (1.3, 0.8)]:
        config = GenerationConfig(temperature=temperature, top_p=top_p)
        lse, greedy, cdf = _weights(logits.clone(), config)
        np.testing.assert_allclose(lse, torch.logsumexp(logits, -1), rtol=1e-6)
        assert torch.equal(greedy, logits.argmax(-1))
        scaled = torch.log_softmax(logits, -1) / temperature
        sorted_lp, order = torch.sort(scaled, -1, descending=True)
        probs = torch.softmax(sorted_lp, -1)
        sorted_lp = sorted_lp.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
        expected = torch.softmax(torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_lp), -1)
        law = torch.diff(cdf, dim=-1, prepend=torch.zeros(3, 1)) / cdf[:, -1:]
        np.testing.assert_allclose(law, expected, atol=1e-6)


def test_batch_size_from_memory(tiny_gemma3, monkeypatch):
    """KV bytes per row = 2 x layers x kv_heads x head_dim x (prompt + new tokens) x 4 (float32), plus the
    step's [vocab] float32 rows; the batch is what a quarter of free memory holds, capped, at least one."""
    from engine.uq import generation
    from engine.uq.config import BATCH_MEMORY_FRACTION, BATCH_QUESTIONS_CPU

    config = GenerationConfig(prompt_template=PROMPT, samples=3, max_new_tokens=6)
    tc = tiny_gemma3.text_config  # 2 layers, 2 KV heads of 16
    per_row = generation.row_bytes(tiny_gemma3, 10, config)
    assert per_row == 2 * 2 * 2 * 16 * (10 + 6) * 4 + 3 * tc.vocab_size * 4
    monkeypatch.setattr(generation, "free_bytes", lambda device: 10**12)
    assert generation.auto_batch_questions(tiny_gemma3, config, 10) == BATCH_QUESTIONS_CPU
    monkeypatch.setattr(generation, "free_bytes", lambda device: int(per_row * 4 * 3 / BATCH_MEMORY_FRACTION) + 1)
    assert generation.auto_batch_questions(tiny_gemma3, config, 10) == 3  # 12 rows: 3 questions of K+1 = 4
    monkeypatch.setattr(generation, "free_bytes", lambda device: 1)
    assert generation.auto_batch_questions(tiny_gemma3, config, 10) == 1
