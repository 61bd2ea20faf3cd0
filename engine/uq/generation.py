"""Generation for the uncertainty experiment: one graded answer + K samples per question, several questions
decoded together.

Per question, K+1 rows share a single prefill of the prompt (its KV cache is repeated K+1 times): row 0
is the graded answer (greedy, the "low-temperature" answer of Farquhar et al. 2024), rows 1..K are
sampled at temperature T (nucleus `top_p`, 1.0 = off). Several questions form one batch (prompts
left-padded, with their attention masks and position ids), so each decoding step reads the weights and
the LM head once for B (K+1) rows instead of K+1; rows that have stopped leave the batch. Each question
draws its K uniforms per step from its own torch.Generator seeded from (run seed, question index), so
the text does not depend on the batch size or on which questions share a batch (left padding moves the
logits by float noise only), and runs, resumes, the page and the CLI agree.

Recorded during generation, no second pass:
- token log-probs: log_softmax of the model's RAW logits (temperature 1, no top-p) at the chosen
  token, for the graded answer and the samples alike (the model's own likelihood of what it wrote):
  logit - logsumexp, from the one exp pass that sampling also uses.
- hidden states (`hidden_layers`, indices into HF `hidden_states`: 0 = embeddings, n = last layer)
  of each answer's last token: the position that predicted the stop (newline / EOS), i.e. the state
  that has read the whole answer. Answers cut by `max_new_tokens` get one extra forward step.
Answers stop at the first newline (brief answers) or EOS; the newline is trimmed.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from engine.core.errors import LabError
from engine.core.jobs import RUNNER, Job
from engine.core.memory import free_bytes
from engine.core.model import LoadedModel
from engine.uq.config import (
    BATCH_MEMORY_FRACTION,
    BATCH_QUESTIONS_CPU,
    BATCH_QUESTIONS_GPU,
    CHAT_TEMPLATE,
    FEW_SHOT_TEMPLATE,
    GenerationConfig,
    default_hidden_layers,
)
from engine.uq.records import QuestionRecord
from engine.uq.store import UqRun, open_run, run_for


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


# ------------------------------------------------------------------------------------------------
# Batch size from memory


def row_bytes(lm: LoadedModel, prompt_tokens: int, config: GenerationConfig) -> int:
    """Bytes one decoding row needs: its KV cache, 2 x layers x kv_heads x head_dim x (prompt + new
    tokens) x dtype bytes, plus three [vocab] float32 rows of a step (logits, exp / CDF, temporaries)."""
    import torch

    tc = lm.text_config
    heads = int(tc.num_attention_heads)
    kv_heads = int(getattr(tc, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(tc, "head_dim", None) or tc.hidden_size // heads)
    dtype = next(lm.model.parameters()).dtype
    dtype_bytes = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 2
    kv = 2 * int(tc.num_hidden_layers) * kv_heads * head_dim * (prompt_tokens + config.max_new_tokens) * dtype_bytes
    return kv + 3 * int(tc.vocab_size) * 4


def auto_batch_questions(lm: LoadedModel, config: GenerationConfig, prompt_tokens: int) -> int:
    """Questions per batch: as many as BATCH_MEMORY_FRACTION of the free memory holds at K+1 rows each
    (`row_bytes`), at most BATCH_QUESTIONS_GPU on a GPU and BATCH_QUESTIONS_CPU on a CPU (where bigger
    batches stop paying: the per-row cost dominates), at least 1."""
    cap = BATCH_QUESTIONS_GPU if str(lm.device).startswith("cuda") else BATCH_QUESTIONS_CPU
    free = free_bytes(str(lm.device))
    if free is None:
        return cap
    rows = int(free * BATCH_MEMORY_FRACTION) // row_bytes(lm, prompt_tokens, config)
    return max(1, min(cap, rows // (config.samples + 1)))


# ------------------------------------------------------------------------------------------------
# Decoding


@dataclasses.dataclass(frozen=True)
class QuestionItem:
    """One question to answer: its index in the run (which seeds its sampling), text, id and references."""

    index: int
    question: str
    qid: str = ""
    references: Sequence[str] = ()


def resolved_layers(lm: LoadedModel, config: GenerationConfig) -> list[int]:
    """The hidden_states indices a run keeps: the config's, else `default_hidden_layers`; LabError when
    one is outside [0, n_layers]."""
    n_layers = n_layers_of(lm)
    layers = list(config.hidden_layers) if config.hidden_layers else default_hidden_layers(n_layers)
    if any(not 0 <= layer <= n_layers for layer in layers):
        raise LabError(f"Hidden layers must be between 0 and {n_layers} for this model.")
    return layers


class _Answers:
    """One question in flight: its K+1 rows' tokens, log-probs and last hidden states, and its generator."""

    def __init__(self, item: QuestionItem, config: GenerationConfig, n_layers: int, hidden_size: int) -> None:
        import torch

        rows = config.samples + 1
        self.item = item
        self.generator = torch.Generator(device="cpu").manual_seed(question_seed(config.seed, item.index))
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logps: list[list[float]] = [[] for _ in range(rows)]
        self.tails = [""] * rows  # text of a stop token before its newline (rare merged tokens such as "Paris\n")
        self.hidden = np.zeros((rows, n_layers, hidden_size), dtype=np.float32)
        self.open = rows  # rows not finished yet

    def record(self, tokenizer, layers: list[int], seconds: float) -> QuestionRecord:
        texts = []
        for body, tail in zip(self.tokens, self.tails):
            text = tokenizer.decode(body[:-1] if tail else body, skip_special_tokens=True) + tail
            texts.append(" ".join(text.split()))
        item = self.item
        return QuestionRecord(
            id=str(item.qid),
            question=item.question,
            references=list(item.references or []),
            answer=texts[0],
            answer_token_logprobs=[float(v) for v in self.logps[0]],
            answer_hidden=self.hidden[0],
            samples=texts[1:],
            sample_token_logprobs=[[float(v) for v in lp] for lp in self.logps[1:]],
            sample_hidden=self.hidden[1:],
            hidden_layers=layers,
            seconds=seconds,
        )


