"""The order examples are drawn in: seeds mixed from (seed, step, stream, ...) and a fresh permutation
of the examples every epoch, the same on every machine and in every process."""

from __future__ import annotations

import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, step, stream...), stable across runs and machines."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, stream: int, k: int) -> int:
    """Index of the k-th example drawn: a fresh permutation of the n examples every epoch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, stream, k // n)))
    return int(perm[k % n])
