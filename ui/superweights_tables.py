"""The super-weights tab's tables in words: every column of the scan, the candidates, the published
comparison, the weight statistics, the top weights, the ablation and the quantization named for what it
holds (ui.tables.readable: no "None", "nan" or empty cell). The CSV downloads keep the engine's names.
"""

from __future__ import annotations

import pandas as pd

from ui.tables import MISSING, readable

SCAN = {
    "layer": "layer",
    "max_abs_input": "max |input|",
    "input_channel": "input channel",
    "input_token": "input token",
    "input_prompt": "input prompt",
    "max_abs_output": "max |output|",
    "output_value": "output value",
    "output_channel": "output channel",
    "output_token": "output token",
    "output_prompt": "output prompt",
}
CANDIDATES = {  # engine.superweights.detect.Candidate
    "iteration": "found at iteration",
    "layer": "layer",
    "row": "row (output channel)",
    "col": "column (input channel)",
    "weight": "weight W[row, column]",
    "rank": "rank of |w| in its matrix",
    "matrix_size": "weights in its matrix",
    "super_activation": "super activation y[t, row]",
    "spike_ratio": "max |output| / median over layers",
    "input_value": "input x[t, column]",
    "share": "share of the spike, W·x / y",
    "prompt": "prompt",
    "token": "token position t",
    "token_text": "token",
    "residual_value": "residual stream h[t, row]",
    "persists_in_layers": "persists in layers",
    "role": "role",
    "spike_left": "spike left with the weight zeroed",
    "residual_in": "residual stream entering, h[t, row]",
    "residual_change": "its change of the residual stream",
}
PUBLISHED = {
    "layer": "layer",
    "row": "row",
    "col": "column",
    "published": "published",
    "detected": "detected here",
    "iteration": "found at iteration",
}
WEIGHT_STATS = {
    "layer": "layer",
    "projection": "projection",
    "shape": "shape (out × in)",
    "max_over_median": "max |w| / median |w|",
    "kurtosis": "excess kurtosis",
    "max_abs": "max |w|",
    "row": "row of max |w|",
    "col": "column of max |w|",
}
TOP_WEIGHTS = {"rank": "rank", "row": "row", "col": "column", "value": "weight"}
ABLATION = {
    "condition": "condition",
    "perplexity": "perplexity",
    "ppl_ratio": "perplexity ratio, ablated / original",
    "p_stopwords": "P(next token is a stopword), mean",
    "p_expected": "P(next token is the expected word), mean",
    "continuation": "greedy continuation (first prompt)",
}
CONTINUATIONS = {"condition": "condition", "prompt": "prompt", "continuation": "greedy continuation"}
STOPWORDS = {
    "prompt": "prompt",
    "expected": "expected word",
    "p_stopwords": "P(next token is a stopword)",
    "p_expected": "P(next token is the expected word)",
    "top1": "most likely next token",
    "condition": "condition",
}
QUANTIZATION = {
    "block_size": "block size (weights)",
    "method": "method",
    "bits": "bits",
    "perplexity": "perplexity",
    "ppl_ratio": "perplexity ratio vs original",
    "held_weights": "weights held in full precision",
}
QUANTIZATION_NOTE = f"{MISSING}: not quantized (the original model's row)."


def persists_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Candidates whose spike persists in no later layer say "none" (not an empty cell)."""
    if "persists_in_layers" not in frame:
        return frame
    return frame.assign(persists_in_layers=frame["persists_in_layers"].map(lambda v: str(v) or "none"))


def table(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """`frame` to show with `labels` (ui.tables.readable)."""
    return readable(persists_text(frame), labels)
