"""Super weights of a pretrained LLM: hooked scan of the MLP down projections, detection, inspection.

Yu et al., "The Super Weight in Large Language Models" (arXiv 2411.07191; code mengxiayu/LLMSuperWeight):
a super weight is one scalar W_down[r, c] of an early layer's MLP down projection. On most inputs it
turns an input spike x[t, c] into a massive output y[t, r] = sum_c' W[r, c'] x[t, c'] (the "super
activation"), which the residual stream then carries through the later layers. It is found data-free:
hook every down projection, look for the layer whose max |output| stands out, read r (output
channel of the spike) and c (input channel of the spike at the same token), zero it, re-scan, repeat.

The iterative scan here only *proposes* weights; each proposal is then measured on the original model
and given a role: a candidate makes at least `min_share` of its spike; a cancelling weight pushes a
massive activation that already enters its layer back towards zero (late layers of SmolLM2 do this);
anything else is minor. A smaller spike that survives zeroing a weight does not disqualify it (on
SmolLM2 the super weight makes 73% of its spike, the rest of row 507 the other 27%). The causal test
that confirms a candidate is in `engine.superweights.confirm`.

Orientation: W is always read as [row = output channel, col = input channel] (nn.Linear's layout)
through `engine.core.architecture.down_weight` / `out_in_weight` (a view, whatever layout the family
stores), so coordinates mean the same thing in every family and in-place edits write through.

Shapes: T tokens, D hidden size (output channels r), F MLP width (input channels c), L layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from engine.core.architecture import (
    down_projections,
    down_weight,
    linear_weights,
    out_in_weight,
)
from engine.core.capture import Activations, capture, hooked
from engine.core.errors import LabError
from engine.core.lm_eval import encode, run_body
from engine.core.model import LoadedModel
from engine.core.paths import DATA_DIR
from engine.core.weight_edits import ElementEdit, edited_weights, weights_edit_problem
from engine.core.weight_stats import matrix_stats, rank_by_magnitude, top_k_coordinates
from engine.superweights.config import (
    ABSOLUTE_THRESHOLD,
    COLUMN_RULES,
    DEFAULT_MODE,
    DEFAULT_PROMPT,
    MAX_ITERATIONS,
    MIN_SHARE,
    PERSIST_FACTOR,
    RELATIVE_FACTOR,
    ColumnRule,
    Role,
    ThresholdMode,
)

PUBLISHED_FILE = DATA_DIR / "superweights_published.json"

ProgressFn = Callable[[int, int, str], None]  # progress(done, total, message), as ui.progress.steps draws it


# ---------------------------------------------------------------------------------------------
# Prompts and forward passes


def clean_prompts(prompts: str | Sequence[str]) -> list[str]:
    """Non-empty prompts (one per line when a string); LabError when none is left."""
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    cleaned = [p.strip() for p in prompts if p and p.strip()]
    if not cleaned:
        raise LabError("No prompt given: enter at least one non-empty prompt (one per line).")
    return cleaned


# ---------------------------------------------------------------------------------------------
# 1. Scan


@dataclasses.dataclass
class LayerScan:
    """Largest |input| and |output| of one layer's down projection over all prompts and tokens."""

    layer: int
    max_abs_input: float
    input_channel: int
    input_token: int
    input_prompt: int
    max_abs_output: float
    output_value: float  # signed y[t, r] at the output spike
    output_channel: int  # r
    output_token: int  # t
    output_prompt: int
    spike_input_channel: int  # c = argmax_c |x[t, c]| at the output spike's token
    spike_input_value: float  # x[t, c]
    spike_contribution_channel: int  # c = argmax_c |W[r, c] x[t, c]| (the input channel when W is packed)


@dataclasses.dataclass
class ScanResult:
    """One scan: the prompts, their tokens, and one `LayerScan` per decoder layer (L of them)."""

    prompts: list[str]
    tokens: list[list[str]]
    layers: list[LayerScan]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([dataclasses.asdict(s) for s in self.layers])

    def to_json(self) -> dict:
        return {"prompts": self.prompts, "tokens": self.tokens, "layers": [dataclasses.asdict(s) for s in self.layers]}