def _weights(logits, config: GenerationConfig):
    """Per logits row [N, V]: (logsumexp [N], greedy token [N], sampling CDF [N, V] unnormalised).

    One exp pass serves the raw log-probs (logit - logsumexp) and, at T = 1 without top-p, the
    sampling weights exp(logit - max): softmax(logits / T) up to its normaliser, which inverse-CDF
    sampling does not need. With top_p < 1 the nucleus (the smallest set of most likely tokens whose
    probability reaches top_p) keeps its weights, the rest get 0; the CDF stays in vocabulary order.
    """
    import torch

    peak = logits.max(dim=-1, keepdim=True).values
    weights = (logits - peak).exp_()
    lse = peak.squeeze(1) + weights.sum(dim=-1).log()
    greedy = logits.argmax(dim=-1)
    if config.temperature != 1.0:
        weights = (logits - peak).div_(config.temperature).exp_()
    if config.top_p < 1.0:
        ordered, order = torch.sort(weights, dim=-1, descending=True)
        mass = ordered.cumsum(dim=-1)
        drop = mass - ordered >= config.top_p * mass[:, -1:]  # the mass before a token already reaches top_p
        weights = torch.zeros_like(weights).scatter_(-1, order, ordered.masked_fill_(drop, 0.0))
    return lse, greedy, weights.cumsum_(dim=-1)


