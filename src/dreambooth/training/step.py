"""One training step's maths: a micro-batch of instance (and class) examples, noised at random
timesteps, through the denoiser, to the DreamBooth loss (Ruiz et al., 2023, eq. 2)."""

from __future__ import annotations

import torch

from ..data.examples import ExampleSet
from ..data.order import mix_seed
from .losses import offset_noise, prior_preservation_loss
from .setup import Run


def training_step(run: Run, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch: instance (+ class) examples -> noisy latents -> denoiser -> DreamBooth loss.

    Instance and class examples draw from generators of their own, so the instance half of a step is
    the same with or without prior preservation.
    """
    cfg, data, acc = run.cfg, run.data, run.accelerator
    sets, turn = data.sets_of_micro_batch(step * cfg.gradient_accumulation + micro)
    # The micro-batches of a step that draw from one concept are one global batch (batch size x processes
    # x accumulation): its random numbers are drawn whole, from the step's generator, and each micro-batch
    # of each process takes its slice. So accumulation trains what a bigger batch trains, as processes do.
    # With several concepts, the micro-batches take turns between them: each is a global batch of its own.
    group = cfg.gradient_accumulation if len(data.concepts) == 1 else 1
    index = micro if group > 1 else 0  # this micro-batch's place in the group
    k = (turn - index) * cfg.batch_size * acc.num_processes  # the group's first example (of its concept)
    total = cfg.batch_size * acc.num_processes * group
    slot = index * acc.num_processes + acc.process_index
    seeds = [mix_seed(cfg.seed, step, micro - index, s.stream) for s in sets]
    parts = [_noised(run, s, k, torch.Generator().manual_seed(seed), total, slot) for s, seed in zip(sets, seeds)]
    if len({p[0].shape for p in parts}) > 1:  # a bucket's photos beside square class images: one pass each
        (inst, _, _), (klass, _, _) = (_losses(run, [p]) for p in parts)
        return inst + cfg.prior_loss_weight * klass, inst, klass
    return _losses(run, parts, cfg.prior_loss_weight)


def _losses(run: Run, parts: list, prior_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The denoiser on the parts' examples in one batch; the DreamBooth loss of the first part (instance)
    and the rest (class)."""
    noisy, timesteps, emb, target = (torch.cat(t) for t in list(zip(*parts))[:4])  # (B or 2B, ...)
    conditions = None
    if parts[0][4] is not None:  # the family's further conditioning (pooled text, SDXL's sizes)
        conditions = {k: torch.cat([p[4][k] for p in parts]).to(run.weight_dtype) for k in parts[0][4]}
    family, dtype = run.comps.family, run.weight_dtype
    pred = family.predict(run.denoiser, noisy.to(dtype), timesteps, emb.to(dtype), conditions, run.cfg)
    weights = run.objective.weights(timesteps)
    return prior_preservation_loss(pred, target, parts[0][0].shape[0], prior_weight, weights, parts[0][5])


def _noised(run: Run, s: ExampleSet, k: int, g: torch.Generator, total: int, slot: int):
    """Slice `slot` (of batch size examples) of the global batch of examples k..k+total-1 of set s, with
    noise added at random timesteps by the family's objective (DDPM: Ho et al., 2020, eq. 4; rectified
    flow: Esser et al., 2024). The random numbers of the whole global batch are drawn, so how it is split
    across processes and micro-batches changes nothing."""
    comps, device, n, objective = run.comps, run.accelerator.device, run.cfg.batch_size, run.objective
    part = (slot * n, (slot + 1) * n)
    latents, emb, added, pixels = run.data.batch(s, k, total, g, comps.vae, run.text_encoders, device, part)
    noise = torch.randn((total, *latents.shape[1:]), generator=g)[part[0] : part[1]].to(device)
    timesteps = objective.timesteps(total, g)[part[0] : part[1]].to(device)
    if run.cfg.noise_offset:  # (drawn after the rest: without it, a step's random numbers are unchanged)
        noise = offset_noise(noise, run.cfg.noise_offset, g, rows=(part[0], total))
    source = noise
    if run.cfg.input_perturbation:  # the input is made from perturbed noise, the target from the noise
        fresh = torch.randn((total, *latents.shape[1:]), generator=g)[part[0] : part[1]].to(device)
        source = noise + run.cfg.input_perturbation * fresh
    noisy = objective.noisy(latents, source, timesteps)
    return noisy, timesteps, emb, objective.target(latents, noise, timesteps), added, pixels
