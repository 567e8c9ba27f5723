"""What the web UI's events do, without Gradio: every method takes and returns plain values, raises
UserError for bad input, and reaches files only through ui.projects.Projects."""

import dataclasses
import re
import threading
from pathlib import Path

from ..config import GenerateConfig, GridConfig
from ..errors import UserError
from ..methods import get_method
from ..options import build
from .projects import Projects, TrainForm, active, view, weights_path
from .supervisor import Supervisor

NONE = "(none)"
MODEL_SAMPLER = "(the model's)"  # the scheduler dropdown's "the model family's default"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
GRID_AXES = (
    "guidance",
    "lora_scale_unet",
    "lora_scale_text_encoder",
    "steps",
    "seed",
    "scheduler",
    "checkpoint",
    "prompt",
    "negative_prompt",
    "lora",
    "width",
    "height",
)


class Backend:
    """What the page's events do, without Gradio: every function takes and returns plain values, raises
    UserError for bad input, and reaches files only through `projects`."""

    def __init__(self, projects: Projects, model: str | None, supervisor: Supervisor, dtype: str = "auto"):
        self.projects = projects
        self.model = model
        self.supervisor = supervisor
        self.scoring = Supervisor(command="select")  # `dreambooth select` runs, one per run at a time
        self.dtype = dtype
        self._engine = None
        self.lock = threading.Lock()  # one generation at a time (one model in memory)

    # -- paths and names from the page ------------------------------------------------------------------
    def runs(self) -> list[str]:
        return self.projects.runs()

    def check_model(self, model: str, what: str = "model") -> str:
        """A base model (or extractor) the page may use: the one given with --model, a built-in, a hub
        id, or a folder inside the projects folder (never another local path)."""
        from ..models import builtin_path

        model = (model or "").strip()
        if not model:
            raise UserError(f"{what}: empty (a hub id, or a folder inside the projects folder)")
        if (what == "model" and model == self.model) or builtin_path(model) is not None:
            return model
        try:
            inside = self.projects.path(model, what)
        except UserError:
            inside = None
        if inside is not None and inside.exists():  # a folder of the projects folder comes first
            return str(inside)
        if HUB_ID.match(model) and not Path(model).exists():
            return model
        if inside is not None:
            return str(inside)  # (not there: loading says so, naming it)
        raise UserError(
            f"{what} {model!r}: give a hub id (owner/name), the UI's --model, or a folder inside the projects folder"
        )

    def weights(self, run: str, checkpoint: str) -> dict:
        """The sampling settings a run and checkpoint choice stands for (lora, embedding or model)."""
        if not run or run == NONE:
            return {}
        from .projects import saved_config

        folder = self.projects.run(run)
        path = weights_path(folder, checkpoint or "final")
        cfg = saved_config(folder)
        if cfg is None:
            return {"lora": str(path)}
        return get_method(cfg).sampling(path)

    # -- generation --------------------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            from ..generation import Engine

            self._engine = Engine(self.dtype, fuse=False)  # scales change between requests: keep unfused
        return self._engine

    def sampling(self, form: dict, cls=GenerateConfig, **extra) -> object:
        """A GenerateConfig (or GridConfig) from the generate form's values, validated."""
        model = self.check_model(form["model"])
        values = dict(
            model=model,
            prompt=[form["prompt"]] if form.get("prompt", "").strip() else [],
            negative_prompt=form.get("negative_prompt") or "",
            lora_scale_unet=float(form["lora_scale_unet"]),
            lora_scale_text_encoder=float(form["lora_scale_text_encoder"]),
            guidance=float(form["guidance"]),
            steps=int(form["steps"]),
            scheduler=None if form.get("scheduler") in (None, MODEL_SAMPLER) else form["scheduler"],
            width=int(form.get("width") or 0) or None,
            height=int(form.get("height") or 0) or None,
            dtype=self.dtype,
        )
        values.update(self.weights(form.get("run"), form.get("checkpoint")))
        values.update(extra)
        cfg = build(cls, values)
        cfg.validate()
        return cfg

    def generate(self, form: dict) -> list[dict]:
        """Generate num_images images (seed, seed+1, ...; seed -1 draws one) into PROJECTS/outputs; each
        record: path, settings (as in the PNG), run and checkpoint (to send back to the form)."""
        import random

        from ..generation import image_settings, next_number, save_image
        from ..models import check_model

        cfg = self.sampling(form)
        n = int(form.get("num_images") or 1)
        if not 1 <= n <= 64:
            raise UserError(f"number of images: 1 to 64, got {n}")
        seed = int(form.get("seed") if form.get("seed") not in (None, "") else -1)
        if seed < 0:
            seed = random.randrange(2**32 - 64)
        out = self.projects.root / "outputs"
        with self.lock:
            check_model(cfg.model, allow_pickle=False)
            engine = self.engine
            todo = [image_settings(cfg, engine, cfg.prompt[0], seed + i) for i in range(n)]
            engine.check(todo)
            out.mkdir(parents=True, exist_ok=True)
            records = []
            for s in todo:
                image = engine.render([s])[0]
                path = out / f"{next_number(out):05d}-{s.seed}.png"
                save_image(image, s, path)
                records.append(
                    {
                        "path": str(path),
                        "settings": dataclasses.asdict(s),
                        "run": form.get("run") or NONE,
                        "checkpoint": form.get("checkpoint") or "",
                        "model": form["model"],
                        "prompt": form["prompt"],
                    }
                )
        return records

    def form_of_png(self, path: str) -> tuple[dict, str]:
        """The generate form's values from a PNG's settings (ours or AUTOMATIC1111's), and a line on
        what could not be taken over (a model or LoRA outside the projects folder)."""
        from ..formats.pnginfo import settings_from_image
        from ..weights import model_identity

        notes = []
        try:  # a LoRA the PNG names but does not locate (AUTOMATIC1111's images) is looked for among the runs
            png = settings_from_image(path, lora_dir=str(self.projects.root))
        except UserError as e:
            if "applies the LoRA" not in str(e):
                raise
            png = settings_from_image(path, find_lora=False)
            notes.append(str(e).split(": ", 1)[1].split("; give")[0])
        form = {k: png[k] for k in ("negative_prompt", "steps", "guidance", "seed", "scheduler") if k in png}
        form["prompt"] = png["prompt"][0] if png.get("prompt") else ""
        form["width"], form["height"] = png.get("width") or 0, png.get("height") or 0
        form["lora_scale_unet"] = png.get("lora_scale_unet", 1.0)
        form["lora_scale_text_encoder"] = png.get("lora_scale_text_encoder", 1.0)
        model = png.get("model")
        if model:
            if self.model and model == model_identity(self.model):
                form["model"] = self.model
            elif Path(model).is_absolute():
                inside = Path(model).resolve()
                if inside.is_relative_to(self.projects.root):
                    form["model"] = self.projects.rel(inside)
                else:
                    notes.append(f"its model {model} is outside the projects folder")
            else:
                form["model"] = model
        form["run"], form["checkpoint"] = NONE, None
        if png.get("lora"):
            weights = Path(png["lora"]).resolve()
            folder = weights.parent
            checkpoint = "final"
            if folder.parent.name == "checkpoints":
                checkpoint, folder = folder.name, folder.parent.parent
            runs = self.runs()
            rel = self.projects.rel(folder) if folder.is_relative_to(self.projects.root) else None
            if rel in runs:
                form["run"], form["checkpoint"] = rel, checkpoint
            else:
                notes.append(f"its LoRA {png['lora']} is not a run of the projects folder")
        return form, "; ".join(notes)

    def grid_config(self, form: dict, x: tuple[str, str], y: tuple[str, str]) -> GridConfig:
        specs = []
        for axis, (name, values) in (("X", x), ("Y", y)):
            if not name or name == NONE:
                specs.append(None)
                continue
            if name not in GRID_AXES:
                raise UserError(f"{axis} axis {name!r}: not one of {', '.join(GRID_AXES)}")
            if not (values or "").strip():
                raise UserError(f"{axis} values: empty")
            if name == "lora":  # run names of the projects folder, or none
                sep = "|" if "|" in values else ","
                names = [v.strip() for v in values.split(sep) if v.strip()]
                values = sep.join("none" if v in ("none", NONE) else str(self.projects.run(v)) for v in names)
            if name == "checkpoint":
                values = ",".join(v.strip().removeprefix("step-") for v in values.split(",") if v.strip())
                if not form.get("run") or form["run"] == NONE:
                    raise UserError(f"{axis} axis checkpoint: pick a run in the form first")
            specs.append(f"{name}={values}")
        if specs[0] is None:
            raise UserError("X axis: pick a setting")
        over = {}
        if form.get("run") and form["run"] != NONE and "checkpoint" in (x[0], y[0]):
            over = {"lora": str(self.projects.run(form["run"]))}
        return self.sampling(
            form,
            GridConfig,
            x=specs[0],
            y=specs[1],
            output_dir=str(self.projects.root / "grids"),
            cache_dir=str(self.projects.root / "grids" / "cells"),
            seed=max(0, int(form.get("seed") or 0)),
            **over,
        )

    def grid(self, form: dict, x: tuple[str, str], y: tuple[str, str]):
        """Yield (image, done, total) as the grid fills in; the finished grid is written to PROJECTS/grids."""
        from ..grid import fill_grid, plan_grid, write_grids

        cfg = self.grid_config(form, x, y)
        with self.lock:
            plan = plan_grid(cfg, self.engine)
        total, done = len(plan.cells), len(plan.cells) - len(plan.todo())
        if total > 400:
            raise UserError(f"grid: {total} cells; at most 400")
        if done == total:  # every cell cached: the grid is written before the page hears it is done
            write_grids(cfg, plan)
        yield plan.image(), done, total
        # The lock is held for one cell at a time, never across a yield: a page closed mid-grid leaves
        # this generator suspended, and must not keep every other generation waiting.
        cells = fill_grid(plan, self.engine)
        while done < total:
            with self.lock:
                if next(cells, None) is None:
                    break
            done += 1
            if done == total:
                write_grids(cfg, plan)
            yield plan.image(), done, total

    # -- training ----------------------------------------------------------------------------------------
    def start_training(self, form: TrainForm, model: str, uploads: list[str]) -> str:
        from .projects import write_train_config

        model = self.check_model(model)
        config = write_train_config(self.projects, form, model, uploads)
        self.supervisor.start(config.parent)
        return self.projects.rel(config.parent)

    def stop(self, run: str) -> None:
        self.supervisor.stop(self.projects.run(run))

    def resume(self, run: str) -> None:
        folder = self.projects.run(run)
        v = view(folder, self.supervisor.state(folder))
        if active(v.status):
            raise UserError(f"run {run}: is training already")
        if v.finished:
            raise UserError(f"run {run}: finished; start a new run to train more")
        self.supervisor.start(folder, resume=bool(v.checkpoints))

    def score(self, run: str, dino: str, clip: str, prompts: int, images: int, steps: int) -> None:
        """Start `dreambooth select` on the run (its own process; RUN/select.log)."""
        from ..config import SelectConfig

        folder = self.projects.run(run)
        v = view(folder, self.supervisor.state(folder))
        if active(v.status):
            raise UserError(f"run {run}: is training; score it once it has stopped or finished")
        if not v.checkpoints and not v.finished:
            raise UserError(f"run {run}: has no checkpoint and no final weights to score yet")
        cfg = SelectConfig(
            run=str(folder),
            dino_model=self.check_model(dino, "DINO model"),
            clip_model=self.check_model(clip, "CLIP model"),
            prompts=int(prompts),
            images_per_prompt=int(images),
            steps=int(steps),
            dtype=self.dtype,
        )
        cfg.validate()
        if cfg.steps < 1:
            raise UserError(f"denoising steps: must be at least 1, got {cfg.steps}")
        args = ["--run", str(folder), "--dino-model", cfg.dino_model, "--clip-model", cfg.clip_model]
        args += ["--prompts", str(cfg.prompts), "--images-per-prompt", str(cfg.images_per_prompt)]
        args += ["--steps", str(cfg.steps), "--dtype", cfg.dtype]
        self.scoring.start(folder, args=args)

    def status(self, run: str):
        folder = self.projects.run(run)
        return folder, view(folder, self.supervisor.state(folder))
