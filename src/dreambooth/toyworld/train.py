"""Pretrain the toy world's base model from scratch on a CPU: `python -m dreambooth.toyworld.train OUT`.

Stage 1 trains a small AutoencoderKL (64x64x3 -> 16x16x4) on world images; stage 2 encodes a fixed
data set once and trains a UNet2DConditionModel with a small CLIP text encoder on it (10 % caption
dropout, for classifier-free guidance). Half of the (shape, colour, background) triples of the
evaluation captions are held out of training, to measure generalisation. Stage 3 (--rich-steps)
fine-tunes the UNet and text encoder on the richer world (patterns of a named colour, black
outlines; never a demo subject's look), so that a subject can be described in words and drawn on
any background. Deterministic by seed; each stage checkpoints and resumes. The result is an
ordinary Stable Diffusion pipeline folder. --from starts from such a folder and runs stage 3 alone;
--vae-from takes only its VAE and trains the rest from scratch (--text-width: a wider text encoder).

--arch flux pretrains the flow-matching twin instead (toyworld/flow_stage.py): a FLUX.1-architecture
transformer and a T5 encoder from scratch, with the --from pipeline's VAE (default: the shipped
toy-world model) and its CLIP text encoder, on the richer world with rectified flow (--flow-steps),
then further schedules (--flow-anneal-steps), whose loss may weigh the object's latent pixels more
(--flow-object-weight). --flow-from starts from a twin instead and runs the further schedules alone.
The result is an ordinary FluxPipeline folder.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..io import write_text

log = logging.getLogger(__name__)


TEXT_WIDTH = 128  # the shipped model's; 64 until 2026-12-06, where a learned look did not travel (BENCHMARKS.md)


def parser() -> argparse.ArgumentParser:
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
    p.add_argument("--rich-steps", type=int, default=2000, help="then fine-tune on the richer world this long")
    p.add_argument("--rich-lr", type=float, default=2e-4, help="the richer world stage's peak learning rate")
    p.add_argument(
        "--from",
        dest="start",
        default=None,
        help="a pipeline folder this recipe wrote (e.g. the shipped model): skip stages 1-2, run the richer world's",
    )
    p.add_argument(
        "--vae-from",
        default=None,
        help="a pipeline folder this recipe wrote (e.g. the shipped model): take its VAE and skip stage 1; the UNet"
        " and text encoder start from scratch",
    )
    p.add_argument(
        "--text-width",
        type=int,
        default=None,
        help=f"the text encoder's width, trained from scratch (the UNet's cross-attention reads it; default {TEXT_WIDTH}, the shipped model's)",
    )
    p.add_argument("--arch", choices=("sd", "flux"), default="sd", help="flux: the flow-matching twin")
    p.add_argument("--flow-steps", type=int, default=12000, help="--arch flux: rectified-flow steps")
    p.add_argument("--flow-lr", type=float, default=5e-4, help="--arch flux: peak learning rate")
    p.add_argument(
        "--flow-anneal-steps",
        type=_ints,
        default=(),
        help="--arch flux: then further cosine schedules this long, one after another (e.g. 6000,3000)",
    )
    p.add_argument(
        "--flow-anneal-lr",
        type=_floats,
        default=(2e-4,),
        help="--arch flux: the further schedules' peaks, one for each or one for all (e.g. 2e-4,1e-4)",
    )
    p.add_argument(
        "--flow-object-weight",
        type=_floats,
        default=(0.0,),
        help="--arch flux: the further schedules' extra loss weight on the object's latent pixels (1 + this,"
        " the background 1), one for each or one for all (e.g. 0,4)",
    )
    p.add_argument(
        "--flow-shape-weight",
        type=_shape_weights,
        default={},
        help="--arch flux: draw training scenes of these shapes this many times as often as the others, in every"
        " flow schedule of the run (e.g. star=3 or star=3,triangle=2)",
    )
    p.add_argument(
        "--flow-from",
        default=None,
        help="--arch flux: a twin folder this recipe wrote (e.g. the shipped one): start from all its models and"
        " run only the further schedules (--flow-anneal-steps)",
    )
    p.add_argument(
        "--flow-blocks",
        type=_ints,
        default=None,
        help="--arch flux: the transformer's double- and single-stream blocks, e.g. 3,6 (default: the shipped twin's)",
    )
    p.add_argument(
        "--flow-heads",
        type=int,
        default=None,
        help="--arch flux: the transformer's attention heads at its width: at 128, 4 (the shipped twin's, 32 dims"
        " each) or 2 (64 dims each, with more rotary frequencies per position axis), 1 or 8",
    )
    p.add_argument(
        "--flow-width",
        type=int,
        default=None,
        help="--arch flux: the transformer's width, a multiple of 32 (default 128, the shipped twin's); its heads"
        " of 32 dims each unless --flow-heads says. Measured: 192 learns more per step at 1.75x its cost",
    )
    p.add_argument(
        "--flow-vae-scale",
        type=int,
        choices=(2, 4),
        default=None,
        help="--arch flux: 2 trains the twin a VAE of its own that shrinks 64 px images to 32 x 32 latents (16 x 16"
        " tokens; --vae-steps, --vae-batch, --outlined as the UNet recipe's VAE stage) instead of taking the --from"
        " model's (4: 16 x 16 latents, 8 x 8 tokens). Measured: each step costs about 3.5x and learns less",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _shape_weights(text: str) -> dict[str, float]:
    """SHAPE=F[,SHAPE=F]: a shape of the world and a positive number, each shape once."""
    from .world import SHAPES

    out = {}
    for item in text.split(","):
        shape, eq, value = item.strip().partition("=")
        try:
            weight = float(value) if eq else None
        except ValueError:
            weight = None
        if shape not in SHAPES or shape in out or weight is None or not weight > 0 or weight == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give SHAPE=F pairs, each shape once, of {', '.join(SHAPES)}, F a positive number"
            )
        out[shape] = weight
    return out


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def anneal_stages(
    steps: tuple[int, ...], lrs: tuple[float, ...], weights: tuple[float, ...] = (0.0,)
) -> list[tuple[int, float, float]]:
    """(steps, peak lr, object weight) of each further schedule: one lr (weight) for each, or one for all."""
    for flag, values in (("--flow-anneal-lr", lrs), ("--flow-object-weight", weights)):
        if len(values) not in (1, len(steps)):
            raise ValueError(f"{flag}: {len(values)} values for {len(steps)} schedules (give one, or one each)")
    if any(w < 0 for w in weights):
        raise ValueError(f"--flow-object-weight {','.join(map(str, weights))}: weights are 0 or more")
    pick = lambda values, i: values[0] if len(values) == 1 else values[i]  # noqa: E731
    return [(n, pick(lrs, i), pick(weights, i)) for i, n in enumerate(steps) if n]


def flow_blocks(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, int]:
    """--flow-blocks as (double, single), the shipped twin's where not given; refused through p."""
    from .flow_stage import DOUBLE_BLOCKS, SINGLE_BLOCKS

    given = args.flow_blocks
    if given is None:
        return DOUBLE_BLOCKS, SINGLE_BLOCKS
    if len(given) != 2 or given[0] < 1 or given[1] < 0:
        p.error(
            f"--flow-blocks {','.join(map(str, given))}: give two counts, double-stream (1 or more) and single-stream"
        )
    return given[0], given[1]


