"""Generation speed with a LoRA against without (issue 3): `python -m benchmarks.generate`.

Times `dreambooth generate`'s engine on one image at a time: the base model, the base model with a
rank-16 LoRA (UNet attention and text encoder) fused into the weights (the default when the scales
are fixed for a call), and the same LoRA unfused (scales switchable per image, as grids use it).
Target: fused / base <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def make_lora(model: Path, out: Path, rank: int = 16) -> Path:
    """A LoRA with random (non-zero) weights on the UNet attention and the text encoder."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from dreambooth.families.base import CLIP_TARGETS, UNET_TARGET_GROUPS
    from dreambooth.models import load_pipeline

    pipe = load_pipeline(str(model))
    torch.manual_seed(0)
    pipe.unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(UNET_TARGET_GROUPS["attn"]), init_lora_weights="gaussian"
        )
    )
    pipe.text_encoder.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=list(CLIP_TARGETS), init_lora_weights="gaussian")
    )
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder):
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 1e-3)
    out.mkdir(parents=True)
    pipe.save_lora_weights(
        out,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
    )
    return out


def time_images(engine, settings, n: int, warmup: int) -> float:
    import torch

    times = []
    for i in range(warmup + n):
        if engine.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.render([settings])
        if engine.device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--size", type=int, default=None, help="default: 64 (tiny), 256 (sd15)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from benchmarks.train import build_model
    from dreambooth.config import SamplingConfig
    from dreambooth.generation import Engine, image_settings

    size = args.size or (64 if args.arch == "tiny" else 256)
    with tempfile.TemporaryDirectory(prefix="dreambooth-bench-") as work:
        model = build_model(args.arch, Path(work) / "model")
        lora = make_lora(model, Path(work) / "lora")
        cfg = SamplingConfig(model=str(model), steps=args.steps, width=size, height=size)
        results = {}
        for name, fuse, with_lora in (("base", True, False), ("lora_fused", True, True), ("lora_unfused", False, True)):
            engine = Engine(fuse=fuse)
            s = image_settings(cfg, engine, "a photo of sks dog", 0, lora=str(lora) if with_lora else None)
            results[name] = time_images(engine, s, args.images, args.warmup)
    summary = {
        "arch": args.arch,
        "size": size,
        "steps": args.steps,
        "s_per_image": results,
        "fused_over_base": results["lora_fused"] / results["base"],
        "unfused_over_base": results["lora_unfused"] / results["base"],
    }
    print(
        f"| {args.arch} {size}px {args.steps} steps | base {results['base']:.3f} s | fused {results['lora_fused']:.3f} s "
        f"| unfused {results['lora_unfused']:.3f} s | fused/base {summary['fused_over_base']:.3f} "
        f"| unfused/base {summary['unfused_over_base']:.3f} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
