"""Loss functions: pure functions of tensors."""

from __future__ import annotations

import torch

from ..families.objectives import diffusion_target, min_snr_weights  # noqa: F401  (DDPM's, kept here too)


def offset_noise(
    noise: torch.Tensor, strength: float, generator: torch.Generator, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """Noise plus strength x one random constant per (example, channel) (Guttenberg, 2023): a model
    trained with it can move an image's mean, so it can draw very dark or bright images.
    rows=(first, total): noise holds rows first.. of a batch of total, whose constants are all drawn."""
    b, c = noise.shape[:2]
    first, total = rows or (0, b)
    offset = torch.randn((total, c, 1, 1), generator=generator, dtype=noise.dtype)[first : first + b]
    return noise + strength * offset.to(noise.device)


def _mse(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, pixels: torch.Tensor | None = None
) -> torch.Tensor:
    squared = (pred - target).pow(2)
    if pixels is not None:  # (B, 1, h, w): each latent cell's weight, over every channel
        squared = squared * pixels.to(squared)
    per_example = squared.flatten(1).mean(1)
    return (per_example if weights is None else per_example * weights).mean()


def prior_preservation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    n_instance: int,
    prior_weight: float,
    weights: torch.Tensor | None = None,
    instance_pixels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DreamBooth eq. 2: MSE on the instance examples + lambda * MSE on the class (prior) examples.

    pred, target: (B, C, h, w), the first n_instance rows are instance examples, the rest class
    examples (none without prior preservation); weights (B,): per-example loss weights (min-SNR),
    or None; instance_pixels (n_instance, 1, h, w): --masked-loss's weight of each latent cell of the
    instance examples (as kohya's trainers weigh it: the mean over all cells, not renormalised), or
    None. Returns (total, instance loss, prior loss).
    """
    pred, target = pred.float(), target.float()
    w = None if weights is None else weights.float()
    instance = _mse(pred[:n_instance], target[:n_instance], None if w is None else w[:n_instance], instance_pixels)
    if pred.shape[0] == n_instance:
        return instance, instance, torch.zeros_like(instance)
    prior = _mse(pred[n_instance:], target[n_instance:], None if w is None else w[n_instance:])
    return instance + prior_weight * prior, instance, prior