class _ScanHook:
    """Forward hook on one down projection: keeps the running maxima of |x| [T, F] and |y| [T, D]."""

    def __init__(self, layer: int):
        self.layer = layer
        self.best: LayerScan | None = None
        self.prompt = 0

    def __call__(self, module, inputs, output):
        x = inputs[0].detach()[0].float()  # [T, I]
        y = (output[0] if isinstance(output, tuple) else output).detach()[0].float()  # [T, H]
        ax, ay = x.abs(), y.abs()
        in_flat, out_flat = int(ax.argmax()), int(ay.argmax())
        t_in, c_in = divmod(in_flat, ax.shape[1])
        t_out, r = divmod(out_flat, ay.shape[1])
        c_spike = int(ax[t_out].argmax())
        weight = out_in_weight(module)
        c_contrib = int((weight[r].float() * x[t_out]).abs().argmax()) if weight.is_floating_point() else c_spike
        best = self.best
        if best is None or ax[t_in, c_in].item() > best.max_abs_input:
            in_part = (ax[t_in, c_in].item(), c_in, t_in, self.prompt)
        else:
            in_part = (best.max_abs_input, best.input_channel, best.input_token, best.input_prompt)
        if best is None or ay[t_out, r].item() > best.max_abs_output:
            out_part = (
                ay[t_out, r].item(),
                y[t_out, r].item(),
                r,
                t_out,
                self.prompt,
                c_spike,
                x[t_out, c_spike].item(),
                c_contrib,
            )
        else:
            out_part = (
                best.max_abs_output,
                best.output_value,
                best.output_channel,
                best.output_token,
                best.output_prompt,
                best.spike_input_channel,
                best.spike_input_value,
                best.spike_contribution_channel,
            )
        self.best = LayerScan(self.layer, *in_part, *out_part)


def scan(
    lm: LoadedModel,
    prompts: str | Sequence[str] = DEFAULT_PROMPT,
    progress: Callable[[int, str], None] | None = None,
) -> ScanResult:
    """Per layer: max |x| over the down projection's inputs x [T, F] and max |y| over its outputs y [T, D]
    (with channel, token and prompt), over all prompts.

    Forward hooks on each layer's down projection during one forward pass of the model body per prompt
    (Yu et al. 2024, Sec. 3.1 / Fig. 3). Works on quantized models too (it only reads activations).
    `progress(p, message)` is called before the forward pass of prompt p.
    """
    prompts = clean_prompts(prompts)
    modules = down_projections(lm.model)
    hooks = [_ScanHook(i) for i in range(len(modules))]
    tokens = []
    with hooked(lm, modules, hooks.__getitem__):
        for p, prompt in enumerate(prompts):
            if progress:
                progress(p, f"prompt {p + 1} of {len(prompts)}")
            ids = encode(lm, prompt)
            tokens.append(lm.tokenizer.convert_ids_to_tokens(ids[0].tolist()))
            for h in hooks:
                h.prompt = p
            run_body(lm, ids)
    return ScanResult(prompts, tokens, [h.best for h in hooks])


# ---------------------------------------------------------------------------------------------
# Residual stream: where a massive activation persists


@torch.no_grad()
def residual_trace(lm: LoadedModel, prompt: str, token: int, channel: int) -> pd.DataFrame:
    """h_l[token, channel] after every decoder layer l, the median |h_l| over that layer's [T, D] output,
    and their ratio (one row per layer).

    Read with forward hooks on the decoder layers (the residual stream before the final norm).
    """
    with capture(lm, "layer") as residual:  # layer l -> h_l [1, T, D]
        run_body(lm, encode(lm, prompt))
    return trace_frame(_at(residual, token, channel))


def _at(residual: Activations, token: int, channel: int) -> list[tuple[float, float]]:
    """(h_l[token, channel], median |h_l|) per layer l of captured decoder-layer outputs h_l [1, T, D]."""
    hs = (residual[i][0].float() for i in sorted(residual))  # [T, D] each
    return [(h[token, channel].item(), h.abs().median().item()) for h in hs]


def trace_frame(values: Sequence[tuple[float, float]]) -> pd.DataFrame:
    """One row per layer l from (h_l[t, r], median |h_l|): layer, value, median_abs, ratio = |value| / median_abs."""
    frame = pd.DataFrame(list(values), columns=["value", "median_abs"])
    frame.insert(0, "layer", range(len(frame)))
    frame["ratio"] = frame["value"].abs() / frame["median_abs"].replace(0, np.nan)
    return frame


