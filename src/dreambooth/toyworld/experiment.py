"""The paper's experiment in the toy world, measured by the world's oracle (`dreambooth demo`).

Four models, each asked the same prompts with the same seeds:
- the base model (`--model toyworld`),
- DreamBooth LoRA (UNet + text encoder) without prior preservation,
- the same with prior preservation (class images of "a photo of a heart" from the base model),
- Textual Inversion of a new token.

Measured, in the spirit of the paper's Tables 1 and 3 (the numbers are the oracle's, not DINO or CLIP):
- subject fidelity: share of "a photo of sks heart" images the oracle reads as the subject (heart,
  orange, black outline, purple dots), and each feature's share;
- recontextualisation: for "a photo of sks heart on a {green, blue, yellow, gray} background", the
  share with the requested background, with the subject kept, and with both;
- class leakage (PRES-like): in "a photo of a heart" images, the mean share of the subject's three
  distinctive features (orange, outline, purple dots) present, and the share read as the subject;
- class diversity: distinct (colour, pattern, background) readings among those images, as a share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib.resources import files
from pathlib import Path

from .. import io
from ..config import SamplingConfig, TrainConfig
from ..data.images import list_images, load_rgb
from ..generation import Engine, image_settings
from ..methods.textual_inversion import TextualInversion
from ..sheets import labelled_grid
from ..training.preflight import preflight
from .subject import BACKGROUND, RECONTEXT, read_subject

log = logging.getLogger(__name__)

MODEL = "toyworld"
IDENTIFIER, NOUN = "sks", "heart"
TI_TOKEN = "<sks-heart>"
ROWS = ("base", "dreambooth", "dreambooth_prior", "textual_inversion")
ROW_LABELS = {
    "base": "base model",
    "dreambooth": "DreamBooth LoRA, no prior",
    "dreambooth_prior": "DreamBooth LoRA + prior",
    "textual_inversion": "Textual Inversion",
}


def subject_dir() -> Path:
    """The subject's five bundled photos (rendered by dreambooth.toyworld.subject.photos)."""
    return Path(str(files("dreambooth") / "assets" / "toyworld-subject"))


@dataclasses.dataclass
class ExperimentConfig:
    output_dir: Path
    max_steps: int = 1000  # DreamBooth LoRA
    ti_steps: int = 1000  # 0: no Textual Inversion row
    images: int = 16  # per prompt (recontextualisation: half of it per background)
    num_class_images: int = 64
    guidance: float = 5.0
    steps: int = 25  # denoising steps
    seed: int = 0
    overwrite: bool = False


def subject_prompt(row: str, background: str | None = None, thing: str | None = None) -> str:
    """The subject's prompt for a row of the table (thing: how the prompt names the subject instead)."""
    thing = thing or (f"a {TI_TOKEN}" if row == "textual_inversion" else f"{IDENTIFIER} {NOUN}")
    return f"a photo of {thing}" + (f" on a {background} background" if background else "")


CLASS_PROMPT = f"a photo of a {NOUN}"


def train_configs(cfg: ExperimentConfig) -> dict[str, TrainConfig]:
    """The three trainings, with defaults chosen for this world (a 64 px model ~100x smaller than SD)."""
    out = cfg.output_dir
    common = dict(
        model=MODEL,
        instance_dir=str(subject_dir()),
        instance_prompt=subject_prompt("dreambooth"),
        seed=cfg.seed,
        checkpoint_every=cfg.max_steps,
        overwrite=cfg.overwrite,
    )
    lora = dict(
        common,
        method="lora",
        max_steps=cfg.max_steps,
        learning_rate=1e-3,
        lr_warmup_steps=cfg.max_steps // 10,
        rank=8,
        lora_targets="attn,ff,conv,proj",  # outline and dots are spatial: attention alone learned neither
        train_text_encoder=True,
        text_encoder_lr=5e-4,
    )
    configs = {
        "dreambooth": TrainConfig(**lora, output_dir=str(out / "runs" / "dreambooth")),
        "dreambooth_prior": TrainConfig(
            **lora,
            output_dir=str(out / "runs" / "dreambooth_prior"),
            class_prompt=CLASS_PROMPT,
            class_dir=str(out / "class-images"),
            num_class_images=cfg.num_class_images,
            class_inference_steps=cfg.steps,
            prior_loss_weight=0.5,  # 1.0 (the paper's) kept the class as well, with less of the subject
        ),
        "textual_inversion": TrainConfig(
            **dict(common, checkpoint_every=cfg.ti_steps),
            method=TextualInversion.name,
            output_dir=str(out / "runs" / "textual_inversion"),
            token=TI_TOKEN,
            initializer_token=NOUN,
            max_steps=cfg.ti_steps,
            learning_rate=5e-2,
            lr_warmup_steps=0,
            lr_scheduler="constant",
        ),
    }
    if cfg.ti_steps == 0:
        del configs["textual_inversion"]
    return configs


