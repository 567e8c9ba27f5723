"""`dreambooth sweep`: train one run per combination of training settings, then (with --evaluate) score
every run's checkpoints and recommend one, as people otherwise do by eye from side-by-side grids.

    dreambooth sweep --config base.yaml --output-dir DIR --vary learning-rate=3e-4,1e-4,1e-6 \\
        --vary max-steps=1000,2000 [--parallel N] [--evaluate --real PHOTOS]

Each run trains as its own `dreambooth train` process (a failed run does not stop the others) in
DIR/runs/NAME, its log in DIR/logs/NAME.log. A sweep run again keeps finished runs and resumes
interrupted ones from their last checkpoint; Ctrl-C stops the running ones with a checkpoint.

Scoring (--evaluate): with the paper's metrics, each run goes through `dreambooth select` (DINO,
CLIP-I, CLIP-T, PRES of every checkpoint on a few DreamBench prompts); on the toy-world model the
world's oracle scores the subject, the subject in new contexts and the class prompt instead (DINO and
CLIP need pretrained extractors). The report, DIR/sweep.md (with sweep.csv and sweep.json): one row
per run (its best checkpoint), the metric-over-steps plots of all runs, a grid of the same prompts and
seeds across runs, and the recommended run and checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import itertools
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from . import children, io
from .config import SweepConfig, TrainConfig
from .errors import TrainingInterrupted, UserError
from .options import build, coerce, flag_name, load_yaml, to_yaml

log = logging.getLogger(__name__)

# Training options a sweep sets itself, or that name no setting of the training
NOT_AXES = ("output_dir", "resume", "overwrite", "config", "num_processes")
PAPER_METRICS = ("dino", "clip_i", "clip_t", "pres")
ORACLE_METRICS = ("fidelity", "recontext", "leakage", "diversity")


def parse_axes(vary: list[str]) -> list[tuple[str, list]]:
    """[(training field, [values])] from --vary NAME=V1,V2 (pure apart from UserError)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    axes: list[tuple[str, list]] = []
    for text in vary:
        name, sep, values = text.partition("=")
        key = name.strip().lstrip("-").replace("-", "_")
        if not sep or not values.strip():
            raise UserError(f"--vary {text}: write it as NAME=VALUE,VALUE (e.g. learning-rate=1e-4,3e-4)")
        if key not in fields or key in NOT_AXES:
            raise UserError(f"--vary {text}: '{name}' is not a training option a sweep can vary")
        if any(key == k for k, _ in axes):
            raise UserError(f"--vary {text}: '{name}' is varied twice")
        parsed = []
        for v in (v.strip() for v in values.split(",")):
            parsed.append(coerce(TrainConfig, key, _yaml_scalar(v), f"--vary {text}: '{v}'"))
        if len(set(map(str, parsed))) != len(parsed):
            raise UserError(f"--vary {text}: a value is given twice")
        axes.append((key, parsed))
    if not axes:
        raise UserError("--vary: required (at least one NAME=VALUE,VALUE)")
    return axes


def _yaml_scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def run_name(overrides: dict) -> str:
    """A folder name for a combination, readable and stable: learning-rate-0.0001_max-steps-1000."""
    parts = [f"{flag_name(k)}-{v:g}" if isinstance(v, float) else f"{flag_name(k)}-{v}" for k, v in overrides.items()]
    return re.sub(r"[^\w.+=-]", "_", "_".join(parts))


@dataclasses.dataclass
class Planned:
    name: str
    overrides: dict
    cfg: TrainConfig
    status: str | None  # 'finished', 'unfinished' or None


