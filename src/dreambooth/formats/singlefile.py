"""Write a Stable Diffusion 1.x/2.x pipeline as one original-layout checkpoint (.safetensors), the form
AUTOMATIC1111, ComfyUI and civitai use: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.text_model.*` (CLIP text encoder).

diffusers ships only the other direction (`from_single_file`, loaders/single_file_utils.py); this is its
inverse, as diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, but generic over the
number of blocks and layers per block (the same keys as that script for SD 1.5), and `from_single_file`
with the folder as `config` loads it back to identical weights (tested). An SD 2.x text encoder is
written in the CLIP layout too, which diffusers loads; AUTOMATIC1111 expects OpenCLIP's key names
(`cond_stage_model.model.*`) for 2.x, which this does not write yet.
"""

from __future__ import annotations

import torch

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
_RESNET = (  # (diffusers, original) inside a UNet resnet block
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_VAE_ATTN = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def _unet_prefixes(cfg: dict) -> dict[str, tuple[str, bool]]:
    """diffusers module prefix -> (original prefix, is a resnet) for a UNet of this config."""
    per_block = cfg["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError("a UNet with per-block layers_per_block has no Stable Diffusion single-file layout")
    n = len(cfg["block_out_channels"])
    m: dict[str, tuple[str, bool]] = {}
    idx = 1  # input_blocks.0 is conv_in
    for i in range(n):
        for j in range(per_block):
            m[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{idx}.0.", True)
            m[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{idx}.1.", False)
            idx += 1
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{idx}.0.op.", False)
            idx += 1
    m["mid_block.resnets.0."] = ("middle_block.0.", True)
    m["mid_block.attentions.0."] = ("middle_block.1.", False)
    m["mid_block.resnets.1."] = ("middle_block.2.", True)
    has_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    idx = 0
    for i in range(n):
        for j in range(per_block + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{idx}.0.", True)
            m[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{idx}.1.", False)
            if j == per_block and i < n - 1:  # the upsampler follows the block's last resnet (and attention)
                m[f"up_blocks.{i}.upsamplers.0.conv."] = (f"output_blocks.{idx}.{2 if has_attn[i] else 1}.conv.", False)
            idx += 1
    return m


def unet_to_original(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the original layout (pure)."""
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError("only Stable Diffusion 1.x/2.x UNets have this single-file layout")
    if cfg.get("class_embed_type") or cfg.get("addition_embed_type"):
        raise ValueError("UNets with class or added embeddings (SDXL) are not written as single files yet")
    prefixes = _unet_prefixes(cfg)
    out = {}
    for key, value in state.items():
        new = next((orig + key[len(ours) :] for ours, orig in _UNET_TOP.items() if key.startswith(ours)), None)
        if new is None:
            ours = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
            if ours is None:
                raise ValueError(f"UNet weight {key} has no place in the single-file layout")
            orig, is_resnet = prefixes[ours]
            rest = key[len(ours) :]
            if is_resnet:
                rest = next((b + rest[len(a) :] for a, b in _RESNET if rest.startswith(a)), None)
                if rest is None:
                    raise ValueError(f"UNet weight {key} has no place in the single-file layout")
            new = orig + rest  # inside the transformer blocks the names are the same
        out[UNET + new] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original layout (pure); the decoder's blocks are
    numbered the other way round, and the mid attention's linear layers become 1x1 convolutions."""
    n = len(cfg["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.resnets.{k}.", f"{side}.mid.block_{k + 1}.") for k in range(2)]
        pairs.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."))
    for i in range(n):
        pairs.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    out = {}
    for key, value in state.items():
        new = next((b + key[len(a) :] for a, b in pairs if key.startswith(a)), key)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            head, tail = new.split(".mid.attn_1.")
            tail = next((b + tail[len(a) :] for a, b in _VAE_ATTN if tail.startswith(a)), tail)
            new = f"{head}.mid.attn_1.{tail}"
            if tail.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]
        out[VAE + new] = value
    return out


def text_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict under cond_stage_model.transformer.text_model. (transformers 5 saves it
    without the text_model. level), with the position_ids buffer SD 1.x files carry (pure)."""
    out = {TEXT + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    pid = TEXT + "text_model.embeddings.position_ids"
    if pid not in out:
        n = out[TEXT + "text_model.embeddings.position_embedding.weight"].shape[0]
        out[pid] = torch.arange(n, dtype=torch.int64)[None]
    return out


def single_file_state(pipe, dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights in the original single-file layout (floating point ones in dtype)."""
    state = {}
    state.update(unet_to_original(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(vae_to_original(pipe.vae.state_dict(), dict(pipe.vae.config)))
    state.update(text_to_original(pipe.text_encoder.state_dict()))
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()
    }
