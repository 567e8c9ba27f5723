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
from .config import TrainConfig, add_arguments, build, from_namespace, load_yaml
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
