"""`dreambooth select`: score every checkpoint of a run (and a small grid of generation settings) with
the paper's metrics, find the candidates no other beats on both subject fidelity (DINO) and prompt
fidelity (CLIP-T), and recommend one by an objective the user can change.

Default objective: DINO and CLIP-T, each min-max normalised over the candidates, summed with equal
weights, among the candidates on that front. It favours the checkpoint that keeps the subject
without losing the prompt, which is what people pick by eye from a grid.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import re
from pathlib import Path

from .. import io
from ..config import EvaluateConfig, SelectConfig, TrainConfig, saved_config
from ..errors import UserError
from ..methods import get_method
from ..runs import list_checkpoints
from . import dreambench
from .evaluate import collect, extractors_for, score
from .plot import line_plot

log = logging.getLogger(__name__)
SELECTION = "selection.json"
METRICS = ("dino", "clip_i", "clip_t", "pres")


LOWER_IS_BETTER = ("pres", "leakage", "validation_loss")  # less is better
# what the run logged at each checkpoint's step (--validation-loss-every), usable in --objective too
LOGGED = ("validation_loss",)


def parse_objective(text: str, metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in metrics:
            raise UserError(f"--objective {text}: unknown metric '{name}' (one of {', '.join(metrics)})")
        try:
            weights[name] = float(value or 1)
        except ValueError:
            raise UserError(f"--objective {text}: '{value}' is not a number") from None
    if not weights:
        raise UserError(f"--objective {text}: names no metric")
    return weights


def pareto_front(rows: list[dict], a: str = "dino", b: str = "clip_t") -> list[bool]:
    """True for each row that no other row beats on both a and b (>= on both, > on one)."""

    def beats(o, r):
        return o[a] >= r[a] and o[b] >= r[b] and (o[a] > r[a] or o[b] > r[b])

    return [not any(beats(o, r) for o in rows if o is not r) for r in rows]


def objective_values(rows: list[dict], weights: dict[str, float]) -> list[float]:
    """Sum of weight x metric, each metric min-max normalised over the rows (PRES counts negatively:
    lower is better)."""
    values = [0.0] * len(rows)
    for name, w in weights.items():
        col = [r.get(name) for r in rows]
        if any(v is None for v in col):
            why = "train with --validation-loss-every N" if name in LOGGED else "PRES needs --num-class-images > 0"
            raise UserError(f"--objective: '{name}' was not measured at every candidate ({why})")
        lo, hi = min(col), max(col)
        for i, v in enumerate(col):
            norm = 0.5 if hi == lo else (v - lo) / (hi - lo)
            values[i] += w * ((1 - norm) if name in LOWER_IS_BETTER else norm)
    return values


def logged_at_steps(run: Path, column: str = "validation_loss") -> dict[int, float]:
    """A train_log.csv column's values by step, where the row has one."""
    f = run / "train_log.csv"
    if not f.is_file():
        return {}
    with open(f, newline="", encoding="utf-8") as h:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(h) if r.get(column)}


