"""Generation for the uncertainty experiment: one graded answer + K samples per question, in one batch.

Per question one batched decoding loop over K+1 rows shares a single prefill of the prompt (its KV
cache is repeated K+1 times): row 0 is the graded answer (greedy, the "low-temperature" answer of
Farquhar et al. 2024), rows 1..K are sampled at temperature T (nucleus `top_p`, 1.0 = off) with a
torch.Generator seeded from (run seed, question index), so runs, resumes, the page and the CLI agree.

Recorded during generation, no second pass:
- token log-probs: log_softmax of the model's RAW logits (temperature 1, no top-p) at the chosen
  token, for the graded answer and the samples alike (the model's own likelihood of what it wrote);
  converted step by step, so the [K+1, vocab] logits of a step are never kept.
- hidden states (`hidden_layers`, indices into HF `hidden_states`: 0 = embeddings, n = last layer)
  of each answer's last token: the position that predicted the stop (newline / EOS), i.e. the state
  that has read the whole answer. Answers cut by `max_new_tokens` get one extra forward step.
Answers stop at the first newline (brief answers) or EOS; the newline is trimmed.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import weakref
from typing import Any

import numpy as np

from engine.core.errors import LabError
from engine.uq.records import QuestionRecord

FEW_SHOT_TEMPLATE = (
    "Answer each question briefly, in a few words.\n\n"
    "Question: What is the capital of France?\nAnswer: Paris\n\n"
    "Question: Who wrote the play Romeo and Juliet?\nAnswer: William Shakespeare\n\n"
    "Question: How many legs does a spider have?\nAnswer: eight\n\n"
    "Question: {question}\nAnswer:"
)
CHAT_TEMPLATE = "Answer the following question as briefly as possible, in a few words.\nQuestion: {question}"


@dataclasses.dataclass
class GenerationConfig:
    """Everything that determines a run's generated text (part of the run id)."""

    prompt_template: str = FEW_SHOT_TEMPLATE
    samples: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    seed: int = 0
    hidden_layers: list[int] | None = None  # None: default_hidden_layers(n_layers)

    def validate(self) -> None:
        if "{question}" not in self.prompt_template:
            raise LabError("The prompt template must contain {question} where the question goes.")
        if not 1 <= self.samples <= 64:
            raise LabError("The number of samples K must be between 1 and 64.")
        if not 0.05 <= self.temperature <= 5:
            raise LabError("The sampling temperature must be between 0.05 and 5.")
        if not 0 < self.top_p <= 1:
            raise LabError("top_p must be in (0, 1].")
        if not 1 <= self.max_new_tokens <= 256:
            raise LabError("max_new_tokens must be between 1 and 256.")


def default_template(lm) -> str:
    """Few-shot prompt for base models; a one-line instruction (wrapped in the chat template) otherwise."""
    return CHAT_TEMPLATE if lm.is_instruction_tuned else FEW_SHOT_TEMPLATE


