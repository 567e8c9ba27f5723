"""`dreambooth compare`: the paper's Table 1 protocol for several methods and subjects.

For each subject and method: train with the method's defaults, generate images_per_prompt images for
every DreamBench prompt of the subject's kind (and class images for PRES), score them. Each
(subject, method) resumes on its own: a finished run is not trained again, an unfinished one
continues from its last checkpoint, and images already made are reused.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import logging
from pathlib import Path

from . import io
from .config import CompareConfig, EvaluateConfig, TrainConfig
from .data.images import instance_images
from .errors import UserError
from .evaluation import dreambench
from .evaluation.evaluate import PAPER, collect, extractors_for, score
from .methods import get_method
from .options import load_yaml

log = logging.getLogger(__name__)
METRICS = ("dino", "clip_i", "clip_t", "pres")


def subject_class(folder: Path, cfg: CompareConfig) -> str:
    known = dreambench.subject_classes()
    if folder.name in known:
        return known[folder.name]
    if cfg.class_noun:
        return cfg.class_noun
    raise UserError(f"--subjects {folder}: not a DreamBench subject name; give its --class-noun")


def train_config(cfg: CompareConfig, folder: Path, noun: str, method: str, out: Path) -> TrainConfig:
    """The protocol's training of one method on one subject: the method's own defaults, its prompts for
    the subject (Method.protocol_options), the class images shared by the methods that use a prior."""
    from .methods import METHODS

    kw: dict = dict(
        model=cfg.model,
        model_config=cfg.model_config,
        allow_pickle=cfg.allow_pickle,
        instance_dir=str(folder),
        output_dir=str(out),
        method=method,
        resolution=cfg.resolution,
        seed=cfg.seed,
        mixed_precision=cfg.mixed_precision,
        max_steps=cfg.max_steps,
        **METHODS[method].protocol_options(cfg.identifier, noun, folder.name),
    )
    if kw.get("class_prompt"):
        kw.update(class_dir=str(Path(cfg.output) / "class-images" / noun.replace(" ", "_")))
        kw.update(num_class_images=cfg.num_class_images)
    probe = TrainConfig(**kw)
    if probe.warmup_steps >= probe.max_steps:  # short runs (tests, quick looks): no warmup longer than the run
        kw["lr_warmup_steps"] = probe.max_steps // 10
    return TrainConfig(**kw)


def _train(tcfg: TrainConfig, progress: bool) -> None:
    """Train, unless the run finished before; continue it from its last checkpoint if it did not."""
    from .runs import run_status
    from .training.loop import train

    status = run_status(tcfg.output_dir)
    if status == "finished":
        return
    if status == "unfinished":
        tcfg.resume = "latest"
    train(tcfg, progress=progress)


def eval_config(cfg: CompareConfig, folder: Path, noun: str, run: Path) -> EvaluateConfig:
    """The protocol's scoring of a trained run: its weights and its subject word, as its method says."""
    kw: dict = dict(
        model=cfg.model,
        model_config=cfg.model_config,
        allow_pickle=cfg.allow_pickle,
        real=str(folder),
        class_noun=noun,
        identifier=cfg.identifier,
        images_per_prompt=cfg.images_per_prompt,
        num_class_images=cfg.num_class_images,
        class_prompt=f"a {noun}",
        steps=cfg.steps,
        guidance=cfg.guidance,
        seed=cfg.seed,
        width=cfg.resolution,
        height=cfg.resolution,
        dino_model=cfg.dino_model,
        clip_model=cfg.clip_model,
        output_dir=str(run / "evaluation"),
        cache_dir=str(Path(cfg.output) / "embeddings"),
    )
    run_cfg = TrainConfig(**load_yaml(run / "config.yaml", TrainConfig))
    trained = get_method(run_cfg)
    kw.update(trained.sampling(run), identifier=trained.subject_word())
    if "model" in trained.sampling(run):
        kw["model_config"] = None
    return EvaluateConfig(**kw)


def methods_for(cfg: CompareConfig) -> list[str]:
    """The methods to compare on the model: all that can train its family when --methods is left at its
    default (each one left out is logged), else those named, one line for a named one that cannot."""
    from .methods import METHODS
    from .models import family_of

    family = family_of(cfg.model)
    default = cfg.methods == ",".join(METHODS)
    out = []
    for name in cfg.method_list:
        why = METHODS[name].unavailable_for(family)
        if why is None:
            out.append(name)
        elif default:
            log.info("leaving out %s: %s", name, why)
        else:
            raise UserError(f"--methods {cfg.methods}: {name} is {why}")
    return out