def plan(cfg: SweepConfig) -> list[Planned]:
    """Every combination's training config, checked as `train` checks it, before anything starts."""
    from .training.preflight import preflight, run_status

    if cfg.parallel < 1:
        raise UserError(f"--parallel: must be at least 1, got {cfg.parallel}")
    base = load_yaml(cfg.config, TrainConfig)
    if cfg.evaluate and base.get("concepts"):
        raise UserError(
            f"--evaluate: --config {cfg.config} trains several concepts, and scoring takes one subject; "
            "sweep without --evaluate, then `dreambooth select` each run with --identifier, --class-noun, --real"
        )
    for key in ("output_dir", "resume", "overwrite"):
        base.pop(key, None)
    axes = parse_axes(cfg.vary)
    runs = Path(cfg.output_dir) / "runs"
    out = []
    for values in itertools.product(*(v for _, v in axes)):
        overrides = dict(zip((k for k, _ in axes), values))
        name = run_name(overrides)
        folder = runs / name
        status = run_status(folder)
        layer = {"output_dir": str(folder), "resume": "latest" if status == "unfinished" else None}
        try:
            tcfg = build(TrainConfig, base, overrides, layer)
            if status != "finished":
                preflight(tcfg)
        except UserError as e:
            raise UserError(f"run {name}: {e}") from None
        out.append(Planned(name, overrides, tcfg, status))
    return out


