"""Ablating super weights in place and measuring the damage (Yu et al. 2024, Sec. 3.2 and Table 1).

Conditions: the original model; the super weight(s) zeroed; zeroed but the super activation restored
(a hook adds W[r, c] * x[t, c] back to y[t, r] where the original |y[t, r]| is massive); the k largest
*other* weights of the decoder-layer linear layers zeroed (k = 1e-6 of those weights by default, the
paper's fraction: ~7,000 for Llama-7B); the super weight(s) scaled by s in [0, 3].

Metrics per condition: perplexity on the bundled evaluation text (independent windows, each starting
with BOS; logits computed a few rows at a time so a 262k vocabulary never materialises at once), the
next-token probability mass on stopwords vs the probability of the expected content word on a prompt
set (the paper's stopword shift, Fig. 4), and greedy continuations.

Every ablation edits the weights in place inside a context manager that holds `lm.lock`, and restores
them bit-for-bit on exit (`engine.core.weight_edits`); the restore is checked with `torch.equal` and a
`RestoreError` is raised if it fails, so the shared model is never left altered.

Shapes: B batch, T tokens, D hidden size, F MLP width, N prompts, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from engine.core.architecture import down_projections, linear_weights, out_in_weight
from engine.core.capture import hooked
from engine.core.errors import LabError
from engine.core.lm_eval import eval_windows, next_token_probs, perplexity, prompt_batch
from engine.core.model import LoadedModel
from engine.core.weight_edits import ElementEdit, check_editable, edited_weights
from engine.superweights.config import (
    DEFAULT_SCALE,
    EVAL_TOKENS,
    EVAL_WINDOW,
    PAPER_TOPK_FRACTION,
    RESTORE_SA_FRACTION,
    SCALE_RANGE,
    ConditionKind,
)
from engine.superweights.detect import Candidate, ProgressFn

CONTINUATION_PROMPTS = ("Summer is hot. Winter is", "The capital of France is", "My favourite food is")
# (prompt, expected content word): the paper's stopword-shift probe, on prompts with an obvious next word.
STOPWORD_PROMPTS = (
    ("Summer is hot. Winter is", " cold"),
    ("The capital of France is", " Paris"),
    ("Apple Inc. is a worldwide tech", " company"),
    ("Monday, Tuesday,", " Wednesday"),
    ("The cat sat on the", " mat"),
    ("On a clear day the sky is", " blue"),
    ("Fish swim in the", " water"),
    ("Romeo and Juliet was written by William", " Shakespeare"),
)


# ---------------------------------------------------------------------------------------------
# In-place edits with a checked restore


@contextlib.contextmanager
def restored_super_activation(
    lm: LoadedModel, candidates: Sequence[Candidate], fraction: float = RESTORE_SA_FRACTION
) -> Iterator[None]:
    """Hooks that put W[r, c] * x[t, c] back into y[t, r] at the super activation (x [B, T, F], y [B, T, D]).

    With W[r, c] zeroed, y_orig[t, r] = y[t, r] + W_orig[r, c] * x[t, c] exactly (the down projection is
    linear in its weights). Restored tokens: the largest |y_orig[:, r]| of each input sequence (the paper's
    rule; not applied to single-token decoding steps) and any token with |y_orig| >= fraction x |super
    activation|. Ordinary tokens keep the ablated value.
    """
    modules = down_projections(lm.model)

    def make(weight: float, row: int, col: int, limit: float):
        def hook(module, inputs, output):
            x = inputs[0]
            y = output.clone()
            original = y[..., row] + weight * x[..., col].to(y.dtype)  # [B, T]
            mask = original.abs() >= limit
            if original.shape[-1] > 1:  # a whole sequence (not one decoding step): its largest one too
                mask |= original.abs() == original.abs().amax(dim=-1, keepdim=True)
            y[..., row] = torch.where(mask, original, y[..., row])
            return y

        return hook

    def hook_of(i: int):
        c = candidates[i]
        return make(c.weight, c.row, c.col, fraction * abs(c.super_activation))

    with hooked(lm, [modules[c.layer] for c in candidates], hook_of):
        yield


# ---------------------------------------------------------------------------------------------
# Metrics


def ticking(windows: Sequence[torch.Tensor], tick: Callable[[int], None] | None) -> Iterable[torch.Tensor]:
    """The evaluation windows, calling `tick(i)` before window i is used (progress inside `perplexity`,
    whose sums stay exactly the same: it reads the same windows in the same order)."""
    for i, ids in enumerate(windows):
        if tick:
            tick(i)
        yield ids


def stopword_ids(tokenizer) -> list[int]:
    """Single-token ids of English stopwords (scikit-learn's list, with/without a leading space,
    lower/capitalised) and punctuation."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    ids = set()
    for word in list(ENGLISH_STOP_WORDS) + [".", ",", ";", ":", "!", "?", "\n"]:
        for variant in {word, " " + word, word.capitalize(), " " + word.capitalize()}:
            enc = tokenizer(variant, add_special_tokens=False).input_ids
            if len(enc) == 1:
                ids.add(enc[0])
    return sorted(ids)


