"""Censored grokking outcomes and their statistics, checked against hand-computed examples: the durable grokking
outcome (held / collapsed / never / unconfirmed), Kaplan-Meier, the log-rank test with and without strata, paired
log differences, and onset lags."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.grokking import survival
from engine.grokking.analysis import grok_outcome, hold_steps_of, llm_onsets


def _metrics(test_acc: list[float], every: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"step": [i * every for i in range(len(test_acc))], "test_acc": test_acc})


def test_grokked_means_reached_and_held_for_the_window():
    held = _metrics([0.1, 0.5, 0.96, 0.97, 0.99, 0.98, 0.99])  # 95% first at 100, held to 300
    assert grok_outcome(held, hold_steps=200) == ("grokked", 100, 100)
    collapsed = _metrics([0.1, 0.96, 0.97, 0.30, 0.96, 0.99, 0.20])  # falls in every observed window: collapsed
    assert grok_outcome(collapsed, hold_steps=200) == ("collapsed", None, 300)
    dipped = _metrics([0.1, 0.96, 0.90, 0.96, 0.97, 0.99, 0.98, 0.99])  # dips at 100, then holds from 150 to 350
    assert grok_outcome(dipped, hold_steps=200) == ("grokked", 150, 150)
    rerising = _metrics([0.1, 0.96, 0.30, 0.96, 0.99])  # fell, rose again at 150, run ended inside the window
    assert grok_outcome(rerising, hold_steps=200) == ("unconfirmed", None, 200)
    never = _metrics([0.1, 0.2, 0.5])
    assert grok_outcome(never, hold_steps=200) == ("never", None, 100)
    short = _metrics([0.1, 0.96, 0.99])  # ended 50 steps after reaching it: the window is not observed
    assert grok_outcome(short, hold_steps=200) == ("unconfirmed", None, 100)
    assert hold_steps_of(-1) == 200 and hold_steps_of(50) == 50 and hold_steps_of(500) == 200


def test_kaplan_meier_matches_the_hand_example():
    # times 1, 2, 2+, 3, 4+: S(1) = 4/5, S(2) = 4/5 x 3/4 = 3/5, S(3) = 3/5 x 1/2 = 3/10
    km = survival.kaplan_meier(np.array([1, 2, 2, 3, 4]), np.array([1, 1, 0, 1, 0]))
    got = dict(zip(km["step"], km["grokked"]))
    assert got[1.0] == pytest.approx(0.2) and got[2.0] == pytest.approx(0.4) and got[3.0] == pytest.approx(0.7)
    assert km["at_risk"].tolist()[:3] == [5, 4, 2]
    assert (km["low"] <= km["grokked"]).all() and (km["grokked"] <= km["high"]).all()
    assert survival.kaplan_meier(np.array([5, 6]), np.array([0, 0])).empty  # no event: nothing to estimate


def test_log_rank_matches_the_hand_example_with_and_without_strata():
    # arm A: events at 1 and 3; arm B: event at 2, censored at 4. Risk sets (A, B): t=1 (2, 2), t=2 (1, 2),
    # t=3 (1, 1). O_A - E_A = 2 - (1/2 + 1/3 + 1/2) = 2/3; V = 1/4 + 2/9 + 1/4 = 13/18; chi2 = (2/3)^2 / V = 8/13
    table = pd.DataFrame({"arm": ["A", "A", "B", "B"], "time": [1, 3, 2, 4], "event": [1, 1, 1, 0], "seed": 0})
    plain = survival.logrank(table, "A", "B", strata=None)
    assert plain.chi2 == pytest.approx(8 / 13) and plain.events == 3
    # two strata, each the same data: O - E and V add up, chi2 = (4/3)^2 / (13/9) = 16/13
    two = pd.concat([table.assign(seed=0), table.assign(seed=1)])
    stratified = survival.logrank(two, "A", "B")
    assert stratified.chi2 == pytest.approx(16 / 13) and stratified.stratified_by == "seed"
    # strata matter: pooling strata with different baselines differs from the stratified test
    shifted = pd.concat([table.assign(seed=0), table.assign(seed=1, time=table["time"] * 10)])
    assert survival.logrank(shifted, "A", "B").chi2 != pytest.approx(survival.logrank(shifted, "A", "B", None).chi2)
    assert survival.logrank(table.assign(event=0), "A", "B") is None


def test_paired_log_differences_count_every_pair():
    table = pd.DataFrame(
        {
            "arm": ["z"] * 5 + ["c"] * 5,
            "seed": list(range(5)) * 2,
            "time": [200, 400, 300, 900, 800, 100, 200, 100, 500, 700],
            "event": [1, 1, 1, 0, 0, 1, 1, 1, 1, 0],
        }
    )
    d = survival.paired_log_differences(table, "z", "c")
    assert (d.n_pairs, d.n_both, d.n_arm_only, d.n_reference_only, d.n_neither) == (5, 3, 0, 1, 1)
    assert d.diffs == pytest.approx([math.log(2), math.log(2), math.log(3)])
    assert d.mean == pytest.approx(np.mean(d.diffs)) and d.low <= d.mean <= d.high


def test_onset_lag_sign_test_and_interval():
    lag = survival.onset_lag(np.array([-100.0, -50.0, -200.0, -150.0, -100.0, 0.0]), 8, "attention_sink")
    assert (lag.n_before, lag.n_after, lag.n_same, lag.n_with_onset, lag.n_grokked) == (5, 0, 1, 6, 8)
    assert lag.p_sign == pytest.approx(2 * 0.5**5) and lag.high < 0 and lag.median == -100.0


def test_sink_and_massive_activation_onsets_use_their_thresholds():
    m = pd.DataFrame(
        {
            "step": [0, 100, 200, 300],
            "sink_excess_max": [0.01, 0.25, 0.1, 0.3],  # on at 100, off at 200, on from 300
            "resid_bos_over_median": [3.0, 25.0, 30.0, 40.0],  # on from 100
            **{c: [False] * 4 for c in ("scan_fires_train", "scan_fires_test", "fires_train", "fires_test")},
            "bos_over_median": [1.0] * 4,
            "persisting_layers": [0] * 4,
            "n_key_frequencies": [10] * 4,
        }
    )
    found = llm_onsets(m)
    assert found["attention_sink"] == 300 and found["massive_activation"] == 100
    # a run measured before the excess column: the share minus the 5-token uniform share (0.32 reads 0)
    old = m.drop(columns=["sink_excess_max", "resid_bos_over_median"]).assign(sink_share_max=[0.32] * 4)
    assert llm_onsets(old)["attention_sink"] is None and llm_onsets(old)["massive_activation"] is None


def test_dips_are_counted_and_the_stop_counts_from_the_latest_rise():
    from engine.grokking.analysis import dips_after_grokking
    from engine.grokking.training import latest_rise

    dipped = _metrics([0.1, 0.96, 0.90, 0.96, 0.97, 0.94, 0.98, 0.99])
    assert dips_after_grokking(dipped, 150) == (1, 0.94)  # one evaluation below 95% after the grokking step
    assert dips_after_grokking(dipped, None) == (0, None)
    assert latest_rise(dipped, 0.95) == 300  # rose at 50, 150 and 300: the stop counts from 300
    assert latest_rise(_metrics([0.1, 0.5]), 0.95) is None
    assert latest_rise(_metrics([0.97, 0.99]), 0.95) == 0
