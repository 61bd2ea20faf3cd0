"""Measures of the LLM-shaped grokking model at one checkpoint, defined so that they can fire before grokking.

For the model of `engine.grokking.llm` (sequences [BOS, a, op, b, =] -> c, or the markov context's
sequences of T tokens with "=" at a per-example position):

1. Causal effect of candidate super weights, on the TRAIN and the TEST split separately. Candidates:
   the super-weight detection of the first tab (`engine.superweights.detect.detect`, relative rule,
   run unchanged on the checkpoint with a few training examples as prompts) and the top-|w| weight(s)
   of each layer's down projection. Each candidate W_down[row, col] is zeroed alone (through
   `engine.core.weight_edits.edited_weights`, restored bit for bit) and the split's mean cross-entropy
   and accuracy are compared with the unedited model:
       loss_ratio = loss_zeroed / loss_base,   ppl_ratio = exp(loss_zeroed - loss_base)
   (ppl_ratio is the paper's perplexity ratio: perplexity = exp(mean loss)), acc_drop = acc_base - acc_zeroed.
   Control: zeroing k random weights of the same matrix (outside its top k and the candidates),
   averaged over n_random draws. A candidate "fires" on a split when ppl_ratio >= ppl_threshold while
   the control's ppl_ratio < ppl_threshold, or acc_drop > acc_threshold while the control's acc_drop
   <= acc_threshold. Because train loss and accuracy are measured too, the test can fire on the
   memorised (train) solution long before test accuracy rises.
2. Super activation: per layer, max |y| of the down projection's output y [N, T, D] at BOS and at the other
   positions (plain context: at each of BOS, a, op, b, =), the channel and signed value of the BOS spike, and
   whether the BOS spike persists in the residual stream of the later layers
   (|h_l[BOS, channel]| >= PERSIST_FACTOR x median |h_l|, with `detect.residual_trace` /
   `detect.persisting_layers`, as the detector does). The BOS row is the same
   for every example (causal attention: BOS sees only itself), so the BOS spike is data-free.
3. Attention sink: per layer, the attention mass on BOS from the later query positions (mean over heads,
   queries 1..T-1 and examples), and from the "=" query alone; eager attention. What uniform causal attention
   would give is subtracted: query i (0-based) sees i + 1 keys, so uniform attention puts 1 / (i + 1) on BOS and
       sink_excess = share - mean_{i=1..T-1} 1 / (i + 1)
   (T = 5: 0.32 is uniform and reads 0; a head that always attends to BOS reads 1 - that mean).
4. Massive activation (Sun et al. 2024, arXiv 2402.17762): per layer, the residual stream h_l [N, T, D] after the
   layer; resid_bos_over_median = max_d |h_l[BOS, d]| / median |h_l| (over examples, positions, channels) and
   the same peak at any other position (resid_other_over_median), so a peak at the sink position is told from
   a peak anywhere.
5. Key Fourier frequencies of the number embedding (`engine.grokking.fourier`).

`measure_llm_checkpoint` runs them all; `LlmMeasures.summary()` is one row of scalars per checkpoint
for onset analysis. The model is read as it is (weights restored bit for bit after every edit, train/eval
mode untouched: the grokking Llama has no dropout). Shapes: N examples, T positions, D = d_model, I = d_mlp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine.core.architecture import body, decoder_layers, down_projections, down_weight
from engine.core.capture import capture
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.core.weight_edits import ElementEdit, edited_weights
from engine.core.weight_stats import rank_by_magnitude, top_k_coordinates
from engine.grokking.fourier import KEY_SHARE, FourierResult, embedding_key_frequencies
from engine.grokking.llm import (
    POSITION_NAMES,
    GrokLlama,
    LlmData,
    answer_logits,
    as_loaded_model,
    evaluate_ids,
)
from engine.grokking.measure_registry import uniform_bos_share
from engine.superweights import detect


@dataclass(frozen=True)
class LlmMeasureSettings:
    """k_random: weights zeroed per control draw; n_random: control draws averaged; max_examples: examples
    per split (a fixed seeded subset when larger); ppl_threshold / acc_threshold: when a candidate fires;
    top_per_layer: top-|w| candidates per down projection; scan_prompts: training examples given to the
    detector as prompts; persist_factor: residual |h| / median |h| that counts as a persisting spike;
    fourier_share: energy share of the key frequencies."""

    k_random: int = 5
    n_random: int = 3
    max_examples: int = 512
    ppl_threshold: float = 2.0
    acc_threshold: float = 0.10
    top_per_layer: int = 1
    scan_prompts: int = 4
    detect_iterations: int = 5
    persist_factor: float = detect.PERSIST_FACTOR
    fourier_share: float = KEY_SHARE
    seed: int = 0


CAUSAL_COLUMNS = [
    "layer",
    "row",
    "col",
    "source",
    "weight",
    "rank",
    "split",
    "loss_base",
    "acc_base",
    "loss_zeroed",
    "acc_zeroed",
    "loss_ratio",
    "ppl_ratio",
    "acc_drop",
    "loss_random",
    "acc_random",
    "loss_ratio_random",
    "ppl_ratio_random",
    "acc_drop_random",
    "fires",
]


# ---------------------------------------------------------------------------------------------
# Helpers


def _subset(
    ids: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At most n rows of (ids [N, T], y [N], pos [N]): all of them, or a seeded random subset."""
    if len(y) <= n:
        return ids, y, pos
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(y), n, replace=False)).to(ids.device)
    return ids[idx], y[idx], pos[idx]


