"""Loss functions: pure functions of tensors."""

from __future__ import annotations

import torch


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon; Ho et al., 2020, eq. 14) or the velocity
    v = alpha_t * noise - sigma_t * x0 (Salimans & Ho, 2022, section 4), by the scheduler's prediction_type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023, eq. 9) of examples at these SNRs: min(SNR, gamma)
    / SNR for a model predicting the noise, min(SNR, gamma) / (SNR + 1) for one predicting v (its
    loss is already weighted by SNR + 1 relative to the noise's), as diffusers' example scripts do."""
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


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


def _mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    per_example = (pred - target).pow(2).flatten(1).mean(1)
    return (per_example if weights is None else per_example * weights).mean()


def prior_preservation_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    n_instance: int,
    prior_weight: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DreamBooth eq. 2: MSE on the instance examples + lambda * MSE on the class (prior) examples.

    pred, target: (B, C, h, w), the first n_instance rows are instance examples, the rest class
    examples (none without prior preservation); weights (B,): per-example loss weights (min-SNR),
    or None. Returns (total, instance loss, prior loss).
    """
    pred, target = pred.float(), target.float()
    w = None if weights is None else weights.float()
    instance = _mse(pred[:n_instance], target[:n_instance], None if w is None else w[:n_instance])
    if pred.shape[0] == n_instance:
        return instance, instance, torch.zeros_like(instance)
    prior = _mse(pred[n_instance:], target[n_instance:], None if w is None else w[n_instance:])
    return instance + prior_weight * prior, instance, prior
