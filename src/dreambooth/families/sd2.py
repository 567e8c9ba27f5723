"""Stable Diffusion 2.x: an OpenCLIP ViT-H text encoder (GELU), linear projections in the transformer
blocks, and for the 768 px models v-prediction. The pipeline is SD 1.x's."""

from __future__ import annotations

from .base import Family


class SD2(Family):
    name = "sd2"
    label = "Stable Diffusion 2.x"
    single_file_kinds = ("v2",)
    kohya_version = "sd_v2"
    kohya_v2 = True

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline and text_encoder.get("hidden_act") == "gelu"

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        """OpenCLIP ViT-H's 1024-wide hidden states are what the UNet's cross-attention reads."""
        return any(k.startswith("unet.") and ".attn2.to_k.lora_A" in k and v.shape[1] == 1024 for k, v in state.items())