@dataclass
class _Splits:
    """Train and test subsets, concatenated so that one forward pass measures both."""

    ids: torch.Tensor  # [N_train + N_test, T]
    y: torch.Tensor  # [N_train + N_test]
    n_train: int
    pos: torch.Tensor  # [N_train + N_test], the "=" position of each row

    @classmethod
    def of(cls, data: LlmData, settings: LlmMeasureSettings) -> _Splits:
        ids_tr, y_tr, pos_tr = _subset(
            data.ids_train, data.y_train, data.pos_train, settings.max_examples, settings.seed
        )
        ids_te, y_te, pos_te = _subset(
            data.ids_test, data.y_test, data.pos_test, settings.max_examples, settings.seed + 1
        )
        return cls(torch.cat([ids_tr, ids_te]), torch.cat([y_tr, y_te]), len(y_tr), torch.cat([pos_tr, pos_te]))

    @torch.no_grad()
    def evaluate(self, lm: LoadedModel, p: int) -> dict[str, tuple[float, float]]:
        """{"train": (loss, acc), "test": (loss, acc)} of the model as it is now."""
        logits = answer_logits(lm.model, self.ids, p, self.pos).float()
        y = self.y.to(logits.device)
        losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        correct = (logits.argmax(-1) == y).float()
        n = self.n_train
        return {
            "train": (losses[:n].mean().item(), correct[:n].mean().item()),
            "test": (losses[n:].mean().item(), correct[n:].mean().item()),
        }


def _lm(model: GrokLlama | LoadedModel) -> tuple[LoadedModel, int]:
    if isinstance(model, LoadedModel):
        p = getattr(model.model.config, "grok_p", None)
        if p is None:
            raise LabError("This model is not a grokking checkpoint (no grok_p in its config).")
        return model, int(p)
    return as_loaded_model(model), model.p


def _ratio(new: float, base: float) -> float:
    return new / base if base > 0 else (math.inf if new > 0 else 1.0)


def _ppl_ratio(new: float, base: float) -> float:
    return math.exp(min(new - base, 700.0))


# ---------------------------------------------------------------------------------------------
# 1. Candidates and their causal effect


@dataclass
class CandidateWeight:
    """One weight W_down[row, col] of a layer to test, and where it came from ("scan", "top|w|" or both)."""

    layer: int
    row: int
    col: int
    source: str

    @property
    def coord(self) -> tuple[int, int, int]:
        return (self.layer, self.row, self.col)


