"""The registry of the LLM-shaped model's onset measures: each measure is one object (name, label, the
llm_measures.csv columns it writes, how to compute them at a checkpoint, its onset rule, its chart panel and
its trace in the study report), so onsets, labels, charts and the study's tables and figure iterate the
registry and a new measure is one `register(...)` call in one file.

    register(MeasureSpec(
        name="my_measure", label="what it is",
        columns=("my_value",),
        compute=lambda model, data, settings: {"my_value": ...},   # one checkpoint -> {column: scalar}
        onset=lambda m, s: m["my_value"] >= 3.0,                    # llm_measures.csv rows -> on/off per row
        panel=ChartPanel("My measure over training", "value"),     # the grokking tab charts its columns
        trace=("my_value", "my value"),                             # the study report draws it over the steps
    ))

Every name and label is read from here: engine.grokking.config.LLM_MEASURE_LABELS and LLM_MEASURES are views
of REGISTRY (the run's summary sentence and the tab's onset table), analysis.llm_onsets and measure_llm iterate
it, and engine.grokking.study derives its runs table and trace figure from each measure's `trace`.

The onset of a measure is the first checkpoint from which its rule is on at every later checkpoint
(engine.grokking.analysis.stays_on_from). The built-in measures below read the columns that
engine.grokking.llm_measures.LlmMeasures.summary writes (compute=None); a registered measure with `compute`
gets its columns added to every checkpoint's row by engine.grokking.analysis.measure_llm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Rule = Callable[[pd.DataFrame, Any], pd.Series]  # (llm_measures rows sorted by step, OnsetSettings) -> bools


@dataclass(frozen=True)
class ChartPanel:
    """How the grokking tab charts a measure's columns over the steps: a title, the y axis and its scale."""

    title: str
    axis_title: str
    scale: Literal["linear", "log"] = "linear"


@dataclass(frozen=True)
class MeasureSpec:
    """One onset measure: name, label, the columns it writes, compute (or None: columns written by the built-in
    summary), its onset rule, its chart panel on the grokking tab (None: not charted on its own), and its trace:
    (column, label) the study report draws against the step, with the measure's onset and that column's
    largest value in the report's runs table (None: in the study's onset tables and runs.csv only)."""

    name: str
    label: str
    columns: tuple[str, ...]
    onset: Rule
    compute: Callable[[Any, Any, Any], dict[str, float]] | None = None
    panel: ChartPanel | None = None
    trace: tuple[str, str] | None = None


REGISTRY: dict[str, MeasureSpec] = {}


def register(spec: MeasureSpec) -> MeasureSpec:
    """Add (or replace) a measure; it then appears in every run's onsets, the study table and its labels."""
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def label(name: str) -> str:
    spec = REGISTRY.get(name)
    return spec.label if spec else name


def traces() -> dict[str, str]:
    """column -> label of every registered measure's trace (MeasureSpec.trace), in registry order."""
    return {spec.trace[0]: spec.trace[1] for spec in REGISTRY.values() if spec.trace is not None}


def uniform_bos_share(seq_len: int) -> float:
    """The BOS share of uniform causal attention, averaged over queries 1..T-1: mean_{i=1..T-1} 1 / (i + 1)."""
    return float(np.mean(1.0 / np.arange(2, seq_len + 1))) if seq_len > 1 else 1.0


def _flag(m: pd.DataFrame, column: str) -> pd.Series:
    if column not in m:
        return pd.Series(False, index=m.index)
    return m[column].astype(str).str.lower().isin(["true", "1", "1.0"])


def _sink_excess(m: pd.DataFrame) -> pd.Series:
    if "sink_excess_max" in m:
        return m["sink_excess_max"]
    return m["sink_share_max"] - uniform_bos_share(5)  # measured before the excess column: the 5-token task


def _column(m: pd.DataFrame, column: str) -> pd.Series:
    return m[column].fillna(0.0) if column in m else pd.Series(0.0, index=m.index)


# the built-in measures (columns written by LlmMeasures.summary); those without a panel are charted together in
# the tab's fixed panels (ui.grokking_charts)
for _spec in (
    MeasureSpec(
        "super_weight",
        "super weight (scan + causal, train or test)",
        ("scan_fires_train", "scan_fires_test"),
        lambda m, s: _flag(m, "scan_fires_train") | _flag(m, "scan_fires_test"),
        trace=("max_ppl_ratio_train", "max perplexity ratio, one weight zeroed (train)"),
    ),
    MeasureSpec(
        "super_weight_train",
        "super weight (scan + causal on train)",
        ("scan_fires_train",),
        lambda m, s: _flag(m, "scan_fires_train"),
    ),
    MeasureSpec(
        "super_weight_test",
        "super weight (scan + causal on test)",
        ("scan_fires_test",),
        lambda m, s: _flag(m, "scan_fires_test"),
    ),
    MeasureSpec(
        "top_weight_causal",
        "a top-|w| or scan weight is causal",
        ("fires_train", "fires_test"),
        lambda m, s: _flag(m, "fires_train") | _flag(m, "fires_test"),
    ),
    MeasureSpec(
        "super_activation",
        "super activation at BOS",
        ("bos_over_median",),
        lambda m, s: m["bos_over_median"] >= s.ratio_factor * m["bos_over_median"].iloc[0],
        trace=("bos_over_median", "down-projection output at BOS / median"),
    ),
    MeasureSpec(
        "persisting_activation",
        "persisting BOS activation",
        ("persisting_layers",),
        lambda m, s: m["persisting_layers"] >= 2,
    ),
    MeasureSpec(
        "fourier",
        "few key Fourier frequencies",
        ("n_key_frequencies",),
        lambda m, s: m["n_key_frequencies"] <= m["n_key_frequencies"].iloc[0] / s.ratio_factor,
    ),
    MeasureSpec(
        "attention_sink",
        "attention sink on BOS (share above uniform)",
        ("sink_excess_max", "sink_head_excess_max", "sink_share_max"),
        lambda m, s: _sink_excess(m) >= s.sink_excess,
        panel=ChartPanel("Attention sink: BOS share (and its excess over uniform attention)", "share"),
        trace=("sink_excess_max", "attention on BOS above uniform (max layer)"),
    ),
    MeasureSpec(
        "massive_activation",
        "massive activation (residual |h| at BOS / median)",
        ("resid_bos_over_median",),
        lambda m, s: _column(m, "resid_bos_over_median") >= s.massive_ratio,
        panel=ChartPanel("Massive activation: residual |h| at BOS / median (log)", "ratio", "log"),
        trace=("resid_bos_over_median", "residual |h| at BOS / median (max layer)"),
    ),
):
    register(_spec)
