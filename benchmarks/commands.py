"""Every command on every family's tiny model, on whatever device this machine has: `python -m benchmarks.commands`.

What a GPU machine adds to the CPU tests: the commands' CUDA paths (fp16/bf16 mixed precision, fp16
generation, nf4/fp8 base weights, 8-bit Adam) run at all. For each family (sd15, sd2, sdxl, sd3, flux)
it builds the tiny model, then runs in this process, through the CLI's own entry point: train (LoRA
with prior preservation and text-encoder LoRA where the family has a CLIP encoder, a checkpoint and a
validation image), a resume, generate, grid, evaluate (tiny DINO/CLIP stand-ins), select, export to
kohya's layout and back; then the variants only a GPU runs: fp16 mixed precision, 8-bit Adam, full
fine-tuning and Textual Inversion on SD 1.5, and --quantize-base int8/fp8/nf4 on SD3 and FLUX; and issue
21's optimizers (with the validation loss) and LoRA tools (resize, bake, extract) on every family.
One row per command: exit code and seconds (a failure's last line follows its row). Writes JSON (--json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

FAMILIES = ("sd15", "sd2", "sdxl", "sd3", "flux")
FLOW = ("sd3", "flux")


def run(rows: list, family: str, name: str, argv: list[str]) -> bool:
    from dreambooth.cli import main

    err = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException as e:  # a crash is a row too (its traceback on stderr); the next command runs
        code = "crash"
        sys.__stderr__.write(traceback.format_exc())
        err.write(f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - start
    lines = [line for line in err.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    rows.append(dict(family=family, command=name, code=code, seconds=round(seconds, 2), error=last if code else ""))
    print(f"| {family} | {name} | {code} | {seconds:.1f} s |" + (f" {last[:300]}" if code else ""), flush=True)
    return code == 0


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}, torch {torch.__version__}", flush=True)
    cuda = torch.cuda.is_available()
    precision = "bf16" if not cuda or torch.cuda.is_bf16_supported() else "fp16"
    rows: list = []
    from dreambooth.demo import example_subject
    from dreambooth.tiny import build_tiny_clip, build_tiny_dino

    photos = str(example_subject())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dino, clip = str(build_tiny_dino(root / "dino")), str(build_tiny_clip(root / "clip"))
        prompts = root / "prompts.txt"
        prompts.write_text("a photo of {identifier} {class}\na {identifier} {class} on the beach\n")
        for family in args.families.split(","):
            model = root / family
            if not run(rows, family, "tiny-model", ["tiny-model", str(model), "--arch", family]):
                continue
            flow = family in FLOW
            seq = ["--max-sequence-length", "16"] if flow else []
            size = ["--width", "64", "--height", "64"] if family == "flux" else []
            out = root / f"{family}-run"
            common = ["--model", str(model), "--instance-dir", photos, "--instance-prompt", "a photo of sks dog",
                      "--resolution", "64", "--mixed-precision", precision, "--lr-scheduler", "constant", *seq]  # fmt: skip
            train = ["train", *common, "--rank", "4", "--output-dir", str(out), "--class-prompt", "a photo of a dog",
                     "--class-dir", str(root / f"{family}-class"), "--num-class-images", "2", "--class-inference-steps", "2", "--max-steps", str(args.steps),
                     "--checkpoint-every", str(args.steps // 2), "--validation-prompt", "a photo of sks dog",
                     "--validation-inference-steps", "2"]  # fmt: skip
            train += ["--train-text-encoder"]  # every family has a CLIP encoder (FLUX one, SD3 two)
            if not run(rows, family, f"train lora+prior+te {precision}", train):
                continue
            more = ["train", *common, "--rank", "4", "--output-dir", str(out), "--class-prompt", "a photo of a dog",
                    "--class-dir", str(root / f"{family}-class"), "--num-class-images", "2", "--max-steps", str(args.steps + 2), "--train-text-encoder",
                    "--checkpoint-every", str(args.steps // 2), "--resume", "latest"]  # fmt: skip
            run(rows, family, "train --resume latest", more)
            gen = ["--model", str(model), "--lora", str(out), "--steps", "2", *seq]
            run(rows, family, "generate", ["generate", *gen, "--prompt", "a photo of sks dog", "--num-images", "2",
                                           *size, "--output-dir", str(root / f"{family}-gen")])  # fmt: skip
            run(rows, family, "grid", ["grid", *gen, "--prompt", "a photo of sks dog", "--x", "lora-scale-unet=0,1",
                                       *size, "--output-dir", str(root / f"{family}-grid")])  # fmt: skip
            run(rows, family, "evaluate", ["evaluate", *gen, "--real", photos, "--class-noun", "dog", "--prompts",
                                           str(prompts), "--images-per-prompt", "2", "--num-class-images", "2",
                                           "--dino-model", dino, "--clip-model", clip, *size,
                                           "--output-dir", str(root / f"{family}-eval")])  # fmt: skip
            run(rows, family, "select", ["select", "--run", str(out), "--dino-model", dino, "--clip-model", clip,
                                         "--prompts", "1", "--images-per-prompt", "1", "--num-class-images", "0",
                                         "--steps", "2", *size])  # fmt: skip
            kohya = root / f"{family}-kohya.safetensors"
            run(rows, family, "export kohya", ["export", "--lora", str(out), "--format", "kohya", str(kohya),
                                               "--model", str(model)])  # fmt: skip
            run(rows, family, "generate kohya file", ["generate", "--model", str(model), "--lora", str(kohya),
                                                      "--steps", "2", *seq, "--prompt", "a photo of sks dog",
                                                      "--num-images", "1", *size,
                                                      "--output-dir", str(root / f"{family}-genk")])  # fmt: skip
            short = ["train", *common, "--max-steps", "2", "--checkpoint-every", "2"]
            lora = [*short, "--rank", "4"]
            for optimizer in ("prodigy", "adafactor", "schedule-free-adamw"):  # (issue 21)
                run(rows, family, f"train --optimizer {optimizer} --validation-loss-every 1",
                    [*lora, "--optimizer", optimizer, "--validation-loss-every", "1",
                     "--output-dir", str(root / f"{family}-{optimizer}")])  # fmt: skip
            lt = root / f"{family}-loratools"
            run(rows, family, "lora resize", ["lora", "resize", str(out), "--rank", "2", str(lt / "r2.safetensors")])
            run(
                rows,
                family,
                "lora bake",
                ["lora", "bake", "--model", str(model), "--lora", str(out), str(lt / "baked")],
            )
            run(rows, family, "lora extract", ["lora", "extract", "--base", str(model), "--tuned", str(lt / "baked"),
                                               "--rank", "4", str(lt / "x.safetensors")])  # fmt: skip
            if family == "sd15":
                if cuda:
                    run(rows, family, "train fp16", [*lora, "--mixed-precision", "fp16",
                                                     "--output-dir", str(root / "fp16")])  # fmt: skip
                    run(rows, family, "train --adam-8bit", [*lora, "--adam-8bit", "--output-dir", str(root / "8bit")])
                run(
                    rows,
                    family,
                    "train --method full",
                    [*short, "--method", "full", "--output-dir", str(root / "full")],
                )
                run(rows, family, "train --method textual-inversion --gradient-checkpointing",
                    [*short, "--method", "textual-inversion", "--token", "<sks>", "--initializer-token", "dog",
                     "--instance-prompt", "a photo of <sks> dog", "--gradient-checkpointing",
                     "--output-dir", str(root / "ti")])  # fmt: skip
            if flow:
                for kind in ("int8", "fp8", "nf4") if cuda else ("int8",):
                    qout = root / f"{family}-{kind}"
                    if run(rows, family, f"train --quantize-base {kind}",
                           [*lora, "--quantize-base", kind, "--output-dir", str(qout)]):  # fmt: skip
                        run(rows, family, f"generate after {kind}", ["generate", "--model", str(model), "--lora",
                                                                     str(qout), "--steps", "2", *seq, *size,
                                                                     "--prompt", "a photo of sks dog",
                                                                     "--output-dir", str(root / f"{qout}-gen")])  # fmt: skip
    failed = [r for r in rows if r["code"] != 0]
    print(f"{len(rows) - len(failed)} of {len(rows)} commands exited 0 on {device}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, rows=rows), indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
