"""The UNet's pretraining stage: the UNet and text encoder trained together on latents encoded once."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from ..io import atomic_path
from .data import MAX_TOKENS, to_tensor, training_scenes
from .stage import cosine, train_stage
from .world import render

log = logging.getLogger(__name__)


def encoded_data(vae, tokenizer, n_data: int, seed: int, work: Path, rich: bool = False) -> dict[str, torch.Tensor]:
    """The UNet's data set: the VAE's latent means of `n_data` training scenes (of the richer world with
    `rich`) and their captions' token ids, encoded once and cached in WORK/latents[-rich].safetensors."""
    data_file = work / ("latents-rich.safetensors" if rich else "latents.safetensors")
    if data_file.exists():
        return load_file(data_file)
    scenes = training_scenes(n_data, seed, rich)
    lat, ids = [], []
    with torch.no_grad():
        for i in range(0, n_data, 256):
            chunk = scenes[i : i + 256]
            lat.append(vae.encode(to_tensor([render(s) for s, _ in chunk])).latent_dist.mean)
            ids.append(
                tokenizer(
                    [c for _, c in chunk],
                    padding="max_length",
                    max_length=MAX_TOKENS,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
            )
    # (N, 4, 16, 16) and (N, MAX_TOKENS)
    data = {"latents": torch.cat(lat).contiguous(), "ids": torch.cat(ids).contiguous()}
    with atomic_path(data_file) as tmp:
        save_file(data, tmp)
    return data


def scaled_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """As Stable Diffusion did: scale latents to unit variance; the factor is saved in the VAE's config."""
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    log.info("latent scaling factor %.5f", vae.config.scaling_factor)
    return latents * vae.config.scaling_factor


def noisy_batch(sched, latents, ids, empty, batch: int, offset_noise: float, g: torch.Generator):
    """(x_t, t, caption ids, noise) for one step, all drawn from g; 10 % of captions dropped, for
    classifier-free guidance."""
    idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
    ids = ids[idx].clone()
    ids[torch.rand(batch, generator=g) < 0.1] = empty
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=g)
    if offset_noise:
        noise = noise + offset_noise * torch.randn((batch, x0.shape[1], 1, 1), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return sched.add_noise(x0, noise, t), t, ids, noise


def train_unet(
    vae,
    unet,
    te,
    tokenizer,
    steps: int,
    seed: int,
    batch: int,
    n_data: int,
    work: Path,
    offset_noise: float = 0.0,
    lr_max: float = 5e-4,
    warmup: int = 200,
    name: str = "unet",
    rich: bool = False,
) -> None:
    """Train the UNet and text encoder on cached latents. offset_noise > 0 adds a random per-channel
    constant to the noise (Guttenberg, 2023): at t=999 the scaled_linear schedule leaves 7 % of the
    image in x_t, so a model trained without it reads the background from the noise's channel means
    and, sampling from pure noise, draws a gray background whatever the prompt says. `rich`: on the
    richer world's scenes (a later stage: the latent scale the first stage set is kept)."""
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    data = encoded_data(vae, tokenizer, n_data, seed, work, rich)
    latents = data["latents"] * vae.config.scaling_factor if rich else scaled_latents(vae, data["latents"])
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr_max, weight_decay=1e-2)
    lr = cosine(opt, warmup, steps)

    def loss_of(g):
        x_t, t, ids, noise = noisy_batch(sched, latents, data["ids"], empty, batch, offset_noise, g)
        return F.mse_loss(unet(x_t, t, te(ids)[0]).sample, noise)

    seed0 = seed * 100003 + (1_000_000 if offset_noise else 0) + 2_000_000 * rich
    train_stage(name, work / f"{name}.safetensors", {"unet": unet, "te": te}, opt, lr, steps, seed0, loss_of)
