"""Denoising loss at fixed noise and timesteps: how well a model reconstructs given images.

Training loss is noisy (random noise and timestep every step); the same quantity averaged over a
fixed set of draws is a steady measure of what the model has learned about the images. The model's
family says how it is trained (DDPM or rectified flow) and called.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.examples import to_pixels
from ..families import family_of_pipeline


@torch.no_grad()
def fixed_noise_loss(
    pipe, image_paths: list[Path], prompt: str, resolution: int, seed: int = 0, draws: int = 8
) -> float:
    """Mean MSE of the denoiser's prediction over `draws` fixed (noise, timestep) draws per image."""
    family = family_of_pipeline(pipe)
    objective = family.objective(family.training_scheduler(pipe.scheduler.config))
    denoiser = getattr(pipe, family.denoiser)
    vae, device = pipe.vae, denoiser.device
    x = torch.stack([to_pixels(p, resolution, False) for p in image_paths]).to(device, vae.dtype)  # (N, 3, R, R)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (vae.encode(x).latent_dist.mean.float() - shift) * vae.config.scaling_factor  # (N, C, h, w)
    tokenizers = [getattr(pipe, n) for n in family.tokenizers]
    ids = [i.expand(len(image_paths), -1) for i in family.token_ids(tokenizers, prompt)]
    emb, pooled = family.encode_prompt([getattr(pipe, n) for n in family.text_encoders], ids, device)
    sizes = [(resolution, resolution, 0, 0, resolution, resolution)] * len(image_paths)
    conditions = family.conditions(pooled, sizes) if pooled is not None else None
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(draws):
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = objective.timesteps(len(image_paths), g).to(device)
        noisy = objective.noisy(latents, noise, t)
        dtype = denoiser.dtype
        cond = None if conditions is None else {k: v.to(device, dtype) for k, v in conditions.items()}
        pred = family.predict(denoiser, noisy.to(dtype), t, emb.to(dtype), cond).float()
        total += torch.nn.functional.mse_loss(pred, objective.target(latents, noise, t)).item()
    return total / draws
