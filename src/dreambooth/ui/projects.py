"""The projects folder the web UI works in: which runs it holds, what each has written, and the one
place every path the page names is checked (no '..', no absolute paths, nothing outside the folder).

Nothing here imports Gradio or torch: the UI's logic is tested without a browser.

    PROJECTS/
      NAME/                 a run started from the page (its --output-dir)
        photos/             the uploaded instance photos
        class-images/       prior preservation's class images
        ui-train.yaml       the config the page wrote (training writes its resolved config.yaml beside)
        train.log           the training process's output
      outputs/              generated images (PNG info + JSON sidecars)
      grids/                grid cells and grids
    Any folder below PROJECTS with a run's config.yaml (trained from the command line, or by a sweep)
    is listed too.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import runs
from ..config import TrainConfig
from ..errors import UserError
from ..methods import METHODS, get_method
from ..options import build, load_yaml, to_yaml
from ..runs import list_checkpoints

UI_CONFIG = "ui-train.yaml"
LOG = "train.log"
PROCESS_FILE = "ui-process.json"  # the pid of the training a UI started (ui.supervisor)
OUTSIDE = "training (started outside this UI)"
OUTSIDE_SECONDS = 30  # without file locks (Windows): a run whose log moved this recently is taken to be training


def active(state: str | None) -> bool:
    """A run's (or scoring's) state says its process runs now."""
    return state is not None and state.split(" ", 1)[0] in ("training", "stopping")


PHOTOS = "photos"
CLASS_IMAGES = "class-images"
RESERVED = ("outputs", "grids", "uploads")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_DEPTH = 4  # runs are looked for this many folders down (a sweep's runs are at SWEEP/runs/NAME)
MAX_UPLOAD_BYTES = 30 * 1024 * 1024  # one photo; phone photos are 2-12 MB
MAX_UPLOADS = 50


class Projects:
    """The projects folder, and the only way the UI turns a name from the page into a path."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, rel: str, what: str = "path") -> Path:
        """`rel` (relative, '/'-separated) as a path inside the projects folder; anything that would
        leave it (absolute, '..', a drive, a link pointing out) is refused with a UserError."""
        text = str(rel or "").strip()
        if not text:
            raise UserError(f"{what}: empty")
        if "\x00" in text or "\\" in text:
            raise UserError(f"{what} {text!r}: not a plain relative path")
        if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
            raise UserError(f"{what} {text!r}: must be relative to the projects folder, not absolute")
        parts = text.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UserError(f"{what} {text!r}: '..', '.' and empty parts are not allowed")
        p = (self.root / text).resolve()
        if not p.is_relative_to(self.root):
            raise UserError(f"{what} {text!r}: leads outside the projects folder")
        return p

    def new_run_dir(self, name: str) -> Path:
        """The folder of a new run called `name` (a plain name: letters, digits, '.', '_', '-')."""
        name = (name or "").strip()
        if not NAME.match(name):
            raise UserError(
                f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
            )
        if name in RESERVED:
            raise UserError(f"run name {name!r}: reserved for the UI's own files; pick another")
        return self.path(name, "run name")

    def rel(self, p: Path) -> str:
        return p.resolve().relative_to(self.root).as_posix()

    def runs(self) -> list[str]:
        """Every run below the projects folder (relative names, sorted): folders with a config.yaml or
        the page's ui-train.yaml; hidden folders, checkpoints and the UI's own folders are skipped."""
        found: list[str] = []
        if not self.root.is_dir():
            return found

        def walk(folder: Path, depth: int) -> None:
            try:
                children = sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))
            except OSError:
                return
            for c in children:
                if depth == 0 and c.name in RESERVED:
                    continue
                if (c / "config.yaml").is_file() or (c / UI_CONFIG).is_file():
                    found.append(self.rel(c))
                elif depth + 1 < MAX_DEPTH and c.name not in ("checkpoints", "validation", "selection"):
                    walk(c, depth + 1)

        walk(self.root, 0)
        return found

    def run(self, name: str) -> Path:
        """The folder of a listed run; names that are not runs are refused (and never leave the folder)."""
        p = self.path(name, "run")
        if not ((p / "config.yaml").is_file() or (p / UI_CONFIG).is_file()):
            raise UserError(f"run {name!r}: no such run in the projects folder")
        return p


# ---------------------------------------------------------------------------------------------------------
# What a run has written


@dataclass
class RunView:
    """A run as the page shows it, read from its files only."""

    status: str  # "not started", "training", "finished", "stopped", "failed"
    step: int
    max_steps: int | None
    method: str
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # --validation-loss-every
    checkpoints: list[int] = field(default_factory=list)
    validation_step: int | None = None
    validation_images: list[Path] = field(default_factory=list)
    finished: bool = False


