"""Stable Diffusion 1.x (Rombach et al., 2022): one CLIP ViT-L text encoder, 512 px, epsilon prediction."""

from __future__ import annotations

from .base import Family


class SD1(Family):
    name = "sd1"
    label = "Stable Diffusion 1.x"
    single_file_kinds = ("v1",)

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline and text_encoder.get("hidden_act") != "gelu"
