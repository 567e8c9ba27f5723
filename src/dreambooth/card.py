"""The model card: a README.md in every run folder saying what was trained, on what, how, how well,
and how to load it in diffusers, AUTOMATIC1111 and ComfyUI (what the method says of itself). Written
when training finishes and rewritten by `select`; built only from the files the run wrote."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from . import io, runs

CARD = "README.md"


def model_card(run: Path) -> str:
    """The card's Markdown for a run folder (pure apart from reading the run's own files)."""
    from .config import saved_config
    from .methods import get_method

    cfg = saved_config(run)
    if cfg is None:
        return f"# {run.name}\n\nA run whose config.yaml cannot be read.\n"
    method = get_method(cfg)
    pipeline = _pipeline(cfg.model)
    status = runs.read_status(run)
    prompt, photos = _subjects(cfg)
    trigger = method.trigger() if not cfg.concepts else prompt
    front = {"base_model": cfg.model, "library_name": "diffusers", "tags": ["text-to-image", "dreambooth",
             "stable-diffusion", cfg.method], "instance_prompt": prompt}  # fmt: skip
    prior = (
        f"; class prompt `{cfg.class_prompt}` (prior preservation, lambda {cfg.prior_loss_weight})"
        if cfg.class_prompt
        else ""
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {run.name}",
        "",
        f"DreamBooth ({method.label}) of `{cfg.model}` on {photos} photos, trained for "
        f"{status.get('step', cfg.max_steps)} steps (status: {status.get('status', 'unknown')}).",
        "",
        f"- Trigger: `{trigger}`" + prior,
        f"- Learning rate {cfg.learning_rate} ({cfg.lr_scheduler}, {cfg.lr_warmup_steps} warmup steps), batch "
        f"{cfg.batch_size}, resolution {cfg.resolution}, seed {cfg.seed}",
        *method.card_lines(),
        *_samples_and_scores(run),
        "",
        "## Use",
        "",
        *method.usage(run, pipeline, _load(cfg, pipeline), trigger),
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(run: Path) -> Path:
    path = Path(run) / CARD
    io.write_text(path, model_card(Path(run)))
    return path


def _pipeline(model: str) -> str:
    """The diffusers pipeline class of the model's family (Stable Diffusion's where its configs are gone)."""
    from .errors import UserError
    from .models import family_of

    try:
        return family_of(model).pipeline
    except UserError:
        return "StableDiffusionPipeline"


def _subjects(cfg) -> tuple[str, str]:
    """(the instance prompt(s), how many photos) of the run's subject, or of each of its concepts."""
    if not cfg.concepts:
        return cfg.instance_prompt or "", _count(cfg.instance_dir)
    from .data.concepts import load_concepts

    try:
        concepts = load_concepts(cfg.concepts, 1)
    except Exception:  # the file may have moved since training
        return f"the concepts of {cfg.concepts}", "the"
    return "; ".join(c.instance_prompt for c in concepts), " + ".join(_count(c.instance_dir) for c in concepts)


def _samples_and_scores(run: Path) -> list[str]:
    lines = []
    if (run / "validation" / "grid.png").is_file():
        lines += ["", "## Samples", "", "![validation images](validation/grid.png)"]
    selection = _json(run / "selection.json")
    if selection:
        rec = {k: selection.get(k) for k in ("checkpoint", "step", "lora_scale_unet", "guidance", "metrics")}
        lines += ["", "## Measured", "", "Recommended by `dreambooth select` (see selection/selection.md for every "
                  "candidate):", "", "```json", json.dumps(rec, indent=2), "```"]  # fmt: skip
    return lines


def _load(cfg, pipeline: str) -> str:
    """How stock diffusers loads the run's base model with its family's pipeline class."""
    from .models import builtin_path

    model = str(builtin_path(cfg.model) or cfg.model)  # stock diffusers knows no built-in names: their folder
    if Path(model).suffix.lower() == ".safetensors":  # a single-file checkpoint
        config = f', config="{cfg.model_config}")' if cfg.model_config else ")"
        return f'{pipeline}.from_single_file("{model}"' + config
    return f'{pipeline}.from_pretrained("{model}")'


def _count(folder: str | None) -> str:
    from .data.images import list_images

    try:
        return str(len(list_images(folder))) if folder else "?"
    except Exception:  # the photos may have moved since training
        return "the"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
