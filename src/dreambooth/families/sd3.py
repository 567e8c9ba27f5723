"""Stable Diffusion 3 and 3.5 (Esser et al., 2024): an MMDiT transformer on patchified latents, three
text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, whose penultimate states are concatenated and padded to
T5's width, then T5-XXL's states appended; the CLIP projections, concatenated, are the pooled
conditioning), rectified flow with a shifted schedule. Only the CLIP encoders train."""

from __future__ import annotations

from .flow import FlowFamily

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


class SD3(FlowFamily):
    name = "sd3"
    label = "Stable Diffusion 3"
    pipeline = "StableDiffusion3Pipeline"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")
    # diffusers' SD3 DreamBooth LoRA script's default targets are "attn"
    lora_target_groups = {
        "attn": ATTENTION,
        "ff": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    }
    flow_samplers = ("euler", "heun")
    default_weighting = "logit_normal"  # diffusers' SD3 script's default
    default_max_sequence_length = 77  # diffusers' SD3 script's default
    default_guidance = 7.0  # StableDiffusion3Pipeline's
    shard_blocks = ("transformer_blocks",)
    t5_tokenizer = "tokenizer_3"
    single_file_kinds = ("sd3", "sd35_medium", "sd35_large")
    kohya_text_encoder_prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

    def kohya_model_version(self, denoiser: dict | None) -> str:
        """sd-scripts' ss_base_model_version for SD3: what follows "stable-diffusion-3-" (sd3_utils)."""
        if not (denoiser or {}).get("qk_norm"):
            return "medium"
        return "5-medium" if denoiser.get("dual_attention_layers") else "5-large"

    def kohya_groups(self, config: dict) -> dict[str, tuple[tuple[str, int], ...]]:
        """sd-scripts' and ComfyUI's MMDiT names (joint_blocks.N.x_block.attn.qkv ...), as ComfyUI's
        mmdit_to_diffusers maps diffusers' SD3 transformer onto them. The last block's context
        modulation is left out: its shift and scale halves are swapped there."""
        h = config["num_attention_heads"] * config["attention_head_dim"]
        depth = config["num_layers"]
        out = {}
        for i in range(depth):
            for name, parts in _JOINT.items():
                if name == "context_block_adaLN_modulation_1" and i == depth - 1:
                    continue
                if "attn2" in name and i not in (config.get("dual_attention_layers") or ()):
                    continue
                out[f"joint_blocks_{i}_{name}"] = tuple((f"transformer_blocks.{i}.{p}", h) for p in parts)
        for name, path in _TOP.items():
            out[name] = ((path, 0),)
        return out

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        return any(k.startswith("transformer.transformer_blocks.") for k in state)

    def size_step(self, denoiser: dict, vae: dict) -> int:
        from .base import vae_factor

        return vae_factor(vae) * int(denoiser.get("patch_size", 2))

    def encode_prompt(self, text_encoders: list, ids: list, device):
        """As StableDiffusion3Pipeline.encode_prompt (clip_skip None)."""
        import torch

        clip, pooled = [], []
        for te, i in zip(text_encoders[:2], ids[:2]):
            out = te(i.to(device), output_hidden_states=True)
            clip.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip_emb = torch.cat(clip, dim=-1)
        t5 = text_encoders[2]
        t5_emb = t5(ids[2].to(device))[0] if t5 is not None else None
        width = t5_emb.shape[-1] if t5_emb is not None else t5.config.d_model
        clip_emb = torch.nn.functional.pad(clip_emb, (0, width - clip_emb.shape[-1]))
        emb = torch.cat([clip_emb, t5_emb.to(clip_emb.dtype)], dim=-2)
        return emb, torch.cat(pooled, dim=-1)

    def conditions(self, pooled, sizes):
        return {"pooled_projections": pooled}

    def predict(self, denoiser, noisy, t, emb, conditions, cfg=None):
        return denoiser(
            hidden_states=noisy,
            timestep=t,
            encoder_hidden_states=emb,
            pooled_projections=conditions["pooled_projections"],
        ).sample


# The original MMDiT's modules (sd-scripts' lora_sd3.py; ComfyUI's comfy/utils.py MMDIT_MAP_*), each with
# diffusers' modules fused in it, in row order.
_JOINT = {
    "x_block_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block_attn_proj": ("attn.to_out.0",),
    "x_block_attn2_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block_attn2_proj": ("attn2.to_out.0",),
    "x_block_mlp_fc1": ("ff.net.0.proj",),
    "x_block_mlp_fc2": ("ff.net.2",),
    "x_block_adaLN_modulation_1": ("norm1.linear",),
    "context_block_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block_attn_proj": ("attn.to_add_out",),
    "context_block_mlp_fc1": ("ff_context.net.0.proj",),
    "context_block_mlp_fc2": ("ff_context.net.2",),
    "context_block_adaLN_modulation_1": ("norm1_context.linear",),
}
_TOP = {
    "context_embedder": "context_embedder",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
}
