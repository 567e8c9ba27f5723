"""Denoising loss at fixed noise and timesteps: how well a model reconstructs given images.

Training loss is noisy (random noise and timestep every step); the same quantity averaged over a
fixed set of draws is a steady measure of what the model has learned about the images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.examples import to_pixels, tokenize
from ..training.losses import diffusion_target


@torch.no_grad()
def fixed_noise_loss(
    pipe, image_paths: list[Path], prompt: str, resolution: int, seed: int = 0, draws: int = 8
) -> float:
    """Mean MSE of the UNet's prediction over `draws` fixed (noise, timestep) draws per image."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae, unet, device = pipe.vae, pipe.unet, pipe.unet.device
    x = torch.stack([to_pixels(p, resolution, False) for p in image_paths]).to(device, vae.dtype)  # (N, 3, R, R)
    latents = vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor  # (N, 4, R/8, R/8)
    ids = tokenize(pipe.tokenizer, prompt).expand(len(image_paths), -1)
    emb = pipe.text_encoder(ids.to(device))[0]  # (N, L, D): one text encoder (SD 1.x/2.x)
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(draws):
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(image_paths),), generator=g).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy.to(unet.dtype), t, emb.to(unet.dtype)).sample.float()
        total += torch.nn.functional.mse_loss(pred, diffusion_target(scheduler, latents, noise, t)).item()
    return total / draws
