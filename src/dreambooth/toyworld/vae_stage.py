"""The VAE's pretraining stages: the whole VAE first, then (optionally) its decoder alone."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import to_tensor
from .evaluate import subject_ceiling, vae_ceiling
from .stage import autocast, cosine, due, optimizer_step, progress, resume, save_checkpoint
from .subject import random_outlined
from .world import render, sample_scene

log = logging.getLogger(__name__)


def _ceilings(vae) -> tuple[dict[str, float], float]:
    """The oracle on the VAE's reconstructions: of world images (per attribute) and of the subject."""
    return vae_ceiling(vae, n=100), subject_ceiling(vae, n=20)


def train_vae(
    vae, steps: int, seed: int, batch: int, work: Path, bf16: bool = True, every: int = 250, outlined: int = 4
) -> None:
    """Pixel L1 + MSE (and a tiny KL) on fresh images each step; cosine learning rate to zero.

    Each batch holds `outlined` objects drawn like the demo subject (`random_outlined`: black outline,
    large dots, random shapes and colours, never the subject itself) and world images for the rest: a
    VAE trained on the world alone drew the subject's outline and purple dots in 5 % of reconstructions;
    a base model's VAE has to draw things its UNet has not seen, as SD's has seen all kinds of images.
    The decoder learns from the posterior's mean, not a sample: in a trial it learned ~1.5x faster, and
    the latents the UNet trains on (and generates) are means too. Leaves the VAE frozen, in eval mode."""
    ckpt = work / "vae.safetensors"
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0)
    lr = cosine(opt, 100, steps)
    start = resume(ckpt, {"model": vae}, opt, lr)
    t0 = time.time()
    bar = progress(start, steps, "vae")
    for step in bar:
        rng = random.Random(seed * 7919 + step)  # each step's images depend on (seed, step) only: resumable
        x = to_tensor([random_outlined(rng) if i < outlined else render(sample_scene(rng)) for i in range(batch)])
        with autocast(bf16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.mean).sample.float()  # the UNet is trained on the mean: decode that
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().float().mean()
        optimizer_step(opt, lr, loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if due(step, steps, every):
            vae.eval()
            ceiling, subject = _ceilings(vae)
            vae.train()
            seconds = (time.time() - t0) / (step + 1 - start)
            log.info(
                "vae step %d/%d loss %.4f ceiling %s subject %.2f (%.2f s/step)",
                step + 1,
                steps,
                loss.item(),
                json.dumps(ceiling),
                subject,
                seconds,
            )
            save_checkpoint(ckpt, {"model": vae}, opt, lr, step + 1)
    vae.requires_grad_(False).eval()


def train_decoder(vae, steps: int, seed: int, batch: int, work: Path, bf16: bool = True) -> None:
    """Fine-tune the VAE's decoder only (the encoder, so the latent space the UNet learns, is fixed) on
    world images and on outlined, dotted objects of random shapes and colours (`random_outlined`):
    trained on the world alone, the decoder drew the demo subject's outline and purple dots in 5 % of
    reconstructions; a base model's VAE has to draw things its UNet has not seen. Leaves the VAE frozen,
    in eval mode."""
    vae.requires_grad_(True).train()
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    ckpt = work / "decoder.safetensors"
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0)
    lr = cosine(opt, 50, steps)
    start = resume(ckpt, {"model": vae}, opt, lr)
    bar = progress(start, steps, "decoder")
    for step in bar:
        rng = random.Random(seed * 7919 + 10_000_000 + step)
        images = [render(sample_scene(rng)) if i % 2 else random_outlined(rng) for i in range(batch)]
        x = to_tensor(images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        with autocast(bf16):
            rec = vae.decode(z).sample.float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        optimizer_step(opt, lr, loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if due(step, steps):
            vae.eval()
            ceiling, subject = _ceilings(vae)
            log.info(
                "decoder step %d/%d loss %.4f ceiling %s subject %.2f",
                step + 1,
                steps,
                loss.item(),
                json.dumps(ceiling),
                subject,
            )
            save_checkpoint(ckpt, {"model": vae}, opt, lr, step + 1)
    vae.requires_grad_(False).eval()
