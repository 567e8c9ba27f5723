"""Loss functions: pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon; Ho et al., 2020, eq. 14) or the velocity
    v = alpha_t * noise - sigma_t * x0 (Salimans & Ho, 2022, section 4), by the scheduler's prediction_type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def prior_preservation_loss(
    pred: torch.Tensor, target: torch.Tensor, n_instance: int, prior_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DreamBooth eq. 2: MSE on the instance examples + lambda * MSE on the class (prior) examples.

    pred, target: (B, C, h, w), the first n_instance rows are instance examples, the rest class
    examples (none without prior preservation). Returns (total, instance loss, prior loss).
    """
    pred, target = pred.float(), target.float()
    instance = F.mse_loss(pred[:n_instance], target[:n_instance], reduction="mean")
    if pred.shape[0] == n_instance:
        return instance, instance, torch.zeros_like(instance)
    prior = F.mse_loss(pred[n_instance:], target[n_instance:], reduction="mean")
    return instance + prior_weight * prior, instance, prior
