"""FLUX.1 (Black Forest Labs, 2024): a rectified-flow transformer of double- and single-stream blocks
on 2x2-packed latents with rotary position ids, CLIP ViT-L's pooled output and T5-XXL's states as its
text conditioning; [dev] is guidance-distilled (the guidance scale is an input of the transformer),
[schnell] is not. Only CLIP trains."""

from __future__ import annotations

from .flow import DEFAULT_GUIDANCE, FlowFamily
from .sd3 import ATTENTION


class Flux(FlowFamily):
    name = "flux"
    label = "FLUX.1"
    pipeline = "FluxPipeline"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    trainable_text_encoders = ("text_encoder",)
    # diffusers' FLUX DreamBooth LoRA script's default targets: attention ("attn") and feed-forward ("ff")
    lora_target_groups = {
        "attn": ATTENTION,
        "ff": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"),
    }
    default_weighting = "none"  # diffusers' FLUX script's default
    default_max_sequence_length = 512
    default_guidance = DEFAULT_GUIDANCE  # FluxPipeline's: [dev]'s embedded guidance (schnell ignores it)
    shard_blocks = ("transformer_blocks", "single_transformer_blocks")
    t5_tokenizer = "tokenizer_2"
    single_file_kinds = ("flux-dev", "flux-schnell")  # not Fill or Depth: they take an image too

    kohya_version = "flux1"
    kohya_text_encoder_prefixes = {"text_encoder": "lora_te1"}

    def kohya_groups(self, config: dict) -> dict[str, tuple[tuple[str, int], ...]]:
        return kohya_groups(config)

    def guidance_embedded(self, denoiser: dict) -> bool:
        return bool(denoiser.get("guidance_embeds"))

    def guidance_default(self, denoiser: dict) -> float:
        """[dev]'s embedded 3.5; 1 (no guidance, as FluxPipeline's true_cfg_scale) for a model without it."""
        return self.default_guidance if self.guidance_embedded(denoiser) else 1.0

    def call_kwargs(self, negative, guidance, zero_terminal_snr, max_sequence_length=None, *, pipe=None, batch=1):
        """For a guidance-distilled model ([dev]) the scale is the transformer's input; for one that is not
        ([schnell] and the toy world's twin) it is true classifier-free guidance (FluxPipeline's
        true_cfg_scale, against the negative prompt or an empty one), off at 1."""
        kw = super().call_kwargs(negative, guidance, zero_terminal_snr, max_sequence_length, pipe=pipe, batch=batch)
        if pipe is not None and not pipe.transformer.config.guidance_embeds and guidance > 1:
            kw.update(true_cfg_scale=guidance, negative_prompt=negative or [""] * batch)
        return kw

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        return any(k.startswith("transformer.single_transformer_blocks.") for k in state)

    def native_size(self, denoiser: dict, vae: dict) -> int:
        """FluxTransformer2DModel has no sample size: the VAE's (1024 for FLUX.1, 64 for the toy world's twin)."""
        return int(vae.get("sample_size") or 1024)

    def size_step(self, denoiser: dict, vae: dict) -> int:
        from .base import vae_factor

        return vae_factor(vae) * 2  # latents are packed 2x2

    def encode_prompt(self, text_encoders: list, ids: list, device):
        """As FluxPipeline.encode_prompt: T5's states, CLIP's pooled output."""
        clip, t5 = text_encoders
        pooled = clip(ids[0].to(device), output_hidden_states=False).pooler_output
        return t5(ids[1].to(device), output_hidden_states=False)[0], pooled

    def conditions(self, pooled, sizes):
        return {"pooled_projections": pooled}

    def predict(self, denoiser, noisy, t, emb, conditions, cfg=None):
        """Pack the latents 2x2 into tokens, run the transformer with its position ids (and the embedded
        guidance of [dev]), unpack (as FluxPipeline and diffusers' FLUX script do)."""
        import torch

        b, c, h, w = noisy.shape
        packed = noisy.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        rows, cols = torch.arange(h // 2), torch.arange(w // 2)
        img_ids = torch.stack(
            [torch.zeros(h // 2, w // 2), rows[:, None].expand(-1, w // 2), cols[None, :].expand(h // 2, -1)], dim=-1
        ).reshape(-1, 3)
        txt_ids = torch.zeros(emb.shape[1], 3)
        config = getattr(denoiser, "module", denoiser).config  # (DDP wraps it)
        guidance = None
        if config.guidance_embeds:
            scale = DEFAULT_GUIDANCE if cfg is None or cfg.guidance_scale is None else cfg.guidance_scale
            guidance = torch.full((b,), float(scale), device=noisy.device)
        out = denoiser(
            hidden_states=packed,
            timestep=t.to(noisy.dtype) / 1000,
            guidance=guidance,
            pooled_projections=conditions["pooled_projections"],
            encoder_hidden_states=emb,
            txt_ids=txt_ids.to(noisy.device, noisy.dtype),
            img_ids=img_ids.to(noisy.device, noisy.dtype),
        ).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# kohya's (sd-scripts, ComfyUI) FLUX LoRA names are the original (BFL) model's modules, where a block's
# query, key and value (and in single blocks the MLP's input too) are one fused linear layer.
_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
}


def kohya_groups(config: dict) -> dict[str, tuple[tuple[str, int], ...]]:
    """kohya name (without lora_unet_) -> the diffusers modules fused in it, each with its output width,
    in the fused weight's row order, for a FLUX transformer of this config (pure)."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(h * config.get("mlp_ratio", 4.0))
    width = {"proj_mlp": mlp, "ff.net.0.proj": mlp, "ff_context.net.0.proj": mlp, "norm1.linear": 6 * h,
             "norm1_context.linear": 6 * h, "norm.linear": 3 * h}  # fmt: skip
    out = {}
    for i in range(config["num_layers"]):
        for name, parts in _DOUBLE.items():
            out[f"double_blocks_{i}_{name}"] = tuple((f"transformer_blocks.{i}.{p}", width.get(p, h)) for p in parts)
    for i in range(config["num_single_layers"]):
        for name, parts in _SINGLE.items():
            out[f"single_blocks_{i}_{name}"] = tuple(
                (f"single_transformer_blocks.{i}.{p}", width.get(p, h)) for p in parts
            )
    for name, path in _TOP.items():
        out[name] = ((path, 0),)
    return out