def persisting_layers(trace: pd.DataFrame, factor: float = PERSIST_FACTOR) -> list[int]:
    """Layers where |h_l[t, r]| >= factor x median |h_l| (the massive activation is still there)."""
    return [int(layer) for layer in trace.loc[trace["ratio"] >= factor, "layer"]]


# ---------------------------------------------------------------------------------------------
# 2. Detect (the paper's iterative procedure proposes; the original model decides each role)


@dataclasses.dataclass
class Candidate:
    """One proposed weight W_down[row, col] of `layer`, measured on the original model (every other
    proposal restored), at the token t of the spike it was found from.

    share = W[row, col] x[t, col] / y[t, row]: how much of the spike this one weight makes (exact: y is
    linear in W). spike_left = y[t, row] with the weight zeroed = (1 - share) y[t, row].
    residual_change = h_l[t, row] - h_l^{W[row, col] = 0}[t, row]: what the weight adds to the residual
    stream after its layer l; residual_in = h_{l-1}[t, row], what enters the layer (0 for layer 0).
    """

    iteration: int  # round of the iterative scan that proposed it
    layer: int
    row: int  # output channel of the spike
    col: int  # input channel of the spike
    weight: float  # W[row, col] (NaN for quantized weights)
    rank: int  # 1-based rank of |W[row, col]| in its matrix (0 when unknown)
    matrix_size: int
    super_activation: float  # signed down_proj output y[t, row] at the spike
    spike_ratio: float  # |y[t, row]| / reference median over layers of max |output|
    input_value: float  # x[t, col]
    share: float  # W[row, col] x[t, col] / y[t, row]
    prompt: int
    token: int
    token_text: str
    residual_value: float  # h_l[t, row] after the layer (what the residual stream carries)
    persists_in_layers: list[int]
    role: Role = "candidate"
    spike_left: float = float("nan")  # y[t, row] with this weight zeroed
    residual_in: float = 0.0  # h_{l-1}[t, row]
    residual_change: float = float("nan")  # h_l[t, row] - h_l[t, row] with the weight zeroed

    @property
    def coord(self) -> tuple[int, int, int]:
        return (self.layer, self.row, self.col)


@dataclasses.dataclass
class Detection:
    """The iterative procedure's outcome: proposals by role, every scan, the threshold and why it stopped."""

    candidates: list[Candidate]  # role "candidate": each makes >= min_share of its spike
    scans: list[ScanResult]  # scans[0]: the original model; scans[i]: after zeroing proposals < i
    reference: float  # median over layers of max |output| in the original scan
    threshold: float  # absolute value a layer's max |output| had to reach
    rule: str
    stop_reason: str
    note: str = ""
    rejected: list[Candidate] = dataclasses.field(default_factory=list)  # role "minor": < min_share of a spike
    cancelling: list[Candidate] = dataclasses.field(default_factory=list)  # push a massive activation back

    @property
    def proposals(self) -> list[Candidate]:
        """Every proposed weight, in the order the iterative scan proposed it."""
        return sorted(self.candidates + self.cancelling + self.rejected, key=lambda c: c.iteration)

    def frame(self, rejected: bool = False, cancelling: bool = False) -> pd.DataFrame:
        chosen = self.rejected if rejected else self.cancelling if cancelling else self.candidates
        columns = [f.name for f in dataclasses.fields(Candidate)]
        frame = pd.DataFrame([dataclasses.asdict(c) for c in chosen], columns=columns)
        frame["persists_in_layers"] = frame["persists_in_layers"].map(lambda v: ",".join(map(str, v)))
        return frame

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "reference_median_max_abs_output": self.reference,
            "threshold": self.threshold,
            "stop_reason": self.stop_reason,
            "note": self.note,
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
            "cancelling": [dataclasses.asdict(c) for c in self.cancelling],
            "rejected": [dataclasses.asdict(c) for c in self.rejected],
            "scans": [s.to_json() for s in self.scans],
        }