def stopword_shift(
    lm: LoadedModel, prompts: Sequence[tuple[str, str]] = STOPWORD_PROMPTS, stop_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Per prompt: P(next token is a stopword) and P(expected content word's first token), top-1 token,
    read from the next-token probabilities [N, V] of one left-padded batch."""
    stop = torch.tensor(stopword_ids(lm.tokenizer) if stop_ids is None else list(stop_ids))
    with lm.lock:
        probs = next_token_probs(lm, [prompt for prompt, _ in prompts]) if prompts else None
    rows = []
    for i, (prompt, expected) in enumerate(prompts):
        target = lm.tokenizer(expected, add_special_tokens=False).input_ids[0]
        top = int(probs[i].argmax())
        rows.append(
            {
                "prompt": prompt,
                "expected": expected.strip(),
                "p_stopwords": float(probs[i, stop.to(probs.device)].sum()),
                "p_expected": float(probs[i, target]),
                "top1": lm.tokenizer.decode([top]),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def greedy_continuations(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 8) -> list[str]:
    """Greedy decoding of a few tokens after each prompt (the new text only), all prompts in one batch
    (left-padded; a decoding step costs about as much for three prompts as for one)."""
    if not prompts:
        return []
    ids, mask = prompt_batch(lm, prompts)
    width = ids.shape[1]
    with lm.lock:
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            top_p=None,
            top_k=None,
            pad_token_id=lm.pad_id,
        )
    return [lm.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


# ---------------------------------------------------------------------------------------------
# Conditions


def decoder_linear_count(lm: LoadedModel) -> int:
    """Number of weights in the decoder layers' linear layers (the base of the paper's 1e-6 fraction)."""
    return sum(m.weight.numel() for _, _, m in linear_weights(lm.model))


def paper_k(lm: LoadedModel) -> int:
    """k = round(PAPER_TOPK_FRACTION x decoder linear weights), at least 1 (Llama-7B: ~6,500; Gemma 3 270M: ~100)."""
    return max(1, round(PAPER_TOPK_FRACTION * decoder_linear_count(lm)))


@torch.no_grad()
def largest_other_weights(lm: LoadedModel, k: int, exclude: Sequence[tuple[int, int, int]] = ()) -> list[ElementEdit]:
    """Edits zeroing the k largest |w| over all decoder linear layers, skipping the excluded down-proj
    coordinates (layer, row, col)."""
    if k < 1:
        raise LabError(f"k must be >= 1 (got {k}).")
    mats = linear_weights(lm.model)
    spec_modules = {id(m): i for i, m in enumerate(down_projections(lm.model))}
    excluded = {(layer, r, c) for layer, r, c in exclude}
    vals, where = [], []
    extra = len(excluded)
    for m_index, (_, _, module) in enumerate(mats):
        w = out_in_weight(module).abs().flatten()
        top = torch.topk(w.float(), min(k + extra, w.numel()))
        vals.append(top.values.cpu())
        where.extend((m_index, int(i)) for i in top.indices.cpu())
    order = torch.argsort(torch.cat(vals), descending=True).tolist()
    chosen: dict[int, list[tuple[int, int]]] = {}
    n = 0
    for j in order:
        m_index, flat = where[j]
        module = mats[m_index][2]
        w = out_in_weight(module)
        r, c = divmod(flat, w.shape[1])
        layer = spec_modules.get(id(module))
        if layer is not None and (layer, r, c) in excluded:
            continue
        chosen.setdefault(m_index, []).append((r, c))
        n += 1
        if n == k:
            break
    edits = []
    for m_index, coords in chosen.items():
        w = out_in_weight(mats[m_index][2])
        rows = torch.tensor([r for r, _ in coords], device=w.device)
        cols = torch.tensor([c for _, c in coords], device=w.device)
        edits.append(ElementEdit(w, rows, cols, torch.zeros(len(coords), dtype=w.dtype, device=w.device)))
    return edits


@dataclasses.dataclass(frozen=True)
class Condition:
    """One column of the ablation table: a name to show and what is done to the model."""

    name: str
    kind: ConditionKind
    value: float | None = None  # k for zero_topk_others, s for scale


def build_conditions(
    k: int | None = None, scales: Sequence[float] = (DEFAULT_SCALE,), k_default: int = 1
) -> list[Condition]:
    """The issue's conditions; k None means the paper's fraction (`k_default`)."""
    k = k_default if k is None else int(k)
    if k < 1:
        raise LabError(f"k must be >= 1 (got {k}).")
    out = [
        Condition("original", "original"),
        Condition("super weight zeroed", "zero"),
        Condition("zeroed, super activation restored", "zero_restore_sa"),
        Condition(f"top-{k} other weights zeroed", "zero_topk_others", float(k)),
    ]
    for s in scales:
        if not (SCALE_RANGE[0] <= float(s) <= SCALE_RANGE[1]):
            raise LabError(f"Scale {s} is outside [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}].")
        out.append(Condition(f"super weight x {float(s):g}", "scale", float(s)))
    return out


@contextlib.contextmanager
def applied(lm: LoadedModel, condition: Condition, candidates: Sequence[Candidate]) -> Iterator[None]:
    """The model under one condition (in place, restored and checked on exit)."""
    if condition.kind == "original":
        with lm.lock:
            yield
        return
    if not candidates and condition.kind != "zero_topk_others":
        raise LabError("No super-weight candidate to ablate: run the scan/detection first (or none was found).")
    model = lm.model
    if condition.kind in ("zero", "zero_restore_sa"):
        edits = [ElementEdit.zero(model, *c.coord) for c in candidates]
    elif condition.kind == "scale":
        edits = [ElementEdit.scaled(model, *c.coord, condition.value) for c in candidates]
    elif condition.kind == "zero_topk_others":
        edits = largest_other_weights(lm, int(condition.value), [c.coord for c in candidates])
    else:
        raise LabError(f"Unknown ablation '{condition.kind}'.")
    with edited_weights(lm, edits):
        if condition.kind == "zero_restore_sa":
            with restored_super_activation(lm, candidates):
                yield
        else:
            yield


# ---------------------------------------------------------------------------------------------
# The table


@dataclasses.dataclass
class AblationResult:
    """The ablation table and its details; `k` is the number of other weights zeroed."""

    table: pd.DataFrame  # one row per condition
    stopwords: pd.DataFrame  # condition x prompt
    continuations: pd.DataFrame  # condition x prompt
    eval_tokens: int
    k: int
    seconds: float


def ablation_table(
    lm: LoadedModel,
    candidates: Sequence[Candidate],
    k: int | None = None,
    scales: Sequence[float] = (DEFAULT_SCALE,),
    eval_text: str | None = None,
    window: int = EVAL_WINDOW,
    max_tokens: int | None = EVAL_TOKENS,
    continuation_prompts: Sequence[str] = CONTINUATION_PROMPTS,
    stopword_prompts: Sequence[tuple[str, str]] = STOPWORD_PROMPTS,
    max_new_tokens: int = 8,
    progress: ProgressFn | None = None,
) -> AblationResult:
    """Perplexity, stopword shift and greedy continuations under each condition (see module doc).

    `k`, `scales`, `window` and `max_tokens` are the fields of `engine.superweights.config.AblationConfig`;
    k None means the paper's fraction (`paper_k`). `progress(done, total, message)` counts conditions x
    (evaluation windows + 1 for the prompts), called before each step and once at the end."""
    check_editable(lm)
    start = time.perf_counter()
    k_used = paper_k(lm) if k is None else int(k)
    conditions = build_conditions(k_used, scales)
    windows = eval_windows(lm, eval_text, window, max_tokens)
    n_tokens = sum(w.shape[1] - 1 for w in windows)
    stop_ids = stopword_ids(lm.tokenizer)
    rows, stops, conts = [], [], []
    per = len(windows) + 1
    total = len(conditions) * per

    def tick(done: int, message: str) -> None:
        if progress:
            progress(done, total, message)

    with lm.lock:
        for n, cond in enumerate(conditions):
            with applied(lm, cond, candidates):
                ppl = perplexity(
                    lm, ticking(windows, lambda i, n=n, name=cond.name: tick(n * per + i, f"{name}, window {i + 1}"))
                )
                tick(n * per + len(windows), f"{cond.name}, prompts")
                shift = stopword_shift(lm, stopword_prompts, stop_ids)
                texts = greedy_continuations(lm, continuation_prompts, max_new_tokens)
            rows.append(
                {
                    "condition": cond.name,
                    "perplexity": ppl,
                    "p_stopwords": float(shift["p_stopwords"].mean()),
                    "p_expected": float(shift["p_expected"].mean()),
                    "continuation": texts[0] if texts else "",
                }
            )
            stops.append(shift.assign(condition=cond.name))
            conts.extend(
                {"condition": cond.name, "prompt": p, "continuation": t} for p, t in zip(continuation_prompts, texts)
            )
    tick(total, "done")
    table = pd.DataFrame(rows)
    base = table["perplexity"].iloc[0]
    table.insert(2, "ppl_ratio", table["perplexity"] / base if base else np.nan)
    stop_frame = pd.concat(stops, ignore_index=True) if stops else pd.DataFrame()
    return AblationResult(table, stop_frame, pd.DataFrame(conts), n_tokens, k_used, time.perf_counter() - start)