def candidate_weights(
    model: GrokLlama | LoadedModel, prompts: list[str], settings: LlmMeasureSettings = LlmMeasureSettings()
) -> tuple[list[CandidateWeight], detect.Detection]:
    """The detector's candidates on `prompts` and the top_per_layer largest |w| of each down projection.

    Returns (candidates without duplicates, scan ones first; the Detection of the first tab's rule).
    """
    lm, _ = _lm(model)
    detection = detect.detect(
        lm, prompts, max_iterations=settings.detect_iterations, persist_factor=settings.persist_factor
    )
    found: dict[tuple[int, int, int], CandidateWeight] = {}
    for c in detection.candidates:
        found[c.coord] = CandidateWeight(c.layer, c.row, c.col, "scan")
    with lm.lock:
        for layer in range(len(down_projections(lm.model))):
            for row, col in top_k_coordinates(down_weight(lm.model, layer), settings.top_per_layer):
                coord = (layer, row, col)
                if coord in found:
                    found[coord].source = "scan+top|w|"
                else:
                    found[coord] = CandidateWeight(layer, row, col, "top|w|")
    return list(found.values()), detection


def _random_edits(weight: torch.Tensor, exclude: set[tuple[int, int]], k: int, rng: np.random.Generator):
    """An ElementEdit zeroing k random entries of weight [out, in] outside `exclude`."""
    n_in = weight.shape[1]
    banned = np.array(sorted(r * n_in + c for r, c in exclude), dtype=np.int64)
    pool = np.setdiff1d(np.arange(weight.numel()), banned)
    pick = rng.choice(pool, min(k, len(pool)), replace=False)
    rows = torch.as_tensor(pick // n_in, device=weight.device)
    cols = torch.as_tensor(pick % n_in, device=weight.device)
    return ElementEdit(weight, rows, cols, torch.zeros(len(pick), dtype=weight.dtype, device=weight.device))


@torch.no_grad()
def causal_effects(
    model: GrokLlama | LoadedModel,
    data: LlmData,
    candidates: list[CandidateWeight],
    settings: LlmMeasureSettings = LlmMeasureSettings(),
) -> pd.DataFrame:
    """One row per (candidate, split) with CAUSAL_COLUMNS: zeroing the candidate vs zeroing k random weights.

    Every edit goes through `edited_weights` (restored and checked bit for bit on exit).
    """
    lm, p = _lm(model)
    splits = _Splits.of(data, settings)
    rng = np.random.default_rng(settings.seed)
    rows = []
    with lm.lock:
        base = splits.evaluate(lm, p)
        controls: dict[int, dict[str, tuple[float, float]]] = {}
        for layer in sorted({c.layer for c in candidates}):
            w = down_weight(lm.model, layer)
            exclude = set(top_k_coordinates(w, settings.k_random))
            exclude |= {(c.row, c.col) for c in candidates if c.layer == layer}
            draws = []
            for _ in range(settings.n_random):
                with edited_weights(lm, [_random_edits(w, exclude, settings.k_random, rng)]):
                    draws.append(splits.evaluate(lm, p))
            controls[layer] = {
                s: (float(np.mean([d[s][0] for d in draws])), float(np.mean([d[s][1] for d in draws])))
                for s in ("train", "test")
            }
        for c in candidates:
            w = down_weight(lm.model, c.layer)
            weight, rank = float(w[c.row, c.col].item()), rank_by_magnitude(w, (c.row, c.col))
            with edited_weights(lm, [ElementEdit.zero(lm.model, *c.coord)]):
                zeroed = splits.evaluate(lm, p)
            for split in ("train", "test"):
                (lb, ab), (lz, az), (lr, ar) = base[split], zeroed[split], controls[c.layer][split]
                ppl, ppl_r = _ppl_ratio(lz, lb), _ppl_ratio(lr, lb)
                drop, drop_r = ab - az, ab - ar
                fires = (ppl >= settings.ppl_threshold > ppl_r) or (drop > settings.acc_threshold >= drop_r)
                rows.append(
                    {
                        "layer": c.layer,
                        "row": c.row,
                        "col": c.col,
                        "source": c.source,
                        "weight": weight,
                        "rank": rank,
                        "split": split,
                        "loss_base": lb,
                        "acc_base": ab,
                        "loss_zeroed": lz,
                        "acc_zeroed": az,
                        "loss_ratio": _ratio(lz, lb),
                        "ppl_ratio": ppl,
                        "acc_drop": drop,
                        "loss_random": lr,
                        "acc_random": ar,
                        "loss_ratio_random": _ratio(lr, lb),
                        "ppl_ratio_random": ppl_r,
                        "acc_drop_random": drop_r,
                        "fires": bool(fires),
                    }
                )
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS)