def _decode_batch(
    lm: LoadedModel,
    items: Sequence[QuestionItem],
    config: GenerationConfig,
    stop: threading.Event | None,
    wanted: Container[int] | None = None,
) -> Iterator[tuple[int, QuestionRecord]]:
    """Decode one batch of questions; yields (index, record) for each question of `wanted` (all when None)
    as soon as all its rows have stopped (ties in index order). Returns early, dropping the questions in
    flight, once `stop` is set.

    Shapes: prefill [Q, P] left-padded; then R rows (K+1 per question, fewer as rows stop), logits
    [R, V], KV cache [R, kv_heads, P + t, head_dim] per layer. `lm.lock` is held per forward pass, so
    other users of the model take turns between steps.
    """
    import torch

    layers = resolved_layers(lm, config)
    tokenizer = lm.tokenizer
    rows = config.samples + 1
    eos = _eos_ids(lm)
    newline = _NewlineTable(tokenizer)
    answers = [_Answers(item, config, len(layers), int(lm.text_config.hidden_size)) for item in items]
    prompts = [
        lm.prompt_inputs(config.prompt_template.replace("{question}", item.question)).input_ids[0].tolist()
        for item in items
    ]
    ids, mask = lm.left_padded(prompts)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache_arg = kv_cache_argument(lm.model)
    last = time.perf_counter()
    with torch.no_grad():
        with lm.lock:
            out = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
        cache = kv_cache_of(out)
        cache.batch_repeat_interleave(rows)
        mask = mask.repeat_interleave(rows, dim=0)
        position = positions[:, -1:].repeat_interleave(rows, dim=0)
        owner = [(q, row) for q in range(len(items)) for row in range(rows)]  # batch row -> (question, row)
        source = torch.arange(len(items)).repeat_interleave(rows)  # batch row -> logits row (the prefill's: [Q])
        logits = out.logits[:, -1]
        states = torch.stack([out.hidden_states[layer][:, -1] for layer in layers], dim=1)  # [Q or R, L, D]
        for step in range(config.max_new_tokens):
            first = step == 0
            if stop is not None and stop.is_set():
                return
            scores = logits.float()
            lse, greedy, cdf = _weights(scores, config)
            # K uniforms per unfinished question and step, drawn from its own generator whether or not its
            # rows still sample: the draws, and so the text, do not depend on the batch.
            uniform = {
                q: torch.rand(rows - 1, generator=answers[q].generator, dtype=torch.float32)
                for q in sorted({q for q, _ in owner})
            }
            if first:  # every row of a question reads its prefill's logits row: [Q, K+1] draws on [Q, V]
                values = torch.stack([torch.cat([torch.zeros(1), uniform[q]]) for q in range(len(items))])
            else:  # one draw per row on its own logits row: [R, 1] on [R, V]
                values = torch.stack([uniform[q][row - 1] if row else torch.zeros(()) for q, row in owner])[:, None]
            picked = torch.searchsorted(cdf, values.to(cdf.device) * cdf[:, -1:]).reshape(-1)
            src = source.to(cdf.device)
            is_greedy = torch.tensor([row == 0 for _, row in owner], device=cdf.device)
            chosen = torch.where(is_greedy, greedy[src], picked.clamp_max(cdf.shape[1] - 1))
            chosen_lp = (scores[src, chosen] - lse[src]).tolist()
            chosen_list = chosen.tolist()
            keep: list[int] = []
            ended: list[int] = []
            for b, (q, row) in enumerate(owner):
                token, answer = chosen_list[b], answers[q]
                has_newline, before = newline(token)
                if token in eos or has_newline:
                    ended.append(b)
                    if has_newline and before.strip():
                        answer.tails[row] = before
                        answer.tokens[row].append(token)
                        answer.logps[row].append(chosen_lp[b])
                    continue
                answer.tokens[row].append(token)
                answer.logps[row].append(chosen_lp[b])
                keep.append(b)
            if ended:
                hidden = states[source[ended].to(states.device)].float().cpu().numpy()
                for b, state in zip(ended, hidden):
                    q, row = owner[b]
                    answers[q].hidden[row] = state
                    answers[q].open -= 1
                for q in sorted({owner[b][0] for b in ended}):
                    if answers[q].open == 0 and (wanted is None or answers[q].item.index in wanted):
                        now = time.perf_counter()
                        yield answers[q].item.index, answers[q].record(tokenizer, layers, now - last)
                        last = now
                        if stop is not None and stop.is_set():
                            return
            if not any(wanted is None or answers[owner[b][0]].item.index in wanted for b in keep):
                return  # no row left of a question to yield (the others only kept the batch as it was)
            if len(keep) < len(owner):  # stopped rows leave the batch
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, position = mask[index], position[index]
                owner = [owner[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones(len(owner), 1)], dim=1)
            position = position + 1
            step_ids = torch.tensor([chosen_list[b] for b in keep], device=lm.device)[:, None]
            with lm.lock:
                out = lm.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=position,
                    use_cache=True,
                    output_hidden_states=True,
                    **{cache_arg: cache},
                )
            cache = kv_cache_of(out)
            logits = out.logits[:, -1]
            states = torch.stack([out.hidden_states[layer][:, -1] for layer in layers], dim=1)
            source = torch.arange(len(owner))
        # cut by max_new_tokens: `states` already read the last token
        hidden = states.float().cpu().numpy()
        for b, (q, row) in enumerate(owner):
            answers[q].hidden[row] = hidden[b]
            answers[q].open -= 1
        for q in sorted({q for q, _ in owner}):
            if wanted is not None and answers[q].item.index not in wanted:
                continue
            now = time.perf_counter()
            yield answers[q].item.index, answers[q].record(tokenizer, layers, now - last)
            last = now
            if stop is not None and stop.is_set():
                return


