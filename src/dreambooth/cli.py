"""The `dreambooth` command: parses, validates, and calls one function per command.

Nothing here imports torch, so `dreambooth --help` answers at once.
"""

from __future__ import annotations

import argparse
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
    add_arguments,
    build,
    from_namespace,
    load_yaml,
)
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming the input) and exit code 2, and a flag is never
    guessed from a prefix (a typo such as --learning-rat must be an error)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dreambooth",
        description="Teach a text-to-image diffusion model a new subject from a few photos (DreamBooth).",
    )
    p.add_argument("--version", action="version", version=f"dreambooth {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="fine-tune a model on photos of one subject",
        description="Fine-tune a model on photos of one subject. Flags override --config.",
    )
    t.add_argument("--config", help="YAML file whose keys are the flags' names (learning_rate: 1e-4)")
    add_arguments(t, TrainConfig)

    g = sub.add_parser(
        "generate",
        help="generate images with a base model and a trained LoRA",
        description="Generate images; every PNG carries its settings (AUTOMATIC1111 'parameters').",
    )
    g.add_argument("--config", help="YAML file whose keys are the flags' names")
    add_arguments(g, GenerateConfig)

    x = sub.add_parser(
        "grid",
        help="X/Y/Z comparison grids over any generation setting, checkpoints and runs",
        description="X/Y/Z grids: --x guidance=3,5,7.5 --y lora-scale-unet=0.4,0.7,1.0 --z seed=0-3. "
        "Axes: any generate setting, lora=RUN,... or checkpoint=STEP,...; ranges a-b or a-b:step.",
    )
    x.add_argument("--config", help="YAML file whose keys are the flags' names")
    add_arguments(x, GridConfig)

    e = sub.add_parser(
        "evaluate",
        help="score generated images with DINO, CLIP-I, CLIP-T, PRES, DIV (the paper's metrics)",
        description="Score --generated images against --real photos, or with --model (and --lora) run "
        "the whole DreamBench protocol: 4 images per prompt plus class images, then the scores.",
    )
    e.add_argument("--config", help="YAML file whose keys are the flags' names")
    add_arguments(e, EvaluateConfig)

    c = sub.add_parser(
        "select",
        help="score every checkpoint of a run and recommend one (and its scale, guidance)",
        description="Evaluate every checkpoint of a run (x --scales x --guidances) on a DreamBench prompt "
        "subset, mark the DINO/CLIP-T front, recommend one; writes RUN/selection.json and RUN/selection/.",
    )
    c.add_argument("--config", help="YAML file whose keys are the flags' names")
    add_arguments(c, SelectConfig)

    k = sub.add_parser(
        "compare",
        help="the paper's Table 1: train each method on each subject, generate, evaluate",
        description="For each subject and method: train with the method's defaults, generate 4 images per "
        "DreamBench prompt, evaluate; a table beside the paper's rows, per-subject rows, method x prompt grids.",
    )
    k.add_argument("--config", help="YAML file whose keys are the flags' names")
    add_arguments(k, CompareConfig)

    m = sub.add_parser("tiny-model", help="write a tiny random Stable Diffusion pipeline folder (offline)")
    m.add_argument("out", help="folder to write")
    m.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("demo", help="train a short run on the bundled example subject and write a before/after grid")
    d.add_argument("--output-dir", default="demo-output", help="where the demo writes (default: demo-output)")
    d.add_argument("--max-steps", type=int, default=300, help="training steps (default: 300)")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    return p


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
    from .generation import read_prompts_file
    from .pnginfo import settings_from_image

    flags = from_namespace(ns, GenerateConfig)
    file_layer = load_yaml(ns.config, GenerateConfig) if ns.config else {}
    merged = {**file_layer, **flags}
    png = settings_from_image(merged["from_image"]) if merged.get("from_image") else {}
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if ns.command == "train":
            from .training.loop import train

            cfg = train_config(ns)
            out = train(cfg)
            print(f"done: weights in {out}")
        elif ns.command == "generate":
            from .generation import run_generate

            for path in run_generate(generate_config(ns)):
                print(path)
        elif ns.command == "grid":
            from .grid import run_grid

            flags = from_namespace(ns, GridConfig)
            file_layer = load_yaml(ns.config, GridConfig) if ns.config else {}
            print(run_grid(build(GridConfig, file_layer, flags)))
        elif ns.command == "evaluate":
            from .evaluation.evaluate import run_evaluate

            flags = from_namespace(ns, EvaluateConfig)
            file_layer = load_yaml(ns.config, EvaluateConfig) if ns.config else {}
            run_evaluate(build(EvaluateConfig, file_layer, flags))
        elif ns.command == "select":
            from .evaluation.select import run_select

            flags = from_namespace(ns, SelectConfig)
            file_layer = load_yaml(ns.config, SelectConfig) if ns.config else {}
            run_select(build(SelectConfig, file_layer, flags))
        elif ns.command == "compare":
            from .compare import run_compare

            flags = from_namespace(ns, CompareConfig)
            file_layer = load_yaml(ns.config, CompareConfig) if ns.config else {}
            print(run_compare(build(CompareConfig, file_layer, flags)))
        elif ns.command == "tiny-model":
            from .tiny import build_tiny_pipeline

            out = Path(ns.out)
            if out.exists() and any(out.iterdir()):
                raise UserError(f"tiny-model {out}: folder exists and is not empty")
            print(build_tiny_pipeline(out, seed=ns.seed))
        elif ns.command == "demo":
            from .demo import run_demo

            run_demo(Path(ns.output_dir), max_steps=ns.max_steps, overwrite=ns.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
