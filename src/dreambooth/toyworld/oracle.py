"""Reading a toy-world image back: background colour (border pixels), the object's colour (the
palette colour most of it is), its surface pattern (how the off-colour pixels lie) and its shape
(the best-overlapping template, fitted to the object's bounding box). This is the world's own
measure of what a model drew; it is never called DINO or CLIP."""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from .world import BACKGROUNDS, OBJECT_COLORS, SHAPES, shape_mask

_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_OBJ = np.array(list(OBJECT_COLORS.values()), dtype=np.float32)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)
    return d.argmin(-1), d.min(-1)


@cache
def _template_box(shape: str) -> tuple[float, float, float, float]:
    """The tight bounding box of a shape drawn in the unit square, as fractions (x, y, w, h)."""
    m = np.asarray(shape_mask(shape, 0, 0, 256, res=256)) > 127
    ys, xs = np.nonzero(m)
    return xs.min() / 256, ys.min() / 256, (xs.max() - xs.min() + 1) / 256, (ys.max() - ys.min() + 1) / 256


def read_scene(image: Image.Image) -> dict[str, str]:
    """{'background', 'color', 'pattern', 'shape'} of a toy-world image (any size; read at 64 px)."""
    im = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
    bg_rgb = np.median(border, axis=0)
    bg = list(BACKGROUNDS)[int(_nearest(bg_rgb[None], _BG)[0][0])]
    mask = _object_mask(im, bg_rgb)
    if mask.sum() < 12:
        return {"background": bg, "color": "none", "pattern": "none", "shape": "none"}
    labels, dist = _nearest(im[mask], _OBJ)
    close = dist < 60
    counts = (
        np.bincount(labels[close], minlength=len(_OBJ)) if close.any() else np.bincount(labels, minlength=len(_OBJ))
    )
    color_i = int(counts.argmax())
    color = list(OBJECT_COLORS)[color_i]
    off = np.zeros_like(mask)
    off[mask] = np.linalg.norm(im[mask] - _OBJ[color_i], axis=-1) > 80
    return {"background": bg, "color": color, "pattern": _pattern(mask, off), "shape": _shape(mask)}


def _object_mask(im: np.ndarray, bg_rgb: np.ndarray) -> np.ndarray:
    """(64, 64) object pixels: far from the background colour, not on the 2-pixel frame (objects never
    touch it; decoders leave faint artefacts there), without specks: blobs under 15 % of the largest
    (a stripe that matches the background splits an object into blobs of about the same size)."""
    mask = np.linalg.norm(im - bg_rgb, axis=-1) > 60
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = False, False, False, False
    return _without_specks(mask)


def _without_specks(mask: np.ndarray) -> np.ndarray:
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes = [0]
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n = len(sizes)
        labels[y0, x0], stack, size = n, [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
        sizes.append(size)
    if len(sizes) == 1:
        return mask
    keep = [i for i, n in enumerate(sizes) if i and n >= 0.15 * max(sizes)]
    return np.isin(labels, keep)


def _erode(mask: np.ndarray, n: int = 1) -> np.ndarray:
    for _ in range(n):
        m = mask.copy()
        m[1:] &= mask[:-1]
        m[:-1] &= mask[1:]
        m[:, 1:] &= mask[:, :-1]
        m[:, :-1] &= mask[:, 1:]
        mask = m
    return mask


def _pattern(mask: np.ndarray, off: np.ndarray) -> str:
    inner = _erode(mask, 2)  # the antialiased rim is off-colour in every object
    if inner.sum() < 8 or (off & inner).sum() < 0.06 * inner.sum():
        return "plain"
    mask, off = inner, off & inner

    def mixed(m: np.ndarray, o: np.ndarray) -> float:
        lines = [o[r, m[r]].mean() for r in range(m.shape[0]) if m[r].sum() >= 3]
        return float(np.mean([min(v, 1 - v) for v in lines])) if lines else 0.0

    # Stripes run across: each row is all pattern or none, while columns alternate. Dots mix both ways.
    along, across = mixed(mask, off), mixed(mask.T, off.T)
    return "striped" if along < 0.5 * across else "dotted"


def _shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    x0, y0, w, h = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    best, best_iou = "none", -1.0
    for shape in SHAPES:
        fx, fy, fw, fh = _template_box(shape)
        size = (w / fw + h / fh) / 2
        t = np.asarray(shape_mask(shape, x0 - fx * size, y0 - fy * size, size)) > 127
        iou = (t & mask).sum() / max(1, (t | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def attribute_accuracy(pairs) -> dict[str, float]:
    """Accuracy of each attribute (and of all four) over (scene, read) pairs."""
    keys = ("background", "color", "pattern", "shape")
    n = 0
    right = dict.fromkeys(keys + ("all",), 0)
    for scene, read in pairs:
        n += 1
        ok = [getattr(scene, k) == read[k] for k in keys]
        for k, v in zip(keys, ok):
            right[k] += v
        right["all"] += all(ok)
    return {k: v / max(1, n) for k, v in right.items()}
