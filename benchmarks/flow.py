"""The flow-matching families at their real widths (issue 20): `python -m benchmarks.flow`.

Builds a FLUX.1 [dev]-architecture transformer (3072 wide, 24 heads of 128, T5 width 4096) and an SD 3.5
Medium-architecture one (1536 wide, dual attention, QK RMS norm) with random weights and only a few
blocks (the figures per block are measured, the full models' are those blocks times the published
block counts), saves each in bf16, and loads it through the loader training uses, as it is and with
--quantize-base int8 (torchao weight-only). For each it reports the weight memory (parameter and
quantised-tensor bytes, measured on the loaded model) and the seconds of one LoRA training step (rank
16 on the attention projections, forward + backward + AdamW) at the given resolution on this machine.

Prints Markdown rows for BENCHMARKS.md and writes JSON (--json)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

FAMILIES = {
    # name: (diffusers class, config with a few blocks, (block attribute, published count) ...)
    "flux": (
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),  # fmt: skip
        (("transformer_blocks", 19), ("single_transformer_blocks", 38)),
    ),
    "sd35m": (
        "SD3Transformer2DModel",
        dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=(0, 1),
            qk_norm="rms_norm",
        ),  # fmt: skip
        (("transformer_blocks", 24),),
    ),
}


def tensor_bytes(module) -> int:
    """Bytes of a module's parameters and buffers as stored (a quantised tensor: its data and scales)."""
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        names = getattr(type(t), "tensor_data_names", None) or []  # torchao's quantised tensors: their parts
        inner = [getattr(t, n) for n in names if getattr(t, n, None) is not None]
        total += sum(x.numel() * x.element_size() for x in inner) if inner else t.numel() * t.element_size()
    return total


def full_model_bytes(model, blocks) -> tuple[int, int]:
    """(bytes of this model, bytes of the full model): the rest plus each block kind x its published count."""
    total = tensor_bytes(model)
    full = total
    for attr, count in blocks:
        built = getattr(model, attr)
        per = tensor_bytes(built[0])
        full += per * count - sum(tensor_bytes(b) for b in built)
    return total, full


def step_seconds(family_name: str, model, resolution: int, steps: int) -> float:
    """Mean seconds of a LoRA training step (after one warm-up step)."""
    import torch
    from peft import LoraConfig

    from dreambooth.families import FAMILIES as REGISTRY

    family = REGISTRY["flux" if family_name == "flux" else "sd3"]
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                 target_modules=list(family.lora_target_groups["attn"])))  # fmt: skip
    params = [p for n, p in model.named_parameters() if "lora" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    side = resolution // 8
    c = 16
    cfg = model.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pooled = torch.randn(1, cfg.pooled_projection_dim, device=device)
    emb = torch.randn(1, 77, cfg.joint_attention_dim, device=device)
    times = []
    for i in range(steps + 1):
        noisy = torch.randn(1, c, side, side, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            t = torch.tensor([500.0], device=device)
            pred = family.predict(model, noisy, t, emb, {"pooled_projections": pooled})
        pred.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    import diffusers
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="flux,sd35m")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (0: weight memory only)")
    parser.add_argument("--quantize", default="int8", help="comma-separated: int8, fp8, nf4 (the last two on CUDA)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, out = [], {}
    for name in args.families.split(","):
        cls_name, config, blocks = FAMILIES[name]
        cls = getattr(diffusers, cls_name)
        with tempfile.TemporaryDirectory() as tmp:
            cls(**config).to(torch.bfloat16).save_pretrained(tmp)
            for quantize in [None, *[q for q in args.quantize.split(",") if q]]:
                extra = {}
                if quantize:
                    from dreambooth.quantize import _config

                    extra["quantization_config"] = _config(quantize, "diffusers")
                model = cls.from_pretrained(tmp, torch_dtype=torch.bfloat16, **extra)
                if torch.cuda.is_available() and quantize != "nf4":
                    model.to("cuda")
                built, full = full_model_bytes(model, blocks)
                seconds = step_seconds(name, model, args.resolution, args.steps) if args.steps else float("nan")
                key = f"{name}-{quantize or 'bf16'}"
                out[key] = dict(built_bytes=built, full_model_bytes=full, step_seconds=seconds)
                rows.append(
                    f"| {name} | {quantize or 'bf16'} | {built / 2**30:.2f} GiB | {full / 2**30:.1f} GiB | "
                    f"{args.resolution} px | {seconds:.1f} s |"
                )
                del model
    print(
        "| architecture | base weights | built (few blocks) | full model (by block counts) | resolution | CPU s/step |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