def prompts_of(row: str, n: int, thing: str | None = None) -> list[tuple[str, str, list[int]]]:
    """(kind, prompt, seeds) a row is asked: the subject, the subject elsewhere, the class."""
    half = max(1, n // 2)
    out = [("subject", subject_prompt(row, thing=thing), list(range(n)))]
    out += [(f"recontext:{bg}", subject_prompt(row, bg, thing), list(range(half))) for bg in RECONTEXT]
    out.append(("class", CLASS_PROMPT, list(range(n))))
    return out


def score(readings: dict[str, list[dict]]) -> dict:
    """The table's numbers from the oracle's readings, by prompt kind (pure)."""
    subject = readings["subject"]
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    recontext = [(kind.split(":")[1], r) for kind, rs in readings.items() if kind.startswith("recontext:") for r in rs]
    klass = readings["class"]
    distinct = {(r["color"], r["pattern"], r["background"]) for r in klass}
    return {
        "subject_fidelity": mean([r["subject"] for r in subject]),
        "subject_features": {
            "shape": mean([r["shape"] == NOUN for r in subject]),
            "color": mean([r["color"] == "orange" for r in subject]),
            "outline": mean([r["outline"] for r in subject]),
            "purple_dots": mean([r["purple_dots"] for r in subject]),
        },
        "subject_outline": mean([r["outline"] for r in subject]),
        "subject_dots": mean([r["purple_dots"] for r in subject]),
        "subject_color": mean([r["color"] == "orange" for r in subject]),
        "recontext_background": mean([r["background"] == bg for bg, r in recontext]),
        "recontext_subject": mean([r["subject"] for _, r in recontext]),
        "recontext_both": mean([r["background"] == bg and r["subject"] for bg, r in recontext]),
        "class_leakage": mean([(r["color"] == "orange") / 3 + r["outline"] / 3 + r["purple_dots"] / 3 for r in klass]),
        "class_as_subject": mean([r["subject"] for r in klass]),
        "class_shape": mean([r["shape"] == NOUN for r in klass]),
        "class_diversity": len(distinct) / max(1, len(klass)),
    }


COLUMNS = (
    ("subject_fidelity", "subject fidelity"),
    ("subject_outline", "outline"),
    ("subject_dots", "purple dots"),
    ("subject_color", "orange"),
    ("recontext_background", "recontext: background"),
    ("recontext_subject", "recontext: subject kept"),
    ("class_leakage", "class leakage"),
    ("class_diversity", "class diversity"),
)


def table(results: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for row, r in results.items():
        lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(f"{r[key]:.2f}" for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> dict:
    """Train every row's model, ask each the same prompts, and write the table, the grid and the results."""
    trainings = train_configs(cfg)
    train_all(trainings, progress)
    rows = [row for row in ROWS if row == "base" or row in trainings]
    results, grid_rows, col_labels = measure(cfg, trainings, rows)
    grid_path = save_grid(cfg, rows, grid_rows, col_labels)
    return write_summary(cfg, trainings, results, grid_path)


def train_all(trainings: dict[str, TrainConfig], progress: bool) -> None:
    # torch loads here, not at import: sweep and the CLI import this module for its names
    from ..training.loop import train

    for tcfg in trainings.values():
        preflight(tcfg)  # every refusal (e.g. an earlier demo without --overwrite) before any work
    for row, tcfg in trainings.items():
        log.info("training %s (%d steps)", ROW_LABELS[row], tcfg.max_steps)
        train(tcfg, progress=progress)


def measure(cfg: ExperimentConfig, trainings: dict[str, TrainConfig], rows: list[str]):
    """Each row's scores, its images for the grid (two of the subject and of the class, one of each
    recontextualisation) and the grid's column labels (the prompts)."""
    engine = Engine()
    sampling = SamplingConfig(model=MODEL, steps=cfg.steps, guidance=cfg.guidance)
    extra = {"base": {}} | {
        row: {"embedding" if row == "textual_inversion" else "lora": t.output_dir} for row, t in trainings.items()
    }
    results, grid_rows, col_labels = {}, [], []
    for row in rows:
        readings, firsts, labels = {}, [], []
        for kind, prompt, seeds in prompts_of(row, cfg.images):
            batch = [image_settings(sampling, engine, prompt, cfg.seed + s, **extra[row]) for s in seeds]
            images = engine.render(batch)
            readings[kind] = [read_subject(im) for im in images]
            shown = 2 if kind in ("subject", "class") else 1
            firsts += images[:shown]
            labels += [prompt] * shown
        results[row] = score(readings)
        grid_rows.append(firsts)
        if row == "base":
            col_labels = labels
        log.info(
            "%s: %s",
            ROW_LABELS[row],
            json.dumps({k: round(v, 3) for k, v in results[row].items() if k != "subject_features"}),
        )
    return results, grid_rows, col_labels


def save_grid(cfg: ExperimentConfig, rows: list[str], grid_rows: list[list], col_labels: list[str]) -> Path:
    """The training photos above each row's images, as OUTPUT_DIR/toyworld_grid.png."""
    photos = [load_rgb(p) for p in list_images(str(subject_dir()))]
    grid = labelled_grid(
        [photos] + grid_rows,
        col_labels=col_labels,
        row_labels=["training photos"] + [ROW_LABELS[r] for r in rows],
        title=f"DreamBooth in the toy world: '{IDENTIFIER} {NOUN}' (TI: '{TI_TOKEN}'), guidance {cfg.guidance}",
        cell=96,
        label_width=150,
    )
    grid_path = cfg.output_dir / "toyworld_grid.png"
    with io.atomic_path(grid_path) as tmp:
        grid.save(tmp, format="PNG")
    return grid_path


def write_summary(cfg: ExperimentConfig, trainings: dict[str, TrainConfig], results: dict, grid_path: Path) -> dict:
    """The results, the table and the settings, as OUTPUT_DIR/toyworld_results.json and toyworld_table.md."""
    md = table(results)
    summary = {
        "results": results,
        "table": md,
        "grid": str(grid_path),
        "settings": {
            "images_per_prompt": cfg.images,
            "guidance": cfg.guidance,
            "denoising_steps": cfg.steps,
            "seed": cfg.seed,
            "trainings": {row: dataclasses.asdict(t) for row, t in trainings.items()},
            "subject_photos_background": BACKGROUND,
        },
    }
    io.write_text(cfg.output_dir / "toyworld_results.json", json.dumps(summary, indent=2, default=str))
    io.write_text(cfg.output_dir / "toyworld_table.md", md + "\n")
    return summary
