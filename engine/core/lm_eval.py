"""Language-model evaluation shared by every feature: evaluation windows, next-token NLL computed one
vocabulary tile at a time, perplexity, next-token probabilities of a prompt batch.

Shapes: T tokens, D hidden size, V vocabulary, N prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from engine.core.architecture import body
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.paths import DATA_DIR

EVAL_TEXT_FILE = DATA_DIR / "eval_text.txt"


def encode(lm: LoadedModel, text: str) -> Any:
    """Token ids [1, T] of one prompt, with the tokenizer's special tokens (BOS), on the model's device."""
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    return ids.to(lm.model.device if hasattr(lm.model, "device") else lm.device)


def run_body(lm: LoadedModel, ids: Any) -> Any:
    """Last hidden state [B, T, D] of the model body (final norm applied, no LM head) for ids [B, T]."""
    import torch

    with torch.no_grad():
        return body(lm.model)(input_ids=ids).last_hidden_state


def load_eval_text() -> str:
    """The bundled evaluation text (written for the lab, CC0), without its header lines."""
    lines = EVAL_TEXT_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")).strip()


def eval_windows(
    lm: LoadedModel, text: str | None = None, window: int = 512, max_tokens: int | None = 4096
) -> list[torch.Tensor]:
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
        chunk = ([bos] if bos is not None else []) + ids[start : start + step]
        if len(chunk) >= 2:
            windows.append(torch.tensor([chunk], device=lm.model.device))
    return windows


def _cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The family's final logit soft-capping, cap * tanh(logits / cap) (Gemma 2); identity without one."""
    return torch.tanh(logits / cap) * cap if cap else logits


def logits_of(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits (float32) of a few hidden states, soft-capped as the model does."""
    logits = lm.model.get_output_embeddings()(hidden).float()
    return _cap(logits, getattr(lm.text_config, "final_logit_softcapping", None))


@torch.no_grad()
def next_token_nll(
    lm: LoadedModel, hidden: torch.Tensor, targets: torch.Tensor, vocab_tile: int = 4096
) -> torch.Tensor:
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
        b = None if bias is None else bias[v : v + vocab_tile]
        x = _cap(F.linear(hidden, weight[v : v + vocab_tile], b).float(), cap)
        inside = (targets >= v) & (targets < v + x.shape[1])
        target_logit[inside] = x[rows[inside], targets[inside] - v]
        new_max = torch.maximum(run_max, x.amax(dim=-1))
        run_sum = run_sum * torch.exp(run_max - new_max) + x.sub_(new_max[:, None]).exp_().sum(dim=-1)
        run_max = new_max
    return run_max + run_sum.log() - target_logit


@torch.no_grad()
def perplexity(lm: LoadedModel, windows: Sequence[torch.Tensor], vocab_tile: int = 4096) -> float:
    """exp(mean next-token NLL) over all windows (the NLL from `next_token_nll`)."""
    total, count = 0.0, 0
    with lm.lock:
        for ids in windows:
            hidden = body(lm.model)(input_ids=ids).last_hidden_state[0, :-1]
            targets = ids[0, 1:]
            total += next_token_nll(lm, hidden, targets, vocab_tile).sum().item()
            count += targets.numel()
    return math.exp(total / count) if count else float("nan")


def prompt_batch(lm: LoadedModel, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [N, width] of the prompts (with BOS), left-padded so that every
    prompt ends at the last column (`LoadedModel.left_padded`)."""
    return lm.left_padded([encode(lm, p)[0].tolist() for p in prompts])


@torch.no_grad()
def next_token_probs(lm: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Softmax of the next-token logits after each prompt (float32, [N, vocab]), all prompts in one
    left-padded forward pass (positions counted from each prompt's first token)."""
    ids, mask = prompt_batch(lm, prompts)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    hidden = body(lm.model)(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state[:, -1]
    return torch.softmax(logits_of(lm, hidden), dim=-1)
