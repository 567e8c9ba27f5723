"""A small line plot drawn with Pillow (no plotting library needed): a metric over training steps."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, size=(640, 400)) -> Image.Image:
    """One line per series, points marked; axes span the data with a little margin."""
    w, h = size
    left, right, top, bottom = 64, 160, 34, 44
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=12)
    pts = [p for s in series.values() for p in s]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.1 or 0.01
    y0, y1 = y0 - pad, y1 + pad

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.text((left, 8), title, fill="black", font=font)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        _, py = at(x0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((6, py - 7), f"{y:.3f}", fill="black", font=font)
    for x in _ticks(sorted(set(xs))):
        px, _ = at(x, y0)
        d.line([px, h - bottom, px, h - bottom + 4], fill="black")
        d.text((px - 10, h - bottom + 6), f"{x:g}", fill="black", font=font)
    d.text(((w - right + left) / 2 - 20, h - 18), xlabel, fill="black", font=font)
    for k, (label, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        s = sorted(s)
        if len(s) > 1:
            d.line([at(x, y) for x, y in s], fill=color, width=2)
        for x, y in s if len(s) <= 40 else []:  # points marked while they can be told apart
            px, py = at(x, y)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        d.text((w - right + 10, top + 16 * k), label, fill=color, font=font)
    return im


def _ticks(xs: list[float], most: int = 8) -> list[float]:
    """The x values to label: all of a few (checkpoint steps), else about `most` round numbers."""
    if len(xs) <= most:
        return xs
    span = xs[-1] - xs[0]
    step = 10 ** math.floor(math.log10(span / most))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= most:
            step *= m
            break
    first = math.ceil(xs[0] / step) * step
    return [first + i * step for i in range(int((xs[-1] - first) // step) + 1)]
