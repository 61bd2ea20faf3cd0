"""Head-function detectors and their aggregation over a prompt set.

With A a head's [query, key] pattern over n positions (rows sum to 1) and D a 0/1 detection
pattern, the pattern score is Σ(A ⊙ D) / ΣA, TransformerLens `head_detector` with
error_measure="mul" (Nanda & Bloom 2022):
  previous-token   D[i, i-1] = 1
  duplicate-token  D[i, j] = 1 iff j < i and t_j = t_i
  induction        D[i, j] = 1 iff j <= i and t_{j-1} = t_i with j-1 < i (Olsson et al. 2022)
Beside them: BOS/sink = mean over query rows i >= 1 of A[i, 0] (attention sinks, Xiao et al. 2023),
self/diagonal = mean over i >= 1 of A[i, i], spread = mean over i >= 1 of the row entropy
-Σ_j A[i, j] ln A[i, j] (nats). Row 0 is left out of these three because it can only attend to
itself (it would add a constant 1, 1 and 0).

Shapes: P prompts, L layers, H query heads, T tokens of a prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from engine.attention.config import (
    DEFAULT_MAX_TOKENS,
    HIGHLIGHT_TOP,
    LABEL_THRESHOLD,
    N_RANDOM,
    RANDOM_LEN,
    RANDOM_SEED,
    HeadFunction,
    HeadLabel,
    PatternFunction,
    PromptKind,
    PromptSection,
)
from engine.attention.maps import AttentionResult, layer_kind, run_attention
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.paths import DATA_DIR

PATTERN_FUNCTIONS: tuple[PatternFunction, ...] = get_args(PatternFunction)
FUNCTIONS: tuple[HeadFunction, ...] = get_args(HeadFunction)
FUNCTION_TITLES: dict[HeadFunction, str] = {
    "previous_token": "previous-token",
    "duplicate_token": "duplicate-token",
    "induction": "induction",
    "bos_sink": "BOS / sink",
    "self": "self / diagonal",
    "spread": "spread (row entropy, nats)",
}
PROMPTS_FILE = DATA_DIR / "attention_prompts.json"


# ---------------------------------------------------------------------------------------------
# Detection patterns D ([T, T], 0/1)


def previous_token_pattern(n: int) -> np.ndarray:
    """D[i, i-1] = 1."""
    return np.eye(n, k=-1, dtype=np.float32)


def duplicate_token_pattern(token_ids) -> np.ndarray:
    """D[i, j] = 1 iff j < i and t_j = t_i."""
    t = np.asarray(token_ids)
    same = t[:, None] == t[None, :]
    return np.tril(same, k=-1).astype(np.float32)


def induction_pattern(token_ids) -> np.ndarray:
    """D[i, j] = 1 iff j <= i, j >= 1 and t_{j-1} = t_i with j-1 < i (the token after an earlier copy)."""
    t = np.asarray(token_ids)
    n = len(t)
    d = np.zeros((n, n), dtype=np.float32)
    if n > 1:
        prev_same = t[:, None] == t[None, :-1]  # [i, j-1]
        d[:, 1:] = np.tril(prev_same, k=-1)  # j-1 < i  <=>  j <= i
    return d


def pattern_score(attn: np.ndarray, detection: np.ndarray) -> np.ndarray:
    """Σ(A ⊙ D) / ΣA over the last two axes of A [..., T, T] (TransformerLens head_detector, "mul")."""
    attn = np.asarray(attn, dtype=np.float64)
    total = attn.sum(axis=(-2, -1))
    return (attn * detection).sum(axis=(-2, -1)) / np.where(total > 0, total, 1.0)


def bos_score(attn: np.ndarray) -> np.ndarray:
    """Mean over query rows i >= 1 of A[i, 0]."""
    return np.asarray(attn)[..., 1:, 0].mean(axis=-1) if attn.shape[-1] > 1 else np.ones(attn.shape[:-2])


def self_score(attn: np.ndarray) -> np.ndarray:
    """Mean over query rows i >= 1 of A[i, i]."""
    diag = np.diagonal(np.asarray(attn), axis1=-2, axis2=-1)
    return diag[..., 1:].mean(axis=-1) if attn.shape[-1] > 1 else np.ones(attn.shape[:-2])


def spread_score(attn: np.ndarray) -> np.ndarray:
    """Mean over rows i >= 1 of the entropy -Σ_j A[i,j] ln A[i,j] (nats; 0 = one key, ln(i+1) = uniform)."""
    a = np.clip(np.asarray(attn, dtype=np.float64), 0.0, None)
    ent = -(a * np.log(np.where(a > 0, a, 1.0))).sum(axis=-1)
    return ent[..., 1:].mean(axis=-1) if attn.shape[-1] > 1 else np.zeros(attn.shape[:-2])


def _detection_patterns(token_ids) -> dict[PatternFunction, np.ndarray]:
    """The 0/1 detection pattern D [T, T] of each pattern function on these tokens."""
    return {
        "previous_token": previous_token_pattern(len(token_ids)),
        "duplicate_token": duplicate_token_pattern(token_ids),
        "induction": induction_pattern(token_ids),
    }


def score_heads(maps: np.ndarray, token_ids) -> dict[HeadFunction, np.ndarray]:
    """Every function's score for every head: {function: array [L, H]} from maps [L, H, T, T].

    A prompt without a repeated token has D = 0 for duplicate-token and induction, so their
    score is 0 by the formula; `defined_functions()` tells which scores mean something, and
    `run_prompt_set()` leaves the undefined ones out of the averages.
    """
    maps = np.asarray(maps)
    n = maps.shape[-1]
    if len(token_ids) != n:
        raise LabError(f"{len(token_ids)} token ids for attention maps over {n} positions.")
    out: dict[HeadFunction, np.ndarray] = {}
    for name, d in _detection_patterns(token_ids).items():
        out[name] = pattern_score(maps, d)
    out["bos_sink"] = bos_score(maps)
    out["self"] = self_score(maps)
    out["spread"] = spread_score(maps)
    return out


def pattern_ceilings(token_ids) -> dict[PatternFunction, float]:
    """Highest score each pattern can reach on this prompt: the fraction of query rows that have a
    target (ΣA = n, and a row without a target adds nothing). Dividing by it gives the mean mass on
    the target over the rows that have one, which is what the best label compares."""
    n = len(token_ids)
    return {name: float(d.any(axis=1).sum()) / max(n, 1) for name, d in _detection_patterns(token_ids).items()}


def defined_functions(token_ids) -> dict[HeadFunction, bool]:
    """Whether each function's detection pattern has a target in this prompt (D not all zero)."""
    n = len(token_ids)
    return {
        "previous_token": n > 1,
        "duplicate_token": bool(duplicate_token_pattern(token_ids).any()),
        "induction": bool(induction_pattern(token_ids).any()),
        "bos_sink": n > 1,
        "self": n > 1,
        "spread": n > 1,
    }


