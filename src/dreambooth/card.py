"""The model card: a README.md in every run folder saying what was trained, on what, how, how well,
and how to load it in diffusers, AUTOMATIC1111 and ComfyUI. Written when training finishes and
rewritten by `select`; built only from the files the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from . import io

CARD = "README.md"


def model_card(run: Path) -> str:
    """The card's Markdown for a run folder (pure apart from reading the run's own files)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    status = _json(run / "run.json")
    selection = _json(run / "selection.json")
    method = cfg.get("method", "lora")
    model = cfg.get("model", "?")
    prompt = cfg.get("instance_prompt", "")
    photos = _count(cfg.get("instance_dir"))
    if cfg.get("concepts"):  # several subjects: each concept's prompt
        from .data.concepts import load_concepts

        try:
            concepts = load_concepts(cfg["concepts"], 1)
            prompt = "; ".join(c.instance_prompt for c in concepts)
            photos = " + ".join(_count(c.instance_dir) for c in concepts)
        except Exception:  # the file may have moved since training
            prompt, photos = f"the concepts of {cfg['concepts']}", "the"
    trigger = cfg.get("token") if method == "textual-inversion" else prompt
    lines = [
        "---",
        yaml.safe_dump(
            {
                "base_model": model,
                "library_name": "diffusers",
                "tags": ["text-to-image", "dreambooth", "stable-diffusion", method],
                "instance_prompt": prompt,
            },
            sort_keys=False,
        ).strip(),
        "---",
        "",
        f"# {run.name}",
        "",
        f"DreamBooth ({_method_name(method)}) of `{model}` on {photos} photos, "
        f"trained for {status.get('step', cfg.get('max_steps'))} steps "
        f"(status: {status.get('status', 'unknown')}).",
        "",
        f"- Trigger: `{trigger}`"
        + (
            f"; class prompt `{cfg['class_prompt']}` (prior preservation, lambda {cfg.get('prior_loss_weight')})"
            if cfg.get("class_prompt")
            else ""
        ),
        f"- Learning rate {cfg.get('learning_rate')} ({cfg.get('lr_scheduler')}, {cfg.get('lr_warmup_steps')} warmup "
        f"steps), batch {cfg.get('batch_size')}, resolution {cfg.get('resolution')}, seed {cfg.get('seed')}",
    ]
    if method == "lora":
        lines.append(
            f"- LoRA rank {cfg.get('rank')}, alpha {cfg.get('lora_alpha')}, on {cfg.get('lora_targets')}"
            + (f"; text encoder too (lr {cfg.get('text_encoder_lr')})" if cfg.get("train_text_encoder") else "")
        )
    grid = run / "validation" / "grid.png"
    if grid.is_file():
        lines += ["", "## Samples", "", "![validation images](validation/grid.png)"]
    if selection:
        rec = {k: selection.get(k) for k in ("checkpoint", "step", "lora_scale_unet", "guidance", "metrics")}
        lines += [
            "",
            "## Measured",
            "",
            "Recommended by `dreambooth select` (see selection/selection.md for every candidate):",
            "",
            "```json",
            json.dumps(rec, indent=2),
            "```",
        ]
    lines += ["", "## Use", "", *_usage(run, cfg, method, trigger)]
    lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def write_card(run: Path) -> Path:
    path = Path(run) / CARD
    io.write_text(path, model_card(Path(run)))
    return path


def _usage(run: Path, cfg: dict, method: str, trigger: str) -> list[str]:
    from .models import builtin_path

    model = cfg.get("model", "?")
    model = str(builtin_path(model) or model)  # stock diffusers knows no built-in names: their folder
    load = f'StableDiffusionPipeline.from_pretrained("{model}")'
    if Path(model).suffix.lower() == ".safetensors":  # a single-file checkpoint
        config = cfg.get("model_config")
        load = f'StableDiffusionPipeline.from_single_file("{model}"' + (f', config="{config}")' if config else ")")
    if method == "textual-inversion":
        return [
            "```python",
            "from diffusers import StableDiffusionPipeline",
            f"pipe = {load}",
            f'pipe.load_textual_inversion("{run}", weight_name="learned_embeds.safetensors", token="{trigger}")',
            f'pipe("a photo of a {trigger}").images[0]',
            "```",
            "",
            "AUTOMATIC1111: copy learned_embeds.safetensors to `embeddings/` as `<name>.safetensors`, then write",
            "that name in the prompt. ComfyUI: put it in `models/embeddings/` and write `embedding:<name>`.",
        ]
    if method == "full":
        return [
            "```python",
            "from diffusers import StableDiffusionPipeline",
            f'pipe = StableDiffusionPipeline.from_pretrained("{run}")',
            f'pipe("{trigger}").images[0]',
            "```",
        ]
    dora = []
    if cfg.get("use_dora"):
        dora = [
            "",
            f"DoRA: the kohya file is written for {cfg.get('dora_for') or 'comfyui'} (`--dora-for`; comfyui also "
            "serves Forge, lycoris LyCORIS), where it merges as peft does; AUTOMATIC1111 merges DoRA per input "
            "channel and cannot load this run right.",
        ]
    return [
        "```python",
        "from diffusers import StableDiffusionPipeline",
        f"pipe = {load}",
        f'pipe.load_lora_weights("{run}")  # pytorch_lora_weights.safetensors',
        f'pipe("{trigger}", guidance_scale=5).images[0]',
        "```",
        "",
        f'or `dreambooth generate --model {model} --lora {run} --prompt "{trigger}"`'
        + (f" --model-config {cfg['model_config']}" if cfg.get("model_config") else "")
        + ".",
        "",
        f"AUTOMATIC1111 and ComfyUI: `dreambooth export --lora {run} {run.name}.safetensors` writes kohya's layout;",
        "put it in `models/Lora/` and write `<lora:" + run.name + ":1>` in the prompt (AUTOMATIC1111) or load it",
        "with a LoraLoader node (ComfyUI).",
        *dora,
    ]


def _method_name(method: str) -> str:
    return {"lora": "LoRA", "full": "full fine-tuning", "textual-inversion": "Textual Inversion"}.get(method, method)


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