@torch.no_grad()
def zeroing_outcome(
    model: GrokLlama | LoadedModel,
    data: LlmData,
    coords: list[tuple[int, int, int]],
    kept: float = 0.9,
    lost: float = 0.5,
) -> dict:
    """Zero the given super weights together on the full train and test sets: does the model fall back
    to memorisation or break?

    verdict: "memorisation" when train accuracy stays >= kept x its value while test accuracy falls
    below lost x its value; "broken" when both fall below those levels; "unaffected" when test accuracy
    stays >= kept x its value; else "partial". Weights are restored bit for bit afterwards.
    """
    lm, p = _lm(model)

    def both() -> dict[str, tuple[float, float]]:
        return {
            "train": evaluate_ids(lm.model, data.ids_train, data.y_train, p, positions=data.pos_train),
            "test": evaluate_ids(lm.model, data.ids_test, data.y_test, p, positions=data.pos_test),
        }

    with lm.lock:
        before = both()
        with edited_weights(lm, [ElementEdit.zero(lm.model, *c) for c in coords]):
            after = both()
    train_kept = after["train"][1] >= kept * before["train"][1]
    test_kept = after["test"][1] >= kept * before["test"][1]
    test_lost = after["test"][1] < lost * before["test"][1]
    train_lost = after["train"][1] < lost * before["train"][1]
    if test_kept:
        verdict = "unaffected"
    elif train_kept and test_lost:
        verdict = "memorisation"
    elif train_lost and test_lost:
        verdict = "broken"
    else:
        verdict = "partial"
    return {
        "coords": [list(c) for c in coords],
        "train_loss_before": before["train"][0],
        "train_acc_before": before["train"][1],
        "test_loss_before": before["test"][0],
        "test_acc_before": before["test"][1],
        "train_loss_after": after["train"][0],
        "train_acc_after": after["train"][1],
        "test_loss_after": after["test"][0],
        "test_acc_after": after["test"][1],
        "verdict": verdict,
    }


# ---------------------------------------------------------------------------------------------
# 2. Super activations and their persistence


