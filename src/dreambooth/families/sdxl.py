"""SDXL (Podell et al., 2023): two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG), whose penultimate
hidden states are concatenated, the second's pooled projection and the image's size and crop as added
conditioning ("micro-conditioning"), 1024 px, a VAE that overflows in fp16. Its kohya files name the
UNet's modules as the original (SGM/LDM) UNet does."""

from __future__ import annotations

import re

from ..errors import UserError
from .base import Family


class SDXL(Family):
    name = "sdxl"
    label = "SDXL"
    pipeline = "StableDiffusionXLPipeline"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")
    single_file_kinds = ("xl_base",)
    kohya_version = "sdxl_base_v1-0"
    kohya_text_encoder_prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    embedding_parts = ("clip_l", "clip_g")
    upcast_vae = True
    size_conditioning = True
    safety_checker = False

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline or unet.get("addition_embed_type") == "text_time"

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        return any(k.startswith("text_encoder_2.") for k in state)

    def kohya_unet_name(self, path: str, unet_config: dict | None) -> str:
        if unet_config is None:
            raise UserError("an SDXL LoRA needs its base model to name the SGM blocks; give --model")
        up_attn = [t.startswith("CrossAttn") for t in unet_config["up_block_types"]]
        return sgm_module_name(path, unet_config["layers_per_block"], up_attn)

    def encode_prompt(self, text_encoders: list, ids: list, device):
        """Both encoders' penultimate hidden states, concatenated, and the second's pooled projection
        (as StableDiffusionXLPipeline.encode_prompt)."""
        import torch

        te1, te2 = text_encoders
        h1 = te1(ids[0].to(device), output_hidden_states=True).hidden_states[-2]
        out2 = te2(ids[1].to(device), output_hidden_states=True)
        return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds

    def conditions(self, pooled, sizes: list[tuple[int, ...]]) -> dict | None:
        """The pooled embedding and each image's (original h, w, crop top, left, target h, w)."""
        import torch

        return {"text_embeds": pooled, "time_ids": torch.tensor(sizes, dtype=torch.float32)}


_RESNET = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def sgm_module_name(name: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """A diffusers UNet module path in the SGM/LDM layout of SDXL's original UNet (pure).

    layers_per_block: the UNet's (2 for SDXL); up_has_attention[i]: whether up block i has attentions
    (its upsampler then sits at index 2 of the output block instead of 1)."""
    for old, new in _TOP.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    lpb = layers_per_block
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.?(.*)$", name)
    mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.?(.*)$", name)
    if m:
        kind, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(lpb + 1) * (i + 1)}.0.op" + rest[len("conv") :]
            block = f"input_blocks.{(lpb + 1) * i + j + 1}.{0 if part == 'resnets' else 1}"
        else:
            if part == "upsamplers":
                return f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_has_attention[i] else 1}.{rest}"
            block = f"output_blocks.{(lpb + 1) * i + j}.{0 if part == 'resnets' else 1}"
    elif mid:
        part, j, rest = mid.group(1), int(mid.group(2)), mid.group(3)
        block = f"middle_block.{2 * j if part == 'resnets' else 1}"
    else:
        raise UserError(f"cannot name the UNet module {name} in the SGM layout")
    if part == "resnets":
        head, _, tail = rest.partition(".")
        rest = _RESNET.get(head, head) + (f".{tail}" if tail else "")
    return f"{block}.{rest}" if rest else block