def saved_config(run: Path) -> TrainConfig | None:
    """The run's config: training's resolved config.yaml, else the one the page wrote."""
    for name in ("config.yaml", UI_CONFIG):
        f = run / name
        if f.is_file():
            try:
                return build(TrainConfig, load_yaml(f, TrainConfig))
            except UserError:
                return None
    return None


def read_losses(run: Path, column: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of a train_log.csv column, where the row has one (validation_loss: at its steps)."""
    f = run / "train_log.csv"
    if not f.is_file():
        return []
    out = []
    with open(f, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                out.append((int(row["step"]), float(row[column])))
            except (KeyError, TypeError, ValueError):
                continue  # a row being written, or one without the column's value
    return out


def latest_validation(run: Path) -> tuple[int | None, list[Path]]:
    folder = run / "validation"
    steps = []
    for d in folder.glob("step-*") if folder.is_dir() else []:
        if d.is_dir() and d.name[5:].isdigit():
            steps.append((int(d.name[5:]), d))
    if not steps:
        return None, []
    step, d = max(steps)
    return step, sorted(p for p in d.glob("*.png") if not p.name.startswith("."))


def view(run: Path, process: str | None = None) -> RunView:
    """What the run has written; `process` is the supervisor's word on its process, if it started one
    ('training', 'stopping', 'failed: ...', 'stopped')."""
    cfg = saved_config(run)
    record = {}
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        pass
    losses = read_losses(run)
    checkpoints = [step for step, _ in list_checkpoints(run)]
    finished = record.get("status") == "finished"
    step = record.get("step") if finished else (losses[-1][0] if losses else max(checkpoints, default=0))
    log = run / "train_log.csv"
    if active(process):
        status = process
    elif process is None and runs.holder(run) is not None:
        status = OUTSIDE
    elif (
        runs.fcntl is None
        and process is None
        and not finished
        and not (run / PROCESS_FILE).exists()
        and log.is_file()
        and time.time() - log.stat().st_mtime < OUTSIDE_SECONDS
    ):
        status = OUTSIDE
    elif finished:
        status = "finished"
    elif process and process.startswith("failed"):
        status = process
    elif checkpoints:
        status = "stopped"
    elif losses or record:
        status = process or "stopped"
    else:
        status = process or "not started"
    v_step, v_images = latest_validation(run)
    return RunView(
        status=status,
        step=int(step or 0),
        max_steps=record.get("max_steps") or (cfg.max_steps if cfg else None),
        method=(cfg.method if cfg else record.get("method", "lora")),
        losses=losses,
        validation_losses=read_losses(run, "validation_loss"),
        checkpoints=checkpoints,
        validation_step=v_step,
        validation_images=v_images,
        finished=finished,
    )


def weights_choices(run: Path) -> list[str]:
    """What generation can use from a run: 'final' (when it finished) and 'step-N' for each complete
    checkpoint that holds the method's weights."""
    cfg = saved_config(run)
    v = view(run)
    out = ["final"] if v.finished else []
    method = get_method(cfg) if cfg is not None else None
    for step, path in sorted(list_checkpoints(run), reverse=True):
        if step in v.checkpoints and (method is None or method.weights_in(path)):
            out.append(f"step-{step}")
    return out


def weights_path(run: Path, choice: str) -> Path:
    if choice == "final":
        return run
    m = re.fullmatch(r"step-(\d+)", choice or "")
    if not m:
        raise UserError(f"checkpoint {choice!r}: not 'final' or 'step-N'")
    for step, p in list_checkpoints(run):
        if step == int(m.group(1)):
            return p
    raise UserError(f"checkpoint {choice!r}: no such complete checkpoint in {run.name}")


# ---------------------------------------------------------------------------------------------------------
# A new run from the page's form


@dataclass
class TrainForm:
    """The train form's fields, as the page sends them."""

    name: str
    identifier: str = "sks"
    class_noun: str = ""
    instance_prompt: str = ""  # default: "a photo of {identifier} {class_noun}"
    class_prompt: str = ""  # default: "a photo of a {class_noun}"
    photos_folder: str = ""  # a folder inside the projects folder, instead of uploads
    method: str = "lora"
    max_steps: int = 1000
    learning_rate: float = 1e-4
    prior: bool = True
    num_class_images: int = 100
    resolution: int | None = None
    checkpoint_every: int | None = None
    lr_warmup_steps: int | None = None
    train_text_encoder: bool = False


def default_prompts(identifier: str, class_noun: str) -> tuple[str, str]:
    identifier, class_noun = identifier.strip(), class_noun.strip()
    return (f"a photo of {identifier} {class_noun}".strip(), f"a photo of a {class_noun}".strip())


def save_uploads(projects: Projects, run: Path, files: list[str | Path]) -> list[Path]:
    """Check uploaded photos as training does and copy them into RUN/photos under their own (cleaned)
    names. Nothing is copied unless every file passes: one bad file is a UserError naming it."""
    from ..data.images import inspect_image
    from ..data.pixels import IMAGE_SUFFIXES

    if not files:
        return []
    if len(files) > MAX_UPLOADS:
        raise UserError(f"photos: {len(files)} files; at most {MAX_UPLOADS} (DreamBooth needs 3-5)")
    checked: list[tuple[Path, str]] = []
    names: set[str] = set()
    for f in files:
        src = Path(f)
        shown = Path(str(f).replace("\\", "/")).name
        name = re.sub(r"[^A-Za-z0-9._-]", "_", shown).lstrip(".") or "photo"
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"photo {shown}: not an image file name ({', '.join(IMAGE_SUFFIXES)})")
        if not src.is_file():
            raise UserError(f"photo {shown}: the upload is missing")
        if src.stat().st_size > MAX_UPLOAD_BYTES:
            raise UserError(
                f"photo {shown}: {src.stat().st_size / 2**20:.1f} MB, over the {MAX_UPLOAD_BYTES // 2**20} MB limit"
            )
        verdict = inspect_image(src)
        if verdict.status != "ok":
            raise UserError(f"photo {shown}: {verdict.reason}")
        while name in names:
            name = f"_{name}"
        names.add(name)
        checked.append((src, name))
    dest = run / PHOTOS
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src, name in checked:
        target = dest / name
        shutil.copyfile(src, target)
        out.append(target)
    return out


