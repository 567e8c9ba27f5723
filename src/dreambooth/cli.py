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
    CheckDataConfig,
    CompareConfig,
    DemoConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    GridConfig,
    LoraBakeConfig,
    LoraExtractConfig,
    LoraMergeConfig,
    LoraResizeConfig,
    SelectConfig,
    SweepConfig,
    TinyModelConfig,
    TrainConfig,
    UIConfig,
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


class _IntermixedParser(_Parser):
    """Positionals around flags (`lora merge A B --weights 0.7,0.3 OUT`): argparse's intermixed parsing
    (which calls parse_known_args itself, hence the guard)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


@dataclasses.dataclass(frozen=True)
class Command:
    """A command: its config dataclass (whose fields are its flags), what it is for, and its runner
    ("module:function", imported only when the command runs, so parsing imports no torch). The runner
    takes the config and returns an exit code, or what to print (a path or a list of them)."""

    config: type
    help: str
    description: str | None
    runner: str
    config_file: bool = True  # a --config FILE whose keys are the flags (learning_rate: 1e-4)
    subcommands: dict | None = None  # a group (`dreambooth lora resize`): its commands, by name


COMMANDS = {
    "train": Command(
        TrainConfig,
        "fine-tune a model on photos of one subject (LoRA, full, or textual inversion)",
        "Fine-tune a model on photos of one subject. Flags override --config.",
        "training.loop:train",
    ),
    "generate": Command(
        GenerateConfig,
        "generate images with a base model and a trained LoRA or embedding",
        "Generate images; every PNG carries its settings (AUTOMATIC1111 'parameters').",
        "generation:run_generate",
    ),
    "grid": Command(
        GridConfig,
        "X/Y/Z comparison grids over any generation setting, checkpoints and runs",
        "X/Y/Z grids: --x guidance=3,5,7.5 --y lora-scale-unet=0.4,0.7,1.0 --z seed=0-3. "
        "Axes: any generate setting, lora=RUN,... or checkpoint=STEP,...; ranges a-b or a-b:step.",
        "grid:run_grid",
    ),
    "evaluate": Command(
        EvaluateConfig,
        "score generated images with DINO, CLIP-I, CLIP-T, PRES, DIV (the paper's metrics)",
        "Score --generated images against --real photos, or with --model (and --lora) run the whole "
        "DreamBench protocol: 4 images per prompt plus class images, then the scores.",
        "evaluation.evaluate:run_evaluate",
    ),
    "select": Command(
        SelectConfig,
        "score every checkpoint of a run and recommend one (and its scale, guidance)",
        "Evaluate every checkpoint of a run (x --scales x --guidances) on a DreamBench prompt subset, mark "
        "the DINO/CLIP-T front, recommend one; writes RUN/selection.json and RUN/selection/.",
        "evaluation.select:run_select",
    ),
    "compare": Command(
        CompareConfig,
        "the paper's Table 1: train each method on each subject, generate, evaluate",
        "For each subject and method: train with the method's defaults, generate 4 images per DreamBench "
        "prompt, evaluate; a table beside the paper's rows, per-subject rows, method x prompt grids.",
        "compare:run_compare",
    ),
    "tiny-model": Command(
        TinyModelConfig,
        "write a tiny random Stable Diffusion pipeline folder (offline)",
        None,
        "tiny:tiny_model_command",
        config_file=False,
    ),
    "check-data": Command(
        CheckDataConfig,
        "say of every file in a photo folder whether training can use it, and how",
        "Decode every file in DIR as training would and print, per file, whether it is used (and how: EXIF "
        "orientation, transparency, animation, 16-bit, CMYK), rejected (and why) or ignored. Exit code 0 when "
        "every image is usable, 2 when any is rejected.",
        "data.images:check_data_command",
        config_file=False,
    ),
    "export": Command(
        ExportConfig,
        "write a trained LoRA in kohya's layout (AUTOMATIC1111, ComfyUI, sd-scripts), or a model as one file",
        "Write a run's LoRA (a run folder, a checkpoint folder or a .safetensors file) in the layout of kohya's "
        "sd-scripts, which AUTOMATIC1111 and ComfyUI load: lora_unet_*/lora_te_* keys with lora_down/lora_up/"
        "alpha, and kohya's ss_* metadata. With --format single-file, write a whole model (--model: a diffusers "
        "folder such as a full fine-tune's run) as one checkpoint in the original Stable Diffusion layout.",
        "export:run_export",
        config_file=False,
    ),
    "sweep": Command(
        SweepConfig,
        "train one run per combination of settings, score every checkpoint, recommend one",
        "Train one run per combination of --vary values (resumable: finished runs are kept, interrupted ones "
        "resumed), then with --evaluate score every run's checkpoints (the paper's metrics through `select`; the "
        "world's oracle on a toy-world model) and write DIR/sweep.md: runs x metrics, metric-over-steps plots, a "
        "grid of the same prompts and seeds across runs, the recommended run.",
        "sweep:sweep_command",
        config_file=False,  # its --config is the training config every run starts from
    ),
    "ui": Command(
        UIConfig,
        "a local web page to generate, compare in grids, train (stop, resume) and see a run's scores",
        "Open the web UI (Gradio) at http://127.0.0.1:PORT. It lists and starts runs in --projects, trains each "
        "as its own `dreambooth train` process; no path the page names can lead outside that folder (models: "
        "--model, hub ids, or folders inside it). Only this machine can reach it unless --host or --share is given.",
        "ui.app:run_ui",
        config_file=False,
    ),
    "lora": Command(
        None,
        "LoRA files without training: resize, merge, extract from a full fine-tune, bake into a model",
        "LoRA files rewritten without training, in diffusers' layout (export --format kohya writes kohya's).",
        "",
        config_file=False,
        subcommands={
            "resize": Command(
                LoraResizeConfig,
                "a LoRA at a lower rank (SVD of each layer's product), with the share of each layer kept",
                "Resize RUN-OR-FILE to --rank R by the SVD of each layer's product (the best rank-R approximation); "
                "prints the share of each layer's Frobenius norm kept, as kohya's resize does. To the LoRA's own "
                "rank it is exact.",
                "loratools:run_resize",
                config_file=False,
            ),
            "merge": Command(
                LoraMergeConfig,
                "several LoRAs of one base model into one (ranks concatenated, or SVD to --rank)",
                "Merge LORA... into OUT: with the ranks concatenated the merged file adds exactly the weighted sum "
                "of their products (--weights 0.7,0.3); --rank R resizes that sum by SVD.",
                "loratools:run_merge",
                config_file=False,
            ),
            "extract": Command(
                LoraExtractConfig,
                "a LoRA from a full fine-tune: each changed linear layer's change through SVD to --rank",
                "Extract a LoRA of --rank from --tuned (a full fine-tune of --base): every linear layer of the "
                "denoiser and text encoders whose weights changed, its change through SVD (the best rank-R "
                "approximation), as kohya's extract_lora_from_models does; prints each layer's share kept.",
                "loratools:run_extract",
                config_file=False,
            ),
            "bake": Command(
                LoraBakeConfig,
                "a model with a LoRA fused into its weights: a diffusers folder or one checkpoint file",
                "Fuse --lora into --model's weights at --scale (stock diffusers' fuse_lora) and write OUT: a "
                "diffusers folder, or for OUT.safetensors one checkpoint in the original layout (AUTOMATIC1111, "
                "ComfyUI).",
                "loratools:run_bake",
                config_file=False,
            ),
        },
    ),
    "demo": Command(
        DemoConfig,
        "DreamBooth (with and without prior) and Textual Inversion on the toy-world model, measured",
        None,
        "demo:run_demo",
        config_file=False,
    ),
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dreambooth",
        description="Teach a text-to-image diffusion model a new subject from a few photos (DreamBooth).",
    )
    p.add_argument("--version", action="version", version=f"dreambooth {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        c = sub.add_parser(name, help=command.help, description=command.description or command.help)
        if command.subcommands:
            group = c.add_subparsers(
                dest="subcommand", required=True, metavar="COMMAND", parser_class=_IntermixedParser
            )
            for sub_name, sub_command in command.subcommands.items():
                s = group.add_parser(sub_name, help=sub_command.help, description=sub_command.description)
                add_arguments(s, sub_command.config)
            continue
        if command.config_file:
            c.add_argument("--config", help="YAML file whose keys are the flags' names (learning_rate: 1e-4)")
        add_arguments(c, command.config)
        c.add_argument(
            "--local-files-only",
            action="store_true",
            help="never touch the network: models and extractors come from local folders or the hub cache "
            "(as HF_HUB_OFFLINE=1)",
        )
    return p


def plain_config(ns: argparse.Namespace, cls: type, config_file: bool = True):
    """defaults < --config file < flags."""
    file_layer = load_yaml(ns.config, cls) if config_file and ns.config else {}
    return build(cls, file_layer, from_namespace(ns, cls))


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


def _run(ns: argparse.Namespace, command: Command):
    """Build the command's config (train and generate have more layers), check it, run it."""
    make = {"train": train_config, "generate": generate_config}.get(ns.command)
    cfg = make(ns) if make else plain_config(ns, command.config, command.config_file)
    if not make:
        cfg.validate()  # (train and generate check their configs where they run, after more layers)
    module, func = command.runner.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), func)(cfg)


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
        command = COMMANDS[ns.command]
        result = _run(ns, command.subcommands[ns.subcommand] if command.subcommands else command)
        if isinstance(result, int):
            return result
        lines = result if isinstance(result, list) else [result] if isinstance(result, Path) else []
        for line in lines if rank == 0 and not os.environ.get(LAUNCHED_VAR) else []:
            print(line)  # (a process started by --num-processes leaves it to the command that started it)
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
