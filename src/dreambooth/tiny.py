"""A tiny Stable-Diffusion-architecture pipeline with random weights, built offline.

It is saved as an ordinary diffusers folder, so tests and the demo load it through exactly the path a
real model takes. The tokenizer is a real CLIP byte-level BPE whose merges are learned here from a
small corpus (the prompts of DreamBench, the toy world and our examples): every corpus word is one
token, and any other text still tokenizes through the 256 byte symbols, as in CLIP.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Words the tiny tokenizer knows as whole tokens.
CORPUS = """
a an the of in on at to with and or without for from by into is it its this that photo picture
rendering image close up view cropped dark bright good bad clean dirty small large big weird cool
nice jungle snow beach cobblestone street top pink fabric wooden floor city background mountain blue
house purple rug forest wheat field tree autumn leaves eiffel tower floating water ocean milk green
grass sunflowers around mirror sidewalk crowded dirt road white red shiny wet cube shaped wearing hat
santa rainbow scarf black monocle chef outfit firefighter police glasses yellow shirt wizard
backpack stuffed animal bowl can candle cat clock sneaker dog toy boot cartoon teapot vase plushie
bear berry duck monster sloth wolf robot car sunglasses poop emoji grey gray orange brown
circle square triangle star heart shape object striped dotted plain pattern color colored
sks zwx ohwx bucket sleeping sitting running painting style oil watercolor sketch drawing portrait
person man woman face product bottle cup shoe bag
"""

_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is a single symbol (ties broken by the pair's text)."""
    byte_map = bytes_to_unicode()
    seqs = {}
    for w in sorted(set(words)):
        chars = [byte_map[b] for b in w.encode("utf-8")]
        seqs[w] = chars[:-1] + [chars[-1] + "</w>"]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for s in seqs.values():
            pairs.update(zip(s, s[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out


def write_clip_tokenizer(out: Path, extra_words: tuple[str, ...] = ()) -> dict[str, int]:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIP BPE tokenizer; return the vocab."""
    words = [w for w in re.findall(_SPLIT, (CORPUS + " " + " ".join(extra_words)).lower())]
    merges = learn_bpe(words)
    byte_symbols = list(bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}), encoding="utf-8"
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "do_lower_case": True,
                "clean_up_tokenization_spaces": True,
            }
        ),
        encoding="utf-8",
    )
    return vocab


def unet_config(sample_size: int = 8) -> dict:
    """Cross-attention in every block and two transformer layers per attention block, so LoRA on
    attention reaches a real share of the weights (see tests/test_learning.py for the figures)."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        transformer_layers_per_block=2,
        norm_num_groups=16,
    )


def vae_config(sample_size: int = 64) -> dict:
    """Four blocks, as in Stable Diffusion: 8x spatial downsampling to 4 latent channels."""
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.18215,
    )


def text_config(vocab: dict[str, int], **sizes) -> dict:
    """A CLIP text model's config whose bos/eos/pad ids are the tokenizer's (tiny unless sizes say)."""
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return dict(
        base | sizes,
        vocab_size=sizes.get("vocab_size", len(vocab)),
        max_position_embeddings=77,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )


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
