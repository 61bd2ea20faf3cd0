"""The registry of the LLM-shaped model's onset measures: each measure is one object (name, label, the
llm_measures.csv columns it writes, how to compute them at a checkpoint, and its onset rule), so onsets, labels
and the study's tables iterate the registry and a new measure is one `register(...)` call in one file.

    register(MeasureSpec(
        name="my_measure", label="what it is",
        columns=("my_value",),
        compute=lambda model, data, settings: {"my_value": ...},   # one checkpoint -> {column: scalar}
        onset=lambda m, s: m["my_value"] >= 3.0,                    # llm_measures.csv rows -> on/off per row
        panel=ChartPanel("My measure over training", "value"),     # the grokking tab charts its columns
    ))

The onset of a measure is the first checkpoint from which its rule is on at every later checkpoint
(engine.grokking.analysis.stays_on_from). The built-in measures below read the columns that
engine.grokking.llm_measures.LlmMeasures.summary writes (compute=None); a registered measure with `compute`
gets its columns added to every checkpoint's row by engine.grokking.analysis.measure_llm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from engine.grokking.config import LLM_MEASURE_LABELS

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
    summary), its onset rule, and its chart panel on the grokking tab (None: not charted on its own)."""

    name: str
    label: str
    columns: tuple[str, ...]
    onset: Rule
    compute: Callable[[Any, Any, Any], dict[str, float]] | None = None
    panel: ChartPanel | None = None


REGISTRY: dict[str, MeasureSpec] = {}


def register(spec: MeasureSpec) -> MeasureSpec:
    """Add (or replace) a measure; it then appears in every run's onsets, the study table and its labels."""
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def label(name: str) -> str:
    spec = REGISTRY.get(name)
    return spec.label if spec else LLM_MEASURE_LABELS.get(name, name)


def _flag(m: pd.DataFrame, column: str) -> pd.Series:
    if column not in m:
        return pd.Series(False, index=m.index)
    return m[column].astype(str).str.lower().isin(["true", "1", "1.0"])


def _sink_excess(m: pd.DataFrame) -> pd.Series:
    if "sink_excess_max" in m:
        return m["sink_excess_max"]
    from engine.grokking.llm_measures import uniform_bos_share  # measured before the excess column: T = 5

    return m["sink_share_max"] - uniform_bos_share(5)


def _column(m: pd.DataFrame, column: str) -> pd.Series:
    return m[column].fillna(0.0) if column in m else pd.Series(0.0, index=m.index)


_BUILT_IN: list[tuple[str, tuple[str, ...], Rule]] = [
    (
        "super_weight",
        ("scan_fires_train", "scan_fires_test"),
        lambda m, s: _flag(m, "scan_fires_train") | _flag(m, "scan_fires_test"),
    ),
    ("super_weight_train", ("scan_fires_train",), lambda m, s: _flag(m, "scan_fires_train")),
    ("super_weight_test", ("scan_fires_test",), lambda m, s: _flag(m, "scan_fires_test")),
    ("top_weight_causal", ("fires_train", "fires_test"), lambda m, s: _flag(m, "fires_train") | _flag(m, "fires_test")),
    (
        "super_activation",
        ("bos_over_median",),
        lambda m, s: m["bos_over_median"] >= s.ratio_factor * m["bos_over_median"].iloc[0],
    ),
    ("persisting_activation", ("persisting_layers",), lambda m, s: m["persisting_layers"] >= 2),
    (
        "fourier",
        ("n_key_frequencies",),
        lambda m, s: m["n_key_frequencies"] <= m["n_key_frequencies"].iloc[0] / s.ratio_factor,
    ),
]
for _name, _columns, _rule in _BUILT_IN:  # charted together in the tab's fixed panels (ui.grokking_charts)
    register(MeasureSpec(_name, LLM_MEASURE_LABELS[_name], _columns, _rule))
register(
    MeasureSpec(
        "attention_sink",
        LLM_MEASURE_LABELS["attention_sink"],
        ("sink_excess_max", "sink_head_excess_max", "sink_share_max"),
        lambda m, s: _sink_excess(m) >= s.sink_excess,
        panel=ChartPanel("Attention sink: BOS share (and its excess over uniform attention)", "share"),
    )
)
register(
    MeasureSpec(
        "massive_activation",
        LLM_MEASURE_LABELS["massive_activation"],
        ("resid_bos_over_median",),
        lambda m, s: _column(m, "resid_bos_over_median") >= s.massive_ratio,
        panel=ChartPanel("Massive activation: residual |h| at BOS / median (log)", "ratio", "log"),
    )
)
