"""The markov context of the LLM-shaped grokking model: modular arithmetic inside a sequence where attention
must sometimes do nothing (the setting in which attention sinks form: Gu et al. 2025, arXiv 2410.10781;
Guo et al. 2024, arXiv 2410.13835).

A sequence of T tokens is

    [BOS, f, f, ..., f, a, op, b, =, c, f, ..., f]

- f: filler from a fixed first-order Markov source over K symbols: from state s the next state is (s + 1) mod K
  with probability STAY_ON_CYCLE and (s + 3) mod K otherwise, the first state uniform. The symbols are either
  the p number tokens themselves (filler_vocab="numbers", K = p: the default) or FILLER_SYMBOLS tokens of their
  own ("f0" .. "f7", filler_vocab="symbols", token ids after the plain vocabulary). The source is the same for
  every run (no seed): the next filler token depends on the current token alone, so at a filler position
  attention has nothing to fetch. With number filler, what a head that reads the operands would fetch at a
  filler position (earlier numbers) conflicts with the filler's own prediction, as in Guo et al.'s
  bigram-backcopy task, so such a head must be made dormant there; with symbol filler the head's values of
  filler tokens can simply vanish;
- "a op b = c": the arithmetic example, its first token at a position drawn uniformly from 1 .. T - 5;
- the loss is next-token cross-entropy averaged over every position (filler, operands and the answer alike)
  plus the answer's cross-entropy over the p numbers at "=" (without it the answer is 1 of T - 1 targets and
  was not learnt within 500 steps in a first try); the answer accuracy is read at the "=" position over the p
  number tokens, as in the plain context.

Train/test split by pair (a, b): the pairs are those of `engine.grokking.tasks.make_dataset`. The test pairs
(and, with `filler="fixed"`, the training pairs) each get one fixed context: `context_table` draws one
sequence per pair (a, b) from a generator seeded by the run's seed. With `filler="resampled"` (the default)
the training contexts are drawn anew every step from a generator seeded by (seed, step), so a run resumes
bit for bit and no filler can be memorised.

Shapes: N examples, T tokens, p answers.
"""

from __future__ import annotations

import functools

import torch

FILLER_SYMBOLS = 8
STAY_ON_CYCLE = 0.75  # probability of the (s + 1) mod K successor; (s + 3) mod K otherwise
EXPRESSION_LEN = 5  # a, op, b, =, c
TABLE_SEED = 7_919  # offset of the generator of the fixed contexts


def transition_matrix(k: int = FILLER_SYMBOLS) -> torch.Tensor:
    """P[s, s'] of the filler source [K, K]: STAY_ON_CYCLE on s + 1, the rest on s + 3 (mod K)."""
    matrix = torch.zeros(k, k)
    for s in range(k):
        matrix[s, (s + 1) % k] += STAY_ON_CYCLE
        matrix[s, (s + 3) % k] += 1 - STAY_ON_CYCLE
    return matrix


def markov_filler(n: int, length: int, generator: torch.Generator, k: int = FILLER_SYMBOLS) -> torch.Tensor:
    """States [n, length] of n independent chains of the filler source over k symbols (values 0 .. k-1)."""
    states = torch.empty((n, length), dtype=torch.long)
    states[:, 0] = torch.randint(k, (n,), generator=generator)
    jump = torch.rand((n, length), generator=generator) >= STAY_ON_CYCLE  # [n, length]
    for t in range(1, length):
        states[:, t] = (states[:, t - 1] + torch.where(jump[:, t], 3, 1)) % k
    return states


def markov_sequences(
    x: torch.Tensor,
    c: torch.Tensor,
    seq_len: int,
    bos: int,
    op: int,
    eq: int,
    first_filler: int,
    generator: torch.Generator,
    n_symbols: int = FILLER_SYMBOLS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, T], answer position [N]) of the pairs x [N, 2] with answers c [N]: one context per row.

    The answer position is that of "=" (its logits predict c, the next token)."""
    n = x.shape[0]
    ids = markov_filler(n, seq_len, generator, n_symbols) + first_filler  # [N, T]
    ids[:, 0] = bos
    start = torch.randint(1, seq_len - EXPRESSION_LEN + 1, (n,), generator=generator)  # a's position
    rows = torch.arange(n)
    x, c = x.cpu(), c.cpu()
    for offset, token in enumerate((x[:, 0], torch.full((n,), op), x[:, 1], torch.full((n,), eq), c)):
        ids[rows, start + offset] = token
    return ids, start + 3


@functools.lru_cache(maxsize=8)
def context_table(
    p: int, task: str, seq_len: int, seed: int, bos: int, op: int, eq: int, first_filler: int, n_symbols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed context per pair: (ids [p * p, T], answer position [p * p]), row a * p + b."""
    from engine.grokking.tasks import OPERATIONS

    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], dim=1)
    c = OPERATIONS[task](x[:, 0], x[:, 1], p)
    generator = torch.Generator().manual_seed(TABLE_SEED + seed)
    return markov_sequences(x, c, seq_len, bos, op, eq, first_filler, generator, n_symbols)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the resampled training contexts of one step (a resumed run draws the same ones)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
