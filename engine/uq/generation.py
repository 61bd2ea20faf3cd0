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

import inspect
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.model import LoadedModel
from engine.uq.config import CHAT_TEMPLATE, FEW_SHOT_TEMPLATE, GenerationConfig, default_hidden_layers
from engine.uq.records import QuestionRecord
from engine.uq.store import UqRun, open_run


def default_template(lm: LoadedModel) -> str:
    """Few-shot prompt for base models; a one-line instruction (wrapped in the chat template) otherwise."""
    return CHAT_TEMPLATE if lm.is_instruction_tuned else FEW_SHOT_TEMPLATE


def n_layers_of(lm: LoadedModel) -> int:
    return int(lm.text_config.num_hidden_layers)


def build_prompt(lm: LoadedModel, template: str, question: str) -> str:
    """The prompt text: the template with the question in it, inside the chat template when there is one."""
    return lm.chat_text(template.replace("{question}", question))


def question_seed(seed: int, index: int) -> int:
    """The per-question sampling seed: independent of other questions, so resume == uninterrupted."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 12345) % (2**63 - 1)


def _eos_ids(lm: LoadedModel) -> set[int]:
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
    lm: LoadedModel, question: str, config: GenerationConfig, *, qid: str = "", references=None, index: int = 0
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


# ------------------------------------------------------------------------------------------------
# The resumable loop over a run's questions, in the foreground (CLI) or as a background job (page)

Progress = Callable[[int, int, float], None]  # (questions done, total, seconds of the last one)


def open_run_for(lm: LoadedModel, questions: pd.DataFrame, generation: GenerationConfig, source: str = "") -> UqRun:
    """`store.open_run` for this model (hidden layers resolved from its depth)."""
    return open_run(lm.name, questions, generation, source=source, n_layers=n_layers_of(lm))


def _check_model(lm: LoadedModel, run: UqRun) -> None:
    if run.model != lm.name:
        raise LabError(f"This run was made with {run.model}, not {lm.name}: load that model.")


def _generate_missing(
    lm: LoadedModel, run: UqRun, total: int, progress: Progress | None, stop: threading.Event | None
) -> int:
    """The loop itself; the caller holds the run's claim."""
    _check_model(lm, run)
    config = run.generation_config()
    questions = run.questions()
    done = {i for i in run.done_indices() if i < total}
    written = 0
    for index in range(total):
        if index in done:
            continue
        if stop is not None and stop.is_set():
            break
        row = questions.iloc[index]
        record = generate_record(lm, row["question"], config, qid=row["id"], references=row["references"], index=index)
        run.write_record(index, record)
        written += 1
        done.add(index)
        run.set_status("running", len(done), f"{len(done)}/{total} questions")
        if progress is not None:
            progress(len(done), total, record.seconds)
    run.set_status("finished" if len(done) == total else "stopped", len(done), f"{len(done)}/{total} questions")
    return written


def generate_run(
    lm: LoadedModel,
    run: UqRun,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Generate the missing records of the first `limit` questions; returns how many were written.

    Holds the run's claim throughout (LabError at once when another session or process generates
    it). Each question's record is written as soon as it is done, so a stop or crash loses at most
    the question in flight. `progress(done, total, last_seconds)` after each; `stop` ends the loop.
    """
    _check_model(lm, run)
    with run.claim("generated"):
        return _generate_missing(lm, run, run.total(limit), progress, stop)


def job_key(run_id: str) -> str:
    """The job runner's key of a run's background generation."""
    return f"uq-generate-{run_id}"


def start_generation(lm: LoadedModel, run: UqRun, limit: int | None = None) -> Job:
    """`generate_run` in a background job of the core runner (the run's job if it is already going);
    the runner holds the run's claim, so a LabError here when another process generates it."""
    _check_model(lm, run)
    total = run.total(limit)

    def work(job: Job) -> int:
        def report(done: int, total_: int, seconds: float) -> None:
            job.progress(done, total_, seconds=seconds)

        return _generate_missing(lm, run, total, report, job.stop_event)

    return RUNNER.start(
        job_key(run.run_id), work, label=f"uncertainty run {run.run_id}", run=run, total=total, done=run.done(total)
    )
