"""Pre-registered contrasts (engine/uq/contrasts.py) on planted truth: with against without the decomposition."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.core.errors import LabError
from engine.uq.contrasts import (
    choose_contrast,
    contrast_verdict,
    contrasts_markdown,
    planned,
    require_columns,
    run_contrasts,
)

N = 400


def table(seed: int = 0, signal: str = "discriminant") -> tuple[pd.DataFrame, np.ndarray]:
    """Every contrast column as noise; `signal`'s semantic correctness probe = wrong + small noise."""
    rng = np.random.default_rng(seed)
    correct = (rng.random(N) < 0.5).astype(float)
    columns = {c: rng.normal(size=N) for spec in planned() for c in (spec.enhanced, spec.baseline)}
    if signal:
        columns[f"correctness_probe_{signal}_semantic"] = (1 - correct) + 0.3 * rng.normal(size=N)
    return pd.DataFrame(columns), correct


def test_planted_gain_is_found_in_the_primary_family_and_against_the_controls():
    scores, correct = table()
    rows = run_contrasts(scores, correct, n_boot=20_000)
    by_name = {(c["name"], c["metric"]): c for c in rows}
    gain = by_name[("correctness probe, discriminant: semantic subspace vs full state", "auroc")]
    assert gain["p_holm"] < 0.01 and gain["ci_low"] > 0 and gain["one_sided"] and gain["method"] == "delong"
    acc = by_name[("correctness probe, discriminant: semantic subspace vs full state", "acc50")]
    assert acc["p_holm"] < 0.01 and acc["family"] == "primary acc@50"
    controls = [c for c in rows if c["family"] == "same-rank control" and c["enhanced"] == gain["enhanced"]]
    assert len(controls) == 2 and all(c["p_holm"] < 0.01 for c in controls)
    others = [c for c in rows if c["family"] == "primary" and c is not gain]
    assert all(c["p_holm"] > 0.01 for c in others)  # noise against noise: nothing at the planted level
    verdict = contrast_verdict(rows, N)
    assert verdict.answer == "useful" and verdict.best == gain["name"]
    assert choose_contrast(rows)["enhanced"] == "correctness_probe_discriminant_semantic"
    assert "| primary | correctness probe, discriminant" in contrasts_markdown(rows)


def test_identical_columns_give_intervals_covering_zero_and_no_verdict_of_use():
    scores, correct = table(1, signal="")
    for spec in planned():
        scores[spec.enhanced] = scores[spec.baseline] if spec.family == "primary" else scores[spec.enhanced]
    rows = run_contrasts(scores, correct, [s for s in planned() if s.family.startswith("primary")], n_boot=2000)
    for c in rows:
        assert c["ci_low"] <= 0 <= c["ci_high"] and c["estimate"] == 0 and c["p"] == 1, c["name"]
    assert contrast_verdict(rows, N).answer == "not useful"


def test_missing_columns_are_named_and_mde_shrinks_with_n():
    scores, correct = table(2)
    rows = run_contrasts(scores.drop(columns=["full_state_spread"]), correct, n_boot=2000)
    spread = [c for c in rows if c["baseline"] == "full_state_spread"]
    assert spread and all(c["missing"] == ["full_state_spread"] and math.isnan(c["estimate"]) for c in spread)
    spec = next(s for s in planned() if s.baseline == "full_state_spread")
    with pytest.raises(LabError, match="full_state_spread"):
        require_columns(spec, scores.drop(columns=["full_state_spread"]).columns)
    small = run_contrasts(scores.iloc[:100], correct[:100], [spec], n_boot=2000)[0]
    large = run_contrasts(scores, correct, [spec], n_boot=2000)[0]
    assert large["mde"] < small["mde"]


def test_a_bootstrap_family_too_small_to_reach_alpha_is_refused():
    scores, correct = table(3)
    with pytest.raises(LabError, match=r"primary acc@50 family cannot reach alpha = 0\.05: 9 tests with 100"):
        run_contrasts(scores, correct, n_boot=100)


def test_seed_to_seed_spread_of_a_contrast():
    scores, correct = table(4)
    rng = np.random.default_rng(0)
    column = "correctness_probe_discriminant_semantic"
    seeds = {column: np.stack([scores[column] + 0.5 * rng.normal(size=N) for _ in range(10)])}
    spec = next(s for s in planned() if s.enhanced == column and s.family == "primary")
    row = run_contrasts(scores, correct, [spec], seed_scores=seeds)[0]
    assert row["n_seeds"] == 10 and row["seed_sd"] > 0 and row["seed_min"] <= row["seed_max"]
