"""`dreambooth demo`: the whole method on the tiny offline model, in a few minutes on a CPU.

It builds the tiny model, trains LoRA DreamBooth with prior preservation on the bundled example
photos (see assets/dog/ATTRIBUTION.md), and writes a before/after grid plus the measured effect: the
denoising loss on the subject's photos before and after training. The tiny model has random
weights, so its images are noise; what the demo shows is that the whole path runs and that the
model learned the photos (the loss drops).
"""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from pathlib import Path

from . import io
from .config import TrainConfig
from .data.images import list_images, load_rgb

log = logging.getLogger(__name__)

INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of a dog"
RESOLUTION = 64


def example_subject() -> Path:
    return Path(str(files("dreambooth") / "assets" / "dog"))


def demo_config(out: Path, max_steps: int, overwrite: bool) -> TrainConfig:
    return TrainConfig(
        model=str(out / "tiny-model"),
        instance_dir=str(example_subject()),
        instance_prompt=INSTANCE_PROMPT,
        class_prompt=CLASS_PROMPT,
        class_dir=str(out / "class-images"),
        num_class_images=16,
        class_inference_steps=20,
        output_dir=str(out / "run"),
        resolution=RESOLUTION,
        max_steps=max_steps,
        # The tiny model is ~1000x smaller than Stable Diffusion: it takes a larger step size.
        learning_rate=1e-3,
        lr_warmup_steps=max(1, max_steps // 10),
        rank=8,
        train_text_encoder=True,
        text_encoder_lr=1e-4,
        random_flip=True,
        checkpoint_every=max(1, max_steps // 2),
        overwrite=overwrite,
    )


def run_demo(out: Path, max_steps: int = 300, overwrite: bool = False) -> dict:
    from .config import SamplingConfig
    from .evaluation.denoising import fixed_noise_loss
    from .generation import Engine, image_grid, image_settings
    from .models import load_pipeline
    from .tiny import build_tiny_pipeline
    from .training.loop import train
    from .training.preflight import preflight

    cfg = demo_config(out, max_steps, overwrite)
    if (out / "tiny-model" / "model_index.json").is_file():
        preflight(cfg)  # refuse early (e.g. a finished demo without --overwrite) before any work
    else:
        build_tiny_pipeline(out / "tiny-model")
    log.info("training LoRA DreamBooth on %s (%d steps)", cfg.instance_dir, max_steps)
    train(cfg)

    photos = list_images(cfg.instance_dir)
    seeds = [0, 1, 2, 3]
    engine = Engine()
    sampling = SamplingConfig(model=cfg.model, steps=20)
    rows, labels = [[load_rgb(p) for p in photos]], ["training photos"]
    for prompt in (INSTANCE_PROMPT, CLASS_PROMPT):
        for name, lora in (("before", None), ("after", cfg.output_dir)):
            rows.append(engine.render([image_settings(sampling, engine, prompt, s, lora=lora) for s in seeds]))
            labels.append(f"{name}: {prompt}")
    base = load_pipeline(cfg.model)
    tuned = load_pipeline(cfg.model)
    tuned.load_lora_weights(cfg.output_dir)
    grid_path = out / "before_after.png"
    with io.atomic_path(grid_path) as tmp:
        image_grid(rows, labels).save(tmp, format="PNG")
    summary = {
        "denoising_loss_before": fixed_noise_loss(base, photos, INSTANCE_PROMPT, RESOLUTION),
        "denoising_loss_after": fixed_noise_loss(tuned, photos, INSTANCE_PROMPT, RESOLUTION),
        "grid": str(grid_path),
        "weights": str(Path(cfg.output_dir) / "pytorch_lora_weights.safetensors"),
        "train_log": str(Path(cfg.output_dir) / "train_log.csv"),
    }
    io.write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    print(
        f"\nDemo finished. Denoising loss on the subject's photos: {summary['denoising_loss_before']:.3f} before, "
        f"{summary['denoising_loss_after']:.3f} after training.\n"
        f"  before/after grid: {grid_path}\n  LoRA weights:      {summary['weights']}\n"
        f"  training log:      {summary['train_log']}\n  summary:           {out / 'demo_summary.json'}"
    )
    return summary
