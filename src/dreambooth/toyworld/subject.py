"""The demo's subject: one specific object the base model never saw, made to survive the 4x VAE.

An orange heart with large purple dots and a thick black outline (about 3.5 px at 64 px): the world
has neither outlines nor purple patterns, so "a photo of a heart" from the base model never draws
it, while every feature spans at least two latent pixels. `read_subject` is the oracle's reading of
those features on any image.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .oracle import _erode, _object_mask, read_scene
from .world import BACKGROUNDS, OBJECT_COLORS, SHAPES, SS, shape_polygon

SHAPE, COLOR, BACKGROUND = "heart", "orange", "white"
RECONTEXT = ("green", "blue", "yellow", "gray")  # the demo's other backgrounds; not black: the outline would not show
DOT_COLOR = (140, 60, 190)  # the world's purple
OUTLINE_COLOR = (10, 10, 10)
OUTLINE_PX = 3.0
# Where the photos show it: all on one background, at different sizes and positions
DOTS = ((0.3, 0.3), (0.7, 0.3), (0.5, 0.55), (0.3, 0.6), (0.7, 0.6), (0.5, 0.8))  # centres, in the box
PHOTO_LAYOUTS = ((46, 4, 6), (40, 20, 18), (52, 6, 7), (42, 12, 16), (48, 14, 3))


def render_subject(
    size: int,
    x: int,
    y: int,
    background: str = BACKGROUND,
    res: int = 64,
    shape: str = SHAPE,
    color: tuple = OBJECT_COLORS[COLOR],
    dot_color: tuple = DOT_COLOR,
) -> Image.Image:
    """The subject (or, with other shape and colours, an object drawn the same way)."""
    big, s = res * SS, size * SS
    img = Image.new("RGB", (big, big), BACKGROUNDS[background])
    poly = shape_polygon(shape, x * SS, y * SS, s)
    outer = Image.new("L", (big, big), 0)
    if poly is None:  # the circle
        ImageDraw.Draw(outer).ellipse([x * SS, y * SS, x * SS + s, y * SS + s], fill=255)
    else:
        ImageDraw.Draw(outer).polygon(poly, fill=255)
    width = round(OUTLINE_PX * SS)
    inner = outer
    for _ in range(width):  # = MinFilter(2 * width + 1), a square erosion, 3x faster
        inner = inner.filter(ImageFilter.MinFilter(3))
    fill = Image.new("RGB", (big, big), color)
    d = ImageDraw.Draw(fill)
    r = s * 0.085
    for fx, fy in DOTS:
        px, py = x * SS + fx * s, y * SS + fy * s
        d.ellipse([px - r, py - r, px + r, py + r], fill=dot_color)
    img.paste(Image.new("RGB", (big, big), OUTLINE_COLOR), (0, 0), outer)
    img.paste(fill, (0, 0), inner)
    return img.resize((res, res), Image.Resampling.LANCZOS)


def subject_mask(size: int, x: int, y: int, res: int = 64, shape: str = SHAPE) -> Image.Image:
    """Where render_subject draws the subject (its outline included), as a greyscale mask of the photo
    (--masked-loss's photo.mask.png)."""
    big, s = res * SS, size * SS
    outer = Image.new("L", (big, big), 0)
    poly = shape_polygon(shape, x * SS, y * SS, s)
    if poly is None:
        ImageDraw.Draw(outer).ellipse([x * SS, y * SS, x * SS + s, y * SS + s], fill=255)
    else:
        ImageDraw.Draw(outer).polygon(poly, fill=255)
    return outer.resize((res, res), Image.Resampling.LANCZOS)


def photo_masks() -> list[Image.Image]:
    """The masks of the subject's five photos."""
    return [subject_mask(size, x, y) for size, x, y in PHOTO_LAYOUTS]


def photos(background: str = BACKGROUND) -> list[Image.Image]:
    """The subject's five 'photos'."""
    return [render_subject(size, x, y, background) for size, x, y in PHOTO_LAYOUTS]


def random_subject(rng: random.Random, background: str) -> Image.Image:
    size = rng.randint(30, 50)
    return render_subject(size, rng.randint(2, 62 - size), rng.randint(2, 62 - size), background)


def read_subject(image: Image.Image) -> dict:
    """The world's oracle reading plus the subject's own features: {'background', 'color', 'pattern',
    'shape', 'outline', 'purple_dots', 'subject'}; 'subject' is heart, orange, outlined and purple-dotted."""
    read = read_scene(image)
    im = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
    mask = _object_mask(im, np.median(border, axis=0))
    outline = purple = False
    if mask.sum() >= 12:
        rim = mask & ~_erode(mask, 3)  # the outline's width: a blurred one still darkens most of it
        dark = im.mean(-1) < 70
        outline = bool(dark[rim].mean() > 0.5)
        inside = _erode(mask, 4)
        if inside.sum() >= 8:
            near = np.linalg.norm(im - np.array(DOT_COLOR, dtype=np.float32), axis=-1) < 70
            purple = bool(0.04 < near[inside].mean() < 0.7)
    subject = read["shape"] == SHAPE and read["color"] == COLOR and outline and purple
    return {**read, "outline": outline, "purple_dots": purple, "subject": subject}


def random_outlined(rng: random.Random) -> Image.Image:
    """An object drawn like the subject (black outline, large dots) with a random shape and colours,
    never the subject's own: what the VAE's decoder also learns to draw, as SD's VAE has seen all
    kinds of images and not only what its UNet was trained on."""
    names = list(OBJECT_COLORS)
    while True:
        shape, color, dots = rng.choice(SHAPES), rng.choice(names), rng.choice(names)
        background = rng.choice([b for b in BACKGROUNDS if b not in (color, "black")])
        if dots != color and (shape, color, dots) != (SHAPE, COLOR, "purple"):
            break
    size = rng.randint(24, 54)
    x, y = rng.randint(2, 62 - size), rng.randint(2, 62 - size)
    return render_subject(
        size, x, y, background, shape=shape, color=OBJECT_COLORS[color], dot_color=OBJECT_COLORS[dots]
    )
