"""The toy world's flow-matching twin (`--model toyworld-flux`): a small FLUX.1-architecture transformer
pretrained on the richer world with rectified flow, on the toy world's VAE.

What makes it FLUX is kept: double- and single-stream blocks on 2x2-packed latents (8x8 tokens at 64 px)
with 3-axis rotary position ids, CLIP's pooled output (the toy world's own pretrained text encoder,
trained further here) and a T5 encoder's states (trained from scratch here on the world's captions,
frozen in DreamBooth as FLUX's T5 is), FLUX's FlowMatchEulerDiscreteScheduler with its resolution-
dependent shift. It is not guidance-distilled (the [schnell] layout: no guidance embedding): it is
sampled with true classifier-free guidance (FluxPipeline's `true_cfg_scale` and an empty negative
prompt), which is why 10 % of the captions are dropped in training.

Rectified flow as in the SD3 paper and diffusers' FLUX script: x_t = (1 - s) x_0 + s e, the transformer
predicts e - x_0, s drawn logit-normal then shifted as the sampler's schedule is at 64 px."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import MAX_TOKENS, training_scenes
from .pipeline import IDENTIFIERS, SHIFT_MU
from .stage import cosine, train_stage
from .world import shape_mask

log = logging.getLogger(__name__)

DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 4  # the shipped twin's transformer
HEADS = 4  # the shipped twin's attention heads (of HEAD_DIM each)
HEAD_DIM = 32  # the shipped twin's, and the default for other widths (--flow-width)
T5_WIDTH = 128  # the twin's T5 width: the transformer's joint attention width
WIDTH = 128  # the shipped twin transformer's width, heads x head dim
WORLD_WORDS = ("dots", "stripes", "outline")  # the richer world's words the shared corpus lacks


def write_t5_tokenizer(out: Path) -> None:
    """The twin's T5 tokenizer: the shared corpus, the world's words and the identifiers, 32 tokens."""
    from ..tiny_flow import write_t5_tokenizer as write

    write(out, extra_words=(*WORLD_WORDS, *IDENTIFIERS), max_length=MAX_TOKENS)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """The rotary dims of the (0, row, column) position axes for a head of head_dim: 8 for the constant
    axis, the rest shared by rows and columns (the shipped twin's (8, 12, 12) at 32; at 64, (8, 28, 28):
    14 frequencies per row and column axis instead of 6, of which four turn by a radian or more across
    the twin's 8 tokens instead of two; FLUX.1 has 28)."""
    return 8, (head_dim - 8) // 2, (head_dim - 8) // 2


def valid_heads(heads: int, width: int = WIDTH) -> bool:
    """Whether the transformer's width splits into `heads` heads with even rotary axes."""
    return heads >= 1 and width % heads == 0 and (width // heads - 8) % 4 == 0 and width // heads > 8


def build_flow_models(
    t5_vocab: int,
    clip_width: int,
    double: int = DOUBLE_BLOCKS,
    single: int = SINGLE_BLOCKS,
    heads: int = HEADS,
    width: int = WIDTH,
):
    """(transformer, T5) freshly initialised from torch's global generator; clip_width: the width of the
    CLIP text encoder whose pooled output the transformer reads; double, single: the transformer's
    double- and single-stream blocks; heads: its attention heads; width: its width (heads x head dim)."""
    from diffusers import FluxTransformer2DModel

    from ..tiny_flow import t5_encoder

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2 x 2
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=width // heads,
        num_attention_heads=heads,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=clip_width,
        guidance_embeds=False,
        axes_dims_rope=rope_axes(width // heads),
    )
    return transformer, t5_encoder(t5_vocab, width=T5_WIDTH, d_ff=256, heads=4, d_kv=32, dropout=0.0)


def image_seq_shift(tokens: int) -> float:
    """FLUX's schedule shift exp(mu) for an image of `tokens` packed tokens (FluxPipeline's calculate_shift)."""
    m = (SHIFT_MU["max_shift"] - SHIFT_MU["base_shift"]) / (
        SHIFT_MU["max_image_seq_len"] - SHIFT_MU["base_image_seq_len"]
    )
    mu = tokens * m + SHIFT_MU["base_shift"] - m * SHIFT_MU["base_image_seq_len"]
    return math.exp(mu)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as (B, H/2 * W/2, 4C) tokens, as FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def image_ids(h: int, w: int) -> torch.Tensor:
    """The packed tokens' (0, row, column) position ids, as FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def caption_ids(tokenizers, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The CLIP and T5 token ids of the richer world's n training captions (the same scenes and captions
    as the cached latents: training_scenes is deterministic), 10 % of them empty for guidance."""
    captions = [c for _, c in training_scenes(n, seed, rich=True)]
    kw = dict(padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return {name: tok(captions, **kw).input_ids for name, tok in zip(("clip", "t5"), tokenizers)}


def object_masks(n: int, seed: int, latent_res: int) -> torch.Tensor:
    """(n, 1, r, r): for each of the richer world's n training scenes (the cached latents' order), the share
    of each latent pixel its object covers, grown by one latent pixel (a 3 x 3 max), so that the object's
    outline and the background just around it count as the object."""
    masks = []
    for scene, _ in training_scenes(n, seed, rich=True):
        m = shape_mask(scene.shape, scene.x, scene.y, scene.size).resize((latent_res,) * 2, Image.Resampling.BOX)
        masks.append(torch.tensor(np.asarray(m, dtype=np.float32) / 255))
    return F.max_pool2d(torch.stack(masks)[:, None], 3, 1, 1)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The squared error averaged with per-pixel weights (B, 1, H, W), shared by the channels; with weights
    all 1, the plain mean."""
    return ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])


def shape_draw_weights(n: int, seed: int, weights: dict[str, float]) -> torch.Tensor:
    """(n,): how often each of the richer world's n training scenes (the cached latents' order) is drawn,
    relative to the others: weights[its shape], 1 for a shape not named."""
    return torch.tensor([weights.get(scene.shape, 1.0) for scene, _ in training_scenes(n, seed, rich=True)])


def flow_batch(latents, ids: dict, empty: dict, batch: int, shift: float, g: torch.Generator, draw=None):
    """(x_t, s, clip ids, t5 ids, target, the latents' indices) for one step, all drawn from g; draw: each
    latent's relative chance of being drawn (shape_draw_weights), uniform when None."""
    if draw is None:
        idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
    else:
        idx = torch.multinomial(draw, batch, replacement=True, generator=g)
    drop = torch.rand(batch, generator=g) < 0.1
    clip, t5 = ids["clip"][idx].clone(), ids["t5"][idx].clone()
    clip[drop], t5[drop] = empty["clip"], empty["t5"]
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=g)
    u = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal(0, 1), as the SD3 paper's default
    s = shift * u / (1 + (shift - 1) * u)
    x_t = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * noise
    return x_t, s, clip, t5, noise - x0, idx


def predict(transformer, clip, t5, x_t, s, clip_ids, t5_ids):
    """The transformer's velocity for x_t (B, 4, 16, 16), as FluxPipeline calls it."""
    _, _, h, w = x_t.shape
    pooled = clip(clip_ids).pooler_output
    states = t5(t5_ids)[0]
    out = transformer(
        hidden_states=pack(x_t),
        timestep=s,
        pooled_projections=pooled,
        encoder_hidden_states=states,
        txt_ids=torch.zeros(states.shape[1], 3),
        img_ids=image_ids(h, w),
    ).sample
    b, c = x_t.shape[:2]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def train_flow(
    vae,
    transformer,
    clip,
    t5,
    tokenizers,
    steps: int,
    seed: int,
    batch: int,
    n_data: int,
    work: Path,
    lr_max: float = 5e-4,
    warmup: int = 200,
    name: str = "flow",
    batches: int = 0,
    object_weight: float = 0.0,
    shape_weights: dict[str, float] | None = None,
) -> None:
    """Train the transformer, CLIP and T5 together on the richer world's cached latents (encoded once by
    the toy world's VAE, shared with the UNet recipe's stage 3), scaled and shifted as the VAE's config
    says. `batches` offsets the batches' seeds, so a later stage does not repeat an earlier one's.
    `object_weight`: the loss counts each latent pixel of the object (object_masks) 1 + object_weight
    times, the background once, so that a star's thin points (a few latent pixels) weigh more (measured
    from the shipped twin, 2000 steps at 4 or 9: more stars, fewer squares, prompt following unchanged;
    BENCHMARKS.md). `shape_weights`: a training scene of a named shape is drawn that many times as often
    as one of another (e.g. {"star": 3}), every scene still in the data."""
    from .unet_stage import encoded_data

    data = encoded_data(vae, tokenizers[0], n_data, seed, work, rich=True)
    latents = (data["latents"] - vae.config.shift_factor) * vae.config.scaling_factor
    ids = caption_ids(tokenizers, n_data, seed)
    if not torch.equal(ids["clip"], data["ids"]):
        raise RuntimeError(f"{work}: the cached latents are not of this recipe's captions; remove the cache")
    if latents.shape[-1] * 2 ** (len(vae.config.block_out_channels) - 1) != 64:
        raise RuntimeError(f"{work}: the cached latents are not of this VAE's resolution; remove the cache")
    kw = dict(padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")
    empty = {name: tok([""], **kw).input_ids for name, tok in zip(("clip", "t5"), tokenizers)}
    shift = image_seq_shift(latents.shape[-1] * latents.shape[-2] // 4)
    log.info("latents %s, schedule shift %.3f", tuple(latents.shape), shift)
    modules = {"transformer": transformer, "clip": clip, "t5": t5}
    opt = torch.optim.AdamW([p for m in modules.values() for p in m.parameters()], lr=lr_max, weight_decay=1e-2)
    lr = cosine(opt, warmup, steps)

    weight = 1 + object_weight * object_masks(n_data, seed, latents.shape[-1]) if object_weight else None
    draw = shape_draw_weights(n_data, seed, shape_weights) if shape_weights else None

    def loss_of(g):
        x_t, s, clip_ids, t5_ids, target, idx = flow_batch(latents, ids, empty, batch, shift, g, draw)
        pred = predict(transformer, clip, t5, x_t, s, clip_ids, t5_ids)
        return F.mse_loss(pred, target) if weight is None else weighted_mse(pred, target, weight[idx])

    seed0 = seed * 100003 + 3_000_000 + batches
    train_stage(name, work / f"{name}.safetensors", modules, opt, lr, steps, seed0, loss_of)