def spike_threshold(
    result: ScanResult,
    mode: ThresholdMode = DEFAULT_MODE,
    factor: float = RELATIVE_FACTOR,
    absolute: float = ABSOLUTE_THRESHOLD,
) -> tuple[float, float, str]:
    """(threshold, reference median, rule text): `factor` x the median over layers of max |y| ('relative'),
    or the fixed `absolute` value ('absolute', the paper's)."""
    maxima = np.array([s.max_abs_output for s in result.layers])
    reference = float(np.median(maxima))
    if mode == "relative":
        if not factor > 1:
            raise LabError(f"The relative factor must be > 1 (got {factor}).")
        return (
            factor * reference,
            reference,
            f"max |down_proj output| >= {factor:g} x median over layers ({reference:.3g})",
        )
    if mode == "absolute":
        if not absolute > 0:
            raise LabError(f"The absolute threshold must be > 0 (got {absolute}).")
        return absolute, reference, f"max |down_proj output| >= {absolute:g} (paper's absolute threshold)"
    raise LabError(f"Unknown threshold mode '{mode}': use 'relative' or 'absolute'.")


def spike_column(s: LayerScan, column: ColumnRule) -> int:
    """The input channel c of a layer's spike under the column rule."""
    if column == "contribution":
        return s.spike_contribution_channel
    if column == "input":
        return s.spike_input_channel
    raise LabError(f"Unknown column rule '{column}': use {' or '.join(COLUMN_RULES)}.")


@torch.no_grad()
def down_and_residual(
    lm: LoadedModel, ids: torch.Tensor, layer: int, token: int, row: int
) -> tuple[torch.Tensor, float, list]:
    """One forward pass: (x[t, :] [F] and y[t, row] of `layer`'s down projection, and per decoder layer
    (h_l[t, row], median |h_l|) of the residual stream)."""
    with (
        capture(lm, [down_projections(lm.model)[layer]], inputs=True) as down,  # x [1, T, F], y [1, T, D]
        capture(lm, "layer") as residual,
    ):
        run_body(lm, ids)
    x = down.inputs[0][0, token].float().clone()
    y = down[0][0, token, row].float().item()
    return x, float(y), _at(residual, token, row)


def _role(share: float, residual_in: float, in_ratio: float, change: float, min_share: float, persist: float) -> Role:
    """cancelling: a massive activation enters the layer (|h_{l-1}[t, r]| >= persist x median |h_{l-1}|)
    and the weight's change of the residual opposes it (change x h_{l-1}[t, r] < 0); candidate: share >=
    min_share; minor otherwise."""
    if in_ratio >= persist and change * residual_in < 0:
        return "cancelling"
    if not share < min_share:  # NaN (a packed weight: share unknown) stays a candidate, as the paper's scan
        return "candidate"
    return "minor"


def _measure(
    lm: LoadedModel,
    result: ScanResult,
    s: LayerScan,
    col: int,
    iteration: int,
    reference: float,
    persist_factor: float,
    min_share: float,
) -> Candidate:
    """A proposal W[r, col] of scan layer `s`, measured on the model as it is now (the original one)."""
    row, layer = s.output_channel, s.layer
    prompt = result.prompts[s.output_prompt]
    token = s.output_token
    ids = encode(lm, prompt)
    x, y, residual = down_and_residual(lm, ids, layer, token, row)
    editable = weights_edit_problem(lm) is None
    if editable:
        w = down_weight(lm.model, layer)
        weight = float(w[row, col].item())
        rank = rank_by_magnitude(w, (row, col))
        size = w.numel()
        with edited_weights(lm, [ElementEdit.zero(lm.model, layer, row, col)]):
            _, y_zeroed, residual_zeroed = down_and_residual(lm, ids, layer, token, row)
        change = residual[layer][0] - residual_zeroed[layer][0]
    else:
        weight, rank, size, y_zeroed = float("nan"), 0, 0, float("nan")
        change = y  # a packed weight cannot be zeroed: the layer's output stands in for its effect
    share = weight * x[col].item() / y if y else float("nan")
    residual_in, in_median = residual[layer - 1] if layer > 0 else (0.0, 0.0)
    in_ratio = abs(residual_in) / in_median if in_median else 0.0
    trace = trace_frame(residual)
    return Candidate(
        iteration=iteration,
        layer=layer,
        row=row,
        col=col,
        weight=weight,
        rank=rank,
        matrix_size=size,
        super_activation=y,
        spike_ratio=abs(y) / reference if reference else float("inf"),
        input_value=float(x[col].item()),
        share=float(share),
        prompt=s.output_prompt,
        token=token,
        token_text=result.tokens[s.output_prompt][token],
        residual_value=float(residual[layer][0]),
        persists_in_layers=persisting_layers(trace.iloc[layer:], persist_factor),
        role=_role(float(share), residual_in, in_ratio, change, min_share, persist_factor),
        spike_left=float(y_zeroed),
        residual_in=float(residual_in),
        residual_change=float(change),
    )


