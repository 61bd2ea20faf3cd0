"""Make the home page's two preview figures that no study writes (docs/previews/*.png), from the
embedded Gemma 3 270M with the engine's own functions: `python docs/make_previews.py` (~1 min on a CPU).

- superweights.png: the super-weight scan of the paper's prompt (Yu et al. 2024): max |input| of each
  layer's down projection, log scale: the spike is the super-weight layer;
- attention.png: the head that scores highest as a previous-token head on a prompt with a repeated
  phrase, drawn by engine.attention.png (the page's PNG export).
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np

from engine.attention.head_functions import score_heads
from engine.attention.maps import run_attention
from engine.attention.png import heatmap_png
from engine.core.embedded import EMBEDDED_LM
from engine.core.figures import chart_png
from engine.core.loading import load_model
from engine.superweights.config import DEFAULT_PROMPT
from engine.superweights.detect import scan

OUT = Path(__file__).resolve().parent / "previews"
PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog."


def main() -> None:
    OUT.mkdir(exist_ok=True)
    lm = load_model(EMBEDDED_LM)
    frame = scan(lm, DEFAULT_PROMPT).frame()
    n = len(frame)
    chart = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("max_abs_input:Q", title="max |input| of down_proj", scale=alt.Scale(type="log")),
        )
        .properties(width=360, height=160, title=f"Super-weight scan, {n} layers")
    )
    (OUT / "superweights.png").write_bytes(chart_png(chart))

    result = run_attention(lm, PROMPT)
    scores = score_heads(result.maps, result.token_ids)["previous_token"]  # [L, H]
    layer, head = np.unravel_index(int(np.nanargmax(scores)), scores.shape)
    png = heatmap_png(
        result.maps[layer, head],
        result.labels,
        f"Layer {layer}, head {head}: previous-token score {scores[layer, head]:.2f}",
        cell=12,
    )
    (OUT / "attention.png").write_bytes(png)
    print(f"wrote {OUT}/superweights.png and attention.png (head {layer}.{head})")


if __name__ == "__main__":
    main()