def train_config(projects: Projects, form: TrainForm, model: str, run: Path) -> TrainConfig:
    """The run's TrainConfig from the form (validated; nothing written)."""
    if not form.class_noun.strip() and not form.instance_prompt.strip():
        raise UserError("class noun: empty (the subject's class: cat, dog, backpack, ...)")
    instance_prompt, class_prompt = default_prompts(form.identifier, form.class_noun)
    instance_prompt = form.instance_prompt.strip() or instance_prompt
    class_prompt = form.class_prompt.strip() or class_prompt
    photos = projects.path(form.photos_folder, "photos folder") if form.photos_folder.strip() else run / PHOTOS
    values = dict(
        model=model,
        instance_dir=str(photos),
        instance_prompt=instance_prompt,
        output_dir=str(run),
        method=form.method,
        max_steps=int(form.max_steps),
        learning_rate=float(form.learning_rate),
        validation_prompt=[instance_prompt],
    )
    method = METHODS.get(form.method)
    if method is None:
        raise UserError(f"method {form.method!r}: one of {', '.join(METHODS)}")
    # the method's own settings for the subject (Textual Inversion: its token <sks-dog>, from the noun)
    own = method.protocol_options(
        form.identifier.strip() or "sks", form.class_noun.strip(), form.class_noun.strip() or "subject"
    )
    values.update({k: v for k, v in own.items() if k not in ("instance_prompt", "class_prompt")})
    if form.prior and "class_prompt" in own:  # the methods that keep the class with prior preservation
        values.update(
            class_prompt=class_prompt, class_dir=str(run / CLASS_IMAGES), num_class_images=int(form.num_class_images)
        )
    if form.train_text_encoder and method.text_encoder_choice:
        values["train_text_encoder"] = True
    for key in ("resolution", "checkpoint_every", "lr_warmup_steps"):
        value = getattr(form, key)
        if value not in (None, "", 0):
            values[key] = int(value)
    if "checkpoint_every" not in values:
        values["checkpoint_every"] = max(1, int(form.max_steps) // 4)
    if values.get("lr_warmup_steps") is None and int(form.max_steps) <= 500:
        values["lr_warmup_steps"] = int(form.max_steps) // 10
    cfg = build(TrainConfig, values)
    cfg.validate()
    return cfg


def write_train_config(projects: Projects, form: TrainForm, model: str, uploads: list[str | Path]) -> Path:
    """Check the form and the photos, then write NAME/photos and NAME/ui-train.yaml for a new run.
    Refuses a name that already holds a run (the page resumes those instead)."""
    from ..training.preflight import preflight

    run = projects.new_run_dir(form.name)
    if run.exists() and any(run.iterdir()):
        raise UserError(f"run name {form.name!r}: already holds a run; resume it, or pick another name")
    if not uploads and not form.photos_folder.strip():
        raise UserError("photos: upload 3-5 photos of the subject, or name a folder of them")
    cfg = train_config(projects, form, model, run)
    fresh = not run.exists()
    try:
        save_uploads(projects, run, uploads)
        preflight(cfg)  # every refusal training would give (model, photos, settings), before it starts
        from .. import io

        io.write_text(run / UI_CONFIG, to_yaml(cfg))
    except BaseException:
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
        raise
    return run / UI_CONFIG
