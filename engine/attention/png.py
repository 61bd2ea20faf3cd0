"""A PNG heatmap of one attention head with token labels, drawn with PIL (no matplotlib here).

Used to show a vision-language model the head's pattern. Rows are query tokens, columns key
tokens; colour = weight on a white-to-dark-blue ramp (scaled to the largest shown weight);
key positions after the query (masked by causality) are light grey.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


def _font(size: int):
    for path in _FONT_PATHS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # PIL without FreeType
        return ImageFont.load_default()


def _colour(values: np.ndarray) -> np.ndarray:
    """White (0) to dark blue (1) as uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    white = np.array([255, 255, 255], dtype=np.float64)
    blue = np.array([8, 48, 107], dtype=np.float64)
    return (white + (blue - white) * v).astype(np.uint8)


def heatmap_image(
    pattern: np.ndarray,
    labels: list[str],
    title: str = "",
    cell: int = 14,
    hide_first_column: bool = False,
    max_label_chars: int = 12,
) -> Image.Image:
    """Render an [n, n] attention pattern with token labels on both axes; returns a PIL image."""
    a = np.asarray(pattern, dtype=np.float64)
    n = a.shape[0]
    keys = list(range(1 if hide_first_column and n > 1 else 0, n))
    shown = a[:, keys]
    causal = np.array([[k <= q for k in keys] for q in range(n)])
    vmax = float(shown[causal].max()) if causal.any() and shown[causal].max() > 0 else 1.0
    font = _font(max(9, cell - 3))
    short = [lab if len(lab) <= max_label_chars else lab[: max_label_chars - 1] + "\u2026" for lab in labels]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(s, font=font)) for s in short) + 6
    top = label_w + (22 if title else 4)
    left = label_w
    width, height = left + cell * len(keys) + 8, top + cell * n + 8
    img = Image.new("RGB", (width, height), "white")
    rgb = _colour(shown / vmax)
    rgb[~causal] = (235, 235, 235)
    grid = Image.fromarray(rgb.astype(np.uint8), "RGB").resize((cell * len(keys), cell * n), Image.NEAREST)
    img.paste(grid, (left, top))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for q in range(n):
        draw.text((left - 4, top + q * cell + cell // 2), short[q], fill="black", font=font, anchor="rm")
    # Column labels: drawn on a strip, rotated a quarter turn so they read upwards from the grid.
    strip = Image.new("RGB", (label_w, cell * len(keys)), "white")
    sdraw = ImageDraw.Draw(strip)
    for c, k in enumerate(keys):
        sdraw.text((4, c * cell + cell // 2), short[k], fill="black", font=font, anchor="lm")
    img.paste(strip.rotate(90, expand=True), (left, top - label_w))
    return img


def heatmap_png(pattern: np.ndarray, labels: list[str], title: str = "", **kwargs) -> bytes:
    """PNG bytes of `heatmap_image(...)`."""
    buffer = io.BytesIO()
    heatmap_image(pattern, labels, title, **kwargs).save(buffer, format="PNG")
    return buffer.getvalue()
