"""Full DreamBooth fine-tuning, as in the paper (Ruiz et al., 2023, section 3): every UNet weight
trains (and the text encoder's with --train-text-encoder). The result is a whole diffusers pipeline
folder, which stock `StableDiffusionPipeline.from_pretrained` loads."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..io import atomic_dir
from ..models import Components
from .base import Method


class Full(Method):
    name = "full"
    label = setting_label = "full fine-tuning"
    # The paper's Stable Diffusion fine-tuning: lr 5e-6, ~1000 steps.
    defaults = {"learning_rate": 5e-6, "max_steps": 1000, "warmup": 0}

    @classmethod
    def validate_options(cls, cfg) -> None:
        if cfg.quantize_base:
            raise UserError(
                "--quantize-base: quantises the frozen base for adapters; --method full trains every weight"
            )

    def trained_bytes(self) -> int:
        """The denoiser's files (fp32), or SD 1.5's UNet for a model not on this disk."""
        from ..models import family_of, resolve

        folder = Path(resolve(self.cfg.model)) / family_of(self.cfg.model).denoiser
        files = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")) if folder.is_dir() else []
        if not files:
            return 3_440_000_000
        size = sum(f.stat().st_size for f in files)
        return size * 2 if any(".fp16." in f.name for f in files) else size

    def usage(self, run: Path, pipeline: str, load: str, trigger: str) -> list[str]:
        return [
            "```python",
            f"from diffusers import {pipeline}",
            f'pipe = {pipeline}.from_pretrained("{run}")',
            f'pipe("{trigger}").images[0]',
            "```",
        ]

    @property
    def trains_text_encoder(self) -> bool:
        return self.cfg.train_text_encoder

    def prepare(self, comps: Components) -> list[dict]:
        from diffusers.training_utils import cast_training_params

        comps.vae.requires_grad_(False)
        comps.denoiser.requires_grad_(True)
        groups = [{"params": list(comps.denoiser.parameters()), "lr": self.cfg.learning_rate}]
        for te in comps.text_encoders:
            te.requires_grad_(False)
        for (_, te), lr in zip(self._pairs(comps), self.text_encoder_lrs(comps)):
            te.requires_grad_(self.trains_text_encoder)
            if self.trains_text_encoder:
                groups.append({"params": list(te.parameters()), "lr": lr})
        # Trained weights stay in fp32 under mixed precision (autocast computes in fp16/bf16).
        cast_training_params([comps.denoiser, *comps.text_encoders])
        return groups

    def weights_in(self, folder: Path) -> bool:
        return (Path(folder) / "model_index.json").is_file()

    def sampling(self, folder: Path) -> dict[str, str]:
        return {"model": str(folder)}

    def save(self, comps: Components, folder: Path) -> list[Path]:
        """The pipeline's folders and model_index.json, each replaced atomically."""
        folder = Path(folder)
        with atomic_dir(folder / ".pipeline") as tmp:
            comps.pipeline.save_pretrained(tmp, safe_serialization=True)
        staged = folder / ".pipeline"
        written = []
        for item in sorted(staged.iterdir()):
            target = folder / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
            written.append(target)
        shutil.rmtree(staged, ignore_errors=True)
        return written
