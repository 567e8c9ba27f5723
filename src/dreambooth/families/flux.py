"""FLUX.1 (Black Forest Labs, 2024): a rectified-flow transformer of double- and single-stream blocks
on 2x2-packed latents with rotary position ids, CLIP ViT-L's pooled output and T5-XXL's states as its
text conditioning; [dev] is guidance-distilled (the guidance scale is an input of the transformer),
[schnell] is not. Only CLIP trains."""

from __future__ import annotations

import re

from ..errors import UserError
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
    t5_tokenizer = "tokenizer_2"

    kohya_layout = True
    kohya_fused = True
    kohya_version = "flux1"
    kohya_text_encoder_prefixes = {"text_encoder": "lora_te1"}

    def kohya_entries(self, modules: dict[str, tuple], denoiser_config: dict | None) -> dict[str, tuple]:
        if denoiser_config is None:
            raise UserError("a FLUX LoRA needs its base model to name the fused layers; give --model")
        return to_kohya_flux(modules, denoiser_config)

    def kohya_state_to_diffusers(self, state: dict, denoiser_config: dict) -> dict:
        """kohya's FLUX file (lora_unet_double_blocks_..., lora_te1_...) in diffusers' layout, split by this
        model's widths (diffusers' own converter assumes FLUX.1's 3072-wide layers)."""
        entries, te = {}, {}
        for key in state:
            if key.endswith(".lora_down.weight"):
                name = key[: -len(".lora_down.weight")]
                down, up = state[key], state[f"{name}.lora_up.weight"]
                alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else float(down.shape[0])
                if name.startswith("lora_unet_"):
                    entries[name[len("lora_unet_") :]] = (down, up, alpha)
                elif name.startswith(("lora_te1_", "lora_te_")):
                    path = name.split("_", 2)[2].replace("text_model_encoder_layers_", "text_model.encoder.layers.")
                    path = path.replace("_self_attn_", ".self_attn.").replace("_mlp_", ".mlp.")
                    path = re.sub(r"layers\.(\d+)_", r"layers.\1.", path)
                    te[f"text_encoder.{path}"] = (down, up, alpha)
                else:
                    raise UserError(f"{key}: not a FLUX LoRA key of kohya's layout")
        out = {}
        for path, (down, up, alpha) in [*from_kohya_flux(entries, denoiser_config).items(), *te.items()]:
            prefix = path if path.startswith("text_encoder.") else f"transformer.{path}"
            out[f"{prefix}.lora_A.weight"] = down
            out[f"{prefix}.lora_B.weight"] = up * (alpha / down.shape[0])
        return out

    def guidance_embedded(self, denoiser: dict) -> bool:
        return bool(denoiser.get("guidance_embeds"))

    @classmethod
    def recognises(cls, index: dict, unet: dict, text_encoder: dict) -> bool:
        return index.get("_class_name") == cls.pipeline

    @classmethod
    def recognises_lora(cls, state: dict) -> bool:
        return any(k.startswith("transformer.single_transformer_blocks.") for k in state)

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


def to_kohya_flux(modules: dict[str, tuple], config: dict) -> dict[str, tuple]:
    """{diffusers path: (down, up, alpha)} -> {kohya name: (down, up, alpha)} (pure). Modules fused in
    one original layer become one LoRA whose down stacks theirs and whose up is block-diagonal (each
    module's scale alpha / rank folded into its block, the fused alpha its rank); a fused part without
    LoRA gets a zero block, so the result equals the separate LoRAs exactly and diffusers' kohya-FLUX
    converter splits it back (its "sparse" case)."""
    import torch

    out, left = {}, dict(modules)
    for name, parts in kohya_groups(config).items():
        present = [p for p, _ in parts if p in left]
        if not present:
            continue
        if len(parts) == 1:
            out[name] = left.pop(parts[0][0])
            continue
        rank = left[present[0]][0].shape[0]
        sample = left[present[0]][0]
        downs, ups = [], []
        for path, rows in parts:
            down, up, alpha = left.pop(path) if path in left else (None, None, None)
            if down is not None and down.shape[0] != rank:
                raise UserError(f"transformer.{path}: rank {down.shape[0]}, but its fused layer's others have {rank}")
            downs.append(down if down is not None else torch.zeros_like(sample))
            ups.append(up * (alpha / rank) if up is not None else torch.zeros(rows, rank, dtype=sample.dtype))
        out[name] = (torch.cat(downs), torch.block_diag(*ups), float(rank * len(parts)))
    if left:
        raise UserError(f"transformer.{sorted(left)[0]}: LoRA on a module with no kohya name for FLUX")
    return out


def from_kohya_flux(entries: dict[str, tuple], config: dict) -> dict[str, tuple]:
    """The inverse of to_kohya_flux: {kohya name: (down, up, alpha)} -> {diffusers path: (down, up, alpha)}
    (pure). A fused LoRA is split by its modules' widths: block-diagonal ones into their blocks, others
    (trained fused, as kohya does) with the whole down for each module and its rows of up."""
    import torch

    out = {}
    groups = kohya_groups(config)
    for name, (down, up, alpha) in entries.items():
        if name not in groups:
            raise UserError(f"lora_unet_{name}: not a module of this FLUX transformer")
        parts = groups[name]
        if len(parts) == 1:
            out[parts[0][0]] = (down, up, alpha)
            continue
        rows = [r for _, r in parts]
        rank, n = down.shape[0], len(parts)
        blocks = torch.split(up, rows)
        r = rank // n
        sparse = rank % n == 0 and all(
            not b[:, :i * r].any() and not b[:, (i + 1) * r:].any() for i, b in enumerate(blocks)
        )  # fmt: skip
        for i, ((path, _), block) in enumerate(zip(parts, blocks)):
            if sparse:
                d, u = down[i * r : (i + 1) * r], block[:, i * r : (i + 1) * r]
                if d.any() or u.any():
                    out[path] = (d, u, float(alpha) * r / rank)
            else:
                out[path] = (down, block, float(alpha))
    return out
