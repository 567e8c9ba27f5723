"""Tiny flow-matching transformer pipelines (Stable Diffusion 3 and FLUX.1) with random weights, built
offline, saved as ordinary diffusers folders (see tiny.py for the UNet families).

What sets each family apart is kept: SD3's three text encoders (two CLIP with projections, whose
penultimate states and pooled outputs condition the MMDiT, and T5), its patchified latents, shifted
flow-matching schedule and VAE shift factor; FLUX's CLIP (pooled) and T5 (sequence) encoders, 2x2-packed
latents with rotary position ids, single- and double-stream blocks, embedded guidance for [dev] and the
resolution-dependent schedule shift. The T5 tokenizer is a real SentencePiece-style Unigram model whose
pieces are the corpus words (tiny.CORPUS) and single characters, so any text tokenizes."""

from __future__ import annotations

from pathlib import Path

from .tiny_base import CORPUS, text_config, vae_config, write_clip_tokenizer

T5_WIDTH = 96  # the tiny T5's hidden size: the transformers' joint attention width


def write_t5_tokenizer(out: Path, extra_words: tuple[str, ...] = (), max_length: int = 512) -> None:
    """A T5-style Unigram tokenizer (pad 0, </s> 1, unk 2; "▁" marks a word start) in out, of the
    corpus's words and extra_words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted(set(CORPUS.split()) | set(extra_words))
    chars = sorted({c for w in words for c in w} | set("0123456789.,!?'-"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -1.0) for w in words] + [(c, -4.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )
    fast.save_pretrained(out)


def t5_encoder(
    vocab_size: int, width: int = T5_WIDTH, d_ff: int = 64, heads: int = 2, d_kv: int = 16, dropout: float = 0.1
):
    """A 2-layer T5 encoder with random weights (T5's pad 0 and </s> 1)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_ff=d_ff,
            d_kv=d_kv,
            num_layers=2,
            num_heads=heads,
            dropout_rate=dropout,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )  # fmt: skip
    )


def _tokenizers(out: Path):
    from transformers import CLIPTokenizer, T5TokenizerFast

    vocab = write_clip_tokenizer(out / "tokenizer")
    write_clip_tokenizer(out / "tokenizer_2")
    write_t5_tokenizer(out / "t5")
    return vocab, CLIPTokenizer.from_pretrained(out / "tokenizer"), T5TokenizerFast.from_pretrained(out / "t5")


def build_tiny_sd3(out: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusion3Pipeline (SD 3.5 Medium's layout): CLIP-L- and CLIP-G-like encoders (32 and 48
    wide, with projections), T5 (96 wide), an MMDiT with patch size 2, RMS-normed queries and keys, a
    second attention in its first block and the 64 px native size of the
    other tiny models, a VAE with SD3's shift factor, and the shift-3 flow-matching schedule."""
    import shutil

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from diffusers.models import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    out = Path(out)
    vocab, clip_tok, t5_tok = _tokenizers(out)
    torch.manual_seed(seed)
    te1 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config(vocab, projection_dim=32)))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**text_config(vocab, hidden_size=48, projection_dim=48, hidden_act="gelu"))
    )
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=32 + 48,  # both CLIP projections, concatenated
        pos_embed_max_size=32,
        qk_norm="rms_norm",  # SD 3.5's
        dual_attention_layers=(0,),  # SD 3.5 Medium's second attention in its first blocks
    )
    vae = AutoencoderKL(
        **(vae_config() | {"scaling_factor": 1.5305, "shift_factor": 0.0609}),
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=te1,
        tokenizer=clip_tok,
        text_encoder_2=te2,
        tokenizer_2=CLIPTokenizer.from_pretrained(out / "tokenizer_2"),
        text_encoder_3=t5_encoder(len(t5_tok)),
        tokenizer_3=t5_tok,
    )
    shutil.rmtree(out / "t5")
    pipe.save_pretrained(out)
    return out


def build_tiny_flux(out: Path, seed: int = 0, guidance: bool = True) -> Path:
    """A tiny FluxPipeline: a CLIP text encoder (pooled) and T5 (sequence), one double- and one
    single-stream block with 3-axis rotary embeddings, latents packed 2x2 (4 latent channels, 16 per
    token), FLUX's resolution-dependent schedule shift, and embedded guidance for the [dev] layout
    (guidance=False: the [schnell] layout)."""
    import shutil

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers.models import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    vocab, clip_tok, t5_tok = _tokenizers(out)
    shutil.rmtree(out / "tokenizer_2")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=32,
        guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4),
    )
    vae = AutoencoderKL(
        **(vae_config() | {"scaling_factor": 0.3611, "shift_factor": 0.1159}),
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config(vocab))),
        tokenizer=clip_tok,
        text_encoder_2=t5_encoder(len(t5_tok)),
        tokenizer_2=t5_tok,
    )
    shutil.rmtree(out / "t5")
    pipe.save_pretrained(out)
    return out
