"""Pretrain the toy world's base model from scratch on a CPU: `python -m dreambooth.toyworld.train OUT`.

Stage 1 trains a small AutoencoderKL (64x64x3 -> 16x16x4) on world images; stage 2 encodes a fixed
data set once and trains a UNet2DConditionModel with a small CLIP text encoder on it (10 % caption
dropout, for classifier-free guidance). Half of the (shape, colour, background) triples of the
evaluation captions are held out of training, to measure generalisation. Deterministic by seed;
each stage checkpoints and resumes. The result is an ordinary Stable Diffusion pipeline folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import atomic_dir, write_text
from .world import BACKGROUNDS, OBJECT_COLORS, SHAPES, caption, render, sample_scene

log = logging.getLogger(__name__)
IDENTIFIERS = ("sks", "zwx", "ohwx")  # rare words the tokenizer knows, for DreamBooth later
# Captions are padded to 32 tokens in training, and the saved tokenizer says so: a pipeline pads to
# its tokenizer's model_max_length, and 45 more padding tokens at positions never trained dilute
# the cross-attention (measured: background right in 0.39 of images at 77 tokens).
MAX_TOKENS = 32


def held_out_triples(seed: int = 0) -> set[tuple[str, str, str]]:
    """Half of the (shape, colour, background) triples used for evaluation, never trained on."""
    triples = [(s, c, b) for s, c, b in itertools.product(SHAPES, OBJECT_COLORS, BACKGROUNDS) if b != c]
    rng = random.Random(seed)
    rng.shuffle(triples)
    return set(triples[:50])


def eval_captions(seed: int = 0) -> list[tuple[str, tuple[str, str, str], bool]]:
    """100 full captions: 50 of held-out triples, 50 of seen ones, as (caption, triple, held_out)."""
    held = held_out_triples(seed)
    seen = [t for t in itertools.product(SHAPES, OBJECT_COLORS, BACKGROUNDS) if t[2] != t[1] and t not in held]
    rng = random.Random(seed + 1)
    chosen = [(t, True) for t in sorted(held)] + [(t, False) for t in rng.sample(sorted(seen), 50)]
    return [
        (f"a photo of {'an' if c[0] in 'aeiou' else 'a'} {c} {s} on a {b} background", (s, c, b), h)
        for (s, c, b), h in chosen
    ]


def training_scenes(n: int, seed: int):
    held = held_out_triples()
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        scene = sample_scene(rng)
        if (scene.shape, scene.color, scene.background) not in held:
            out.append((scene, caption(scene, rng)))
    return out


def to_tensor(images) -> torch.Tensor:
    x = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1
    return torch.from_numpy(x).permute(0, 3, 1, 2)  # (B, 3, 64, 64)


def build_models(vocab: dict[str, int]):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tiny import text_config

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        sample_size=64,
        norm_num_groups=16,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    te = CLIPTextModel(CLIPTextConfig(**text_config(vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3)))
    return vae, unet, te


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _save_state(path: Path, state: dict) -> None:
    """A stage's checkpoint as one safetensors file (the nesting in its metadata), renamed into place."""
    from safetensors.torch import save_file

    from ..io import atomic_path
    from ..training.checkpoint import flatten_state

    tensors: dict = {}
    skeleton = flatten_state(state, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"skeleton": json.dumps(skeleton)})


