"""Super-weight measures on hand-made tensors with known answers, the causal test on a planted model,
onset definitions and the sweep statistics / plain-language summary."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from engine.grokking import analysis
from engine.grokking.measures import (
    MeasureSettings,
    activation_measures,
    causal_test,
    measure_checkpoint,
    weight_measures,
)


class Planted(nn.Module):
    """logit_1 - logit_0 = 5 * x0 through the single weight W[1, 0]; the other weights are tiny noise."""

    def __init__(self, planted: bool = True):
        super().__init__()
        self.lin = nn.Linear(8, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)) * 1e-3)
            self.lin.weight[:, 0] = 0.0  # no path from x0 except the planted weight
            if planted:
                self.lin.weight[1, 0] = 5.0

    def forward(self, x, acts=None):
        h = self.lin(x)
        if acts is not None:
            acts["lin"] = h.detach()
        return h


def _planted_data(n: int = 400):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g) * 0.1
    sign = torch.randint(0, 2, (n,), generator=g)
    x[:, 0] = sign.float() * 2 - 1
    return x, sign


def test_weight_measures_known_answers():
    w = torch.ones(4, 4)
    w[2, 1] = -10.0
    model = nn.Module()
    model.w = nn.Parameter(w)
    row = weight_measures(model).iloc[0]
    assert row["max_over_median"] == pytest.approx(10.0)
    assert row["argmax"] == "(2,1)"
    assert row["max_abs"] == pytest.approx(10.0)
    # excess kurtosis of 15 ones and one -10: scipy's biased Fisher value, computed by hand
    v = w.flatten().double()
    m = v.mean()
    expected = float(((v - m) ** 4).mean() / ((v - m) ** 2).mean() ** 2 - 3)
    assert row["kurtosis"] == pytest.approx(expected, rel=1e-5)
    assert expected > 10  # one outlier among 16 entries is a heavy tail


def test_activation_measure_is_max_over_median_per_layer():
    model = Planted()
    x = torch.zeros(3, 8)
    x[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    frame = activation_measures(model, x)
    h = model.lin(x).abs().flatten()
    assert frame.loc[0, "name"] == "lin"
    assert frame.loc[0, "max_over_median"] == pytest.approx((h.max() / h.median()).item())


def test_causal_test_finds_the_planted_weight_and_only_it():
    x, y = _planted_data()
    frame = causal_test(Planted(), x, y, MeasureSettings(k=3, threshold=0.10, n_random=5))
    row = frame.iloc[0]
    assert row["acc_base"] == 1.0
    assert row["drop_top1"] > 0.3  # without W[1,0] only noise decides: about chance
    assert row["drop_random"] == pytest.approx(0.0, abs=0.01)  # random weights outside the top k do nothing
    assert bool(row["is_super"])
    # the same matrix without the planted path has no super weight
    unplanted = causal_test(Planted(planted=False), x, y, MeasureSettings(k=3)).iloc[0]
    assert not bool(unplanted["is_super"])
    # the model's weights are restored after the ablations
    model = Planted()
    before = model.lin.weight.clone()
    measure_checkpoint(0, model, x, y)
    assert torch.equal(model.lin.weight, before)


def test_stays_on_from_and_onsets_on_a_hand_made_table():
    assert analysis.stays_on_from([0, 1, 2, 3, 4], [False, True, False, True, True]) == 3
    assert analysis.stays_on_from([0, 1, 2], [True, True, False]) is None
    assert analysis.stays_on_from([0, 1, 2], [False, False, True]) is None  # on at the last checkpoint only
    rows = []
    for step, (ratio, kurt, arg, sup, act) in zip(
        [0, 100, 200, 300, 400],
        [
            (5, 0, "(0,0)", False, 3),
            (6, 1, "(1,1)", False, 7),
            (11, 6, "(2,2)", True, 6.5),
            (9, 7, "(2,2)", False, 8),
            (12, 8, "(2,2)", True, 9),
        ],
    ):
        rows.append(
            {
                "step": step,
                "kind": "weight",
                "name": "W",
                "max_over_median": ratio,
                "kurtosis": kurt,
                "argmax": arg,
                "is_super": sup,
            }
        )
        rows.append({"step": step, "kind": "activation", "name": "L", "max_over_median": act})
    got = analysis.onsets(pd.DataFrame(rows))
    assert got == {  # super weight and max/median are on at the last checkpoint only: not confirmed, no onset
        "super_weight": None,
        "max_over_median": None,
        "kurtosis": 200,
        "top_coordinate": 200,
        "massive_activation": 100,
    }


def _table(onsets, groks):
    return pd.DataFrame(
        {
            "onset_step": onsets,
            "grok_95_step": groks,
            "grokked": [g is not None for g in groks],
            "lag": [None if o is None or g is None else o - g for o, g in zip(onsets, groks)],
            "final_test_acc": [1.0] * len(groks),
        }
    ).astype({"onset_step": float, "grok_95_step": float, "lag": float})


def test_connection_and_plain_summary_follow_the_numbers():
    lead = _table(
        [100, 300, 500, 700, 900, 1100, 1300, 1500, 1700, 1900],
        [400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2200],
    )
    stats = analysis.connection(lead)
    assert stats.n_before == 10 and stats.median_lag == -300
    assert stats.r == pytest.approx(1.0) and stats.ci_low > 0.9
    assert analysis.connection_found(stats)
    text = analysis.plain_summary(stats)
    assert "In 10 of 10 grokked runs" in text and "300 steps before grokking" in text and "No connection" not in text

    mixed = _table([900, 100, 700, 300, 500, 200], [400, 800, 300, 900, 450, 700])
    mstats = analysis.connection(mixed)
    assert mstats.ci_low < 0 < mstats.ci_high or mstats.ci_high < 0
    assert not analysis.connection_found(mstats) or mstats.r < 0
    none = _table([None, None, 500], [None, None, None])
    assert "no connection found" in analysis.plain_summary(analysis.connection(none)).lower()
    assert (
        "Contrast: 1 of 3 runs that did not grok" in analysis.plain_summary(analysis.connection(none))
        or analysis.connection(none).n_grokked == 0
    )
