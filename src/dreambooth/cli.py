"""The `dreambooth` command: parses, validates, and calls one function per command.

Nothing here imports torch, so `dreambooth --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import (
    CompareConfig,
    EvaluateConfig,
    GenerateConfig,
    GridConfig,
    SelectConfig,
    TrainConfig,
)
from .errors import ProcessesFailed, SaveIncomplete, TrainingInterrupted, UserError
from .options import add_arguments, build, from_namespace, load_yaml


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming the input) and exit code 2, and a flag is never
    guessed from a prefix (a typo such as --learning-rat must be an error)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


# Commands whose flags come from a config dataclass: name -> (config, help, description, runner).
# The runner ("module:function") is imported only when its command runs, so parsing imports no torch.
CONFIG_COMMANDS = {
    "train": (
        TrainConfig,
        "fine-tune a model on photos of one subject (LoRA, full, or textual inversion)",
        "Fine-tune a model on photos of one subject. Flags override --config.",
        "training.loop:train",
    ),
    "generate": (
        GenerateConfig,
        "generate images with a base model and a trained LoRA or embedding",
        "Generate images; every PNG carries its settings (AUTOMATIC1111 'parameters').",
        "generation:run_generate",
    ),
    "grid": (
        GridConfig,
        "X/Y/Z comparison grids over any generation setting, checkpoints and runs",
        "X/Y/Z grids: --x guidance=3,5,7.5 --y lora-scale-unet=0.4,0.7,1.0 --z seed=0-3. "
        "Axes: any generate setting, lora=RUN,... or checkpoint=STEP,...; ranges a-b or a-b:step.",
        "grid:run_grid",
    ),
    "evaluate": (
        EvaluateConfig,
        "score generated images with DINO, CLIP-I, CLIP-T, PRES, DIV (the paper's metrics)",
        "Score --generated images against --real photos, or with --model (and --lora) run the whole "
        "DreamBench protocol: 4 images per prompt plus class images, then the scores.",
        "evaluation.evaluate:run_evaluate",
    ),
    "select": (
        SelectConfig,
        "score every checkpoint of a run and recommend one (and its scale, guidance)",
        "Evaluate every checkpoint of a run (x --scales x --guidances) on a DreamBench prompt subset, mark "
        "the DINO/CLIP-T front, recommend one; writes RUN/selection.json and RUN/selection/.",
        "evaluation.select:run_select",
    ),
    "compare": (
        CompareConfig,
        "the paper's Table 1: train each method on each subject, generate, evaluate",
        "For each subject and method: train with the method's defaults, generate 4 images per DreamBench "
        "prompt, evaluate; a table beside the paper's rows, per-subject rows, method x prompt grids.",
        "compare:run_compare",
    ),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dreambooth",
        description="Teach a text-to-image diffusion model a new subject from a few photos (DreamBooth).",
    )
    p.add_argument("--version", action="version", version=f"dreambooth {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (cls, help_, description, _) in CONFIG_COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=description)
        c.add_argument("--config", help="YAML file whose keys are the flags' names (learning_rate: 1e-4)")
        add_arguments(c, cls)
        _add_local_files_only(c)

    m = sub.add_parser("tiny-model", help="write a tiny random Stable Diffusion pipeline folder (offline)")
    m.add_argument("out", help="folder to write")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--arch",
        default="sd15",
        choices=("sd15", "sd2", "sdxl"),
        help="sd15 (epsilon prediction), sd2 (v-prediction, linear projections, OpenCLIP-style text encoder) "
        "or sdxl (two text encoders, pooled embeddings and micro-conditioning)",
    )

    cd = sub.add_parser(
        "check-data",
        help="say of every file in a photo folder whether training can use it, and how",
        description="Decode every file in DIR as training would and print, per file, whether it is used (and "
        "how: EXIF orientation, transparency, animation, 16-bit, CMYK), rejected (and why) or ignored. Exit "
        "code 0 when every image is usable, 2 when any is rejected.",
    )
    cd.add_argument("dir", help="the folder of photos")

    e = sub.add_parser(
        "export",
        help="write a trained LoRA in kohya's layout (AUTOMATIC1111, ComfyUI, sd-scripts), or a model as one file",
        description="Write a run's LoRA (a run folder, a checkpoint folder or a .safetensors file) in the layout "
        "of kohya's sd-scripts, which AUTOMATIC1111 and ComfyUI load: lora_unet_*/lora_te_* keys with "
        "lora_down/lora_up/alpha, and kohya's ss_* metadata. With --format single-file, write a whole model "
        "(--model: a diffusers folder such as a full fine-tune's run) as one checkpoint in the original "
        "Stable Diffusion layout.",
    )
    e.add_argument("out", help="the .safetensors file to write")
    e.add_argument("--lora", help="the run folder, checkpoint folder or LoRA file to export")
    e.add_argument(
        "--model",
        help="with --format single-file: the diffusers folder (or hub id) to write; with a LoRA file outside "
        "its run folder: its base model",
    )
    e.add_argument(
        "--format", default="kohya", choices=("kohya", "diffusers", "single-file"), help="layout to write (kohya)"
    )
    e.add_argument(
        "--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="single-file weights' precision (fp16)"
    )
    e.add_argument(
        "--dora-for",
        default="comfyui",
        choices=("comfyui", "lycoris", "automatic1111"),
        help="a DoRA LoRA's dora_scale in the convention of the program that loads it, which merges it as "
        "peft does (comfyui: also Forge; needs the base model's weights); AUTOMATIC1111 cannot (refused)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing file")
    _add_local_files_only(e)

    sw = sub.add_parser(
        "sweep",
        help="train one run per combination of settings, score every checkpoint, recommend one",
        description="Train one run per combination of --vary values (resumable: finished runs are kept, "
        "interrupted ones resumed), then with --evaluate score every run's checkpoints (the paper's metrics "
        "through `select`; the world's oracle on --model toyworld) and write DIR/sweep.md: runs x metrics, "
        "metric-over-steps plots, a grid of the same prompts and seeds across runs, the recommended run.",
    )
    sw.add_argument("--config", required=True, help="the training config every run starts from (YAML)")
    sw.add_argument("--output-dir", required=True, help="where runs/, logs/ and the report go")
    sw.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a training option and its values (repeatable): learning-rate=3e-4,1e-4 max-steps=1000,2000",
    )
    sw.add_argument("--parallel", type=_positive_int, default=1, help="runs training at once (1)")
    sw.add_argument("--evaluate", action="store_true", help="score every checkpoint of every run")
    sw.add_argument("--real", help="the real subject photos for DINO/CLIP-I (default: each run's --instance-dir)")
    sw.add_argument(
        "--metrics",
        default="auto",
        choices=("auto", "paper", "oracle"),
        help="paper (DINO, CLIP-I, CLIP-T, PRES) or the toy world's oracle; auto: oracle on --model toyworld",
    )
    sw.add_argument(
        "--objective",
        help="weights of the min-max-normalised metrics whose sum picks the recommendation "
        "(default dino=1,clip_t=1; oracle: fidelity=1,recontext=1)",
    )
    sw.add_argument("--prompts", type=_positive_int, default=4, help="DreamBench prompts per checkpoint (4)")
    sw.add_argument("--images-per-prompt", type=_positive_int, default=4, help="images per prompt (4)")
    sw.add_argument("--num-class-images", type=int, default=8, help="class-prompt images for PRES (8)")
    sw.add_argument("--guidance", type=float, default=7.5, help="guidance scale of the scored images (7.5)")
    sw.add_argument("--steps", type=_positive_int, default=25, help="denoising steps of the scored images (25)")
    sw.add_argument("--seed", type=int, default=0, help="seed of the first image of each prompt")
    sw.add_argument("--dino-model", default="facebook/dino-vits16", help="DINO extractor: hub id or local folder")
    sw.add_argument(
        "--clip-model", default="openai/clip-vit-base-patch32", help="CLIP extractor: hub id or local folder"
    )
    _add_local_files_only(sw)

    u = sub.add_parser(
        "ui",
        help="a local web page to generate, compare in grids, train (stop, resume) and see a run's scores",
        description="Open the web UI (Gradio) at http://127.0.0.1:PORT. It lists and starts runs in --projects, "
        "trains each as its own `dreambooth train` process; no path the page names can lead outside that folder "
        "(models: --model, hub ids, or folders inside it). "
        "Only this machine can reach it unless --host or --share is given.",
    )
    u.add_argument("--port", type=_positive_int, default=7860, help="port (7860)")
    u.add_argument(
        "--projects",
        default="dreambooth-projects",
        help="folder of the runs it lists and starts (./dreambooth-projects)",
    )
    u.add_argument("--model", help="the default base model of its forms: hub id or local folder")
    u.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, with a warning)",
    )
    u.add_argument("--share", action="store_true", help="also make a public gradio.live link (with a warning)")
    u.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password")
    u.add_argument(
        "--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"), help="generation precision (auto)"
    )
    _add_local_files_only(u)

    d = sub.add_parser(
        "demo",
        help="DreamBooth (with and without prior) and Textual Inversion on the toy-world model, measured",
    )
    d.add_argument("--output-dir", default="demo-output", help="where the demo writes (default: demo-output)")
    d.add_argument("--max-steps", type=_positive_int, default=1000, help="training steps of each method (1000)")
    d.add_argument("--images", type=_positive_int, default=16, help="images per prompt (16)")
    d.add_argument("--guidance", type=float, default=5.0, help="guidance scale (5)")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    _add_local_files_only(d)
    return p


def _add_local_files_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local-files-only",
        action="store_true",
        help="never touch the network: models and extractors come from local folders or the hub cache "
        "(as HF_HUB_OFFLINE=1)",
    )


def plain_config(ns: argparse.Namespace, cls: type):
    """defaults < --config file < flags."""
    return build(cls, load_yaml(ns.config, cls) if ns.config else {}, from_namespace(ns, cls))


def train_config(ns: argparse.Namespace) -> TrainConfig:
    """defaults < the run's saved config (when resuming) < --config file < flags."""
    flags = from_namespace(ns, TrainConfig)
    file_layer = load_yaml(ns.config, TrainConfig) if ns.config else {}
    merged = {**file_layer, **flags}
    saved: dict = {}
    if merged.get("resume") and merged.get("output_dir"):
        saved_file = Path(merged["output_dir"]) / "config.yaml"
        if saved_file.is_file():
            saved = load_yaml(saved_file, TrainConfig)
            saved.pop("resume", None)
            saved.pop("overwrite", None)
    return build(TrainConfig, saved, file_layer, flags)


