"""The paper's experiment in the toy world, measured by the world's oracle (`dreambooth demo`).

Four models, each asked the same prompts with the same seeds:
- the base model (`--model toyworld`),
- DreamBooth LoRA (UNet + text encoder) without prior preservation,
- the same with prior preservation (class images of "a photo of a heart" from the base model),
- Textual Inversion of a new token.

For any of the subjects (toyworld.subject.SUBJECTS: the demo's orange heart with purple dots and a
black outline, a purple square with red stripes, a pink circle with brown dots), measured in the
spirit of the paper's Tables 1 and 3 (the numbers are the oracle's, not DINO or CLIP):
- subject fidelity: share of "a photo of sks heart" images the oracle reads as the subject (shape,
  colour, black outline, pattern colour), each feature's share, and their mean (graded as the paper's
  DINO is: an image with three of the four features counts for part);
- recontextualisation: for "a photo of sks heart on a {green, blue, yellow, gray} background", the
  share with the requested background, with the subject kept, and with both;
- class leakage (PRES-like): in "a photo of a heart" images, the mean share of the subject's three
  distinctive features (colour, outline, pattern colour) present, and the share read as the subject;
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
from ..methods import get_method
from ..methods.textual_inversion import TextualInversion
from ..sheets import labelled_grid
from ..training.preflight import preflight
from .pipeline import MARKER
from .subject import BACKGROUND, DEMO, RECONTEXT, SUBJECTS, Subject

log = logging.getLogger(__name__)

MODEL = "toyworld"
IDENTIFIER, NOUN = "sks", DEMO.noun
ROWS = ("base", "dreambooth", "dreambooth_prior", "textual_inversion")
ROW_LABELS = {
    "base": "base model",
    "dreambooth": "DreamBooth LoRA, no prior",
    "dreambooth_prior": "DreamBooth LoRA + prior",
    "textual_inversion": "Textual Inversion",
}


def is_toy_model(model: str) -> bool:
    """Whether the oracle can read a model's images: a built-in toy-world model's name, or a pipeline
    folder that a toy-world recipe (`python -m dreambooth.toyworld.train`) wrote, which has its MARKER."""
    from ..models import builtin_path

    return ((builtin_path(model) or Path(model)) / MARKER).is_file()


def subject_dir(subject: Subject = DEMO) -> Path:
    """A subject's five bundled photos (rendered by Subject.photos): assets/toyworld-subject for the
    demo's, toyworld-subject-NAME for the others."""
    name = "toyworld-subject" if subject == DEMO else f"toyworld-subject-{subject.noun}"
    return Path(str(files("dreambooth") / "assets" / name))


def subject_of(prompt: str) -> Subject:
    """The subject an instance prompt names by its class noun ("a photo of sks square"), else the demo's."""
    words = prompt.lower().split()
    return next((s for s in SUBJECTS.values() if s.noun in words), DEMO)


def ti_token(subject: Subject) -> str:
    return f"<{IDENTIFIER}-{subject.noun}>"


@dataclasses.dataclass
class ExperimentConfig:
    output_dir: Path
    max_steps: int = 2500  # DreamBooth LoRA, cosine decay: at 1500 (constant) the circle was learned in 38 %
    ti_steps: int | None = None  # None: a fifth of max_steps, 500 (the circle's vectors swamp the
    # background's words from 750 steps on); 0: no Textual Inversion row
    images: int = 16  # per prompt (recontextualisation: half of it per background)
    num_class_images: int = 64
    guidance: float = 5.0
    steps: int = 25  # denoising steps
    seed: int = 0
    overwrite: bool = False
    subject: str = DEMO.noun  # a name of SUBJECTS
    model: str = MODEL  # or "toyworld-flux", the flow-matching twin


def subject_thing(subject: Subject = DEMO) -> str:
    """How the columns' prompts name the subject: "sks heart"."""
    return f"{IDENTIFIER} {subject.noun}"


def subject_prompt(background: str | None = None, thing: str | None = None, subject: Subject = DEMO) -> str:
    """The subject's prompt (thing: how a method names it, its `subject_phrase`; default "sks heart")."""
    thing = thing or subject_thing(subject)
    return f"a photo of {thing}" + (f" on a {background} background" if background else "")


def class_prompt(subject: Subject = DEMO) -> str:
    return f"a photo of a {subject.noun}"