def detect(
    lm: LoadedModel,
    prompts: str | Sequence[str] = DEFAULT_PROMPT,
    mode: ThresholdMode = DEFAULT_MODE,
    factor: float = RELATIVE_FACTOR,
    absolute: float = ABSOLUTE_THRESHOLD,
    max_iterations: int = MAX_ITERATIONS,
    persist_factor: float = PERSIST_FACTOR,
    column: ColumnRule = "contribution",
    min_share: float = MIN_SHARE,
    progress: ProgressFn | None = None,
) -> Detection:
    """The paper's iterative procedure proposes weights; the original model gives each its role.

    Round i: among the layers whose max |output| reaches the threshold (fixed from the original scan),
    take the strongest whose W[r, c] (c by the `column` rule) is not proposed yet, propose it, zero it,
    re-scan. Stops when no layer reaches the threshold, when every spiking layer's weight is proposed
    already, or after `max_iterations`. Then every zeroed weight is restored bit-for-bit (checked) and
    each proposal is measured on the original model (`Candidate`) and sorted by its role:
    `candidates` (share >= min_share), `cancelling` (opposes an incoming massive activation) and
    `rejected` (minor). A spike that shrinks but survives zeroing its weight is no reason to reject it:
    its share says how much of it the weight makes. On a quantized model only the first scan runs.
    The keyword arguments are the fields of `engine.superweights.config.DetectionConfig`.
    `progress(done, total, message)` counts forward passes: at most `max_iterations` scans x prompts (the
    total; the procedure may stop earlier), called before each pass and once at the end.
    """
    if max_iterations < 1:
        raise LabError(f"max_iterations must be >= 1 (got {max_iterations}).")
    if not 0 < min_share <= 1:
        raise LabError(f"min_share must be in (0, 1] (got {min_share}).")
    if column not in COLUMN_RULES:
        raise LabError(f"Unknown column rule '{column}': use {' or '.join(COLUMN_RULES)}.")
    prompts = clean_prompts(prompts)
    editable = weights_edit_problem(lm) is None
    note = "" if editable else "Quantized model: one scan only (the iterative removal needs in-place weight edits)."
    rounds = max_iterations if editable else 1
    total = rounds * len(prompts)

    def scan_round(i: int) -> ScanResult:
        tick = (
            (lambda p, message: progress(i * len(prompts) + p, total, f"scan {i + 1}, {message}")) if progress else None
        )
        return scan(lm, prompts, tick)

    proposed: list[tuple[int, ScanResult, LayerScan, int]] = []  # (iteration, scan, layer scan, col)
    with lm.lock:
        with contextlib.ExitStack() as removed:  # unwinds (restores every weight) on exit
            current = scan_round(0)
            threshold, reference, rule = spike_threshold(current, mode, factor, absolute)
            scans = [current]
            stop = f"stopped after {max_iterations} iteration(s)"
            for iteration in range(rounds):
                spiking = [s for s in current.layers if s.max_abs_output >= threshold]
                if not spiking:
                    stop = "no layer's max |output| reaches the threshold" + (" any more" if iteration else "")
                    break
                seen = {(s.layer, s.output_channel, col) for _, _, s, col in proposed}
                fresh = [s for s in spiking if (s.layer, s.output_channel, spike_column(s, column)) not in seen]
                if not fresh:
                    stop = "every spiking layer's weight is proposed already"
                    break
                top = max(fresh, key=lambda s: s.max_abs_output)
                col = spike_column(top, column)
                proposed.append((iteration, current, top, col))
                if not editable or iteration == max_iterations - 1:
                    break
                zero = ElementEdit.zero(lm.model, top.layer, top.output_channel, col)
                removed.enter_context(edited_weights(lm, [zero]))
                current = scan_round(iteration + 1)
                scans.append(current)
        measured = [_measure(lm, r, s, col, i, reference, persist_factor, min_share) for i, r, s, col in proposed]
    if progress:
        progress(total, total, "done")
    by_role = {role: [c for c in measured if c.role == role] for role in ("candidate", "cancelling", "minor")}
    return Detection(
        by_role["candidate"], scans, reference, threshold, rule, stop, note, by_role["minor"], by_role["cancelling"]
    )