def train_all(cfg: SweepConfig, planned: list[Planned]) -> dict[str, str]:
    """Train what is not finished, at most cfg.parallel at a time, each as its own process; the status
    of every run ('finished' or 'failed: ...')."""
    out = Path(cfg.output_dir)
    status = {p.name: "finished" for p in planned if p.status == "finished"}
    todo = [p for p in planned if p.status != "finished"]
    log.info(
        "sweep: %d runs (%d finished before, %d to train, %d at a time)",
        len(planned),
        len(status),
        len(todo),
        cfg.parallel,
    )
    env = children.env_sharing_cores(cfg.parallel)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done = len(status)
    with children.forward_signals(lambda: (proc for proc, _ in running.values())) as stop:
        while todo or running:
            while todo and len(running) < cfg.parallel and stop.signal is None:
                p = todo.pop(0)
                config = out / "configs" / f"{p.name}.yaml"
                io.write_text(config, to_yaml(p.cfg))
                what = "resuming" if p.status == "unfinished" else "training"
                log.info("%s %s", what, p.name)
                proc = children.start(["train", "--config", str(config)], env=env, log=out / "logs" / f"{p.name}.log")
                running[p.name] = (proc, time.monotonic())
            for name, (proc, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                done += 1
                if code == 0:
                    status[name] = "finished"
                    log.info("[%d/%d] %s: finished in %.0f s", done, len(planned), name, time.monotonic() - t0)
                else:
                    last = last_error_line(out / "logs" / f"{name}.log")
                    status[name] = f"failed (exit {code}): {last}"
                    log.warning("[%d/%d] %s: %s", done, len(planned), name, status[name])
            if stop.signal is not None and not running:
                break
            time.sleep(0.2)
    if stop.signal is not None:
        raise TrainingInterrupted("sweep stopped; the runs saved checkpoints: run the same command to continue")
    return status


def last_error_line(path: Path) -> str:
    """What a failed run's log says went wrong: its error line, else its last line that is no progress bar."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("error:", "interrupted:")) or re.match(r"^\w+(Error|Exception)\b", ln)]
    rest = [ln for ln in lines if not re.search(r"\d+/\d+ \[|it/s|s/it|step/s", ln)]
    return (said or rest or lines or [""])[-1][:300]


def metrics_kind(cfg: SweepConfig, planned: list[Planned]) -> str:
    if cfg.metrics != "auto":
        return cfg.metrics
    from .toyworld.experiment import MODEL

    return "oracle" if all(p.cfg.model == MODEL for p in planned) else "paper"


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
        guidances=[cfg.guidance],
        steps=cfg.steps,
        seed=cfg.seed,
        dino_model=cfg.dino_model,
        clip_model=cfg.clip_model,
    )
    selection = run_select(scfg, progress=False)
    return [{k: r[k] for k in ("step", "checkpoint", *PAPER_METRICS)} for r in selection["candidates"]]


def evaluate_oracle(cfg: SweepConfig, p: Planned, engine) -> list[dict]:
    """The toy world's oracle on every checkpoint of one run: fidelity (the mean share of the subject's
    four features in "a photo of sks heart" images, graded as DINO is), recontext (background right and
    subject kept), leakage and diversity of the class prompt."""
    from .config import SamplingConfig
    from .evaluation.select import _candidates
    from .generation import image_settings
    from .methods import get_method
    from .toyworld.experiment import NOUN, prompts_of, score
    from .toyworld.subject import read_subject

    rows = []
    sampling = SamplingConfig(model=p.cfg.model, steps=cfg.steps, guidance=cfg.guidance)
    method = get_method(p.cfg)
    for step, path in _candidates(Path(p.cfg.output_dir), method):
        readings = {}
        for kind, prompt, seeds in prompts_of("dreambooth", cfg.images_per_prompt, method.subject_phrase(NOUN)):
            batch = [image_settings(sampling, engine, prompt, cfg.seed + s, **method.sampling(path)) for s in seeds]
            readings[kind] = [read_subject(im) for im in engine.render(batch)]
        r = score(readings)
        rows.append(
            {
                "step": step,
                "checkpoint": str(path),
                "fidelity": round(sum(r["subject_features"].values()) / 4, 6),
                "recontext": round(r["recontext_both"], 6),
                "leakage": round(r["class_leakage"], 6),
                "diversity": round(r["class_diversity"], 6),
            }
        )
        log.info("%s step %d: %s", p.name, step, json.dumps({k: rows[-1][k] for k in ORACLE_METRICS}))
    return rows


def sweep_command(cfg: SweepConfig) -> int:
    """`dreambooth sweep`: 1 when a run failed (named, with where its log is), else 0."""
    failed = run_sweep(cfg)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs: logs/NAME.log)", file=sys.stderr)
        return 1
    return 0


def run_sweep(cfg: SweepConfig, progress: bool = True) -> list[str]:
    """Train, score and report; the names of the runs that failed."""
    from .evaluation.select import objective_values, pareto_front, parse_objective

    planned = plan(cfg)
    kind = metrics_kind(cfg, planned) if cfg.evaluate else None
    metrics = ORACLE_METRICS if kind == "oracle" else PAPER_METRICS
    default_objective = "fidelity=1,recontext=1" if kind == "oracle" else "dino=1,clip_t=1"
    if cfg.evaluate:
        cfg = dataclasses.replace(cfg, objective=cfg.objective or default_objective)
    weights = parse_objective(cfg.objective, metrics) if cfg.evaluate else {}
    status = train_all(cfg, planned)
    rows: list[dict] = []
    if cfg.evaluate:
        engine = None
        if kind == "oracle":
            from .generation import Engine

            engine = Engine()
        for p in planned:
            if status.get(p.name) != "finished":
                continue
            found = evaluate_oracle(cfg, p, engine) if kind == "oracle" else evaluate_paper(cfg, p)
            rows += [{"run": p.name, **p.overrides, **r} for r in found]
        if rows:
            a, b = ("fidelity", "recontext") if kind == "oracle" else ("dino", "clip_t")
            for r, front, value in zip(rows, pareto_front(rows, a, b), objective_values(rows, weights)):
                r["pareto"], r["objective"] = front, round(value, 6)
    return write_report(cfg, planned, status, rows, metrics if cfg.evaluate else ())


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

    done = [p for p in planned if p.name in best_of_run]
    if not done:
        return
    if all(p.cfg.model == "toyworld" for p in done):
        from .toyworld.experiment import CLASS_PROMPT, subject_prompt

        prompts = [subject_prompt("dreambooth"), subject_prompt("dreambooth", "green"), CLASS_PROMPT]
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
        sampling = SamplingConfig(model=p.cfg.model, steps=cfg.steps, guidance=cfg.guidance)
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
        cell=128 if done[0].cfg.model != "toyworld" else 96,
        label_width=220,
    )
    with io.atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")
