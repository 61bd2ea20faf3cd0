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
them bit-for-bit on exit; the restore is checked with `torch.equal` and a `RestoreError` is raised if
it fails, so the shared model is never left altered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from engine.errors import LabError
from engine.superweights import (
    body,
    down_projections,
    down_weight,
    encode,
    linear_weights,
    out_in_weight,
    weights_edit_problem,
)

EVAL_TEXT_FILE = Path(__file__).resolve().parent / "data" / "eval_text.txt"
PAPER_TOPK_FRACTION = 1e-6
SCALE_RANGE = (0.0, 3.0)
FULL_CHECK_BYTES = 256 * 2**20  # whole-matrix torch.equal check when the touched matrices fit in this
RESTORE_SA_FRACTION = 0.5  # also restore y[t, r] where |original y[t, r]| >= 0.5 x |super activation|

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


class RestoreError(RuntimeError):
    """The weights could not be restored bit-for-bit (the shared model would be left altered)."""


# ---------------------------------------------------------------------------------------------
# In-place edits with a checked restore


@dataclasses.dataclass
class ElementEdit:
    """Set weight[rows, cols] = values on a [out, in] weight view (writes through to the parameter)."""

    weight: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor

    @classmethod
    def at(cls, model, layer: int, row: int, col: int, value: float) -> "ElementEdit":
        w = down_weight(model, layer)
        idx = torch.tensor([row], device=w.device), torch.tensor([col], device=w.device)
        return cls(w, *idx, torch.tensor([value], dtype=w.dtype, device=w.device))

    @classmethod
    def zero(cls, model, layer: int, row: int, col: int) -> "ElementEdit":
        return cls.at(model, layer, row, col, 0.0)

    @classmethod
    def scaled(cls, model, layer: int, row: int, col: int, scale: float) -> "ElementEdit":
        w = down_weight(model, layer)
        return cls.at(model, layer, row, col, float(w[row, col].item()) * scale)


def check_editable(lm) -> None:
    """LabError when the weights cannot be edited in place (a quantized model)."""
    problem = weights_edit_problem(lm)
    if problem:
        raise LabError(problem)


@contextlib.contextmanager
def edited_weights(lm, edits: Sequence[ElementEdit], full_check_bytes: int = FULL_CHECK_BYTES) -> Iterator[None]:
    """Apply element edits in place under `lm.lock`; restore and verify bit-for-bit on exit.

    The touched elements are always compared with `torch.equal`; whole matrices too when their
    snapshots fit in `full_check_bytes` (they do for every single-weight ablation).
    """
    check_editable(lm)
    with lm.lock, torch.no_grad():
        saved = [e.weight[e.rows, e.cols].clone() for e in edits]
        unique = {e.weight.untyped_storage().data_ptr(): e.weight for e in edits}
        size = sum(w.numel() * w.element_size() for w in unique.values())
        snapshots = {k: w.clone() for k, w in unique.items()} if size <= full_check_bytes else {}
        try:
            for e in edits:
                e.weight[e.rows, e.cols] = e.values.to(e.weight.dtype)
            yield
        finally:
            for e, old in zip(reversed(edits), reversed(saved)):
                e.weight[e.rows, e.cols] = old
            ok = all(torch.equal(e.weight[e.rows, e.cols], old) for e, old in zip(edits, saved))
            ok = ok and all(torch.equal(unique[k], snap) for k, snap in snapshots.items())
            if not ok:
                raise RestoreError("The ablated weights were not restored bit-for-bit: reload the model.")


