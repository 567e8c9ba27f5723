"""Training speed against the floor (issue 9): `make bench` or `python -m benchmarks.train`.

Times LoRA DreamBooth training with prior preservation (one instance + one class example per step):
  (a) the trainer with its defaults (latents and prompt embeddings cached),
  (b) the trainer with --no-cache (VAE and text encoder every step, as the reference scripts do),
  (c) the floor: UNet forward + backward + optimizer step alone, on pre-made tensors of the same
      shapes, with the same LoRA;
  and, in one more process, (a)'s step and (c) alternately: the a/c ratio free of the differences
  between processes on a shared CPU (separate processes are kept for the memory figures).
Each variant runs in its own process so that its peak memory (RSS on CPU, max allocated on GPU) is
its own. Prints a Markdown table for BENCHMARKS.md and writes the figures as JSON.

  --arch tiny   the tiny offline model (fast; default)
  --arch sd15   the Stable Diffusion 1.5 architecture (UNet, VAE, CLIP ViT-L/14 text encoder) with
                random weights built from its config in code, no download
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("a", "b", "c", "i")  # i: (a)'s step and (c) alternately in one process, for the ratio


def build_model(arch: str, out: Path) -> Path:
    if arch == "tiny":
        from dreambooth.tiny import build_tiny_pipeline

        return build_tiny_pipeline(out)
    return build_sd15(out)


def build_sd15(out: Path) -> Path:
    """SD 1.5's architecture with random weights (configs as published with stable-diffusion-v1-5/stable-diffusion-v1-5)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreambooth.tiny import save_sd_pipeline, text_config, write_clip_tokenizer

    vocab = write_clip_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    te = text_config(
        vocab,
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
        projection_dim=768,
    )  # CLIP ViT-L/14's
    return save_sd_pipeline(out, unet, vae, te)


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CLASS_IMAGES = 4


def class_images(work: Path, args) -> float:
    """Generate the variants' class images (batched, 1 denoising step, as the variants' config says);
    images per second."""
    from dreambooth.data.prior import generate_class_images
    from dreambooth.models import load_pipeline

    pipe = load_pipeline(str(work / "model"))
    t0 = time.perf_counter()
    n = generate_class_images(
        pipe,
        "a photo of a dog",
        work / "class",
        list(range(CLASS_IMAGES)),
        seed=0,
        steps=1,
        guidance=7.5,
        batch_size=CLASS_IMAGES,
        resolution=args.resolution,
        progress=False,
    )
    return n / (time.perf_counter() - t0)


def run_variant(args) -> dict:
    """One variant in this process; returns its figures."""
    import torch

    from dreambooth.config import TrainConfig
    from dreambooth.demo import example_subject
    from dreambooth.training.loop import setup, train
    from dreambooth.training.preflight import preflight

    work = Path(args.work)
    cfg = TrainConfig(
        model=str(work / "model"),
        instance_dir=str(example_subject()),
        instance_prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        class_dir=str(work / "class"),
        num_class_images=CLASS_IMAGES,
        class_inference_steps=1,
        output_dir=str(work / f"run-{args.variant}"),
        resolution=args.resolution,
        rank=16,
        lr_scheduler="constant",
        max_steps=args.warmup + args.steps,
        checkpoint_every=10**9,
        mixed_precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        adam_8bit=args.adam_8bit,
        no_cache=args.variant == "b",
        overwrite=True,
    )
    if args.variant in ("a", "b"):
        out = train(cfg, progress=False)
        import csv

        with open(out / "train_log.csv", newline="") as f:
            times = [float(r["seconds"]) for r in csv.DictReader(f)][args.warmup :]
    else:
        run = setup(cfg, preflight(cfg), progress=False)
        unet, opt, dev = run.denoiser, run.optimizer, run.accelerator.device
        h = args.resolution // 8
        noisy = torch.randn(2, 4, h, h, device=dev, dtype=run.weight_dtype)
        target = torch.randn(2, 4, h, h, device=dev)
        emb = torch.randn(
            2,
            run.comps.tokenizer.model_max_length,
            run.comps.denoiser.config.cross_attention_dim,
            device=dev,
            dtype=run.weight_dtype,
        )
        t = torch.randint(0, 1000, (2,), device=dev)

        def floor():
            loss = torch.nn.functional.mse_loss(unet(noisy, t, emb).sample.float(), target)
            run.accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def trainer(i):
            from dreambooth.training.loop import _optimizer_step

            _optimizer_step(run, i, [run.denoiser], run.trained)

        times, trainer_times = [], []
        for i in range(args.warmup + args.steps):
            if args.variant == "i":
                dt = _timed(lambda i=i: trainer(i), dev)
                if i >= args.warmup:
                    trainer_times.append(dt)
            dt = _timed(floor, dev)
            if i >= args.warmup:
                times.append(dt)
        if args.variant == "i":
            return {
                "variant": "i",
                "trainer_s_per_step": statistics.median(trainer_times),
                "floor_s_per_step": statistics.median(times),
            }
    return {
        "variant": args.variant,
        "median_s_per_step": statistics.median(times),
        "steps": len(times),
        "peak_mb": peak_memory_mb(),
    }


def _timed(fn, dev) -> float:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 256 (sd15)")
    p.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--adam-8bit", action="store_true", help="8-bit AdamW (bitsandbytes; CUDA only)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="which to run (a,b,c,i); the GPU matrix runs a,c for the memory options",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.resolution = args.resolution or (64 if args.arch == "tiny" else 256)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.variant:  # child process
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory(prefix="dreambooth-bench-") as work:
        build_model(args.arch, Path(work) / "model")
        # The class images every variant trains with, made here so that no variant's time or memory
        # includes them; batched, as `train` makes them, and timed.
        class_rate = class_images(Path(work), args)
        results = {}
        chosen = [v for v in VARIANTS if v in args.variants.split(",")]
        for v in chosen:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.train",
                "--variant",
                v,
                "--work",
                work,
                "--arch",
                args.arch,
                "--resolution",
                str(args.resolution),
                "--precision",
                args.precision,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            cmd += ["--adam-8bit"] if args.adam_8bit else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"variant {v} failed:\n{done.stderr[-3000:]}")
            out = done.stdout
            results[v] = json.loads(out.strip().splitlines()[-1])
    a, b, c, inter = (results.get(v) for v in VARIANTS)

    def ratio(x, y, key="median_s_per_step"):
        return x[key] / y[key] if x and y else None

    summary = {
        "arch": args.arch,
        "resolution": args.resolution,
        "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "adam_8bit": args.adam_8bit,
        "results": results,
        "a_over_c": ratio(a, c),
        "b_over_a": ratio(b, a),
        "peak_a_le_b": a["peak_mb"] <= b["peak_mb"] if a and b else None,
        "a_over_c_one_process": inter["trainer_s_per_step"] / inter["floor_s_per_step"] if inter else None,
        "interleaved": inter,
        "class_images_per_s": class_rate,
    }

    def cell(name, r):
        return f"({name}) {r['median_s_per_step']:.3f} s, {r['peak_mb']:.0f} MB" if r else f"({name}) -"

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    print(
        f"| {args.arch} {args.resolution}px {args.precision} gc={args.gradient_checkpointing} "
        f"8bit={args.adam_8bit} | {cell('a', a)} | {cell('b', b)} | {cell('c', c)} "
        f"| a/c {fmt(summary['a_over_c'])} (one process, interleaved: {fmt(summary['a_over_c_one_process'])}) "
        f"| b/a {fmt(summary['b_over_a'])} "
        f"| class images {class_rate:.2f}/s (batch {CLASS_IMAGES}, 1 step) |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