# ---------------------------------------------------------------------------------------------
# Published coordinates


@lru_cache(maxsize=1)
def published_table() -> dict:
    """The shipped table of published super weights (Yu et al. 2024 Table 2 / their code)."""
    return json.loads(PUBLISHED_FILE.read_text())


def published_for(model_name: str) -> list[tuple[int, int, int]] | None:
    """Published (layer, row, col) for a model id, alias or folder named like one; None if not listed."""
    table = published_table()["models"]
    name = (model_name or "").strip().rstrip("/")
    keys = {name.lower(), name.split("/")[-1].lower()}
    for model_id, entry in table.items():
        names = {model_id.lower(), model_id.split("/")[-1].lower(), *(a.lower() for a in entry.get("aliases", []))}
        if keys & names:
            return [tuple(c) for c in entry["super_weights"]]
    return None


def compare_with_published(candidates: Sequence[Candidate], published: Sequence[tuple[int, int, int]]) -> pd.DataFrame:
    """One row per coordinate in either list: published?, detected?, and the detection's iteration."""
    detected = {c.coord: c for c in candidates}
    rows = []
    for coord in list(dict.fromkeys([tuple(p) for p in published] + list(detected))):
        c = detected.get(coord)
        rows.append(
            {
                "layer": coord[0],
                "row": coord[1],
                "col": coord[2],
                "published": coord in {tuple(p) for p in published},
                "detected": c is not None,
                "iteration": c.iteration if c else None,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# 3. Weights, layer by layer


def layer_weight_stats(lm: LoadedModel, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Per layer and projection: max|w|/median|w|, excess kurtosis, max |w| and its (row, col) in [out, in]."""
    problem = weights_edit_problem(lm)
    if problem:
        raise LabError("Weight statistics need unquantized weights: " + problem)
    rows = []
    with lm.lock:
        for i, name, module in linear_weights(lm.model):
            if layers is not None and i not in layers:
                continue
            weight = out_in_weight(module)
            stats = matrix_stats(weight)
            rows.append(
                {
                    "layer": i,
                    "projection": name,
                    "shape": "x".join(map(str, weight.shape)),
                    "max_over_median": stats["max_over_median"],
                    "kurtosis": stats["kurtosis"],
                    "max_abs": stats["max_abs"],
                    "row": stats["argmax"][0],
                    "col": stats["argmax"][1],
                }
            )
    return pd.DataFrame(rows)


def top_weights(lm: LoadedModel, layer: int, k: int = 10) -> pd.DataFrame:
    """The k largest |w| of one layer's down projection with (row, col), value and rank."""
    if k < 1:
        raise LabError(f"k must be >= 1 (got {k}).")
    w = down_weight(lm.model, layer)
    with lm.lock:  # never read a weight another session has ablated for the moment
        coords = top_k_coordinates(w, k)
        return pd.DataFrame(
            [{"rank": n + 1, "row": r, "col": c, "value": float(w[r, c].item())} for n, (r, c) in enumerate(coords)]
        )


def neighbourhood(lm: LoadedModel, layer: int, row: int, col: int, radius: int = 8) -> pd.DataFrame:
    """W[row, col - radius .. col + radius] and W[row - radius .. row + radius, col] around a weight."""
    w = down_weight(lm.model, layer)
    n_out, n_in = w.shape
    if not (0 <= row < n_out and 0 <= col < n_in):
        raise LabError(f"({row}, {col}) is outside layer {layer}'s down projection of shape {n_out}x{n_in}.")
    rows = []
    with lm.lock:  # as in top_weights
        for offset in range(-radius, radius + 1):
            if 0 <= col + offset < n_in:
                rows.append(
                    {
                        "along": "row (same output channel)",
                        "offset": offset,
                        "row": row,
                        "col": col + offset,
                        "value": float(w[row, col + offset].item()),
                    }
                )
            if 0 <= row + offset < n_out:
                rows.append(
                    {
                        "along": "column (same input channel)",
                        "offset": offset,
                        "row": row + offset,
                        "col": col,
                        "value": float(w[row + offset, col].item()),
                    }
                )
    return pd.DataFrame(rows)
