"""The toy world's base model: its tokenizer, its three models built from scratch, and the Stable
Diffusion pipeline folder they are saved as."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..io import atomic_dir
from ..tiny import text_config, write_clip_tokenizer
from .data import MAX_TOKENS

IDENTIFIERS = ("sks", "zwx", "ohwx")  # rare words the tokenizer knows, for DreamBooth later
SHIFT_MU = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}  # FLUX.1's
MARKER = "toyworld.json"  # in every pipeline folder these recipes write: its images are the world's
POSTERIOR_LOGVAR = -10.0  # posterior std 0.007 (Stable Diffusion's VAE: about 0.01 to 0.1)


def make_tokenizer(tok_dir: Path) -> tuple[dict[str, int], CLIPTokenizer]:
    """Write the world's CLIP BPE tokenizer (its words and IDENTIFIERS) to tok_dir: (vocab, tokenizer)."""
    vocab = write_clip_tokenizer(tok_dir, extra_words=IDENTIFIERS)
    return vocab, CLIPTokenizer.from_pretrained(tok_dir)


VAE_CHANNELS = {4: (32, 64, 64), 2: (32, 64)}  # each block but the last halves the image


def build_vae(scale: int = 4) -> AutoencoderKL:
    """The world's VAE, freshly initialised from torch's global generator: 64 px images to 4 latent
    channels at 1/scale of the resolution (the UNet model's: 4, so 16 x 16; the twin's --flow-vae-scale 2:
    32 x 32, which FLUX's 2 x 2 packing makes 16 x 16 tokens)."""
    channels = VAE_CHANNELS[scale]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        sample_size=64,
        norm_num_groups=16,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
    )


def build_models(vocab: dict[str, int], text_width: int):
    """(vae, unet, text encoder), freshly initialised from torch's global generator; the text encoder
    `text_width` wide (the UNet's cross-attention reads that width)."""
    vae = build_vae()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    te_config = text_config(vocab, hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=3)
    te = CLIPTextModel(CLIPTextConfig(**te_config))
    return vae, unet, te


def load_models(folder: Path):
    """(vae, unet, text encoder) of a pipeline folder this recipe wrote, in fp32 (to train on)."""
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    return vae, unet, te


def deterministic_posterior(vae, logvar: float = POSTERIOR_LOGVAR) -> None:
    """Make the VAE's posterior (nearly) a point at its mean. The decoder and the UNet learned from
    posterior means only, and the tiny KL weight left the log-variance at 0 (std 1, as large as the
    latents themselves): DreamBooth training, which samples the posterior as diffusers' scripts do,
    then saw latents half noise (a denoising loss of 3 on the base model's own images, against 0.03
    on their means). The mean half of quant_conv is untouched."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = logvar


def load_flow_start(folder: Path):
    """(vae, CLIP text encoder) of the UNet recipe's pipeline folder, in fp32: the flow-matching twin's
    VAE (kept as it is, its latents shifted by 0 as FLUX's VAE config requires one) and starting CLIP."""
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    return vae, te


def load_twin(folder: Path):
    """(vae, transformer, CLIP, T5) of a twin folder this recipe wrote, in fp32, to train further."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=torch.float32)
    clip = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    t5 = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", torch_dtype=torch.float32)
    return vae, transformer, clip, t5


def save_flux_pipeline(out: Path, vae, transformer, clip, t5, clip_dir: Path, t5_dir: Path) -> None:
    """The twin as an fp16 FluxPipeline folder (FLUX.1's scheduler config), written atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5TokenizerFast

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, **SHIFT_MU)
    pipe = FluxPipeline(
        scheduler=sched,
        vae=vae,
        text_encoder=clip,
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir, model_max_length=MAX_TOKENS),
        text_encoder_2=t5,
        tokenizer_2=T5TokenizerFast.from_pretrained(t5_dir),
        transformer=transformer,
    )
    _save(pipe, out, ("transformer", "vae", "text_encoder"))


def save_pipeline(out: Path, vae, unet, te, tok_dir: Path) -> None:
    """The models as an fp16 Stable Diffusion pipeline folder, written atomically."""
    deterministic_posterior(vae)
    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MAX_TOKENS),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipe, out, ("unet", "vae"))


def _save(pipe, out: Path, models: tuple[str, ...]) -> None:
    """The pipeline in fp16, its models' configs without the folder a model was loaded from (not part
    of the model), and the MARKER that says the oracle can read its images."""
    with atomic_dir(out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp)
        (Path(tmp) / MARKER).write_text(json.dumps({"world": "toyworld", "resolution": 64}) + "\n")
        for sub in models:
            config = Path(tmp) / sub / "config.json"
            data = json.loads(config.read_text())
            if data.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
