"""`--validation-loss-every N`: the denoising loss on the photos (and the first class images) at fixed
noise and fixed timesteps, the same at every evaluation, so that its curve moves only with the weights
(the training loss draws new noise and timesteps each step, and is mostly their noise). Computed
without gradients, dropout off, on the weights that would be saved (schedule-free AdamW's average)."""

from __future__ import annotations

import torch

from ..data.order import mix_seed

TIMESTEPS = 4  # per example: the middles of 4 equal ranges of the training timesteps
CLASS_IMAGES = 8  # the first class images of each concept (a prior of hundreds would cost a step's time many times)
STREAM = 1_000_003  # the validation loss's noise comes from generators of its own


@torch.no_grad()
def validation_loss(run) -> tuple[float, float | None]:
    """(loss on the subject's photos, loss on the class images or None), each the mean over examples
    and timesteps of the family objective's squared error (unweighted)."""
    cfg, data, comps, acc = run.cfg, run.data, run.comps, run.accelerator
    models = [comps.denoiser, *comps.text_encoders]
    modes = [(m, m.training) for m in models]
    for m in models:
        m.eval()
    t = run.objective.fixed_timesteps(TIMESTEPS).to(acc.device)
    sums: dict[str, list[float]] = {"instance": [], "class": []}
    try:
        for c, (instance, klass) in enumerate(data.concepts):
            for kind, s, n in (("instance", instance, None), ("class", klass, CLASS_IMAGES)):
                if s is None:
                    continue
                for i in range(min(len(s.paths), n or len(s.paths))):
                    g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAM + c, s.stream, i))
                    sums[kind].append(_example_loss(run, s, i, g, t))
    finally:
        for m, training in modes:
            m.train(training)
    mean = {k: sum(v) / len(v) for k, v in sums.items() if v}
    return mean["instance"], mean.get("class")


def _example_loss(run, s, i: int, g: torch.Generator, t: torch.Tensor) -> float:
    comps, acc, objective, dtype = run.comps, run.accelerator, run.objective, run.weight_dtype
    latents, emb, added = run.data.fixed(s, i, g, comps.vae, comps.text_encoders, acc.device)
    k = t.shape[0]
    latents = latents.expand(k, *latents.shape[1:])
    noise = torch.randn(latents.shape, generator=g).to(latents.device)
    conditions = None if added is None else {n: v.expand(k, *v.shape[1:]).to(dtype) for n, v in added.items()}
    with acc.autocast():
        pred = comps.family.predict(comps.denoiser, objective.noisy(latents, noise, t).to(dtype), t,
                                    emb.expand(k, *emb.shape[1:]).to(dtype), conditions, run.cfg)  # fmt: skip
    return torch.nn.functional.mse_loss(pred.float(), objective.target(latents, noise, t).float()).item()
