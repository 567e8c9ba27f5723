"""The world: one object (shape, colour, surface pattern) on a plain background, with a caption.

Deterministic from a seed. Objects are drawn at 4x and downsampled, so edges are antialiased as in
a photo. The richer world (`sample_rich_scene`) adds what the demo's subjects are made of: patterns
of a named colour ("with purple dots") and a black outline, so that a subject can be described in
words and drawn anywhere by a model that never saw that subject (as Stable Diffusion can draw "a
corgi with a red collar on the beach" without having seen one particular corgi).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "heart")
OBJECT_COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 220, 40),
}
PATTERNS = ("plain", "striped", "dotted")
PATTERN_NOUNS = {"striped": "stripes", "dotted": "dots"}  # "with purple dots"
SS = 4  # supersampling factor
OUTLINE_COLOR = (10, 10, 10)
OUTLINE_PX = 3.0  # at 64 px: every feature spans at least two latent pixels of the 4x VAE


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    pattern: str
    background: str
    size: int  # side of the object's bounding box, in pixels at 64 px
    x: int  # top-left corner of the bounding box
    y: int
    pattern_color: str | None = None  # a named colour of OBJECT_COLORS; None: black, white or a shade
    outline: bool = False  # a black outline, OUTLINE_PX wide


def sample_scene(rng: random.Random, res: int = 64, **fixed) -> Scene:
    """A random scene; keyword arguments fix attributes (the background never takes the object's colour)."""
    shape = fixed.get("shape") or rng.choice(SHAPES)
    color = fixed.get("color") or rng.choice(list(OBJECT_COLORS))
    pattern = fixed.get("pattern") or rng.choice(PATTERNS)
    background = fixed.get("background") or rng.choice([b for b in BACKGROUNDS if b != color])
    if background == color:
        raise ValueError(f"the background cannot be the object's colour ({color})")
    size = fixed.get("size") or rng.randint(res * 3 // 8, res * 3 // 4)
    x = fixed.get("x", rng.randint(2, res - size - 2))
    y = fixed.get("y", rng.randint(2, res - size - 2))
    return Scene(shape, color, pattern, background, size, x, y)


def sample_rich_scene(rng: random.Random, res: int = 64, named: float = 0.5, outlined: float = 0.4, **fixed) -> Scene:
    """A scene of the richer world: a patterned object's pattern takes a named colour with probability
    `named`, and an object gets a black outline with probability `outlined` (never on black)."""
    scene = sample_scene(rng, res, **fixed)
    pc = None
    if scene.pattern != "plain" and rng.random() < named:
        pc = rng.choice([c for c in OBJECT_COLORS if c != scene.color])
    outline = scene.background != "black" and rng.random() < outlined
    return dataclasses.replace(scene, pattern_color=pc, outline=outline)


def pattern_color(color: str, background: str) -> tuple[int, int, int]:
    """Black, white or a dark shade: whichever stands out most from both the object and the background."""
    c, b = OBJECT_COLORS[color], BACKGROUNDS[background]
    shade = tuple(int(v * 0.4) for v in c)
    candidates = [(0, 0, 0), (255, 255, 255), shade]
    return max(candidates, key=lambda p: min(_dist(p, c), _dist(p, b)))


def _dist(a, b) -> float:
    return math.dist(a, b)


def shape_polygon(shape: str, x0: float, y0: float, s: float) -> list[tuple[float, float]] | None:
    """The outline of a shape filling the square (x0, y0, s); None for the circle (an ellipse)."""
    if shape == "square":
        m = s * 0.08
        return [(x0 + m, y0 + m), (x0 + s - m, y0 + m), (x0 + s - m, y0 + s - m), (x0 + m, y0 + s - m)]
    if shape == "triangle":
        return [(x0 + s / 2, y0), (x0 + s, y0 + s * 0.93), (x0, y0 + s * 0.93)]
    if shape == "star":
        cx, cy, ro, ri = x0 + s / 2, y0 + s * 0.53, s / 2, s * 0.21
        return [
            (
                cx + (ro if i % 2 == 0 else ri) * math.sin(i * math.pi / 5),
                cy - (ro if i % 2 == 0 else ri) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
    if shape == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x0 + s / 2 + hx / 34 * s, y0 + s * 0.45 - hy / 34 * s))
        return pts
    return None


def shape_mask(shape: str, x: float, y: float, size: float, res: int = 64) -> Image.Image:
    """The shape as an antialiased 8-bit mask of res x res."""
    return _filled(shape, x, y, size, res).resize((res, res), Image.Resampling.LANCZOS)


def _filled(shape: str, x: float, y: float, size: float, res: int = 64) -> Image.Image:
    """The shape as a mask at res * SS (before the downsampling that antialiases it)."""
    big, s = res * SS, size * SS
    mask = Image.new("L", (big, big), 0)
    poly = shape_polygon(shape, x * SS, y * SS, s)
    if poly is None:
        ImageDraw.Draw(mask).ellipse([x * SS, y * SS, x * SS + s, y * SS + s], fill=255)
    else:
        ImageDraw.Draw(mask).polygon(poly, fill=255)
    return mask


def outline_masks(shape: str, x: float, y: float, size: float, res: int = 64) -> tuple[Image.Image, Image.Image]:
    """(outer, inner) masks at res * SS: the shape, and the shape less an outline OUTLINE_PX wide."""
    outer = _filled(shape, x, y, size, res)
    inner = outer
    for _ in range(round(OUTLINE_PX * SS)):  # = MinFilter(2 * width + 1), a square erosion, 3x faster
        inner = inner.filter(ImageFilter.MinFilter(3))
    return outer, inner


def render(scene: Scene, res: int = 64) -> Image.Image:
    big = res * SS
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    obj = Image.new("RGB", (big, big), OBJECT_COLORS[scene.color])
    pd = ImageDraw.Draw(obj)
    pc = OBJECT_COLORS[scene.pattern_color] if scene.pattern_color else pattern_color(scene.color, scene.background)
    s = scene.size * SS
    if scene.pattern == "striped":
        period = max(SS * 6, s // 5)
        for yy in range(scene.y * SS, scene.y * SS + s, period):
            pd.rectangle([0, yy, big, yy + period // 2 - 1], fill=pc)
    elif scene.pattern == "dotted":
        step = max(SS * 8, s // 4)
        r = step * 0.28
        for yy in range(scene.y * SS + step // 2, scene.y * SS + s, step):
            for xx in range(scene.x * SS + step // 2, scene.x * SS + s, step):
                pd.ellipse([xx - r, yy - r, xx + r, yy + r], fill=pc)
    if scene.outline:
        outer, mask = outline_masks(scene.shape, scene.x, scene.y, scene.size, res)
        img.paste(Image.new("RGB", (big, big), OUTLINE_COLOR), (0, 0), outer)
    else:
        mask = _filled(scene.shape, scene.x, scene.y, scene.size, res)
    img.paste(obj, (0, 0), mask)
    return img.resize((res, res), Image.Resampling.LANCZOS)


def caption(scene: Scene, rng: random.Random | None = None, full: bool = False) -> str:
    """'a photo of a red striped star on a blue background'; without `full`, the colour (15 %), pattern
    (30 %) and background (15 %) words are sometimes dropped, so short prompts are in the world too."""
    drop = (lambda p: False) if full or rng is None else (lambda p: rng.random() < p)
    words = []
    if not drop(0.15):
        words.append(scene.color)
    if scene.pattern != "plain" and not scene.pattern_color and not drop(0.3):
        words.append(scene.pattern)
    words.append(scene.shape)
    article = "an" if words[0][0] in "aeiou" else "a"
    text = f"a photo of {article} {' '.join(words)}"
    details = []  # the richer world's: "with purple dots and a black outline"
    if scene.pattern_color and not drop(0.15):
        details.append(f"{scene.pattern_color} {PATTERN_NOUNS[scene.pattern]}")
    if scene.outline and not drop(0.15):
        details.append("a black outline")
    if details:
        text += " with " + " and ".join(details)
    if not drop(0.15):
        text += f" on a {scene.background} background"
    return text


def samples(n: int, seed: int, res: int = 64):
    """n (image, caption, scene) triples, the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        scene = sample_scene(rng, res)
        yield render(scene, res), caption(scene, rng), scene
