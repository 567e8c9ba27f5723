"""`dreambooth demo`: the paper's experiment on the bundled toy-world model, in a few minutes on a CPU.

It trains DreamBooth LoRA with and without prior preservation and Textual Inversion on five
"photos" of a subject the base model never saw (an orange heart with purple dots and a black
outline; --subject picks one of the two others), asks each model and the base model the same prompts with the same seeds, and measures the
images with the toy world's oracle: subject fidelity, recontextualisation, class leakage and
diversity (see dreambooth.toyworld.experiment). It prints the table and writes a grid.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)


def example_subject() -> Path:
    """Four DreamBench photos of a dog (see assets/dog/ATTRIBUTION.md), for tests and examples."""
    return Path(str(files("dreambooth") / "assets" / "dog"))


def run_demo(demo, progress: bool = True) -> dict:
    """`dreambooth demo` (config.DemoConfig): the toy-world experiment, its table printed."""
    from .errors import UserError
    from .toyworld.experiment import ExperimentConfig, is_toy_model, run_experiment
    from .toyworld.pipeline import MARKER

    if not is_toy_model(demo.model):
        raise UserError(
            f"--model {demo.model}: not a toy-world model (toyworld, toyworld-flux, or a folder that `python -m "
            f"dreambooth.toyworld.train OUT` wrote, which has {MARKER}); the oracle reads only the world's images"
        )
    out = Path(demo.output_dir)
    cfg = ExperimentConfig(
        output_dir=out,
        max_steps=demo.max_steps,
        images=demo.images,
        guidance=demo.guidance,
        overwrite=demo.overwrite,
        subject=demo.subject,
        model=demo.model,
    )
    summary = run_experiment(cfg, progress=progress)
    print(
        "\nDreamBooth in the toy world (the oracle's measures, share of images; see README):\n\n"
        f"{summary['table']}\n\n"
        f"  grid:    {summary['grid']}\n"
        f"  results: {out / 'toyworld_results.json'}\n"
        f"  runs:    {out / 'runs'}"
    )
    return 0