def _candidates(run: Path, method) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint that holds the method's weights, and of the run's final weights
    where no checkpoint is at their step (a finished run's last checkpoint holds the same weights)."""
    found = [(step, path) for step, path in list_checkpoints(run) if method.weights_in(path)]
    if method.weights_in(run):
        saved = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        step = int(saved.get("step", found[-1][0] + 1 if found else 0))
        if all(s != step for s, _ in found):
            found.append((step, run))
    return found


def _subject_words(saved: TrainConfig, cfg: SelectConfig) -> tuple[str, str]:
    """(identifier, class noun) the DreamBench prompts are written with: given, else the run's own (the
    word its method brings the subject with, and its class prompt's last word)."""
    if saved.concepts and not (cfg.identifier and cfg.class_noun and cfg.real):
        raise UserError(
            f"--run {cfg.run}: trained on several concepts ({saved.concepts}); name the one to score with "
            "--identifier, --class-noun and --real"
        )
    class_noun = cfg.class_noun
    if class_noun is None:
        source = saved.class_prompt or saved.instance_prompt
        class_noun = re.findall(r"[\w-]+", source)[-1]
    identifier = cfg.identifier or get_method(saved).subject_word()
    if identifier is None:
        words = re.findall(r"[\w-]+", saved.instance_prompt)
        before = [words[i - 1] for i, w in enumerate(words) if w == class_noun and i > 0]
        if not before:
            raise UserError(f"--identifier: cannot read it from the instance prompt {saved.instance_prompt!r}; give it")
        identifier = before[0]
    return identifier, class_noun


def run_select(cfg: SelectConfig, progress: bool = True) -> dict:
    cfg.validate()
    run = Path(cfg.run)
    saved = saved_config(run)
    if saved is None:
        raise UserError(f"--run {run}: not a training run (no readable config.yaml)")
    weights = parse_objective(cfg.objective, METRICS + LOGGED)
    method = get_method(saved)
    if cfg.scales and not method.lora_scaled:
        raise UserError(f"--scales: LoRA strengths, and --run {run} trained with --method {saved.method}")
    candidates = _candidates(run, method)
    if not candidates:
        raise UserError(f"--run {run}: holds no checkpoint and no final weights")
    logged = logged_at_steps(run)
    unlogged = [step for step, _ in candidates if step not in logged]
    if unlogged and any(name in LOGGED for name in weights):
        raise UserError(
            f"--objective {cfg.objective}: the run logged no validation loss at step {unlogged[0]} "
            "(train with --validation-loss-every N, a divisor of --checkpoint-every)"
        )
    base, prompts = _protocol(cfg, saved, run / "selection")
    rows = _score_candidates(cfg, base, prompts, candidates, method, progress)
    for r in rows:
        r["validation_loss"] = logged.get(r["step"])
    for r, f, v in zip(rows, pareto_front(rows), objective_values(rows, weights)):
        r["pareto"], r["objective"] = f, round(v, 6)
    best = max((r for r in rows if r["pareto"]), key=lambda r: r["objective"])
    selection = {
        **{k: best[k] for k in ("checkpoint", "step", "lora_scale_unet", "guidance")},
        "metrics": {k: best[k] for k in METRICS},
        "objective": cfg.objective,
        "prompts": prompts,
        "candidates": rows,
    }
    _write(run / "selection", run, rows, selection, best)
    print(_markdown(rows, best))
    return selection


def _protocol(cfg: SelectConfig, saved: TrainConfig, out: Path) -> tuple[EvaluateConfig, list[str]]:
    """The scoring every candidate shares (DreamBench prompts of the run's subject), and the prompts."""
    identifier, class_noun = _subject_words(saved, cfg)
    kind = dreambench.kind_of(class_noun) if cfg.kind == "auto" else cfg.kind
    prompts = dreambench.spread(dreambench.prompts(kind, identifier, class_noun), cfg.prompts)
    base = EvaluateConfig(
        model=saved.model,
        real=cfg.real or saved.instance_dir,
        class_noun=class_noun,
        identifier=identifier,
        kind=kind,
        images_per_prompt=cfg.images_per_prompt,
        num_class_images=cfg.num_class_images,
        class_prompt=saved.class_prompt,
        dino_model=cfg.dino_model,
        clip_model=cfg.clip_model,
        cache_dir=str(out / "embeddings"),
        embed_batch_size=cfg.embed_batch_size,
        steps=cfg.steps,
        scheduler=cfg.scheduler,
        seed=cfg.seed,
        dtype=cfg.dtype,
        width=cfg.width,
        height=cfg.height,
    )
    return base, prompts


def _score_candidates(cfg, base: EvaluateConfig, prompts, candidates, method, progress: bool) -> list[dict]:
    """A row of metrics per checkpoint x LoRA scale x guidance."""
    from ..models import default_guidance as guidance_of

    dino, clip = extractors_for(base)
    out = Path(base.cache_dir).parent
    default_guidance = guidance_of(base.model)
    rows = []
    for step, path in candidates:
        for scale in cfg.scales or [1.0]:
            for guidance in cfg.guidances or [default_guidance]:
                name = f"step-{step}-s{scale:g}-g{guidance:g}"
                over = {**method.sampling(path), "lora_scale_unet": scale, "guidance": guidance}
                ecfg = EvaluateConfig(**{**base.__dict__, **over, "output_dir": str(out / name)})
                ecfg.validate()
                real, generated, class_paths = collect(ecfg, prompts, progress)
                result, _ = score(ecfg, real, generated, class_paths, dino, clip)
                rows.append({"step": step, "checkpoint": str(path), "lora_scale_unet": scale, "guidance": guidance,
                             **{k: result.get(k) for k in METRICS}})  # fmt: skip
                log.info("%s: DINO %.3f CLIP-T %.3f", name, result["dino"], result["clip_t"])
    return rows


def _write(out: Path, run: Path, rows: list[dict], selection: dict, best: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(out / "selection.csv", buf.getvalue())
    io.write_text(out / "selection.md", _markdown(rows, best) + "\n")
    for metric in METRICS:
        if rows[0][metric] is None:
            continue
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(f"scale {r['lora_scale_unet']:g}, cfg {r['guidance']:g}", []).append(
                (r["step"], r[metric])
            )
        with io.atomic_path(out / f"{metric}.png") as tmp:
            line_plot(series, f"{metric.upper()} over training steps ({run.name})", "step").save(tmp, format="PNG")
    io.write_text(run / SELECTION, json.dumps(selection, indent=2))
    from ..card import write_card

    write_card(run)  # the card now shows what was measured and recommended


def _markdown(rows: list[dict], best: dict) -> str:
    head = "| step | LoRA scale | guidance | DINO | CLIP-I | CLIP-T | PRES | front | objective |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **recommended**" if r is best else ""
        pres = f"{r['pres']:.3f}" if r["pres"] is not None else "-"
        lines.append(
            f"| {r['step']} | {r['lora_scale_unet']:g} | {r['guidance']:g} | {r['dino']:.3f} | {r['clip_i']:.3f} | "
            f"{r['clip_t']:.3f} | {pres} | {'yes' if r['pareto'] else ''} | {r['objective']:.3f}{mark} |"
        )
    return "\n".join(lines)


def selected(run: str | Path) -> dict | None:
    """The run's recorded selection, if any (what `generate --lora RUN` uses)."""
    f = Path(run) / SELECTION
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return None
