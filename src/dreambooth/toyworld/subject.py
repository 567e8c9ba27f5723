"""The demo's subjects: specific objects the base model never saw, made to survive the 4x VAE.

Each is one shape in one colour with a pattern of its own (large dots or broad stripes, in a named
colour) and a thick black outline (about 3.5 px at 64 px), so every feature spans at least two latent
pixels. The richer world has outlines and named pattern colours, but never a subject's combination:
the base model can draw "an orange heart with purple dots and a black outline" from words (in its
own way: the world's dots are smaller and laid out in a grid), while "a photo of a heart" never draws
the subject. `Subject.read` is the oracle's reading of a subject's features on any image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .oracle import _erode, _object_mask, read_scene
from .world import BACKGROUNDS, OBJECT_COLORS, OUTLINE_COLOR, PATTERN_NOUNS, SHAPES, SS, outline_masks

BACKGROUND = "white"  # the photos'
RECONTEXT = ("green", "blue", "yellow", "gray")  # the demo's other backgrounds; not black: the outline would not show
# Where the photos show a subject: all on one background, at different sizes and positions
PHOTO_LAYOUTS = ((46, 4, 6), (40, 20, 18), (52, 6, 7), (42, 12, 16), (48, 14, 3))


@dataclass(frozen=True)
class Subject:
    """One subject: what it is, how it is drawn, and how the oracle recognises it."""

    shape: str
    color: str
    pattern: str  # "dotted" or "striped"
    pattern_color: str
    spots: tuple = ((0.3, 0.3), (0.7, 0.3), (0.5, 0.55), (0.3, 0.6), (0.7, 0.6), (0.5, 0.8))  # dot centres, in the box
    stripes: int = 2  # broad stripes across the object (each 15 % of its height), for a striped subject

    @property
    def noun(self) -> str:
        """The class noun: its shape ("a photo of a heart")."""
        return self.shape

    @property
    def words(self) -> str:
        """The subject described in the richer world's words, with its article."""
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.shape} with {self.pattern_color} {PATTERN_NOUNS[self.pattern]} and a black outline"

    def render(self, size: int, x: int, y: int, background: str = BACKGROUND, res: int = 64, **kw) -> Image.Image:
        """The subject (or, with keyword overrides of shape, color and pattern_color as RGB or names, an
        object drawn the same way)."""
        shape = kw.get("shape", self.shape)
        color = _rgb(kw.get("color", self.color))
        pc = _rgb(kw.get("pattern_color", self.pattern_color))
        big, s = res * SS, size * SS
        img = Image.new("RGB", (big, big), BACKGROUNDS[background])
        outer, inner = outline_masks(shape, x, y, size, res)
        fill = Image.new("RGB", (big, big), color)
        d = ImageDraw.Draw(fill)
        if kw.get("pattern", self.pattern) == "dotted":
            r = s * 0.085
            for fx, fy in self.spots:
                px, py = x * SS + fx * s, y * SS + fy * s
                d.ellipse([px - r, py - r, px + r, py + r], fill=pc)
        else:
            band = s * 0.15
            for i in range(1, self.stripes + 1):  # evenly spaced, the object's colour between them
                top = y * SS + s * i / (self.stripes + 1) - band / 2
                d.rectangle([0, top, big, top + band - 1], fill=pc)
        img.paste(Image.new("RGB", (big, big), OUTLINE_COLOR), (0, 0), outer)
        img.paste(fill, (0, 0), inner)
        return img.resize((res, res), Image.Resampling.LANCZOS)

    def mask(self, size: int, x: int, y: int, res: int = 64) -> Image.Image:
        """Where render draws the subject (its outline included), as a greyscale mask of the photo
        (--masked-loss's photo.mask.png)."""
        outer, _ = outline_masks(self.shape, x, y, size, res)
        return outer.resize((res, res), Image.Resampling.LANCZOS)

    def photos(self, background: str = BACKGROUND) -> list[Image.Image]:
        """The subject's five 'photos'."""
        return [self.render(size, x, y, background) for size, x, y in PHOTO_LAYOUTS]

    def photo_masks(self) -> list[Image.Image]:
        return [self.mask(size, x, y) for size, x, y in PHOTO_LAYOUTS]

    def random(self, rng: random.Random, background: str) -> Image.Image:
        """The subject at a random size and place."""
        size = rng.randint(30, 50)
        return self.render(size, rng.randint(2, 62 - size), rng.randint(2, 62 - size), background)

    def read(self, image: Image.Image) -> dict:
        """The world's oracle reading plus the subject's own features: {'background', 'color', 'pattern',
        'shape', 'outline', 'pattern_color', 'subject'}; 'subject' is all of them."""
        read = read_scene(image)
        im = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
        border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
        mask = _object_mask(im, np.median(border, axis=0))
        outline = spotted = False
        if mask.sum() >= 12:
            rim = mask & ~_erode(mask, 3)  # the outline's width: a blurred one still darkens most of it
            dark = im.mean(-1) < 70
            outline = bool(dark[rim].mean() > 0.5)
            inside = _erode(mask, 4)
            if inside.sum() >= 8:
                target = np.array(OBJECT_COLORS[self.pattern_color], dtype=np.float32)
                near = np.linalg.norm(im - target, axis=-1) < 70
                spotted = bool(0.04 < near[inside].mean() < 0.7)
        subject = read["shape"] == self.shape and read["color"] == self.color and outline and spotted
        return {**read, "outline": outline, "pattern_color": spotted, "subject": subject}


def _rgb(c) -> tuple:
    return OBJECT_COLORS[c] if isinstance(c, str) else tuple(c)


SUBJECTS = {
    "heart": Subject("heart", "orange", "dotted", "purple"),
    "square": Subject("square", "purple", "striped", "red"),
    "circle": Subject(
        "circle", "pink", "dotted", "brown", spots=((0.35, 0.35), (0.65, 0.35), (0.35, 0.65), (0.65, 0.65))
    ),
}
DEMO = SUBJECTS["heart"]  # the one `dreambooth demo` shows


def held_out_looks() -> set[tuple]:
    """(shape, colour, pattern, pattern colour, outline) of every subject: never in pretraining."""
    return {(s.shape, s.color, s.pattern, s.pattern_color, True) for s in SUBJECTS.values()}


def photo_masks() -> list[Image.Image]:
    """The demo subject's five photo masks."""
    return DEMO.photo_masks()


def photos(background: str = BACKGROUND) -> list[Image.Image]:
    """The demo subject's five 'photos'."""
    return DEMO.photos(background)


def random_subject(rng: random.Random, background: str) -> Image.Image:
    return DEMO.random(rng, background)


def read_subject(image: Image.Image, subject: Subject = DEMO) -> dict:
    """`subject.read` (the demo subject's by default)."""
    return subject.read(image)


def random_outlined(rng: random.Random) -> Image.Image:
    """An object drawn like the subject (black outline, large dots) with a random shape and colours,
    never the subject's own: what the VAE's decoder also learns to draw, as SD's VAE has seen all
    kinds of images and not only what its UNet was trained on."""
    names = list(OBJECT_COLORS)
    while True:
        shape, color, dots = rng.choice(SHAPES), rng.choice(names), rng.choice(names)
        background = rng.choice([b for b in BACKGROUNDS if b not in (color, "black")])
        if dots != color and (shape, color, dots) != (DEMO.shape, DEMO.color, DEMO.pattern_color):
            break
    size = rng.randint(24, 54)
    x, y = rng.randint(2, 62 - size), rng.randint(2, 62 - size)
    return DEMO.render(size, x, y, background, shape=shape, color=color, pattern_color=dots)
