"""The pretraining and evaluation data: training scenes with their captions, the evaluation captions, and
the (shape, colour, background) triples held out of training to measure generalisation."""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from .world import BACKGROUNDS, OBJECT_COLORS, SHAPES, Scene, caption, sample_rich_scene, sample_scene

# Captions are padded to 32 tokens in training, and the saved tokenizer says so: a pipeline pads to
# its tokenizer's model_max_length, and 45 more padding tokens at positions never trained dilute
# the cross-attention (measured: background right in 0.39 of images at 77 tokens).
MAX_TOKENS = 32


def held_out_triples(seed: int = 0) -> set[tuple[str, str, str]]:
    """Half of the (shape, colour, background) triples used for evaluation, never trained on."""
    triples = [(s, c, b) for s, c, b in itertools.product(SHAPES, OBJECT_COLORS, BACKGROUNDS) if b != c]
    rng = random.Random(seed)
    rng.shuffle(triples)
    return set(triples[:50])


def eval_captions(seed: int = 0) -> list[tuple[str, tuple[str, str, str], bool]]:
    """100 full captions: 50 of held-out triples, 50 of seen ones, as (caption, triple, held_out)."""
    held = held_out_triples(seed)
    seen = [t for t in itertools.product(SHAPES, OBJECT_COLORS, BACKGROUNDS) if t[2] != t[1] and t not in held]
    rng = random.Random(seed + 1)
    chosen = [(t, True) for t in sorted(held)] + [(t, False) for t in rng.sample(sorted(seen), 50)]
    return [
        (f"a photo of {'an' if c[0] in 'aeiou' else 'a'} {c} {s} on a {b} background", (s, c, b), h)
        for (s, c, b), h in chosen
    ]


def training_scenes(n: int, seed: int, rich: bool = False) -> list[tuple[Scene, str]]:
    """n (scene, caption) pairs, none of a held-out triple; `rich`: of the richer world (named pattern
    colours, outlines), never with a demo subject's look."""
    from .subject import held_out_looks

    held = held_out_triples()
    looks = held_out_looks()
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        scene = sample_rich_scene(rng) if rich else sample_scene(rng)
        look = (scene.shape, scene.color, scene.pattern, scene.pattern_color, scene.outline)
        if (scene.shape, scene.color, scene.background) not in held and look not in looks:
            out.append((scene, caption(scene, rng)))
    return out


def to_tensor(images) -> torch.Tensor:
    """RGB images as a batch in [-1, 1]."""
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(x).permute(0, 3, 1, 2)  # (B, 3, 64, 64)
