"""A sweep's scoring and report: every checkpoint of every run scored (the paper's metrics through
`select`, or the toy world's oracle), DIR/sweep.md/csv/json (one row per run, its best checkpoint, the
recommended run), metric-over-steps plots, and a grid of the same prompts and seeds across runs."""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import logging
from pathlib import Path

from . import io
from .config import SweepConfig, TrainConfig
from .options import flag_name

log = logging.getLogger(__name__)
PAPER_METRICS = ("dino", "clip_i", "clip_t", "pres")
# background: of "sks heart on a {green, ...} background", the share drawn on that background (the
# photos' own background sticking to the identifier lowers it); photo_background: of "a photo of sks
# heart", the share drawn on the photos' own background (what --masked-loss is meant to lower); whole: of
# "a photo of sks heart", the share with all four features at once (the demo's "subject fidelity")
ORACLE_METRICS = ("fidelity", "whole", "recontext", "background", "photo_background", "leakage", "diversity")


@dataclasses.dataclass
class Planned:
    name: str
    overrides: dict
    cfg: TrainConfig
    status: str | None  # 'finished', 'unfinished' or None


def metrics_kind(cfg: SweepConfig, planned: list[Planned]) -> str:
    if cfg.metrics != "auto":
        return cfg.metrics
    from .toyworld.experiment import is_toy_model

    return "oracle" if all(is_toy_model(p.cfg.model) for p in planned) else "paper"


def evaluate_paper(cfg: SweepConfig, p: Planned) -> list[dict]:
    """`dreambooth select` on one run: a row per checkpoint with the paper's metrics."""
    from .config import SelectConfig
    from .evaluation.select import run_select

    scfg = SelectConfig(
        run=p.cfg.output_dir,
        real=cfg.real,
        prompts=cfg.prompts,
        images_per_prompt=cfg.images_per_prompt,
        num_class_images=cfg.num_class_images,
        guidances=[cfg.guidance] if cfg.guidance is not None else [],
        steps=cfg.steps,
        width=cfg.width,
        height=cfg.height,
        seed=cfg.seed,
        dino_model=cfg.dino_model,
        clip_model=cfg.clip_model,
    )
    selection = run_select(scfg, progress=False)
    return [
        {k: r.get(k) for k in ("step", "checkpoint", *PAPER_METRICS, "validation_loss")}
        for r in selection["candidates"]
    ]


def evaluate_oracle(cfg: SweepConfig, p: Planned, engine) -> list[dict]:
    """The toy world's oracle on every checkpoint of one run: fidelity (the mean share of the subject's
    four features in "a photo of sks heart" images, graded as DINO is), whole (the share of those images
    with all four, the demo's subject fidelity), recontext (background right and
    subject kept), background (the asked background drawn, subject or not), leakage and diversity of
    the class prompt. The subject is the one the instance prompt's class noun names."""
    from .config import SamplingConfig
    from .evaluation.select import _candidates
    from .generation import image_settings
    from .methods import get_method
    from .toyworld.experiment import prompts_of, score, subject_of

    subject = subject_of(p.cfg.instance_prompt)
    photo_background = photos_background(p.cfg.instance_dir, subject)
    rows = []
    sampling = SamplingConfig(
        model=p.cfg.model, steps=cfg.steps, guidance=cfg.guidance, width=cfg.width, height=cfg.height
    )
    method = get_method(p.cfg)
    for step, path in _candidates(Path(p.cfg.output_dir), method):
        readings = {}
        thing = method.subject_phrase(subject.noun)
        for kind, prompt, seeds in prompts_of(cfg.images_per_prompt, thing, subject):
            batch = [image_settings(sampling, engine, prompt, cfg.seed + s, **method.sampling(path)) for s in seeds]
            readings[kind] = [subject.read(im) for im in engine.render(batch)]
        r = score(readings, subject, photo_background)
        rows.append(
            {
                "step": step,
                "checkpoint": str(path),
                "fidelity": round(r["subject_features_mean"], 6),
                "whole": round(r["subject_fidelity"], 6),
                "recontext": round(r["recontext_both"], 6),
                "background": round(r["recontext_background"], 6),
                "photo_background": round(r["subject_photo_background"], 6),
                "leakage": round(r["class_leakage"], 6),
                "diversity": round(r["class_diversity"], 6),
            }
        )
        log.info("%s step %d: %s", p.name, step, json.dumps({k: rows[-1][k] for k in ORACLE_METRICS}))
    return rows


def photos_background(folder: str | None, subject) -> str | None:
    """The background the oracle reads on most of the training photos (None: no folder)."""
    from collections import Counter

    from .data.images import list_images, load_rgb
    from .data.masks import SUFFIX

    if not folder:
        return None
    photos = [p for p in list_images(folder) if not p.name.endswith(SUFFIX)]
    found = Counter(subject.read(load_rgb(p))["background"] for p in photos)
    return found.most_common(1)[0][0] if found else None