def train_configs(cfg: ExperimentConfig) -> dict[str, TrainConfig]:
    """The three trainings, with defaults chosen for this world (a 64 px model ~100x smaller than SD)."""
    from ..models import family_of

    out = cfg.output_dir
    subject = SUBJECTS[cfg.subject]
    family = family_of(cfg.model)
    ti_steps = max(1, cfg.max_steps // 5) if cfg.ti_steps is None else cfg.ti_steps
    common = dict(
        model=cfg.model,
        instance_dir=str(subject_dir(subject)),
        instance_prompt=subject_prompt(subject=subject),
        seed=cfg.seed,
        checkpoint_every=cfg.max_steps,
        overwrite=cfg.overwrite,
    )
    lora = dict(
        common,
        method="lora",
        max_steps=cfg.max_steps,
        learning_rate=1e-3,
        # 150 warmup steps (a tenth of a shorter run), then a cosine decay to 0: the constant rate of the
        # recipe until 2026-12-06 learned the circle whole with prior only at 2500 steps, where the photos'
        # white came with it (the asked background 0.63); the decay keeps it (1.00; BENCHMARKS.md)
        lr_warmup_steps=min(150, cfg.max_steps // 10),
        lr_scheduler="cosine",
        rank=8,
        # every target group of the family: on the UNet, attention alone learned neither outline nor dots
        lora_targets=",".join(family.lora_target_groups),
        train_text_encoder=True,
        text_encoder_lr=1e-3,  # 5e-4 until 2026-12-06: on the 128-wide model 1e-3 separates "sks square" from "a square"
        # min-SNR weighting (Hang et al., 2023) where the family's objective takes it: less weight on the
        # nearly clean timesteps, more on those that decide shape, colour and pattern; with it the square
        # and the circle are learned with prior preservation too (BENCHMARKS.md)
        snr_gamma=5.0 if family.min_snr else None,
        # where the family draws its timesteps by a density instead (flow matching), the logit-normal one
        # the twin was pretrained with: it learns the heart and the circle whole twice as often as the
        # uniform draw, with the class kept as well or better (BENCHMARKS.md, the twin's demo)
        weighting_scheme="logit_normal" if "logit_normal" in family.weighting_schemes else None,
    )
    configs = {
        "dreambooth": TrainConfig(**lora, output_dir=str(out / "runs" / "dreambooth")),
        "dreambooth_prior": TrainConfig(
            **lora,
            output_dir=str(out / "runs" / "dreambooth_prior"),
            class_prompt=class_prompt(subject),
            class_dir=str(out / "class-images"),
            num_class_images=cfg.num_class_images,
            class_inference_steps=cfg.steps,
            class_guidance=7.5,  # both models' class images as measured (the twin's family default is 1: none)
            # 0.6: every subject kept whole (0.88-1.00) with the class kept (leakage 0.08-0.15; at 0.5 the
            # heart leaked 0.17) and the heart composing (0.69); at 0.75 the heart was learned whole in 0.69 only;
            # 1.0 (the paper's) kept the class as well, with less of the subject (BENCHMARKS.md)
            prior_loss_weight=0.6,
        ),
        "textual_inversion": TrainConfig(
            **dict(common, checkpoint_every=max(1, ti_steps)),
            method=TextualInversion.name,
            output_dir=str(out / "runs" / "textual_inversion"),
            token=ti_token(subject),
            initializer_token=subject.noun,
            max_steps=max(1, ti_steps),
            # 4 vectors at 1.5e-2 for 500 steps: above the base model on every subject (1 vector at 5e-2
            # for 1500 steps, the recipe until 2026-12-06, was not on the square; BENCHMARKS.md)
            num_vectors=4,
            learning_rate=1.5e-2,
            lr_warmup_steps=0,
            lr_scheduler="constant",
        ),
    }
    if ti_steps == 0 or not family.textual_inversion:
        del configs["textual_inversion"]
    return configs


def prompts_of(n: int, thing: str | None = None, subject: Subject = DEMO) -> list[tuple[str, str, list[int]]]:
    """(kind, prompt, seeds) a row is asked: the subject, the subject elsewhere, the class (thing: how the
    row's method names the subject, its `subject_phrase`)."""
    half = max(1, n // 2)
    out = [("subject", subject_prompt(thing=thing, subject=subject), list(range(n)))]
    out += [(f"recontext:{bg}", subject_prompt(bg, thing, subject), list(range(half))) for bg in RECONTEXT]
    out.append(("class", class_prompt(subject), list(range(n))))
    return out


def score(readings: dict[str, list[dict]], subject: Subject = DEMO, photo_background: str = BACKGROUND) -> dict:
    """The table's numbers from the oracle's readings (Subject.read), by prompt kind (pure);
    photo_background: the training photos' background."""
    shown = readings["subject"]
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    recontext = [(kind.split(":")[1], r) for kind, rs in readings.items() if kind.startswith("recontext:") for r in rs]
    klass = readings["class"]
    distinct = {(r["color"], r["pattern"], r["background"]) for r in klass}
    colour = lambda r: r["color"] == subject.color  # noqa: E731
    features = {
        "shape": mean([r["shape"] == subject.shape for r in shown]),
        "color": mean([colour(r) for r in shown]),
        "outline": mean([r["outline"] for r in shown]),
        "pattern_color": mean([r["pattern_color"] for r in shown]),
    }
    return {
        "subject_fidelity": mean([r["subject"] for r in shown]),
        "subject_features": features,
        # graded as DINO is (a near miss counts for part): the mean share of the four features
        "subject_features_mean": sum(features.values()) / len(features),
        "subject_outline": features["outline"],
        "subject_pattern": features["pattern_color"],
        "subject_color": features["color"],
        "subject_photo_background": mean([r["background"] == photo_background for r in shown]),
        "recontext_background": mean([r["background"] == bg for bg, r in recontext]),
        "recontext_subject": mean([r["subject"] for _, r in recontext]),
        "recontext_both": mean([r["background"] == bg and r["subject"] for bg, r in recontext]),
        "class_leakage": mean([colour(r) / 3 + r["outline"] / 3 + r["pattern_color"] / 3 for r in klass]),
        "class_as_subject": mean([r["subject"] for r in klass]),
        "class_shape": mean([r["shape"] == subject.shape for r in klass]),
        "class_diversity": len(distinct) / max(1, len(klass)),
    }


COLUMNS = (
    ("subject_fidelity", "subject fidelity"),
    ("subject_features_mean", "features (mean)"),
    ("subject_outline", "outline"),
    ("subject_pattern", "pattern colour"),
    ("subject_color", "colour"),
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
    results, grid_rows, col_labels, things = measure(cfg, trainings, rows)
    grid_path = save_grid(cfg, rows, grid_rows, col_labels, things)
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
    subject = SUBJECTS[cfg.subject]
    sampling = SamplingConfig(model=cfg.model, steps=cfg.steps, guidance=cfg.guidance)
    methods = {row: get_method(t) for row, t in trainings.items()}
    extra = {"base": {}} | {row: m.sampling(Path(trainings[row].output_dir)) for row, m in methods.items()}
    things = {"base": None} | {row: m.subject_phrase(subject.noun) for row, m in methods.items()}
    results, grid_rows, col_labels = {}, [], []
    for row in rows:
        readings, firsts, labels = {}, [], []
        for kind, prompt, seeds in prompts_of(cfg.images, things[row], subject):
            batch = [image_settings(sampling, engine, prompt, cfg.seed + s, **extra[row]) for s in seeds]
            images = engine.render(batch)
            readings[kind] = [subject.read(im) for im in images]
            shown = 2 if kind in ("subject", "class") else 1
            firsts += images[:shown]
            labels += [prompt] * shown
        results[row] = score(readings, subject)
        grid_rows.append(firsts)
        if row == "base":
            col_labels = labels
        log.info(
            "%s: %s",
            ROW_LABELS[row],
            json.dumps({k: round(v, 3) for k, v in results[row].items() if k != "subject_features"}),
        )
    return results, grid_rows, col_labels, things


def grid_title(cfg: ExperimentConfig, rows: list[str], things: dict) -> str:
    """The grid's title: the model, how the columns name the subject, and how each row whose method names
    it otherwise does (things: row -> its method's `subject_phrase`, None for the base model)."""
    subject = SUBJECTS[cfg.subject]
    default = subject_thing(subject)
    own = "".join(f" ({ROW_LABELS[r]}: '{things[r]}')" for r in rows if things.get(r) not in (None, default))
    return f"DreamBooth in the toy world ({cfg.model}): '{default}'{own}, guidance {cfg.guidance}"


def save_grid(
    cfg: ExperimentConfig, rows: list[str], grid_rows: list[list], col_labels: list[str], things: dict
) -> Path:
    """The training photos above each row's images, as OUTPUT_DIR/toyworld_grid.png."""
    subject = SUBJECTS[cfg.subject]
    photos = [load_rgb(p) for p in list_images(str(subject_dir(subject)))]
    grid = labelled_grid(
        [photos] + grid_rows,
        col_labels=col_labels,
        row_labels=["training photos"] + [ROW_LABELS[r] for r in rows],
        title=grid_title(cfg, rows, things),
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
            "subject": SUBJECTS[cfg.subject].words,
            "model": cfg.model,
            "subject_photos_background": BACKGROUND,
        },
    }
    io.write_text(cfg.output_dir / "toyworld_results.json", json.dumps(summary, indent=2, default=str))
    io.write_text(cfg.output_dir / "toyworld_table.md", md + "\n")
    return summary
