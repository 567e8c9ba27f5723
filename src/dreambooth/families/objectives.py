"""Training objectives: how a batch of clean latents becomes the model's input, its target and each
example's loss weight. Two kinds: denoising diffusion (Ho et al., 2020) for the UNet families, and
rectified flow (Liu et al., 2022; Esser et al., 2024) for the transformer families (SD3, FLUX).

Each draws its random numbers from the step's generator, for the whole global batch, and keeps one
process's slice (rows part), so how a batch is split across processes changes nothing. Pure functions
of tensors besides the scheduler's tables."""

from __future__ import annotations

from dataclasses import dataclass

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


class Objective:
    def timesteps(self, total: int, g: torch.Generator) -> torch.Tensor:
        """The timesteps of a global batch of total examples (total,), drawn from g."""
        raise NotImplementedError

    def fixed_timesteps(self, k: int) -> torch.Tensor:
        """k timesteps spread evenly over the training range (the validation loss's, always the same)."""
        raise NotImplementedError

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model learns to predict."""
        raise NotImplementedError

    def weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Each example's loss weight (B,), or None for all ones."""
        return None


@dataclass
class Denoising(Objective):
    """DDPM training (Ho et al., 2020): uniform timesteps, the scheduler's noising, the noise (epsilon)
    or velocity (v-prediction) as the target, and optionally min-SNR-gamma weights (Hang et al., 2023)."""

    scheduler: object  # diffusers' DDPMScheduler
    snr_gamma: float | None = None

    def timesteps(self, total: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (total,), generator=g)

    def fixed_timesteps(self, k: int) -> torch.Tensor:
        n = self.scheduler.config.num_train_timesteps
        return ((torch.arange(k) + 0.5) * n / k).long()  # the middles of k equal ranges

    def noisy(self, latents, noise, t):
        return self.scheduler.add_noise(latents, noise, t)

    def target(self, latents, noise, t):
        return diffusion_target(self.scheduler, latents, noise, t)

    def weights(self, t):
        if self.snr_gamma is None:
            return None
        from diffusers.training_utils import compute_snr

        return min_snr_weights(compute_snr(self.scheduler, t), self.snr_gamma, self.scheduler.config.prediction_type)


@dataclass
class RectifiedFlow(Objective):
    """Rectified flow as diffusers' SD3 and FLUX DreamBooth scripts train it (Esser et al., 2024,
    section 3.1): x_sigma = (1 - sigma) x0 + sigma noise, the model predicts the velocity noise - x0;
    sigma is drawn by the weighting scheme's density (compute_density_for_timestep_sampling), mapped onto
    the scheduler's timesteps, and the loss weighted by compute_loss_weighting_for_sd3."""

    scheduler: object  # diffusers' FlowMatchEulerDiscreteScheduler (its training timesteps and sigmas)
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def timesteps(self, total: int, g: torch.Generator) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme,
            batch_size=total,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=g,
        )
        n = self.scheduler.config.num_train_timesteps
        indices = (u * n).long().clamp(0, len(self.scheduler.timesteps) - 1)
        return self.scheduler.timesteps[indices]

    def fixed_timesteps(self, k: int) -> torch.Tensor:
        schedule = self.scheduler.timesteps
        return schedule[((torch.arange(k) + 0.5) * len(schedule) / k).long()]  # the middles of k equal ranges

    def sigmas(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """The scheduler's sigma of each timestep (looked up in its schedule, as the scripts' get_sigmas
        does), shaped to broadcast over ndim dimensions."""
        schedule = self.scheduler.timesteps.to(t.device)
        idx = (schedule[None, :] == t[:, None]).int().argmax(dim=1)
        return self.scheduler.sigmas.to(t.device)[idx].float().reshape(-1, *[1] * (ndim - 1))

    def noisy(self, latents, noise, t):
        s = self.sigmas(t, latents.ndim)
        return (1.0 - s) * latents + s * noise

    def target(self, latents, noise, t):
        return noise - latents

    def weights(self, t):
        if self.weighting_scheme not in ("sigma_sqrt", "cosmap"):
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.weighting_scheme, self.sigmas(t, 1)).flatten()
