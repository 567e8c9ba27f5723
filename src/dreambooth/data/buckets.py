"""Aspect-ratio bucketing (`--buckets`), as NovelAI described it and kohya's sd-scripts do: each photo
trains at the bucket resolution (about --resolution squared pixels, sides a multiple of the model's
step) whose aspect ratio is nearest its own, so a tall photo is not cropped to a square that cuts off
the subject; every batch comes from one bucket, and latents are cached per photo at its bucket's size.
"""

from __future__ import annotations

import math

import torch

from .order import mix_seed


def bucket_sizes(resolution: int, step: int, min_side: int | None = None, max_side: int | None = None) -> list:
    """(width, height) buckets of at most resolution^2 pixels, sides multiples of step between min_side
    (default resolution / 2) and max_side (default resolution x 2), the square among them (pure)."""
    lo = max(step, (min_side or resolution // 2) // step * step)
    hi = (max_side or resolution * 2) // step * step
    area = resolution * resolution
    out = {(resolution, resolution)}
    for w in range(lo, hi + 1, step):
        h = min(hi, area // w // step * step)
        if h >= lo:
            out.update({(w, h), (h, w)})  # both orientations
    return sorted(out)


def nearest_bucket(size: tuple[int, int], buckets: list) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log ratio); of equals, the larger (pure)."""
    w, h = size
    ratio = math.log(w / h)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def epoch_batches(targets: list, batch: int, seed: int, stream: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of image indices, each from one bucket: every bucket's images shuffled, its
    last batch filled up from its start, and the batches shuffled (pure; seeded by epoch)."""
    g = torch.Generator().manual_seed(mix_seed(seed, stream, epoch, 0xB0C))
    groups: dict = {}
    for i, t in enumerate(targets):
        groups.setdefault(tuple(t), []).append(i)
    batches = []
    for key in sorted(groups):
        members = groups[key]
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        while len(order) % batch:
            order.append(order[len(order) % len(members)])
        batches += [order[i : i + batch] for i in range(0, len(order), batch)]
    return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]


def batch_of(targets: list, batch: int, seed: int, stream: int, q: int) -> list[int]:
    """The image indices of global batch number q (pure)."""
    n = len(epoch_batches(targets, batch, seed, stream, 0))  # the same count every epoch
    return epoch_batches(targets, batch, seed, stream, q // n)[q % n]
