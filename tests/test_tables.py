"""ui.tables: what every page's tables go through (columns in words, no "None", "nan" or empty cell)."""

from __future__ import annotations

import math

import pandas as pd

from ui.tables import MISSING, readable


def test_columns_in_words_and_no_empty_cell():
    frame = pd.DataFrame(
        {
            "ppl_ratio": [1.0, 2.5],
            "A1 CI": ["", "[0.1, 0.2]"],
            "p_holm": [None, 0.01],
            "kappa": [math.nan, 0.4],
            "held": [True, False],
        }
    )
    shown = readable(frame, {"ppl_ratio": "perplexity ratio"})
    assert list(shown.columns) == ["perplexity ratio", "A1 CI", "p holm", "kappa", "held"]
    assert shown["perplexity ratio"].dtype == float  # complete numbers stay numbers (they sort as numbers)
    assert shown["A1 CI"].tolist() == [MISSING, "[0.1, 0.2]"]
    assert shown["p holm"].tolist() == [MISSING, "0.01"] and shown["kappa"].tolist() == [MISSING, "0.4"]
    assert shown["held"].tolist() == ["yes", "no"]