def wrong_arch(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each recipe's own options, refused (through p) for the other --arch: one table, not a check in each."""
    own = {
        "flux": (
            ("--flow-anneal-steps", any(args.flow_anneal_steps)),
            ("--flow-object-weight", any(args.flow_object_weight)),
            ("--flow-shape-weight", bool(args.flow_shape_weight)),
            ("--flow-from", args.flow_from),
            ("--flow-blocks", args.flow_blocks is not None),
            ("--flow-heads", args.flow_heads is not None),
            ("--flow-width", args.flow_width is not None),
            ("--flow-vae-scale", args.flow_vae_scale is not None),
        ),
        "sd": (("--vae-from", args.vae_from), ("--text-width", args.text_width is not None)),
    }
    why = {"sd": " (the twin takes its VAE and CLIP from --from)", "flux": ""}
    for arch, flags in own.items():
        for flag, given in flags:
            if given and args.arch != arch:
                p.error(f"{flag}: for --arch {arch}{why[arch]}")


def flow_from(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--flow-from's and --flow-object-weight's refusals, through p: a twin folder, and only the further
    schedules run from it; the weight is of those schedules' loss."""
    if any(args.flow_object_weight) and not any(args.flow_anneal_steps):
        p.error("--flow-object-weight: it weighs the further schedules' loss; give --flow-anneal-steps")
    if not args.flow_from:
        return
    given_flags = (
        ("--from", args.start),
        ("--flow-blocks", args.flow_blocks),
        ("--flow-heads", args.flow_heads),
        ("--flow-width", args.flow_width),
        ("--flow-vae-scale", args.flow_vae_scale),
    )
    for flag, given in given_flags:
        if given:
            p.error(f"{flag}: not with --flow-from (the twin brings its models)")
    if not any(args.flow_anneal_steps):
        p.error("--flow-from: give --flow-anneal-steps, the schedules to run from the twin")
    if not (Path(args.flow_from) / "transformer" / "config.json").is_file():
        p.error(
            f"--flow-from {args.flow_from}: no transformer/config.json there (give a twin folder this recipe wrote)"
        )


def cached_latents(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--arch flux: refuse (through p, before any training) a --work whose cached latents are of another
    VAE's resolution than this run's (--flow-vae-scale, else the VAE of --flow-from / --from / the shipped
    model), instead of training a VAE first and failing on them."""
    cache = Path(args.work) / "latents-rich.safetensors"
    if args.arch != "flux" or not cache.is_file():
        return
    from safetensors import safe_open

    scale = args.flow_vae_scale
    if scale in (None, 4):  # the VAE this run takes from a folder
        folder = Path(args.flow_from or args.start or shipped_model()) / "vae" / "config.json"
        scale = 2 ** (len(json.loads(folder.read_text())["block_out_channels"]) - 1)
    with safe_open(cache, "pt") as f:
        side = f.get_slice("latents").get_shape()[-1]
    if side * scale != 64:
        p.error(
            f"--work {args.work}: its cached latents are {side} x {side}, this run's VAE makes {64 // scale} x"
            f" {64 // scale}; remove {cache.name} or give another --work"
        )


def flow_width(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--flow-width, the shipped twin's where not given; refused through p."""
    from .flow_stage import HEAD_DIM, WIDTH

    if args.flow_width is None:
        return WIDTH
    if args.flow_width < 2 * HEAD_DIM or args.flow_width % HEAD_DIM:
        p.error(f"--flow-width {args.flow_width}: give a multiple of {HEAD_DIM}, {2 * HEAD_DIM} or more")
    return args.flow_width


def flow_heads(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--flow-heads at the transformer's width (args.flow_width, resolved first): heads of 32 dims where not
    given (the shipped twin's 4 at 128); refused through p."""
    from .flow_stage import HEAD_DIM, valid_heads

    width = args.flow_width
    if args.flow_heads is None:
        return width // HEAD_DIM
    if not valid_heads(args.flow_heads, width):
        choices = [str(h) for h in range(1, width + 1) if valid_heads(h, width)]
        given = f"{', '.join(choices[:-1])} or {choices[-1]}"
        p.error(f"--flow-heads {args.flow_heads}: give {given} (heads of the transformer's {width} dims)")
    return args.flow_heads


def pretrain_flow(args: argparse.Namespace) -> None:
    """The flow-matching twin: its transformer and T5 from scratch on the --from model's VAE (or one of its
    own, --flow-vae-scale) and CLIP, or (--flow-from) a twin's models trained further."""
    stages = anneal_stages(args.flow_anneal_steps, args.flow_anneal_lr, args.flow_object_weight)
    import torch
    from transformers import T5TokenizerFast

    from .flow_stage import build_flow_models, train_flow, write_t5_tokenizer
    from .pipeline import load_flow_start, load_twin, make_tokenizer, save_flux_pipeline

    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clip_dir, t5_dir = work / "tokenizer", work / "tokenizer_2"
    _, clip_tok = make_tokenizer(clip_dir)
    write_t5_tokenizer(t5_dir)
    t5_tok = T5TokenizerFast.from_pretrained(t5_dir)
    if args.flow_from:
        vae, transformer, clip, t5 = load_twin(Path(args.flow_from))
    else:
        vae, clip = load_flow_start(Path(args.start) if args.start else shipped_model())
        blocks = args.flow_blocks
        shape = dict(heads=args.flow_heads, width=args.flow_width)
        transformer, t5 = build_flow_models(len(t5_tok), clip.config.hidden_size, *blocks, **shape)
        if args.flow_vae_scale not in (None, 4):
            vae = twin_vae(args, clip_tok, work)
    log.info(
        "parameters: transformer %.2fM, clip %.2fM, t5 %.2fM",
        *(sum(q.numel() for q in m.parameters()) / 1e6 for m in (transformer, clip, t5)),
    )
    data = dict(seed=args.seed, batch=args.batch, n_data=args.data, work=work, shape_weights=args.flow_shape_weight)
    models = (vae, transformer, clip, t5, (clip_tok, t5_tok))
    if args.flow_from:  # checkpoints of their own names, batches no stage of a run from scratch draws
        prefix, done = "flow-from-anneal", 1_000_000
    else:
        train_flow(*models, args.flow_steps, **data, lr_max=args.flow_lr)
        prefix, done = "flow-anneal", args.flow_steps
    for i, (steps, lr_max, weight) in enumerate(stages):
        name = prefix if i == 0 else f"{prefix}-{i + 1}"
        train_flow(*models, steps, **data, lr_max=lr_max, warmup=100, name=name, batches=done, object_weight=weight)
        done += steps
    save_flux_pipeline(Path(args.out), vae, transformer, clip, t5, clip_dir, t5_dir)
    write_text(work / "done.json", json.dumps(vars(args)))


def twin_vae(args: argparse.Namespace, clip_tok, work: Path):
    """The twin's own VAE (--flow-vae-scale): drawn from its own seed, so the transformer's initial weights
    are the same as with the --from model's VAE; trained as the UNet recipe's stage 1 (resuming from
    WORK/vae.safetensors); its posterior made a point, its latents of the richer world encoded once and
    scaled to unit variance, shifted by 0 as FLUX's VAE config requires one."""
    import torch

    from .pipeline import build_vae, deterministic_posterior
    from .unet_stage import encoded_data, scaled_latents
    from .vae_stage import train_vae

    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        vae = build_vae(args.flow_vae_scale)
    train_vae(vae, args.vae_steps, args.seed, args.vae_batch, work, bf16=not args.fp32_vae, outlined=args.outlined)
    deterministic_posterior(vae)
    scaled_latents(vae, encoded_data(vae, clip_tok, args.data, args.seed, work, rich=True)["latents"])
    vae.register_to_config(shift_factor=0.0)
    return vae


def shipped_model() -> Path:
    from importlib.resources import files

    return Path(str(files("dreambooth") / "assets" / "toyworld-model"))


def pretrain(args: argparse.Namespace) -> None:
    """Every stage in turn, each resuming from its checkpoint in args.work; then the pipeline folder."""
    # torch and diffusers load here, not at import: they take seconds that --help does not need
    import torch
    from diffusers import AutoencoderKL

    from .pipeline import build_models, load_models, make_tokenizer, save_pipeline
    from .unet_stage import train_unet
    from .vae_stage import train_decoder, train_vae

    torch.manual_seed(args.seed)  # the models' initial weights
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    vocab, tokenizer = make_tokenizer(tok_dir)
    data = dict(seed=args.seed, batch=args.batch, n_data=args.data, work=work)
    if args.start:
        vae, unet, te = load_models(Path(args.start))
    else:
        vae, unet, te = build_models(vocab, args.text_width)  # the VAE drawn first: the same UNet init either way
        if args.vae_from:
            vae = AutoencoderKL.from_pretrained(Path(args.vae_from), subfolder="vae", torch_dtype=torch.float32)
    log.info(
        "parameters: vae %.2fM, unet %.2fM, text %.2fM",
        *(sum(q.numel() for q in m.parameters()) / 1e6 for m in (vae, unet, te)),
    )
    models = (vae, unet, te, tokenizer)
    if not args.start:
        bf16 = not args.fp32_vae
        if not args.vae_from:
            train_vae(vae, args.vae_steps, args.seed, args.vae_batch, work, bf16=bf16, outlined=args.outlined)
        train_unet(*models, args.unet_steps, **data, offset_noise=0.0 if args.offset_steps else args.offset_noise)
        if args.offset_steps:
            offset = dict(offset_noise=args.offset_noise, lr_max=2e-4, warmup=50, name="unet-offset")
            train_unet(*models, args.offset_steps, **data, **offset)
        if args.decoder_steps:
            train_decoder(vae, args.decoder_steps, args.seed, args.vae_batch, work, bf16=bf16)
    if args.rich_steps:
        rich = dict(offset_noise=args.offset_noise, lr_max=args.rich_lr, warmup=100, name="unet-rich", rich=True)
        train_unet(*models, args.rich_steps, **data, **rich)
    save_pipeline(Path(args.out), vae, unet, te, tok_dir)
    write_text(work / "done.json", json.dumps(vars(args)))


def main() -> None:
    p = parser()
    args = p.parse_args()
    try:
        anneal_stages(args.flow_anneal_steps, args.flow_anneal_lr, args.flow_object_weight)  # before any training
    except ValueError as e:
        p.error(str(e))
    wrong_arch(p, args)
    flow_from(p, args)
    cached_latents(p, args)
    for flag, given in (("--vae-from", args.vae_from), ("--text-width", args.text_width is not None)):
        if given and args.start:
            p.error(f"{flag}: not with --from (which takes all three models)")
    args.flow_blocks = flow_blocks(p, args)
    args.flow_width = flow_width(p, args)
    args.flow_heads = flow_heads(p, args)
    args.text_width = TEXT_WIDTH if args.text_width is None else args.text_width
    if args.text_width < 4 or args.text_width % 4:
        p.error(f"--text-width {args.text_width}: must be a positive multiple of 4 (the text encoder's heads)")
    if args.vae_from and not (Path(args.vae_from) / "vae" / "config.json").is_file():
        p.error(f"--vae-from {args.vae_from}: no vae/config.json there (give a pipeline folder this recipe wrote)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    (pretrain_flow if args.arch == "flux" else pretrain)(args)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