# ---------------------------------------------------------------------------------------------
# Prompt set


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """One prompt of a head-function or held-out run: text, or token ids (random tokens repeated twice)."""

    name: str
    kind: PromptKind
    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@functools.lru_cache(maxsize=4)
def _word_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids of plain word-like vocabulary entries (3+ ASCII letters, optional '▁'/'Ġ'), not specials."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pattern = re.compile(r"^[\u2581\u0120]?[A-Za-z]{3,}$")
    ids = sorted(i for tok, i in tokenizer.get_vocab().items() if i not in special and pattern.match(tok))
    if len(ids) < 8:  # a tiny tokenizer: fall back to any non-special id
        ids = [i for i in range(len(tokenizer)) if i not in special]
    return np.asarray(ids)


def random_token_ids(tokenizer: Any, n_tokens: int, seed: int, repeat: int = 2) -> tuple[int, ...]:
    """BOS + n distinct random word tokens, repeated `repeat` times (the induction test sequence)."""
    pool = _word_token_ids(tokenizer)
    rng = np.random.default_rng(seed)
    seq = rng.choice(pool, size=min(n_tokens, len(pool)), replace=False).tolist()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return tuple(int(i) for i in bos + seq * repeat)


def prompt_set(
    tokenizer: Any,
    section: PromptSection,
    n_random: int,
    random_len: int,
    seed: int,
    random_name: str,
    texts: bool = True,
) -> list[PromptSpec]:
    """The texts of one section of engine/data/attention_prompts.json (when `texts`) plus `n_random`
    sequences of `random_len` random word tokens repeated twice, named f"{random_name} #r" and seeded
    seed, seed + 1, ... (reproducible)."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    specs = [PromptSpec(p["name"], p["kind"], text=p["text"]) for p in data[section]] if texts else []
    for r in range(n_random):
        ids = random_token_ids(tokenizer, random_len, seed=seed + r)
        specs.append(PromptSpec(f"{random_name} #{r}", "repeated-random", token_ids=ids))
    return specs


def builtin_prompts(
    tokenizer: Any, n_random: int = N_RANDOM, random_len: int = RANDOM_LEN, seed: int = RANDOM_SEED, texts: bool = True
) -> list[PromptSpec]:
    """The head-function prompt set: natural sentences, code and lists (`texts`) plus `n_random`
    sequences of `random_len` random word tokens repeated twice."""
    return prompt_set(tokenizer, "prompts", n_random, random_len, seed, "random x2", texts)


def user_prompts(text: str) -> list[PromptSpec]:
    """One prompt per non-empty line of the user's text."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return [PromptSpec(f"user #{i}", "user", text=line) for i, line in enumerate(lines)]