def run_compare(cfg: CompareConfig, progress: bool = True) -> Path:
    cfg.validate()
    from .models import check_model

    check_model(cfg.model, config=cfg.model_config, allow_pickle=cfg.allow_pickle)
    cfg = dataclasses.replace(cfg, methods=",".join(methods_for(cfg)))
    if cfg.resolution is None:
        from .models import native_size

        cfg = dataclasses.replace(cfg, resolution=native_size(cfg.model))
    subjects = []
    for s in cfg.subjects:
        folder = Path(s)
        instance_images(str(folder))
        subjects.append((folder, subject_class(folder, cfg)))
    out = Path(cfg.output)
    rows, grids = [], []
    extractors = None
    for folder, noun in subjects:
        kind = dreambench.kind_of(noun)
        for method in cfg.method_list:
            run = out / "runs" / folder.name / method
            tcfg = train_config(cfg, folder, noun, method, run)
            tcfg.validate()
            _train(tcfg, progress)
            ecfg = eval_config(cfg, folder, noun, run)
            ident = ecfg.identifier
            every = dreambench.prompts(kind, ident, noun)
            n = 25 if cfg.prompts == "dreambench" else int(cfg.prompts)
            prompts = dreambench.spread(every, n)
            if extractors is None:
                extractors = extractors_for(ecfg)
            real, generated, class_paths = collect(ecfg, prompts, progress)
            result, _ = score(ecfg, real, generated, class_paths, *extractors)
            rows.append(
                {
                    "subject": folder.name,
                    "class": noun,
                    "kind": kind,
                    "method": method,
                    **{k: result.get(k) for k in METRICS},
                    "images": result["n_generated"],
                }
            )
            grids.append((folder.name, method, prompts, generated))
            log.info(
                "%s / %s: DINO %.3f CLIP-I %.3f CLIP-T %.3f",
                folder.name,
                method,
                result["dino"],
                result["clip_i"],
                result["clip_t"],
            )
    _write(out, cfg, rows, grids)
    return out / "table.md"


def summary(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per method, the mean of each metric over subjects (as Table 1 averages over DreamBench)."""
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        out.append(
            {
                "method": m,
                "subjects": len(mine),
                **{
                    k: (sum(r[k] for r in mine) / len(mine)) if mine and all(r[k] is not None for r in mine) else None
                    for k in METRICS
                },
            }
        )
    return out


def table(rows: list[dict], methods: list[str]) -> str:
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
    lines = ["| method | DINO | CLIP-I | CLIP-T | PRES |", "|---|---|---|---|---|"]
    for name, key in (
        ("Real images (paper)", "real images"),
        ("DreamBooth SD (paper)", "DreamBooth (SD)"),
        ("Textual Inversion (paper)", "Textual Inversion"),
    ):
        lines.append(
            f"| {name} | " + " | ".join(fmt(PAPER[k].get(key)) for k in ("dino", "clip_i", "clip_t")) + " | - |"
        )
    for s in summary(rows, methods):
        lines.append(
            f"| {s['method']} (ours, {s['subjects']} subjects) | " + " | ".join(fmt(s[k]) for k in METRICS) + " |"
        )
    lines += ["", "| subject | method | DINO | CLIP-I | CLIP-T | PRES |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['method']} | " + " | ".join(fmt(r[k]) for k in METRICS) + " |")
    return "\n".join(lines)


def _write(out: Path, cfg: CompareConfig, rows: list[dict], grids) -> None:
    from PIL import Image

    from .sheets import labelled_grid

    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, cfg.method_list)
    io.write_text(out / "table.md", text + "\n")
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(out / "per_subject.csv", buf.getvalue())
    io.write_text(out / "summary.json", json.dumps({"summary": summary(rows, cfg.method_list), "rows": rows}, indent=2))
    for subject in dict.fromkeys(g[0] for g in grids):
        mine = [g for g in grids if g[0] == subject]
        prompts = mine[0][2]
        cells = []
        for _, _, _, generated in mine:
            first = {}
            for path, prompt in generated:
                first.setdefault(prompt, path)
            cells.append([Image.open(p) for p in first.values()][: len(prompts)])
        grid = labelled_grid(cells, [p for p in prompts], [g[1] for g in mine], title=f"{subject}: methods x prompts")
        with io.atomic_path(out / f"grid-{subject}.png") as tmp:
            grid.save(tmp, format="PNG")
    print(text)