def _load_state(path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..training.checkpoint import unflatten_state

    with safe_open(path, "pt") as f:
        skeleton = json.loads(f.metadata()["skeleton"])
    return unflatten_state(skeleton, load_file(path))


def _resume(ckpt: Path, modules: dict, opt, lr) -> int:
    """Load a stage's checkpoint (models, optimizer, schedule) if there is one; the step to start from."""
    if not ckpt.exists():
        return 0
    state = _load_state(ckpt)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    opt.load_state_dict(state["opt"])
    lr.load_state_dict(state["lr"])
    return state["step"]


def train_vae(
    vae, steps: int, seed: int, batch: int, work: Path, bf16: bool = True, every: int = 250, outlined: int = 4
) -> None:
    """Pixel L1 + MSE (and a tiny KL) on fresh images each step; cosine learning rate to zero.

    Each batch holds `outlined` objects drawn like the demo subject (`random_outlined`: black outline,
    large dots, random shapes and colours, never the subject itself) and world images for the rest: a
    VAE trained on the world alone drew the subject's outline and purple dots in 5 % of reconstructions;
    a base model's VAE has to draw things its UNet has not seen, as SD's has seen all kinds of images.
    The decoder learns from the posterior's mean, not a sample: in a trial it learned ~1.5x faster, and
    the latents the UNet trains on (and generates) are means too."""
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .evaluate import subject_ceiling, vae_ceiling
    from .subject import random_outlined

    ckpt = work / "vae.safetensors"
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0)
    lr = get_scheduler("cosine", opt, num_warmup_steps=100, num_training_steps=steps)
    start = _resume(ckpt, {"model": vae}, opt, lr)
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="vae", mininterval=5)
    for step in bar:
        rng = random.Random(seed * 7919 + step)  # each step's images depend on (seed, step) only: resumable
        x = to_tensor([random_outlined(rng) if i < outlined else render(sample_scene(rng)) for i in range(batch)])
        with _autocast(bf16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.mean).sample.float()  # the UNet is trained on the mean: decode that
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % every == 0 or step + 1 == steps:
            vae.eval()
            ceiling = vae_ceiling(vae, n=100)
            subject = subject_ceiling(vae, n=20)
            vae.train()
            log.info(
                "vae step %d/%d loss %.4f ceiling %s subject %.2f (%.2f s/step)",
                step + 1,
                steps,
                loss.item(),
                json.dumps(ceiling),
                subject,
                (time.time() - t0) / (step + 1 - start),
            )
            _save_state(
                ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "lr": lr.state_dict(), "step": step + 1}
            )


def train_decoder(vae, steps: int, seed: int, batch: int, work: Path, bf16: bool = True) -> None:
    """Fine-tune the VAE's decoder only (the encoder, so the latent space the UNet learns, is fixed) on
    world images and on outlined, dotted objects of random shapes and colours (`random_outlined`):
    trained on the world alone, the decoder drew the demo subject's outline and purple dots in 5 % of
    reconstructions; a base model's VAE has to draw things its UNet has not seen."""
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .evaluate import subject_ceiling, vae_ceiling
    from .subject import random_outlined

    ckpt = work / "decoder.safetensors"
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0)
    lr = get_scheduler("cosine", opt, num_warmup_steps=50, num_training_steps=steps)
    start = _resume(ckpt, {"model": vae}, opt, lr)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="decoder", mininterval=5)
    for step in bar:
        rng = random.Random(seed * 7919 + 10_000_000 + step)
        images = [render(sample_scene(rng)) if i % 2 else random_outlined(rng) for i in range(batch)]
        x = to_tensor(images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        with _autocast(bf16):
            rec = vae.decode(z).sample.float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % 250 == 0 or step + 1 == steps:
            vae.eval()
            log.info(
                "decoder step %d/%d loss %.4f ceiling %s subject %.2f",
                step + 1,
                steps,
                loss.item(),
                json.dumps(vae_ceiling(vae, n=100)),
                subject_ceiling(vae, n=20),
            )
            _save_state(
                ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "lr": lr.state_dict(), "step": step + 1}
            )
    vae.requires_grad_(False).eval()


