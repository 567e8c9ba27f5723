"""A tiny Stable-Diffusion-architecture pipeline with random weights, built offline.

It is saved as an ordinary diffusers folder, so tests and the demo load it through exactly the path a
real model takes. The tokenizer is a real CLIP byte-level BPE whose merges are learned here from a
small corpus (the prompts of DreamBench, the toy world and our examples): every corpus word is one
token, and any other text still tokenizes through the 256 byte symbols, as in CLIP.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_base import CORPUS, text_config, unet_config, vae_config, write_clip_tokenizer  # noqa: F401  (re-exported)


def save_sd_pipeline(out: Path, unet, vae, text_config_kwargs: dict, prediction_type: str = "epsilon") -> Path:
    """Assemble and save a Stable Diffusion pipeline (SD's DDPM noise schedule, no safety checker)
    around the tokenizer already written to out/tokenizer."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config_kwargs)),
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


ARCHS = ("sd15", "sd2", "sdxl", "sd3", "flux", "flux-schnell")


def tiny_model_command(cfg) -> Path:
    """`dreambooth tiny-model OUT`: refuses a folder that holds something."""
    from .errors import UserError

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"tiny-model {out}: folder exists and is not empty")
    return build_tiny_pipeline(out, seed=cfg.seed, arch=cfg.arch)


def build_tiny_pipeline(out: str | Path, seed: int = 0, arch: str = "sd15") -> Path:
    """Write a tiny StableDiffusionPipeline folder to `out` (built beside it and renamed into place);
    stock `from_pretrained(out)` loads it.

    arch sd2 has what sets Stable Diffusion 2.x apart: v-prediction, linear projections into the
    transformer blocks, per-block attention head sizes and an OpenCLIP-style (GELU) text encoder."""
    from .io import atomic_dir

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHS)}")
    from . import tiny_flow

    builders = {
        "sdxl": build_tiny_sdxl,
        "sd3": lambda tmp, seed, arch: tiny_flow.build_tiny_sd3(tmp, seed),
        "flux": lambda tmp, seed, arch: tiny_flow.build_tiny_flux(tmp, seed, guidance=True),
        "flux-schnell": lambda tmp, seed, arch: tiny_flow.build_tiny_flux(tmp, seed, guidance=False),
    }
    with atomic_dir(out) as tmp:
        builders.get(arch, _build_tiny_sd)(tmp, seed, arch)
    return Path(out)


def _build_tiny_sd(out: Path, seed: int, arch: str) -> Path:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vocab = write_clip_tokenizer(out / "tokenizer")
    torch.manual_seed(seed)
    unet_kw, text_kw, prediction = unet_config(), dict(projection_dim=32), "epsilon"
    if arch == "sd2":
        unet_kw |= dict(use_linear_projection=True, attention_head_dim=(4, 8))
        text_kw |= dict(hidden_act="gelu")
        prediction = "v_prediction"
    unet = UNet2DConditionModel(**unet_kw)
    vae = AutoencoderKL(**vae_config())
    return save_sd_pipeline(out, unet, vae, text_config(vocab, **text_kw), prediction)


def build_tiny_sdxl(out: str | Path, seed: int = 0, arch: str = "sdxl") -> Path:
    """A tiny StableDiffusionXLPipeline: two text encoders (the second with a projection, whose pooled
    output conditions the UNet), a UNet with SDXL's added "text_time" conditioning (pooled text and the
    micro-conditioning sizes), attention only in the lower blocks, two layers per block, and SDXL's
    VAE scaling and Euler scheduler."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out = Path(out)
    vocab = write_clip_tokenizer(out / "tokenizer")
    write_clip_tokenizer(out / "tokenizer_2")
    torch.manual_seed(seed)
    te1 = CLIPTextModel(CLIPTextConfig(**text_config(vocab)))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**text_config(vocab, hidden_size=48, projection_dim=48, hidden_act="gelu"))
    )
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48,  # both encoders' hidden states, concatenated
        attention_head_dim=(4, 8),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=48 + 6 * time_dim,  # pooled text + 6 micro-conditioning numbers
        norm_num_groups=16,
    )
    vae = AutoencoderKL(**(vae_config() | {"scaling_factor": 0.13025}))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(out / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out)
    return out


def build_tiny_dino(out: str | Path, seed: int = 0) -> Path:
    """A tiny random ViT in DINO's layout (ViTModel, CLS token), for offline tests of the metrics."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    model = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=224,
            patch_size=16,
        ),
        add_pooling_layer=False,
    )
    model.save_pretrained(out)
    return Path(out)


def build_tiny_clip(out: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel with a CLIPProcessor (our generated tokenizer), for offline tests."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out)
    vocab = write_clip_tokenizer(out / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "_tokenizer")
    torch.manual_seed(seed)
    text = text_config(vocab)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=32
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    model.save_pretrained(out)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out)
    import shutil

    shutil.rmtree(out / "_tokenizer")
    return out