def generate_records(
    lm: LoadedModel,
    items: Sequence[QuestionItem],
    config: GenerationConfig,
    *,
    batch_questions: int = 0,
    stop: threading.Event | None = None,
    wanted: Container[int] | None = None,
) -> Iterator[tuple[int, QuestionRecord]]:
    """Graded answer + K samples for each question, with their token log-probs and hidden states;
    yields (question index, record) as each question finishes (within a batch, in finishing order).

    Consecutive runs of `batch_questions` items decode together (0: `auto_batch_questions`). The records
    depend on the batch only by float noise (left padding, row counts), and not at all when the batches
    are the same: with `wanted`, only those questions' records are yielded and a batch without any is
    skipped, but a batch with one is decoded whole, so resuming a run reproduces an uninterrupted one
    bit for bit (same batch size, same machine). Each record's `seconds` is the wall time since the
    previous record (its share of the batch). Stops between decoding steps once `stop` is set (the
    questions in flight are dropped). Deterministic given (config.seed, question index).
    """
    config.validate()
    resolved_layers(lm, config)
    if not items:
        return
    if batch_questions <= 0:
        longest = max(
            len(lm.prompt_inputs(config.prompt_template.replace("{question}", i.question)).input_ids[0]) for i in items
        )
        batch_questions = auto_batch_questions(lm, config, longest)
    for start in range(0, len(items), batch_questions):
        batch = items[start : start + batch_questions]
        if wanted is not None and not any(item.index in wanted for item in batch):
            continue
        if stop is not None and stop.is_set():
            return
        yield from _decode_batch(lm, batch, config, stop, wanted)


def generate_record(
    lm: LoadedModel, question: str, config: GenerationConfig, *, qid: str = "", references=None, index: int = 0
) -> QuestionRecord:
    """Graded answer + K samples for one question (a batch of one). Deterministic given (config.seed, index)."""
    item = QuestionItem(index, question, qid, list(references or []))
    start = time.perf_counter()
    record = next(iter(generate_records(lm, [item], config, batch_questions=1)))[1]
    return dataclasses.replace(record, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
# The resumable loop over a run's questions, in the foreground (CLI) or as a background job (page)

Progress = Callable[[int, int, float], None]  # (questions done, total, seconds of the last one)


def open_run_for(lm: LoadedModel, questions: pd.DataFrame, generation: GenerationConfig, source: str = "") -> UqRun:
    """`store.open_run` for this model (hidden layers resolved from its depth)."""
    return open_run(lm.name, questions, generation, source=source, n_layers=n_layers_of(lm))


def run_for_model(lm: LoadedModel, questions: pd.DataFrame, generation: GenerationConfig) -> UqRun:
    """`store.run_for` for this model: the run `open_run_for` would open, its folder not made."""
    return run_for(lm.name, questions, generation, n_layers=n_layers_of(lm))


def _check_model(lm: LoadedModel, run: UqRun) -> None:
    if run.model != lm.name:
        raise LabError(f"This run was made with {run.model}, not {lm.name}: load that model.")


def question_items(run: UqRun, total: int) -> list[QuestionItem]:
    """The run's first `total` questions as items, indexed by their place in the run (which seeds them)."""
    questions = run.questions()
    return [
        QuestionItem(index, question, qid, references)
        for index, (qid, question, references) in enumerate(
            zip(questions["id"][:total], questions["question"][:total], questions["references"][:total])
        )
    ]


def _generate_missing(
    lm: LoadedModel,
    run: UqRun,
    total: int,
    progress: Progress | None,
    stop: threading.Event | None,
    batch_questions: int = 0,
) -> int:
    """The loop itself; the caller holds the run's claim."""
    _check_model(lm, run)
    config = run.generation_config()
    done = {i for i in run.done_indices() if i < total}
    items = question_items(run, total)
    missing = {item.index for item in items} - done
    written = 0
    for index, record in generate_records(
        lm, items, config, batch_questions=batch_questions, stop=stop, wanted=missing
    ):
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
    batch_questions: int = 0,
) -> int:
    """Generate the missing records of the first `limit` questions; returns how many were written.

    Holds the run's claim throughout (LabError at once when another session or process generates
    it). Questions decode `batch_questions` at a time (0: from memory, see `auto_batch_questions`), in
    fixed blocks of the question order (see `generate_records`); each record is written as soon as its
    question is done, so a stop or crash loses at most the questions in flight. `progress(done, total,
    last_seconds)` after each; `stop` ends the loop between decoding steps.
    """
    _check_model(lm, run)
    with run.claim("generated"):
        return _generate_missing(lm, run, run.total(limit), progress, stop, batch_questions)


def job_key(run_id: str) -> str:
    """The job runner's key of a run's background generation."""
    return f"uq-generate-{run_id}"


def start_generation(lm: LoadedModel, run: UqRun, limit: int | None = None, batch_questions: int = 0) -> Job:
    """`generate_run` in a background job of the core runner (the run's job if it is already going);
    the runner holds the run's claim, so a LabError here when another process generates it."""
    _check_model(lm, run)
    total = run.total(limit)

    def work(job: Job) -> int:
        def report(done: int, total_: int, seconds: float) -> None:
            job.progress(done, total_, seconds=seconds)

        return _generate_missing(lm, run, total, report, job.stop_event, batch_questions)

    return RUNNER.start(
        job_key(run.run_id), work, label=f"uncertainty run {run.run_id}", run=run, total=total, done=run.done(total)
    )
