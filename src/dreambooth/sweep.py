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

import dataclasses
import itertools
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
from .sweep_report import (
    ORACLE_METRICS,
    PAPER_METRICS,
    Planned,
    evaluate_oracle,
    evaluate_paper,
    metrics_kind,
    write_report,
)

log = logging.getLogger(__name__)

# Training options a sweep sets itself, or that name no setting of the training
NOT_AXES = ("output_dir", "resume", "overwrite", "config", "num_processes")


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


def plan(cfg: SweepConfig) -> list[Planned]:
    """Every combination's training config, checked as `train` checks it, before anything starts."""
    from .runs import run_status
    from .training.preflight import preflight

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
                    last = children.last_error_line(out / "logs" / f"{name}.log")
                    status[name] = f"failed (exit {code}): {last}"
                    log.warning("[%d/%d] %s: %s", done, len(planned), name, status[name])
            if stop.signal is not None and not running:
                break
            time.sleep(0.2)
    if stop.signal is not None:
        raise TrainingInterrupted("sweep stopped; the runs saved checkpoints: run the same command to continue")
    return status


def sweep_command(cfg: SweepConfig) -> int:
    """`dreambooth sweep`: 1 when a run failed (named, with where its log is), else 0."""
    failed = run_sweep(cfg)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs: logs/NAME.log)", file=sys.stderr)
        return 1
    return 0


def run_sweep(cfg: SweepConfig, progress: bool = True) -> list[str]:
    """Train, score and report; the names of the runs that failed."""
    from .evaluation.select import LOGGED, logged_at_steps, objective_values, pareto_front, parse_objective

    planned = plan(cfg)
    kind = metrics_kind(cfg, planned) if cfg.evaluate else None
    metrics = ORACLE_METRICS if kind == "oracle" else PAPER_METRICS
    default_objective = "fidelity=1,recontext=1" if kind == "oracle" else "dino=1,clip_t=1"
    if cfg.evaluate:
        cfg = dataclasses.replace(cfg, objective=cfg.objective or default_objective)
    weights = parse_objective(cfg.objective, metrics + LOGGED) if cfg.evaluate else {}
    if any(name in LOGGED for name in weights) and not all(p.cfg.validation_loss_every for p in planned):
        raise UserError(f"--objective {cfg.objective}: the runs must log it; give them --validation-loss-every N")
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
            logged = logged_at_steps(Path(p.cfg.output_dir))  # --validation-loss-every, where the run has it
            rows += [{"run": p.name, **p.overrides, **r, "validation_loss": logged.get(r["step"])} for r in found]
        if rows:
            a, b = ("fidelity", "recontext") if kind == "oracle" else ("dino", "clip_t")
            for r, front, value in zip(rows, pareto_front(rows, a, b), objective_values(rows, weights)):
                r["pareto"], r["objective"] = front, round(value, 6)
    return write_report(cfg, planned, status, rows, metrics if cfg.evaluate else ())