def read_prompts_file(path: str | Path) -> list[PromptSpec]:
    """Prompts from a file: a .json list of strings, else one prompt per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"Prompts file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except ValueError as err:
            raise LabError(f"Prompts file '{path}' is not valid JSON: {err}") from err
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise LabError(f"Prompts file '{path}' must hold a JSON list of strings.")
        text = "\n".join(x.replace("\n", " ") for x in items)
    specs = user_prompts(text)
    if not specs:
        raise LabError(f"Prompts file '{path}' holds no prompt.")
    return specs


def run_prompts(
    lm: LoadedModel,
    prompts: Sequence[PromptSpec],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[AttentionResult]:
    """One forward pass per prompt (its text, or its token ids), each truncated to `max_tokens`;
    `progress(done, total, name)` before each prompt and once at the end."""
    results = []
    for k, spec in enumerate(prompts):
        if progress:
            progress(k, len(prompts), spec.name)
        token_ids = list(spec.token_ids) if spec.token_ids else None
        results.append(run_attention(lm, spec.text, max_tokens=max_tokens, token_ids=token_ids))
    if progress:
        progress(len(prompts), len(prompts), "done")
    return results


# ---------------------------------------------------------------------------------------------
# Aggregation over prompts


def _nan_stat(fn, arr: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as they should
        return fn(arr, axis=0)


@dataclasses.dataclass
class HeadFunctionTable:
    """Per-prompt scores [P, L, H] per function (NaN where the prompt has no target for it),
    their mean/std over the prompts where defined, and the prompt names."""

    model_name: str
    prompt_names: list[str]
    per_prompt: dict[HeadFunction, np.ndarray]  # [P, L, H] per function
    layer_types: list[str]
    num_kv_heads: int
    n_tokens: list[int]
    ceilings: dict[PatternFunction, np.ndarray] = dataclasses.field(default_factory=dict)  # [P] per function

    def normalised_mean(self, function: HeadFunction) -> np.ndarray:
        """[L, H] mean over prompts of score / ceiling (mass on the target over rows with a target)."""
        if function not in PATTERN_FUNCTIONS or function not in self.ceilings:
            return self.mean(function)
        ceil = self.ceilings[function][:, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return _nan_stat(np.nanmean, np.where(ceil > 0, self.per_prompt[function] / ceil, np.nan))

    @property
    def shape(self) -> tuple[int, int]:
        """(L, H): layers and query heads."""
        return self.per_prompt["previous_token"].shape[1:]

    def mean(self, function: HeadFunction) -> np.ndarray:
        """[L, H] mean over the prompts where the function is defined (NaN where none is)."""
        return _nan_stat(np.nanmean, self.per_prompt[function])

    def std(self, function: HeadFunction) -> np.ndarray:
        """[L, H] population std over the prompts where the function is defined (consistency)."""
        return _nan_stat(np.nanstd, self.per_prompt[function])

    def n_defined(self, function: HeadFunction) -> np.ndarray:
        """[L, H] number of prompts where the function is defined."""
        return (~np.isnan(self.per_prompt[function])).sum(axis=0)

    def table(self) -> pd.DataFrame:
        """Long table: layer, head, layer_type, function, mean, std, n_prompts (sortable)."""
        n_layers, n_heads = self.shape
        rows = []
        for fn in FUNCTIONS:
            mean, std, n = self.mean(fn), self.std(fn), self.n_defined(fn)
            for layer in range(n_layers):
                for head in range(n_heads):
                    rows.append(
                        {
                            "layer": layer,
                            "head": head,
                            "layer_type": layer_kind(self.layer_types[layer]),
                            "function": fn,
                            "mean": float(mean[layer, head]),
                            "std": float(std[layer, head]),
                            "n_prompts": int(n[layer, head]),
                        }
                    )
        return pd.DataFrame(rows)

    def wide(self) -> pd.DataFrame:
        """One row per head, one column per function mean (and *_std), plus best label and score."""
        n_layers, n_heads = self.shape
        labels = best_labels(self)
        means = {fn: self.mean(fn) for fn in FUNCTIONS}
        stds = {fn: self.std(fn) for fn in FUNCTIONS}
        rows = []
        for layer in range(n_layers):
            for head in range(n_heads):
                row: dict[str, Any] = {"layer.head": f"{layer}.{head}", "layer": layer, "head": head}
                for fn in FUNCTIONS:
                    row[fn] = float(means[fn][layer, head])
                    row[f"{fn}_std"] = float(stds[fn][layer, head])
                row["best_label"], row["best_score"] = labels[layer][head]
                rows.append(row)
        return pd.DataFrame(rows)

    def ranking(self, function: HeadFunction, top: int | None = None) -> list[tuple[int, int, float]]:
        """Heads sorted by mean score, highest first: [(layer, head, score)]."""
        mean = np.nan_to_num(self.mean(function), nan=-np.inf)
        order = np.argsort(-mean, axis=None, kind="stable")
        out = [(int(i // mean.shape[1]), int(i % mean.shape[1]), float(mean.flat[i])) for i in order]
        return out[:top] if top else out

    def top_heads(self, function: HeadFunction, top: int = HIGHLIGHT_TOP) -> str:
        """The `top` heads by mean score as text: 'layer.head (score), ...' (page and CLI)."""
        return ", ".join(f"{layer}.{head} ({score:.2f})" for layer, head, score in self.ranking(function, top))


def best_labels(table: HeadFunctionTable, threshold: float = LABEL_THRESHOLD) -> list[list[tuple[HeadLabel, float]]]:
    """Per head (label, score): the strongest of previous-token, duplicate-token, induction and
    self when its ceiling-normalised mean (mass on the target over rows that have one) reaches
    `threshold`; else 'bos_sink' when the BOS mean does; else 'diffuse' (score = spread in nats).
    Sinks come second because most heads park spare attention on BOS (Xiao et al. 2023)."""
    n_layers, n_heads = table.shape
    means = {fn: np.nan_to_num(table.normalised_mean(fn), nan=0.0) for fn in FUNCTIONS}
    out = []
    for layer in range(n_layers):
        row = []
        for head in range(n_heads):
            candidates = {fn: means[fn][layer, head] for fn in PATTERN_FUNCTIONS + ("self",)}
            fn, score = max(candidates.items(), key=lambda kv: kv[1])
            if score >= threshold:
                row.append((fn, float(score)))
            elif means["bos_sink"][layer, head] >= threshold:
                row.append(("bos_sink", float(means["bos_sink"][layer, head])))
            else:
                row.append(("diffuse", float(means["spread"][layer, head])))
        out.append(row)
    return out


def detector_labels(table: HeadFunctionTable) -> dict[tuple[int, int], HeadLabel]:
    """The best label of every head, keyed (layer, head) (`best_labels` without the scores)."""
    return {(layer, head): label for layer, row in enumerate(best_labels(table)) for head, (label, _) in enumerate(row)}


def head_scores(result: AttentionResult, layer: int, head: int) -> dict[HeadFunction, float | None]:
    """One head's score of every function on one prompt (None where the prompt has no target for it)."""
    scores = score_heads(result.maps[layer : layer + 1, head : head + 1], result.token_ids)
    defined = defined_functions(result.token_ids)
    return {fn: float(scores[fn][0, 0]) if defined[fn] else None for fn in FUNCTIONS}


