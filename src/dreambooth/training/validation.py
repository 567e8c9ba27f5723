"""Validation images while training: fixed prompts and seeds every N steps, and a steps x prompts
grid at the end, so progress can be watched while the run trains. Rendering never touches the
training's random state, so a run with validation trains exactly as one without."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import io
from ..formats.pnginfo import save_png

SCHEDULER = "dpm++2m-karras"


def validation_dir(output_dir) -> Path:
    return Path(output_dir) / "validation"


def due(cfg, step: int) -> bool:
    every = cfg.validation_every or cfg.checkpoint_every
    return bool(cfg.validation_prompt) and (step % every == 0 or step == cfg.max_steps or step == 0)


def sampling_modules(comps) -> list:
    """What sampling runs besides the denoiser: the VAE and every text encoder of the family."""
    return [comps.vae, *comps.text_encoders]


def moved_off(modules: list, device) -> list:
    """The modules that caching moved off the accelerator `device` (accelerate's "cuda" is where the
    modules' "cuda:0" is: the kind of device is compared, not the name)."""
    return [m for m in modules if m.device.type != torch.device(device).type]


@torch.no_grad()
def render(run, step: int) -> Path:
    cfg, comps, acc = run.cfg, run.comps, run.accelerator
    pipe = comps.pipeline
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    moved = moved_off(sampling_modules(comps), acc.device)
    for m in moved:
        m.to(acc.device)
    modes = [(m, m.training) for m in (comps.denoiser, *comps.text_encoders)]
    for m, _ in modes:
        m.eval()
    scheduler = pipe.scheduler
    zero_snr = getattr(cfg, "zero_terminal_snr", False)
    family = comps.family
    sampler = "dpm++2m" if zero_snr else (SCHEDULER if SCHEDULER in family.samplers() else family.default_sampler)
    pipe.scheduler = family.sampler(sampler, scheduler.config, zero_snr)
    folder = validation_dir(cfg.output_dir) / f"step-{step}"
    try:
        for pi, prompt in enumerate(cfg.validation_prompt):
            generators = [torch.Generator("cpu").manual_seed(s) for s in cfg.validation_seeds]
            with acc.autocast():
                images = pipe(
                    prompt=[prompt] * len(generators),
                    generator=generators,
                    height=cfg.resolution,
                    width=cfg.resolution,
                    num_inference_steps=cfg.validation_inference_steps,
                    **family.call_kwargs(None, cfg.validation_guidance, zero_snr, pipe=pipe, batch=len(generators)),
                ).images
            if not acc.is_main_process:  # (with --fsdp every process samples; the main one writes)
                continue
            if getattr(cfg, "report_to", "none") != "none":
                from .trackers import log_images

                log_images(acc, cfg.report_to, f"validation/{pi:02d} {prompt}", images, step)
            _save(cfg, folder, pi, prompt, images, step, sampler, zero_snr)
    finally:
        pipe.scheduler = scheduler
        for m, training in modes:
            m.train(training)
        for m in moved:
            m.to("cpu")
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return folder


def _save(cfg, folder: Path, pi: int, prompt: str, images: list, step: int, sampler: str, zero_snr: bool) -> None:
    """Each seed's image as a PNG carrying its settings (and the run and step it shows)."""
    for seed, image in zip(cfg.validation_seeds, images):
        settings = dict(
            model=cfg.model,
            prompt=prompt,
            negative_prompt="",
            seed=seed,
            width=cfg.resolution,
            height=cfg.resolution,
            steps=cfg.validation_inference_steps,
            guidance=cfg.validation_guidance,
            scheduler=sampler,
            zero_terminal_snr=zero_snr,
            training_step=step,
            run=str(cfg.output_dir),
        )
        with io.atomic_path(folder / f"{pi:02d}-{seed}.png") as tmp:
            save_png(image, tmp, settings)


def write_grid(cfg) -> Path | None:
    """OUTPUT/validation/grid.png: one row per step, one column per prompt and seed."""
    from PIL import Image

    from ..sheets import labelled_grid

    root = validation_dir(cfg.output_dir)
    steps = sorted(int(m.group(1)) for p in root.glob("step-*") if (m := re.match(r"^step-(\d+)$", p.name)))
    if not steps:
        return None
    cols = [(pi, s) for pi in range(len(cfg.validation_prompt)) for s in cfg.validation_seeds]
    rows = []
    for step in steps:
        row = []
        for pi, seed in cols:
            f = root / f"step-{step}" / f"{pi:02d}-{seed}.png"
            row.append(Image.open(f) if f.exists() else None)
        rows.append(row)
    labels = [f"{cfg.validation_prompt[pi]} (seed {seed})" for pi, seed in cols]
    grid = labelled_grid(rows, labels, [f"step {s}" for s in steps], title=f"validation: {cfg.output_dir}")
    path = root / "grid.png"
    with io.atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
