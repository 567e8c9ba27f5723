"""The flow-matching families at their real widths (issue 20): `python -m benchmarks.flow`.

Builds a FLUX.1 [dev]-architecture transformer (3072 wide, 24 heads of 128, T5 width 4096) and an SD 3.5
Medium-architecture one (1536 wide, dual attention, QK RMS norm) with random weights and only a few
blocks (the figures per block are measured, the full models' are those blocks times the published
block counts), saves each in bf16, and loads it through the loader training uses, as it is and with
--quantize-base int8 (torchao weight-only). For each it reports the weight memory (parameter and
quantised-tensor bytes, measured on the loaded model) and the seconds of one LoRA training step (rank
16 on the attention projections, forward + backward + AdamW) at the given resolution on this machine.

--blocks full (for a GPU): the whole transformer at the published block counts (FLUX.1 [dev] 12 B
parameters, SD 3.5 Medium 2.5 B), built with random weights directly on the GPU in bf16 (no file: 24 GB
would take longer to write than to train on), quantised in memory with the same torchao configs the
loader passes to diffusers (int8, fp8) and bitsandbytes' NF4 layers; it reports the weights' memory,
the peak GPU memory of a LoRA step (weights, LoRA and Adam in fp32, activations; with
--gradient-checkpointing as a 16-24 GB card needs) and the seconds per step, with the family's
default text length (FLUX 512 T5 tokens; SD3 77 CLIP + 77 T5).

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


def step_seconds(
    family_name: str, model, resolution: int, steps: int, checkpointing: bool = False
) -> tuple[float, int]:
    """Mean seconds of a LoRA training step (after one warm-up step), and the peak accelerator memory
    (bytes; 0 on the CPU)."""
    import torch
    from peft import LoraConfig

    from dreambooth.families import FAMILIES as REGISTRY

    family = REGISTRY["flux" if family_name == "flux" else "sd3"]
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                 target_modules=list(family.lora_target_groups["attn"])))  # fmt: skip
    if checkpointing:
        model.enable_gradient_checkpointing()
    params = [p for n, p in model.named_parameters() if "lora" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    side = resolution // 8
    c = 16
    cfg = model.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    length = family.default_max_sequence_length + (77 if family_name != "flux" else 0)  # SD3: CLIP's 77 + T5's
    pooled = torch.randn(1, cfg.pooled_projection_dim, device=device)
    emb = torch.randn(1, length, cfg.joint_attention_dim, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
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
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return sum(times) / len(times), peak


def quantize_in_memory(model, kind: str):
    """model's linear layers quantised as the loader's configs quantise them: torchao's weight-only int8 /
    float8 (the configs dreambooth.quantize gives diffusers' TorchAoConfig), or bitsandbytes' NF4 with bf16
    compute (its BitsAndBytesConfig)."""
    import torch

    if kind != "nf4":
        from torchao.quantization import quantize_

        from dreambooth.quantize import _config

        quantize_(model, _config(kind, "diffusers").quant_type)
        return model
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                        compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")  # fmt: skip
                new.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=False
                ).to(child.weight.device)
                if child.bias is not None:
                    new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, new)
    return model


def full_variant(args, name: str, quantize: str | None) -> dict:
    """One family's whole transformer on the accelerator, its base in bf16 or quantised: its figures."""
    import diffusers
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cls_name, config, blocks = FAMILIES[name]
    counts = {("num_layers" if a == "transformer_blocks" else "num_single_layers"): min(n, args.cap) for a, n in blocks}
    config = dict(config) | counts
    if name == "sd35m":
        config["dual_attention_layers"] = tuple(range(min(13, args.cap)))  # SD 3.5 Medium's: the first 13 blocks
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = getattr(diffusers, cls_name)(**config)
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    if quantize:
        quantize_in_memory(model, quantize)
    weights = tensor_bytes(model)
    seconds, peak = step_seconds(name, model, args.resolution, args.steps, args.gradient_checkpointing)
    return dict(weight_bytes=weights, peak_bytes=peak, step_seconds=seconds)


def full_rows(args) -> tuple[list[str], dict]:
    """--blocks full: each family's whole transformer, bf16 and quantised, each in its own process (its
    peak memory its own, and a CUDA fault cannot spoil the next; a failure is run again with
    CUDA_LAUNCH_BLOCKING=1 so that its error names the operation)."""
    import os
    import subprocess
    import sys

    rows, out = [], {}
    header = ["| architecture | base weights | weights | peak memory, LoRA step | resolution | s/step |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    print("\n".join(header), flush=True)
    for name in args.families.split(","):
        for quantize in [None, *[q for q in args.quantize.split(",") if q]]:
            key = f"{name}-{quantize or 'bf16'}"
            cmd = [sys.executable, "-m", "benchmarks.flow", "--blocks", "full", "--variant", key,
                   "--resolution", str(args.resolution), "--steps", str(args.steps), "--cap", str(args.cap),
                   *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode == 0:
                r = out[key] = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(f"| {name} (full) | {quantize or 'bf16'} | {r['weight_bytes'] / 2**30:.1f} GiB | "
                            f"{r['peak_bytes'] / 2**30:.1f} GiB | {args.resolution} px | {r['step_seconds']:.2f} s |")  # fmt: skip
            else:
                sys.stderr.write(f"== {key}\n{done.stderr[-6000:]}\n")
                last = [line for line in done.stderr.strip().splitlines() if "Error" in line] or ["?"]
                out[key] = dict(error=last[-1][:300])
                rows.append(f"| {name} (full) | {quantize or 'bf16'} | failed: {out[key]['error']} |")
            print(rows[-1], flush=True)
    return header + rows, out


def main() -> None:
    import diffusers
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default="sd35m,flux")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (0: weight memory only)")
    parser.add_argument("--quantize", default="int8", help="comma-separated: int8, fp8, nf4 (the last two on CUDA)")
    parser.add_argument("--blocks", choices=("few", "full"), default="few")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--cap", type=int, default=1000, help="--blocks full: at most this many blocks of a kind (a CPU try)"
    )
    parser.add_argument("--json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # --blocks full's child: FAMILY-QUANTIZE
    args = parser.parse_args()
    if args.variant:
        name, quantize = args.variant.split("-")
        print(json.dumps(full_variant(args, name, None if quantize == "bf16" else quantize)))
        return
    if args.blocks == "full":
        rows, out = full_rows(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return
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
                seconds = step_seconds(name, model, args.resolution, args.steps)[0] if args.steps else float("nan")
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
