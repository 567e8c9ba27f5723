"""The only place that loads models: a hub id, a local diffusers folder (the tiny model is one), or a
built-in model's name (`toyworld`: the bundled toy-world model, see dreambooth.toyworld)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BUILTIN_MODELS = {"toyworld": "toyworld-model"}  # name -> folder under dreambooth/assets


def builtin_path(model: str) -> Path | None:
    """The bundled folder of a built-in model's name (a local folder of that name wins), else None."""
    if model not in BUILTIN_MODELS or Path(model).exists():
        return None
    from importlib.resources import files

    return Path(str(files("dreambooth") / "assets" / BUILTIN_MODELS[model]))


def check_model(model: str, flag: str = "--model") -> None:
    """Reject a model that cannot be loaded, before anything is loaded.

    A path that exists must be a diffusers folder (model_index.json). Anything else must look like a
    hub id (owner/name); offline (HF_HUB_OFFLINE=1) it must also be in the local cache.
    """
    builtin = builtin_path(model)
    if builtin is not None and not (builtin / "model_index.json").is_file():
        raise UserError(f"{flag} {model}: the built-in model is missing from this installation ({builtin})")
    p = builtin or Path(model).expanduser()
    if p.exists():
        if p.is_dir() and (p / "model_index.json").is_file():
            return
        raise UserError(f"{flag} {model}: not a diffusers model folder (no model_index.json)")
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise UserError(f"{flag} {model}: no such folder, and not a hub id (owner/name)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "model_index.json"), str):
            raise UserError(f"{flag} {model}: not in the local hub cache, and HF_HUB_OFFLINE is set")


def quiet_libraries() -> None:
    """Our own progress bars and messages say what happens; the libraries' loading bars do not help."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


@dataclass
class Components:
    """The parts of a Stable Diffusion model that training touches."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any  # DDPM, for adding noise in training
    pipeline: Any  # the loaded pipeline, for generating (class images, samples)


def resolve(model: str) -> str:
    """A local folder as an absolute path, a built-in name as its folder, anything else (a hub id) as given."""
    builtin = builtin_path(model)
    if builtin is not None:
        return str(builtin)
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def native_size(model: str) -> int:
    """The model's own resolution (UNet sample size x VAE factor), read from its configs only:
    512 for SD 1.x, 768 for SD 2.x-768, 1024 for SDXL, 64 for the toy world."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = resolve(model)
    try:
        unet = UNet2DConditionModel.load_config(path, subfolder="unet")
        vae = AutoencoderKL.load_config(path, subfolder="vae")
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model}: could not read its configs ({str(e).splitlines()[0]})") from None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def load_pipeline(model: str, dtype=None):
    """A text-to-image pipeline without safety checker, from a hub id or a folder."""
    import torch
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            resolve(model),
            dtype=dtype or torch.float32,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as e:
        raise UserError(f"--model {model}: could not be loaded ({str(e).splitlines()[0]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_components(model: str, dtype=None) -> Components:
    from diffusers import DDPMScheduler

    pipe = load_pipeline(model, dtype)
    return Components(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        unet=pipe.unet,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        pipeline=pipe,
    )