@torch.no_grad()
def super_activations(
    model: GrokLlama | LoadedModel, data: LlmData, settings: LlmMeasureSettings = LlmMeasureSettings()
) -> pd.DataFrame:
    """Per layer: max |y| of the down projection output at each position, the BOS spike and its persistence.

    Columns: layer, max_abs_bos and max_abs_other (at the other positions; plain context also
    max_abs_<a|op|b|eq>), over examples and channels, bos_channel, bos_value (signed
    y[BOS, channel]), bos_input_channel / bos_input_value (largest |x| of the down projection's input at
    BOS), median_abs (median |y| over all examples, positions, channels), bos_over_median, and
    persists_in_layers: the layers from this one on where the residual stream still carries the BOS
    spike's channel at >= persist_factor x its median (comma-separated, detect.persisting_layers).
    """
    lm, _ = _lm(model)
    splits = _Splits.of(data, settings)
    modules = down_projections(lm.model)
    with lm.lock:
        with capture(lm, modules, inputs=True) as acts:
            body(lm.model)(input_ids=splits.ids.to(lm.model.device), use_cache=False)
        seen = {i: (acts.inputs[i].float(), acts[i].float()) for i in acts}  # [N, T, I], [N, T, D]
        prompt = data.prompts(1)[0]
        rows = []
        for i in range(len(modules)):
            x, y = seen[i]
            ay = y.abs()
            per_position = ay.amax(dim=(0, 2))  # [T]
            named = POSITION_NAMES if len(per_position) == len(POSITION_NAMES) else ("bos",)
            bos_y, bos_x = y[0, 0], x[0, 0]  # the same for every example
            channel = int(bos_y.abs().argmax())
            in_channel = int(bos_x.abs().argmax())
            median = float(ay.median().item())
            trace = detect.residual_trace(lm, prompt, 0, channel)
            row = {"layer": i}
            row.update({f"max_abs_{name}": float(v) for name, v in zip(named, per_position.tolist())})
            row["max_abs_other"] = float(per_position[1:].max()) if len(per_position) > 1 else 0.0
            row.update(
                {
                    "bos_channel": channel,
                    "bos_value": float(bos_y[channel].item()),
                    "bos_input_channel": in_channel,
                    "bos_input_value": float(bos_x[in_channel].item()),
                    "median_abs": median,
                    "bos_over_median": float(bos_y.abs().max().item()) / median if median else math.inf,
                    "persists_in_layers": ",".join(
                        map(str, detect.persisting_layers(trace.iloc[i:], settings.persist_factor))
                    ),
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# 3. Attention sinks


def sink_scores(att: torch.Tensor) -> dict[str, float]:
    """Sink measures of one layer's attention weights att [N, H, T, T] (rows sum to 1, causal):
    sink_share (mean weight on BOS over heads, queries 1..T-1, examples), sink_excess = sink_share minus
    uniform_bos_share(T), max_head_share / max_head_excess: the same for the head with the largest share."""
    on_bos = att[:, :, 1:, 0].float()  # [N, H, T - 1]
    uniform = uniform_bos_share(att.shape[-1])
    share, head = float(on_bos.mean().item()), float(on_bos.mean(dim=(0, 2)).max().item())
    return {
        "sink_share": share,
        "sink_excess": share - uniform,
        "max_head_share": head,
        "max_head_excess": head - uniform,
    }


@torch.no_grad()
def attention_sink(
    model: GrokLlama | LoadedModel, data: LlmData, settings: LlmMeasureSettings = LlmMeasureSettings()
) -> pd.DataFrame:
    """Per layer: sink_scores (sink_share, sink_excess, max_head_share, max_head_excess; see the module
    docstring) and sink_share_eq = the mean attention weight on BOS from the "=" query only.

    Attention weights need eager attention: a model loaded with another implementation is switched to
    eager for the measurement and back afterwards.
    """
    lm, _ = _lm(model)
    splits = _Splits.of(data, settings)
    with lm.lock:
        previous = getattr(lm.model.config, "_attn_implementation", "eager")
        if previous != "eager":
            lm.model.set_attn_implementation("eager")
        try:
            out = body(lm.model)(input_ids=splits.ids.to(lm.model.device), use_cache=False, output_attentions=True)
        finally:
            if previous != "eager":
                lm.model.set_attn_implementation(previous)
    rows = []
    pos = splits.pos.to(out.attentions[0].device)
    for i, att in enumerate(out.attentions):  # [N, H, T, T]
        eq = att[torch.arange(len(pos), device=pos.device), :, pos, 0].float()  # [N, H]
        rows.append({"layer": i, **sink_scores(att), "sink_share_eq": float(eq.mean().item())})
    if len(rows) != len(decoder_layers(lm.model)):
        raise LabError("The model returned no attention weights (eager attention is needed).")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# 4. Massive activations in the residual stream


def residual_peaks(hidden: torch.Tensor) -> dict[str, float]:
    """Peaks of one layer's residual stream h [N, T, D]: resid_bos_over_median = max |h[:, 0]| / median |h|,
    resid_other_over_median = max |h[:, 1:]| / median |h|, and the channel of the BOS peak."""
    a = hidden.float().abs()
    median = float(a.median().item())
    bos = a[:, 0].amax(dim=0)  # [D]
    other = float(a[:, 1:].max().item()) if a.shape[1] > 1 else 0.0
    return {
        "resid_bos_max": float(bos.max().item()),
        "resid_bos_channel": int(bos.argmax().item()),
        "resid_median": median,
        "resid_bos_over_median": float(bos.max().item()) / median if median else math.inf,
        "resid_other_over_median": other / median if median else math.inf,
    }


@torch.no_grad()
def massive_activations(
    model: GrokLlama | LoadedModel, data: LlmData, settings: LlmMeasureSettings = LlmMeasureSettings()
) -> pd.DataFrame:
    """Per layer: residual_peaks of the residual stream after the layer (its output), on the measure subsets."""
    lm, _ = _lm(model)
    splits = _Splits.of(data, settings)
    layers = decoder_layers(lm.model)
    with capture(lm, layers) as seen:  # layer i -> the residual stream after it, [N, T, D]
        body(lm.model)(input_ids=splits.ids.to(lm.model.device), use_cache=False)
    return pd.DataFrame([{"layer": i, **residual_peaks(seen[i])} for i in range(len(layers))])


# ---------------------------------------------------------------------------------------------
# All of them


@dataclass
class LlmMeasures:
    """Every measure of one checkpoint (see the module docstring)."""

    step: int
    causal: pd.DataFrame  # CAUSAL_COLUMNS, one row per (candidate, split)
    activations: pd.DataFrame  # super_activations
    attention: pd.DataFrame  # attention_sink
    fourier: FourierResult
    residual: pd.DataFrame | None = None  # massive_activations
    detection: detect.Detection | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """One row of scalars: what onset analysis reads per checkpoint."""
        causal, acts = self.causal, self.activations
        scan = causal[causal["source"].str.startswith("scan")]
        row: dict = {"step": self.step}
        for split in ("train", "test"):
            part = causal[causal["split"] == split]
            row[f"max_ppl_ratio_{split}"] = float(part["ppl_ratio"].max()) if len(part) else math.nan
            row[f"max_acc_drop_{split}"] = float(part["acc_drop"].max()) if len(part) else math.nan
            row[f"fires_{split}"] = bool(part["fires"].any()) if len(part) else False
            row[f"scan_fires_{split}"] = bool(scan.loc[scan["split"] == split, "fires"].any())
        row["n_scan_candidates"] = len(self.detection.candidates) if self.detection is not None else 0
        row["scan_candidates"] = (
            ";".join("{}:{}:{}".format(*c.coord) for c in self.detection.candidates) if self.detection else ""
        )
        top = acts.loc[acts["max_abs_bos"].idxmax()]
        row["super_activation_bos"] = float(top["max_abs_bos"])
        row["super_activation_layer"] = int(top["layer"])
        row["super_activation_any"] = float(acts[["max_abs_bos", "max_abs_other"]].to_numpy().max())
        row["bos_over_median"] = float(acts["bos_over_median"].max())
        persists = top["persists_in_layers"]
        row["persisting_layers"] = len(persists.split(",")) if persists else 0
        row["sink_share_max"] = float(self.attention["sink_share"].max())
        row["sink_share_mean"] = float(self.attention["sink_share"].mean())
        row["sink_excess_max"] = float(self.attention["sink_excess"].max())
        row["sink_head_excess_max"] = float(self.attention["max_head_excess"].max())
        if self.residual is not None:
            peak = self.residual.loc[self.residual["resid_bos_over_median"].idxmax()]
            row["resid_bos_over_median"] = float(peak["resid_bos_over_median"])
            row["resid_bos_layer"] = int(peak["layer"])
            row["resid_other_over_median"] = float(self.residual["resid_other_over_median"].max())
        row["n_key_frequencies"] = self.fourier.n_key
        row["fourier_covered"] = self.fourier.covered
        return row


def measure_llm_checkpoint(
    step: int, model: GrokLlama, data: LlmData, settings: LlmMeasureSettings = LlmMeasureSettings()
) -> LlmMeasures:
    """All measures of one checkpoint of the LLM-shaped model (the model is left exactly as it was)."""
    lm = as_loaded_model(model)
    prompts = data.prompts(settings.scan_prompts)
    candidates, detection = candidate_weights(lm, prompts, settings)
    return LlmMeasures(
        step=step,
        causal=causal_effects(lm, data, candidates, settings),
        activations=super_activations(lm, data, settings),
        attention=attention_sink(lm, data, settings),
        residual=massive_activations(lm, data, settings),
        fourier=embedding_key_frequencies(model, settings.fourier_share),
        detection=detection,
    )