def _final_loss(run: Path) -> float | None:
    """Mean instance loss over the last tenth of training (from train_log.csv)."""
    f = run / "train_log.csv"
    if not f.is_file():
        return None
    with open(f, newline="") as h:
        values = [float(r["instance_loss"]) for r in csv.DictReader(h) if r.get("instance_loss")]
    tail = values[-max(1, len(values) // 10) :]
    return round(sum(tail) / len(tail), 6) if tail else None


def write_report(cfg, planned: list[Planned], status: dict, rows: list[dict], metrics: tuple) -> list[str]:
    """DIR/sweep.md (printed), sweep.json, sweep.csv, the plots and the grid; the runs that failed."""
    out = Path(cfg.output_dir)
    axes = list(planned[0].overrides)
    best_of_run = {}
    for r in rows:
        if r["run"] not in best_of_run or r["objective"] > best_of_run[r["run"]]["objective"]:
            best_of_run[r["run"]] = r
    front = [r for r in rows if r.get("pareto")]
    best = max(front, key=lambda r: r["objective"]) if front else None
    head = ["run", *map(flag_name, axes), "status", "final loss"]
    if metrics:
        head += ["best step", *metrics, "objective"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    summary = []
    for p in planned:
        st = status.get(p.name, "not trained")
        cells = [
            p.name,
            *(str(p.overrides[k]) for k in axes),
            st.split(":")[0],
            _fmt(_final_loss(Path(p.cfg.output_dir))),
        ]
        r = best_of_run.get(p.name)
        if metrics:
            cells += [str(r["step"]) if r else "-", *(_fmt(r[m] if r else None) for m in metrics)]
            mark = " **recommended**" if r is not None and r is best else ""
            cells.append((_fmt(r["objective"]) if r else "-") + mark)
        lines.append("| " + " | ".join(cells) + " |")
        summary.append(
            {
                "run": p.name,
                "settings": p.overrides,
                "status": st,
                "final_loss": _final_loss(Path(p.cfg.output_dir)),
                "best": r,
            }
        )
    md = "\n".join(lines)
    if best is not None:
        md += f"\n\nRecommended: run {best['run']}, step {best['step']} ({best['checkpoint']}); objective over all checkpoints of all runs: {cfg.objective}.\n"
    io.write_text(out / "sweep.md", md + "\n")
    report = {"runs": summary, "recommended": best, "candidates": rows, "metrics": list(metrics)}
    io.write_text(out / "sweep.json", json.dumps(report, indent=2, default=str))
    if rows:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        io.write_text(out / "sweep.csv", buf.getvalue())
        _plots(out, rows, metrics)
        _grid(cfg, out, planned, best_of_run)
    print(md)
    return [p.name for p in planned if status.get(p.name) != "finished"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _plots(out: Path, rows: list[dict], metrics: tuple) -> None:
    from .evaluation.plot import line_plot

    for m in metrics:
        if any(r.get(m) is None for r in rows):
            continue
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(r["run"], []).append((r["step"], r[m]))
        with io.atomic_path(out / f"{m}.png") as tmp:
            line_plot(series, f"{m} over training steps, all runs", "step").save(tmp, format="PNG")


def _grid(cfg: SweepConfig, out: Path, planned: list[Planned], best_of_run: dict) -> None:
    """Rows: each run's best checkpoint; columns: the same prompts and seeds."""
    from .config import SamplingConfig
    from .generation import Engine, image_settings
    from .methods import get_method
    from .sheets import labelled_grid
    from .toyworld.experiment import is_toy_model

    done = [p for p in planned if p.name in best_of_run]
    if not done:
        return
    if all(is_toy_model(p.cfg.model) for p in done):
        from .toyworld.experiment import class_prompt, subject_of, subject_prompt

        subject = subject_of(done[0].cfg.instance_prompt)
        prompts = [
            subject_prompt(subject=subject),
            subject_prompt("green", subject=subject),
            class_prompt(subject),
        ]
    else:
        from .config import SelectConfig
        from .evaluation import dreambench
        from .evaluation.select import _subject_words

        identifier, noun = _subject_words(done[0].cfg, SelectConfig(run=done[0].cfg.output_dir))
        kind = dreambench.kind_of(noun)
        prompts = dreambench.spread(dreambench.prompts(kind, identifier, noun), min(4, cfg.prompts))
    engine = Engine()
    grid_rows = []
    seeds = [cfg.seed, cfg.seed + 1]
    for p in done:
        sampling = SamplingConfig(
            model=p.cfg.model, steps=cfg.steps, guidance=cfg.guidance, width=cfg.width, height=cfg.height
        )
        weights = get_method(p.cfg).sampling(Path(best_of_run[p.name]["checkpoint"]))
        grid_rows.append(
            [engine.render([image_settings(sampling, engine, pr, s, **weights)])[0] for pr in prompts for s in seeds]
        )
    labels = [f"{p.name} @ {best_of_run[p.name]['step']}" for p in done]
    grid = labelled_grid(
        grid_rows,
        [pr for pr in prompts for _ in seeds],
        labels,
        title="sweep: each run's best checkpoint",
        cell=96 if is_toy_model(done[0].cfg.model) else 128,
        label_width=220,
    )
    with io.atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")