def default_hidden_layers(n_layers: int) -> list[int]:
    """Middle, ~3/4 depth and last layer (indices into `hidden_states`, 0 = embeddings)."""
    return sorted({n_layers // 2, round(3 * n_layers / 4), n_layers})


def n_layers_of(lm) -> int:
    return int(lm.text_config.num_hidden_layers)


def build_prompt(lm, template: str, question: str) -> str:
    """The prompt text: the template with the question in it, inside the chat template when there is one."""
    return lm.chat_text(template.replace("{question}", question))


def question_seed(seed: int, index: int) -> int:
    """The per-question sampling seed: independent of other questions, so resume == uninterrupted."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 12345) % (2**63 - 1)


def _eos_ids(lm) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), lm.tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class _NewlineTable:
    """Token id -> (has newline, text before the newline), decoded lazily and memoised per tokenizer."""

    # Keyed by the tokenizer object itself (weakly): an id() could be reused by the next tokenizer loaded.
    _tables: weakref.WeakKeyDictionary[Any, dict[int, tuple[bool, str]]] = weakref.WeakKeyDictionary()

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table = self._tables.setdefault(tokenizer, {})

    def __call__(self, token: int) -> tuple[bool, str]:
        hit = self.table.get(token)
        if hit is None:
            text = self.tokenizer.decode([token])
            hit = ("\n" in text, text.split("\n", 1)[0])
            self.table[token] = hit
        return hit


def kv_cache_argument(model) -> str:
    """The forward keyword for the KV cache: `cache` in recent transformers (5.2x, where
    `past_key_values` is deprecated and goes in 5.40), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_cache_of(output):
    """The KV cache of a forward output under either name (see `kv_cache_argument`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _sample(logprobs, temperature: float, top_p: float, generator):
    """Sample one token per row from softmax(logprobs / T), nucleus-filtered when top_p < 1."""
    import torch

    scaled = logprobs / temperature
    if top_p < 1.0:
        sorted_lp, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_lp, -1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest set reaching top_p
        sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_lp)
    # Inverse-CDF sampling (one uniform per row): the same law as torch.multinomial, 4x faster on a
    # 262k vocabulary and deterministic given the generator.
    cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
    uniform = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, uniform).squeeze(1).clamp_max(cdf.shape[1] - 1)


def generate_record(
    lm, question: str, config: GenerationConfig, *, qid: str = "", references=None, index: int = 0
) -> QuestionRecord:
    """Graded answer + K samples for one question with their token log-probs and hidden states.

    Holds `lm.lock` for the whole decoding loop. Deterministic given (config.seed, index).
    """
    import torch

    config.validate()
    n_layers = n_layers_of(lm)
    layers = list(config.hidden_layers) if config.hidden_layers else default_hidden_layers(n_layers)
    if any(not 0 <= layer <= n_layers for layer in layers):
        raise LabError(f"Hidden layers must be between 0 and {n_layers} for this model.")
    tokenizer = lm.tokenizer
    ids = lm.prompt_inputs(config.prompt_template.replace("{question}", question)).input_ids.to(lm.device)
    rows = config.samples + 1
    eos = _eos_ids(lm)
    newline = _NewlineTable(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    generator = torch.Generator(device="cpu").manual_seed(question_seed(config.seed, index))

    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    tails = [""] * rows  # text of a stop token before its newline (rare merged tokens such as "Paris\n")
    hidden = np.zeros((rows, len(layers), lm.text_config.hidden_size), dtype=np.float32)
    finished = [False] * rows
    start = time.perf_counter()
    cache_arg = kv_cache_argument(lm.model)
    with lm.lock, torch.no_grad():
        out = lm.model(input_ids=ids, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        cache = kv_cache_of(out)
        cache.batch_repeat_interleave(rows)
        logits = out.logits[:, -1].float().expand(rows, -1)
        states = [out.hidden_states[layer][:, -1].float().expand(rows, -1) for layer in layers]
        for _step in range(config.max_new_tokens):
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # raw distribution at T = 1
            chosen = _sample(logprobs[1:], config.temperature, config.top_p, generator) if rows > 1 else None
            greedy = logprobs[0].argmax().view(1)
            chosen = torch.cat([greedy, chosen]) if chosen is not None else greedy
            chosen_lp = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
            chosen_list = chosen.tolist()
            for row in range(rows):
                if finished[row]:
                    chosen_list[row] = pad
                    continue
                token = chosen_list[row]
                has_newline, before = newline(token)
                if token in eos or has_newline:
                    finished[row] = True
                    for j, layer_state in enumerate(states):
                        hidden[row, j] = layer_state[row].cpu().numpy()
                    if has_newline and before.strip():
                        tails[row] = before
                        tokens[row].append(token)
                        logps[row].append(chosen_lp[row])
                    chosen_list[row] = pad
                    continue
                tokens[row].append(token)
                logps[row].append(chosen_lp[row])
            if all(finished):
                break
            step_ids = torch.tensor(chosen_list, device=lm.device)[:, None]
            out = lm.model(input_ids=step_ids, use_cache=True, output_hidden_states=True, **{cache_arg: cache})
            cache = kv_cache_of(out)
            logits = out.logits[:, -1]
            states = [out.hidden_states[layer][:, -1].float() for layer in layers]  # bf16 on CUDA
        for row in range(rows):  # cut by max_new_tokens: `states` already read the last token
            if not finished[row]:
                for j, layer_state in enumerate(states):
                    hidden[row, j] = layer_state[row].cpu().numpy()
    texts = []
    for row in range(rows):
        body = tokens[row][:-1] if tails[row] else tokens[row]
        text = tokenizer.decode(body, skip_special_tokens=True) + tails[row]
        texts.append(" ".join(text.split()))
    return QuestionRecord(
        id=str(qid),
        question=question,
        references=list(references or []),
        answer=texts[0],
        answer_token_logprobs=[float(v) for v in logps[0]],
        answer_hidden=hidden[0],
        samples=texts[1:],
        sample_token_logprobs=[[float(v) for v in lp] for lp in logps[1:]],
        sample_hidden=hidden[1:],
        hidden_layers=layers,
        seconds=time.perf_counter() - start,
    )
