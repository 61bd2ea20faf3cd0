"""The causal test that confirms a super weight: zero it, against zeroing random weights of its matrix.

For a proposed weight W_down[r, c] of layer l (from `engine.superweights.detect.detect`):

    ratio = PPL(W[r, c] = 0) / PPL(original)

on the first `confirm_tokens` tokens of the bundled evaluation text (one window, BOS included), and the
same ratio for each of `n_random` weights W[r', c'] drawn uniformly from the same matrix (without
replacement, never the proposal itself; seeded by (seed, layer), so proposals of one layer share their
controls), each zeroed alone. Verdicts (`Verdict`):

- "super weight": the detector's role is "candidate" (it makes >= min_share of its spike),
  ratio >= min_ratio and ratio > max over the random controls;
- "weak effect": a candidate above every random control but with ratio < min_ratio;
- "cancelling weight": the detector's role is "cancelling" (it pushes a massive activation that
  already enters its layer back towards zero); reported with its ratio, never as a super weight;
- "not confirmed": anything else (a minor proposal, or a ratio within the random controls).

Every zeroing is an in-place edit restored bit-for-bit (`engine.core.weight_edits`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.core.architecture import down_weight
from engine.core.errors import LabError
from engine.core.lm_eval import eval_windows, perplexity
from engine.core.model import LoadedModel
from engine.core.weight_edits import ElementEdit, check_editable, edited_weights
from engine.superweights.config import (
    CONFIRM_RANDOM,
    CONFIRM_RATIO,
    CONFIRM_SEED,
    CONFIRM_TOKENS,
    Verdict,
)
from engine.superweights.detect import Candidate, Detection, ProgressFn


def random_coordinates(
    shape: tuple[int, int], n: int, exclude: Sequence[tuple[int, int]], seed: int, layer: int
) -> list[tuple[int, int]]:
    """n distinct (row, col) of a [rows, cols] matrix, uniform, none in `exclude`; seeded by (seed, layer)."""
    rows, cols = shape
    banned = {r * cols + c for r, c in exclude}
    if n < 0 or n > rows * cols - len(banned):
        raise LabError(f"Cannot draw {n} random control weights from a {rows}x{cols} matrix.")
    rng = np.random.default_rng([seed, layer])
    picked: list[int] = []
    while len(picked) < n:
        for flat in rng.choice(rows * cols, size=n - len(picked), replace=False).tolist():
            if flat not in banned and flat not in picked:
                picked.append(flat)
    return [divmod(flat, cols) for flat in picked[:n]]


@dataclasses.dataclass
class CausalTest:
    """Perplexity with one weight zeroed, and with each random control weight of its matrix zeroed."""

    layer: int
    row: int
    col: int
    base_ppl: float
    zeroed_ppl: float
    random_coords: list[tuple[int, int]]
    random_ppl: list[float]

    @property
    def ratio(self) -> float:
        return self.zeroed_ppl / self.base_ppl

    @property
    def random_ratios(self) -> np.ndarray:
        return np.asarray(self.random_ppl) / self.base_ppl

    def summary(self) -> dict:
        r = self.random_ratios
        return {
            "ppl_base": self.base_ppl,
            "ppl_zeroed": self.zeroed_ppl,
            "ppl_ratio": self.ratio,
            "random_ratio_mean": float(r.mean()) if r.size else float("nan"),
            "random_ratio_min": float(r.min()) if r.size else float("nan"),
            "random_ratio_max": float(r.max()) if r.size else float("nan"),
            "n_random": int(r.size),
        }


def verdict(candidate: Candidate, test: CausalTest, min_ratio: float = CONFIRM_RATIO) -> tuple[Verdict, str]:
    """(verdict, reason) under the rule of the module docstring."""
    ratio = test.ratio
    top = float(test.random_ratios.max()) if test.random_ratios.size else 1.0
    effect = f"zeroing it: perplexity x{ratio:.3g} (random weights of the matrix: at most x{top:.6g})"
    if candidate.role == "cancelling":
        pushed = -candidate.residual_change / candidate.residual_in if candidate.residual_in else float("nan")
        return "cancelling weight", (
            f"cancels {pushed:.0%} of the massive activation h = {candidate.residual_in:.4g} entering layer "
            f"{candidate.layer}; {effect}"
        )
    if candidate.role == "minor":
        return "not confirmed", f"makes only {candidate.share:.0%} of its spike; {effect}"
    if ratio > top and ratio >= min_ratio:
        return "super weight", f"makes {candidate.share:.0%} of its spike; {effect}"
    if ratio > top:
        return "weak effect", f"makes {candidate.share:.0%} of its spike; {effect}, below x{min_ratio:g}"
    return "not confirmed", f"{effect}: not above every random control"


@dataclasses.dataclass
class Confirmation:
    """The causal test and verdict of every proposal of a detection."""

    proposals: list[Candidate]
    tests: list[CausalTest]
    verdicts: list[tuple[Verdict, str]]
    eval_tokens: int
    min_ratio: float
    seed: int
    seconds: float

    @property
    def super_weights(self) -> list[Candidate]:
        return [c for c, (v, _) in zip(self.proposals, self.verdicts) if v == "super weight"]

    def verdict_of(self, coord: tuple[int, int, int]) -> Verdict | None:
        return next((v for c, (v, _) in zip(self.proposals, self.verdicts) if c.coord == coord), None)

    def frame(self) -> pd.DataFrame:
        rows = []
        for c, test, (v, reason) in zip(self.proposals, self.tests, self.verdicts):
            rows.append(
                {
                    "layer": c.layer,
                    "row": c.row,
                    "col": c.col,
                    "weight": c.weight,
                    "role": c.role,
                    "super_activation": c.super_activation,
                    "share": c.share,
                    **test.summary(),
                    "verdict": v,
                    "reason": reason,
                }
            )
        return pd.DataFrame(rows)


def causal_test(
    lm: LoadedModel,
    layer: int,
    row: int,
    col: int,
    windows: Sequence,
    base_ppl: float | None = None,
    n_random: int = CONFIRM_RANDOM,
    seed: int = CONFIRM_SEED,
    random_ppl: dict[tuple[int, int], float] | None = None,
) -> CausalTest:
    """Perplexity over `windows` with W_down[row, col] of `layer` zeroed, and with each of `n_random`
    random weights of the same matrix zeroed alone (`random_ppl`: already measured controls, reused)."""
    check_editable(lm)
    w = down_weight(lm.model, layer)
    if not (0 <= row < w.shape[0] and 0 <= col < w.shape[1]):
        raise LabError(f"({row}, {col}) is outside layer {layer}'s down projection of shape {w.shape[0]}x{w.shape[1]}.")
    with lm.lock:
        base = perplexity(lm, windows) if base_ppl is None else base_ppl
        with edited_weights(lm, [ElementEdit.zero(lm.model, layer, row, col)]):
            zeroed = perplexity(lm, windows)
        coords = random_coordinates(tuple(w.shape), n_random, [(row, col)], seed, layer)
        known = {} if random_ppl is None else random_ppl
        for r, c in coords:
            if (r, c) not in known:
                with edited_weights(lm, [ElementEdit.zero(lm.model, layer, r, c)]):
                    known[(r, c)] = perplexity(lm, windows)
    return CausalTest(layer, row, col, base, zeroed, coords, [known[rc] for rc in coords])


def confirm(
    lm: LoadedModel,
    detection: Detection,
    min_ratio: float = CONFIRM_RATIO,
    n_random: int = CONFIRM_RANDOM,
    confirm_tokens: int = CONFIRM_TOKENS,
    seed: int = CONFIRM_SEED,
    eval_text: str | None = None,
    progress: ProgressFn | None = None,
) -> Confirmation:
    """The causal test and verdict of every proposal of `detection` (module docstring).

    The keyword arguments are the fields of `engine.superweights.config.ConfirmationConfig`.
    `progress(done, total, message)` counts proposals, called before each and once at the end.
    """
    check_editable(lm)
    if not min_ratio > 1:
        raise LabError(f"min_ratio must be > 1 (got {min_ratio}).")
    if n_random < 1:
        raise LabError(f"n_random must be >= 1 (got {n_random}).")
    start = time.perf_counter()
    windows = eval_windows(lm, eval_text, window=confirm_tokens, max_tokens=confirm_tokens - 1)
    proposals = detection.proposals
    tests: list[CausalTest] = []
    controls: dict[int, dict[tuple[int, int], float]] = {}  # per layer: (row, col) -> perplexity
    with lm.lock:
        base = perplexity(lm, windows)
        for i, c in enumerate(proposals):
            if progress:
                progress(i, len(proposals), f"layer {c.layer} W[{c.row}, {c.col}]")
            known = controls.setdefault(c.layer, {})
            tests.append(causal_test(lm, c.layer, c.row, c.col, windows, base, n_random, seed, known))
    if progress:
        progress(len(proposals), len(proposals), "done")
    verdicts = [verdict(c, t, min_ratio) for c, t in zip(proposals, tests)]
    n_tokens = sum(w.shape[1] for w in windows)
    return Confirmation(proposals, tests, verdicts, n_tokens, min_ratio, seed, time.perf_counter() - start)