def run_prompt_set(
    lm: LoadedModel,
    prompts: list[PromptSpec],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Callable[[int, int, str], None] | None = None,
) -> HeadFunctionTable:
    """Run every prompt once (one forward each), score every head, keep per-prompt scores."""
    if not prompts:
        raise LabError("No prompts: choose the built-in set or type at least one prompt.")
    results = run_prompts(lm, prompts, max_tokens, progress)
    return table_from_results(lm.name, [spec.name for spec in prompts], results)


def table_from_results(model_name: str, names: list[str], results: list[AttentionResult]) -> HeadFunctionTable:
    """Score every head of attention results already computed (one per prompt; no forward pass)."""
    if not results:
        raise LabError("No prompts: choose the built-in set or type at least one prompt.")
    per: dict[HeadFunction, list[np.ndarray]] = {fn: [] for fn in FUNCTIONS}
    n_tokens = []
    ceilings: dict[PatternFunction, list[float]] = {fn: [] for fn in PATTERN_FUNCTIONS}
    for result in results:
        scores = score_heads(result.maps, result.token_ids)
        defined = defined_functions(result.token_ids)
        for fn in FUNCTIONS:
            per[fn].append(scores[fn] if defined[fn] else np.full(scores[fn].shape, np.nan))
        for fn, value in pattern_ceilings(result.token_ids).items():
            ceilings[fn].append(value)
        n_tokens.append(len(result.token_ids))
    return HeadFunctionTable(
        model_name=model_name,
        prompt_names=list(names),
        per_prompt={fn: np.stack(v) for fn, v in per.items()},
        layer_types=result.layer_types,
        num_kv_heads=result.num_kv_heads,
        n_tokens=n_tokens,
        ceilings={fn: np.asarray(v) for fn, v in ceilings.items()},
    )