def train_unet(
    vae,
    unet,
    te,
    tokenizer,
    steps: int,
    seed: int,
    batch: int,
    n_data: int,
    work: Path,
    offset_noise: float = 0.0,
    lr_max: float = 5e-4,
    warmup: int = 200,
    name: str = "unet",
) -> None:
    """Train the UNet and text encoder on cached latents. offset_noise > 0 adds a random per-channel
    constant to the noise (Guttenberg, 2023): at t=999 the scaled_linear schedule leaves 7 % of the
    image in x_t, so a model trained without it reads the background from the noise's channel means
    and, sampling from pure noise, draws a gray background whatever the prompt says."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    data_file = work / "latents.safetensors"
    if data_file.exists():
        from safetensors.torch import load_file

        data = load_file(data_file)
    else:
        scenes = training_scenes(n_data, seed)
        lat, ids = [], []
        with torch.no_grad():
            for i in range(0, n_data, 256):
                chunk = scenes[i : i + 256]
                lat.append(vae.encode(to_tensor([render(s) for s, _ in chunk])).latent_dist.mean)
                ids.append(
                    tokenizer(
                        [c for _, c in chunk],
                        padding="max_length",
                        max_length=MAX_TOKENS,
                        truncation=True,
                        return_tensors="pt",
                    ).input_ids
                )
        data = {"latents": torch.cat(lat).contiguous(), "ids": torch.cat(ids).contiguous()}
        from safetensors.torch import save_file

        from ..io import atomic_path

        with atomic_path(data_file) as tmp:
            save_file(data, tmp)
    # As Stable Diffusion did: scale latents to unit variance; the factor is saved in the VAE's config
    vae.register_to_config(scaling_factor=round(1.0 / data["latents"].std().item(), 5))
    log.info("latent scaling factor %.5f", vae.config.scaling_factor)
    latents = data["latents"] * vae.config.scaling_factor
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr_max, weight_decay=1e-2)
    lr = get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=steps)
    ckpt = work / f"{name}.safetensors"
    start = _resume(ckpt, {"unet": unet, "te": te}, opt, lr)
    from tqdm.auto import tqdm

    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=name, mininterval=5)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 100003 + step + (1_000_000 if offset_noise else 0))
        idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
        ids = data["ids"][idx].clone()
        ids[torch.rand(batch, generator=g) < 0.1] = empty  # caption dropout, for classifier-free guidance
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        if offset_noise:
            noise = noise + offset_noise * torch.randn((batch, x0.shape[1], 1, 1), generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        pred = unet(sched.add_noise(x0, noise, t), t, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log.info(
                "%s step %d/%d loss %.4f (%.2f s/step)",
                name,
                step + 1,
                steps,
                loss.item(),
                (time.time() - t0) / (step + 1 - start),
            )
            _save_state(
                ckpt,
                {
                    "unet": unet.state_dict(),
                    "te": te.state_dict(),
                    "opt": opt.state_dict(),
                    "lr": lr.state_dict(),
                    "step": step + 1,
                },
            )


POSTERIOR_LOGVAR = -10.0  # posterior std 0.007 (Stable Diffusion's VAE: about 0.01 to 0.1)


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


def save(out: Path, vae, unet, te, tok_dir: Path) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

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
    with atomic_dir(out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp)


def main() -> None:
    from transformers import CLIPTokenizer

    from ..tiny import write_clip_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the pipeline folder to write")
    p.add_argument("--work", default="toyworld-work", help="checkpoints and cached latents (resumable)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--outlined", type=int, default=4, help="objects drawn like the demo subject in each VAE batch")
    p.add_argument("--unet-steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=32, help="UNet batch size")
    p.add_argument("--offset-noise", type=float, default=0.1, help="offset noise of the UNet training")
    p.add_argument(
        "--offset-steps",
        type=int,
        default=0,
        help="then fine-tune this long with --offset-noise (the first model's recipe trained the UNet without"
        " offset noise, then 3000 steps with it)",
    )
    p.add_argument(
        "--decoder-steps", type=int, default=0, help="then fine-tune the VAE decoder this long (the first model: 800)"
    )
    p.add_argument("--fp32-vae", action="store_true", help="train the VAE in fp32 (default: bf16 autocast)")
    p.add_argument("--data", type=int, default=20000, help="training images encoded once for the UNet")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    vocab = write_clip_tokenizer(tok_dir, extra_words=IDENTIFIERS)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    vae, unet, te = build_models(vocab)
    log.info(
        "parameters: vae %.2fM, unet %.2fM, text %.2fM",
        *(sum(q.numel() for q in m.parameters()) / 1e6 for m in (vae, unet, te)),
    )
    train_vae(vae, args.vae_steps, args.seed, args.vae_batch, work, bf16=not args.fp32_vae, outlined=args.outlined)
    vae.requires_grad_(False).eval()
    train_unet(
        vae,
        unet,
        te,
        tokenizer,
        args.unet_steps,
        args.seed,
        args.batch,
        args.data,
        work,
        offset_noise=0.0 if args.offset_steps else args.offset_noise,
    )
    if args.offset_steps:
        train_unet(
            vae,
            unet,
            te,
            tokenizer,
            args.offset_steps,
            args.seed,
            args.batch,
            args.data,
            work,
            offset_noise=args.offset_noise,
            lr_max=2e-4,
            warmup=50,
            name="unet-offset",
        )
    if args.decoder_steps:
        vae.requires_grad_(True).train()
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
        train_decoder(vae, args.decoder_steps, args.seed, args.vae_batch, work, bf16=not args.fp32_vae)
    save(Path(args.out), vae, unet, te, tok_dir)
    write_text(work / "done.json", json.dumps(vars(args)))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