def generate_config(ns: argparse.Namespace) -> GenerateConfig:
    """defaults < the PNG's settings (--from-image) < --config file < flags; --prompts-file adds prompts."""
    from .formats.pnginfo import settings_from_image
    from .generation import read_prompts_file

    flags = from_namespace(ns, GenerateConfig)
    file_layer = load_yaml(ns.config, GenerateConfig) if ns.config else {}
    merged = {**file_layer, **flags}
    png = (
        settings_from_image(merged["from_image"], merged.get("lora_dir"), find_lora=not merged.get("lora"))
        if merged.get("from_image")
        else {}
    )
    cfg = build(GenerateConfig, png, file_layer, flags)
    if cfg.prompts_file:
        cfg.prompt = cfg.prompt + read_prompts_file(cfg.prompts_file)
    if cfg.lora and not cfg.no_selection:
        apply_selection(cfg, given={**png, **file_layer, **flags})
    return cfg


def apply_selection(cfg: GenerateConfig, given: dict) -> None:
    """`--lora RUN` with RUN/selection.json: the chosen checkpoint, and its scale and guidance
    where they were not given."""
    from .evaluation.select import selected

    sel = selected(cfg.lora)
    if sel is None:
        return
    cfg.lora = sel["checkpoint"]
    for key in ("lora_scale_unet", "guidance"):
        if key not in given:
            setattr(cfg, key, sel[key])
    print(
        f"using {Path(sel['checkpoint'])} (step {sel['step']}, LoRA scale {cfg.lora_scale_unet:g}, guidance "
        f"{cfg.guidance:g}) as recorded by `dreambooth select`; --no-selection uses the final weights",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed, one line)
        return int(e.code or 0)
    # transformers warns at import about image processors we never use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if getattr(ns, "local_files_only", False):
        from .models import go_offline

        go_offline()
    from .training.distributed import LAUNCHED_VAR, rank_from_env

    rank = rank_from_env()  # in a multi-process run the main process (rank 0) speaks for all
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    for name in ("httpx", "httpx2", "httpcore"):  # the hub client's every request, at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if ns.command in CONFIG_COMMANDS:
            cls, _, _, runner = CONFIG_COMMANDS[ns.command]
            make = {"train": train_config, "generate": generate_config}.get(ns.command, lambda n: plain_config(n, cls))
            module, func = runner.split(":")
            result = getattr(importlib.import_module(f".{module}", __package__), func)(make(ns))
            lines = result if isinstance(result, list) else [result] if isinstance(result, Path) else []
            for line in lines if rank == 0 and not os.environ.get(LAUNCHED_VAR) else []:
                print(line)  # (a process started by --num-processes leaves it to the command that started it)
        elif ns.command == "tiny-model":
            from .tiny import build_tiny_pipeline

            out = Path(ns.out)
            if out.exists() and any(out.iterdir()):
                raise UserError(f"tiny-model {out}: folder exists and is not empty")
            print(build_tiny_pipeline(out, seed=ns.seed, arch=ns.arch))
        elif ns.command == "check-data":
            from .data.images import check_data_report

            text, ok = check_data_report(ns.dir)
            print(text)
            return 0 if ok else 2
        elif ns.command == "export":
            from .export import run_export

            print(run_export(ns.lora, ns.out, ns.format, ns.overwrite, ns.model, ns.dtype, ns.dora_for))
        elif ns.command == "sweep":
            from .sweep import SweepConfig, run_sweep

            fields = {f.name for f in dataclasses.fields(SweepConfig)}
            failed = run_sweep(SweepConfig(**{k: v for k, v in vars(ns).items() if k in fields}))
            if failed:
                print(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs: logs/NAME.log)", file=sys.stderr)
                return 1
        elif ns.command == "ui":
            from .ui.app import UIConfig, run_ui

            fields = {f.name for f in dataclasses.fields(UIConfig)}
            run_ui(UIConfig(**{k: v for k, v in vars(ns).items() if k in fields}))
        elif ns.command == "demo":
            from .demo import run_demo

            run_demo(
                Path(ns.output_dir),
                max_steps=ns.max_steps,
                overwrite=ns.overwrite,
                images=ns.images,
                guidance=ns.guidance,
            )
    except UserError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if rank == 0:
            print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except SaveIncomplete as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except ProcessesFailed as e:  # a process killed by a signal: 128 + its number, as a shell says
        from .children import exit_code

        return exit_code(e.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