@contextlib.contextmanager
def replaced_weights(lm, replacements: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Overwrite whole weight tensors in place (e.g. quantized copies); restore and verify on exit.

    The originals are kept on the CPU; the check is `torch.equal` on every replaced tensor.
    """
    check_editable(lm)
    with lm.lock, torch.no_grad():
        saved = [target.to("cpu", copy=True) for target, _ in replacements]
        try:
            for target, new in replacements:
                target.copy_(new)
            yield
        finally:
            for (target, _), old in zip(replacements, saved):
                target.copy_(old)
            if not all(torch.equal(target.cpu(), old) for (target, _), old in zip(replacements, saved)):
                raise RestoreError("The quantized weights were not restored bit-for-bit: reload the model.")


@contextlib.contextmanager
def restored_super_activation(lm, candidates: Sequence, fraction: float = RESTORE_SA_FRACTION) -> Iterator[None]:
    """Hooks that put W[r, c] * x[t, c] back into y[t, r] at the super activation.

    With W[r, c] zeroed, y_orig[t, r] = y[t, r] + W_orig[r, c] * x[t, c] exactly (the down projection is
    linear in its weights). Restored tokens: the largest |y_orig[:, r]| of each input sequence (the paper's
    rule; not applied to single-token decoding steps) and any token with |y_orig| >= fraction x |super
    activation|. Ordinary tokens keep the ablated value.
    """
    modules = down_projections(lm.model)
    handles = []

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

    with lm.lock:
        try:
            for c in candidates:
                limit = fraction * abs(c.super_activation)
                handles.append(modules[c.layer].register_forward_hook(make(c.weight, c.row, c.col, limit)))
            yield
        finally:
            for handle in handles:
                handle.remove()


# ---------------------------------------------------------------------------------------------
# Metrics


def load_eval_text() -> str:
    """The bundled evaluation text (written for the lab, CC0), without its header lines."""
    lines = EVAL_TEXT_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")).strip()


def eval_windows(lm, text: str | None = None, window: int = 512, max_tokens: int | None = 4096) -> list[torch.Tensor]:
    """Independent windows [1, n] of `window` tokens: BOS + the next window-1 tokens of the text."""
    if window < 8:
        raise LabError(f"The perplexity window must be at least 8 tokens (got {window}).")
    text = load_eval_text() if text is None else text
    if not text.strip():
        raise LabError("The evaluation text is empty.")
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if max_tokens is not None:
        if max_tokens < 2:
            raise LabError(f"max_tokens must be at least 2 (got {max_tokens}).")
        ids = ids[:max_tokens]
    bos = lm.tokenizer.bos_token_id
    step = window - 1 if bos is not None else window
    windows = []
    for start in range(0, len(ids), step):
        chunk = ([bos] if bos is not None else []) + ids[start:start + step]
        if len(chunk) >= 2:
            windows.append(torch.tensor([chunk], device=lm.model.device))
    return windows


def _cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The family's final logit soft-capping, cap * tanh(logits / cap) (Gemma 2); identity without one."""
    return torch.tanh(logits / cap) * cap if cap else logits


def _logits(lm, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits (float32) of a few hidden states, soft-capped as the model does."""
    logits = lm.model.get_output_embeddings()(hidden).float()
    return _cap(logits, getattr(lm.text_config, "final_logit_softcapping", None))


@torch.no_grad()
def next_token_nll(lm, hidden: torch.Tensor, targets: torch.Tensor, vocab_tile: int = 4096) -> torch.Tensor:
    """-log softmax(head(h_t))[y_t] for each row of `hidden` [T, d] (float32, [T]).

    The log-partition is accumulated one vocabulary tile at a time with a running max and rescaled sum
    (the "online softmax" of Milakov & Gimelshein 2018), so the [T, vocab] logits never exist at once;
    the target logit is read from its tile. Equal to cross-entropy on the full logits up to float
    rounding, and faster on a CPU: each [T, tile] block stays in cache between the matmul and the exp.
    """
    head = lm.model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    cap = getattr(lm.text_config, "final_logit_softcapping", None)
    hidden, targets = hidden.to(weight.device, weight.dtype), targets.to(weight.device)
    n = hidden.shape[0]
    rows = torch.arange(n, device=hidden.device)
    run_max = torch.full((n,), -math.inf, device=hidden.device)
    run_sum = torch.zeros(n, device=hidden.device)
    target_logit = torch.zeros(n, device=hidden.device)
    for v in range(0, weight.shape[0], vocab_tile):
        b = None if bias is None else bias[v:v + vocab_tile]
        x = _cap(F.linear(hidden, weight[v:v + vocab_tile], b).float(), cap)
        inside = (targets >= v) & (targets < v + x.shape[1])
        target_logit[inside] = x[rows[inside], targets[inside] - v]
        new_max = torch.maximum(run_max, x.amax(dim=-1))
        run_sum = run_sum * torch.exp(run_max - new_max) + x.sub_(new_max[:, None]).exp_().sum(dim=-1)
        run_max = new_max
    return run_max + run_sum.log() - target_logit


@torch.no_grad()
def perplexity(lm, windows: Sequence[torch.Tensor], vocab_tile: int = 4096) -> float:
    """exp(mean next-token NLL) over all windows (the NLL from `next_token_nll`)."""
    total, count = 0.0, 0
    with lm.lock:
        for ids in windows:
            hidden = body(lm.model)(input_ids=ids).last_hidden_state[0, :-1]
            targets = ids[0, 1:]
            total += next_token_nll(lm, hidden, targets, vocab_tile).sum().item()
            count += targets.numel()
    return math.exp(total / count) if count else float("nan")


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


def left_padded(lm, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [N, width] of the prompts (with BOS), left-padded so that every
    prompt ends at the last column (`LoadedModel.left_padded`)."""
    return lm.left_padded([encode(lm, p)[0].tolist() for p in prompts])


@torch.no_grad()
def next_token_probs(lm, prompts: Sequence[str]) -> torch.Tensor:
    """Softmax of the next-token logits after each prompt (float32, [N, vocab]), all prompts in one
    left-padded forward pass (positions counted from each prompt's first token)."""
    ids, mask = left_padded(lm, prompts)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    hidden = body(lm.model)(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[:, -1]
    return torch.softmax(_logits(lm, hidden), dim=-1)


def stopword_shift(lm, prompts: Sequence[tuple[str, str]] = STOPWORD_PROMPTS,
                   stop_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Per prompt: P(next token is a stopword) and P(expected content word's first token), top-1 token."""
    stop = torch.tensor(stopword_ids(lm.tokenizer) if stop_ids is None else list(stop_ids))
    with lm.lock:
        probs = next_token_probs(lm, [prompt for prompt, _ in prompts]) if prompts else None
    rows = []
    for i, (prompt, expected) in enumerate(prompts):
        target = lm.tokenizer(expected, add_special_tokens=False).input_ids[0]
        top = int(probs[i].argmax())
        rows.append({
            "prompt": prompt, "expected": expected.strip(),
            "p_stopwords": float(probs[i, stop.to(probs.device)].sum()),
            "p_expected": float(probs[i, target]),
            "top1": lm.tokenizer.decode([top]),
        })
    return pd.DataFrame(rows)


@torch.no_grad()
def greedy_continuations(lm, prompts: Sequence[str], max_new_tokens: int = 8) -> list[str]:
    """Greedy decoding of a few tokens after each prompt (the new text only), all prompts in one batch
    (left-padded; a decoding step costs about as much for three prompts as for one)."""
    if not prompts:
        return []
    ids, mask = left_padded(lm, prompts)
    width = ids.shape[1]
    with lm.lock:
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, top_p=None, top_k=None, pad_token_id=lm.pad_id,
        )
    return [lm.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


# ---------------------------------------------------------------------------------------------
# Conditions


def decoder_linear_count(lm) -> int:
    """Number of weights in the decoder layers' linear layers (the base of the paper's 1e-6 fraction)."""
    return sum(m.weight.numel() for _, _, m in linear_weights(lm.model))


def paper_k(lm) -> int:
    """k = round(1e-6 x decoder linear weights), at least 1 (Llama-7B: ~6,500; Gemma 3 270M: ~100)."""
    return max(1, round(PAPER_TOPK_FRACTION * decoder_linear_count(lm)))


@torch.no_grad()
def largest_other_weights(lm, k: int, exclude: Sequence[tuple[int, int, int]] = ()) -> list[ElementEdit]:
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
    name: str
    kind: str  # original | zero | zero_restore_sa | zero_topk_others | scale
    value: float | None = None  # k for zero_topk_others, s for scale


def build_conditions(k: int | None = None, scales: Sequence[float] = (2.0,), k_default: int = 1) -> list[Condition]:
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
def applied(lm, condition: Condition, candidates: Sequence) -> Iterator[None]:
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
    table: pd.DataFrame  # one row per condition
    stopwords: pd.DataFrame  # condition x prompt
    continuations: pd.DataFrame  # condition x prompt
    eval_tokens: int
    k: int
    seconds: float


def ablation_table(
    lm,
    candidates: Sequence,
    k: int | None = None,
    scales: Sequence[float] = (2.0,),
    eval_text: str | None = None,
    window: int = 512,
    max_tokens: int | None = 4096,
    continuation_prompts: Sequence[str] = CONTINUATION_PROMPTS,
    stopword_prompts: Sequence[tuple[str, str]] = STOPWORD_PROMPTS,
    max_new_tokens: int = 8,
) -> AblationResult:
    """Perplexity, stopword shift and greedy continuations under each condition (see module doc)."""
    check_editable(lm)
    start = time.perf_counter()
    k_used = paper_k(lm) if k is None else int(k)
    conditions = build_conditions(k_used, scales)
    windows = eval_windows(lm, eval_text, window, max_tokens)
    n_tokens = sum(w.shape[1] - 1 for w in windows)
    stop_ids = stopword_ids(lm.tokenizer)
    rows, stops, conts = [], [], []
    with lm.lock:
        for cond in conditions:
            with applied(lm, cond, candidates):
                ppl = perplexity(lm, windows)
                sw = stopword_shift(lm, stopword_prompts, stop_ids)
                texts = greedy_continuations(lm, continuation_prompts, max_new_tokens)
            rows.append({
                "condition": cond.name, "perplexity": ppl,
                "p_stopwords": float(sw["p_stopwords"].mean()), "p_expected": float(sw["p_expected"].mean()),
                "continuation": texts[0] if texts else "",
            })
            stops.append(sw.assign(condition=cond.name))
            conts.extend({"condition": cond.name, "prompt": p, "continuation": t} for p, t in zip(continuation_prompts, texts))
    table = pd.DataFrame(rows)
    base = table["perplexity"].iloc[0]
    table.insert(2, "ppl_ratio", table["perplexity"] / base if base else np.nan)
    stop_frame = pd.concat(stops, ignore_index=True) if stops else pd.DataFrame()
    return AblationResult(table, stop_frame, pd.DataFrame(conts), n_tokens, k_used, time.perf_counter() - start)
