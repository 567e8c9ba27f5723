"""`dreambooth grid`: X/Y/Z plots over any generation setting, LoRA runs and their checkpoints.

Every cell is cached under the hash of everything that decides it (the LoRA by its file's hash),
so a grid that overlaps an earlier one generates only its new cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import io
from .config import SCHEDULER_NAMES, GridConfig
from .errors import UserError
from .options import flag_name
from .runs import checkpoints_dir, is_checkpoint

# Axis name -> value type ("checkpoint" picks a step of the --lora run, or "final").
AXES: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "model": str,
    "lora": str,
    "checkpoint": str,
    "lora_scale_unet": float,
    "lora_scale_text_encoder": float,
    "guidance": float,
    "steps": int,
    "seed": int,
    "width": int,
    "height": int,
    "scheduler": str,
}
_NUM = r"\d+(?:\.\d+)?"
_RANGE = re.compile(rf"^({_NUM})-({_NUM})(?::({_NUM}))?$")


@dataclass
class Axis:
    name: str
    values: list
    labels: list[str]
    where: str = ""  # the flag and its text, for messages


def _split(raw: str) -> list[str]:
    """Values separated by '|' when there is one (prompts with commas), else by commas."""
    sep = "|" if "|" in raw else ","
    return [v.strip() for v in raw.split(sep) if v.strip()]


def _expand_range(m: re.Match, kind: type, where: str) -> list:
    a, b = float(m.group(1)), float(m.group(2))
    step = float(m.group(3)) if m.group(3) else 1.0
    if b < a or step <= 0:
        raise UserError(f"{where}: malformed range (start must not exceed end, step must be > 0)")
    if kind is int and not all(float(g).is_integer() for g in m.groups() if g):
        raise UserError(f"{where}: this axis takes whole numbers")
    n = int(round((b - a) / step + 1e-9)) + 1
    if n > 1000:
        raise UserError(f"{where}: {n} values is too many for one axis")
    values = [a + i * step for i in range(n)]
    return [int(round(v)) for v in values] if kind is int else [round(v, 6) for v in values]


def parse_axis(spec: str, flag: str) -> Axis:
    where = f"{flag} {spec}"
    if "=" not in spec:
        raise UserError(f"{where}: an axis is name=values, e.g. guidance=3,5,7.5")
    name, raw = spec.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in AXES:
        raise UserError(f"{where}: unknown axis parameter '{name}' (one of {', '.join(AXES)})")
    kind, items = AXES[name], _split(raw)
    if not items:
        raise UserError(f"{where}: no values")
    values: list = []
    for item in items:
        if kind in (int, float) and (m := _RANGE.match(item)):
            values += _expand_range(m, kind, where)
        elif kind in (int, float):
            try:
                values.append(kind(item))
            except ValueError:
                raise UserError(
                    f"{where}: '{item}' is not a {'whole number' if kind is int else 'number'} or range"
                ) from None
        else:
            values.append(item)
    if name == "scheduler" and (bad := [v for v in values if v not in SCHEDULER_NAMES]):
        raise UserError(f"{where}: unknown scheduler '{bad[0]}' (one of {', '.join(SCHEDULER_NAMES)})")
    if name == "checkpoint" and (bad := [v for v in values if not (v.isdigit() or v == "final")]):
        raise UserError(f"{where}: '{bad[0]}' is not a step number or 'final'")
    labels = [Path(v).name if name == "lora" else str(v) for v in values]
    return Axis(name, values, labels, where)


def _resolve_checkpoint(run: str | None, step: str, where: str) -> str:
    if not run:
        raise UserError(f"{where}: a checkpoint axis needs --lora RUN_FOLDER (or a lora= axis)")
    if step == "final":
        return run
    path = checkpoints_dir(run) / f"step-{step}"
    if not is_checkpoint(path):
        raise UserError(f"{where}: no complete checkpoint step-{step} under {checkpoints_dir(run)}")
    return str(path)


def cell_key(settings) -> str:
    """The cache key: every setting that decides the image, the LoRA by content, not by path."""
    d = dataclasses.asdict(settings)
    d.pop("lora")
    d.pop("lora_name")
    d.pop("embedding", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


def _axes(cfg: GridConfig) -> list[Axis]:
    axes = []
    for flag, spec in (("--x", cfg.x), ("--y", cfg.y), ("--z", cfg.z)):
        axes.append(parse_axis(spec, flag) if spec else Axis("", [None], [""]))
    names = [a.name for a in axes if a.name]
    if len(set(names)) != len(names):
        raise UserError(f"--x/--y/--z: an axis parameter appears twice ({', '.join(names)})")
    if "prompt" not in names and len(cfg.prompt) != 1:
        raise UserError(f"--prompt: give exactly one prompt, or a prompt= axis (got {len(cfg.prompt)})")
    return axes


@dataclass
class GridPlan:
    """Every cell's settings and its cached image's path, keyed by (z, y, x)."""

    axes: tuple[Axis, Axis, Axis]
    cells: dict[tuple[int, int, int], object]
    paths: dict[tuple[int, int, int], Path]

    def todo(self) -> list[tuple[tuple[int, int, int], object]]:
        """The cells not in the cache yet, in the order that changes the pipeline least."""
        return sorted(
            ((k, s) for k, s in self.cells.items() if not self.paths[k].exists()), key=lambda kv: _order(kv[1])
        )

    def image(self, zi: int = 0):
        """Grid z as it stands: cells not generated yet are left blank."""
        from .sheets import labelled_grid

        ax, ay, az = self.axes
        rows = [
            [_load(p) if (p := self.paths[(zi, yi, xi)]).exists() else None for xi in range(len(ax.values))]
            for yi in range(len(ay.values))
        ]
        title = _labels(az)[zi] if az.name else None
        return labelled_grid(rows, _labels(ax), _labels(ay) if ay.name else None, title)


def _load(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def plan_grid(cfg: GridConfig, engine) -> GridPlan:
    """Check the axes and work out every cell (nothing generated; the cache folder is created)."""
    from .generation import image_settings
    from .models import check_model

    cfg.validate()
    if cfg.model:
        check_model(cfg.model, config=cfg.model_config, allow_pickle=cfg.allow_pickle)
    ax, ay, az = _axes(cfg)
    where = {a.name: a.where for a in (ax, ay, az)}
    cells: dict[tuple[int, int, int], object] = {}
    for zi, zv in enumerate(az.values):
        for yi, yv in enumerate(ay.values):
            for xi, xv in enumerate(ax.values):
                over = {a.name: v for a, v in ((ax, xv), (ay, yv), (az, zv)) if a.name}
                if "checkpoint" in over:
                    run = over.get("lora", cfg.lora)
                    over["lora"] = _resolve_checkpoint(run, over.pop("checkpoint"), where["checkpoint"])
                if over.get("lora") == "none":
                    over["lora"] = None
                if "model" in over:
                    check_model(over["model"], "--x/--y/--z model=", allow_pickle=cfg.allow_pickle)
                prompt = over.pop("prompt", cfg.prompt[0] if cfg.prompt else "")
                seed = over.pop("seed", cfg.seed)
                cells[(zi, yi, xi)] = image_settings(cfg, engine, prompt, seed, **over)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir) / "cells"
    cache.mkdir(parents=True, exist_ok=True)
    return GridPlan((ax, ay, az), cells, {k: cache / f"{cell_key(s)}.png" for k, s in cells.items()})


def fill_grid(plan: GridPlan, engine):
    """Generate the cells the cache lacks, one at a time, yielding each cell's key once it is written."""
    from .generation import save_image

    todo = plan.todo()
    engine.check([s for _, s in todo])
    for key, s in todo:
        save_image(engine.render([s])[0], s, plan.paths[key])
        yield key


def run_grid(cfg: GridConfig, progress: bool = True) -> Path:
    """Generate (or take from the cache) every cell, then write the grids and index.html."""
    from tqdm.auto import tqdm

    from .generation import Engine

    engine = Engine(cfg.dtype, fuse=False)  # scales change from cell to cell: adapters stay unfused
    plan = plan_grid(cfg, engine)
    bar = tqdm(total=len(plan.todo()), desc="grid cells", unit="cell", disable=not progress)
    for _ in fill_grid(plan, engine):
        bar.update(1)
    bar.close()
    return write_grids(cfg, plan)


def write_grids(cfg: GridConfig, plan: GridPlan) -> Path:
    """grid.png (grid-NN.png per z value) and index.html, from a filled plan."""
    from .generation import infotext

    ax, ay, az = plan.axes
    out = Path(cfg.output_dir)
    grids = []
    for zi in range(len(az.values)):
        title = _labels(az)[zi] if az.name else None
        name = "grid.png" if len(az.values) == 1 else f"grid-{zi:02d}.png"
        with io.atomic_path(out / name) as tmp:
            plan.image(zi).save(tmp, format="PNG")
        grids.append(
            (
                name,
                title,
                [
                    [(plan.paths[(zi, yi, xi)], infotext(plan.cells[(zi, yi, xi)])) for xi in range(len(ax.values))]
                    for yi in range(len(ay.values))
                ],
            )
        )
    index = out / "index.html"
    io.write_text(index, _html(out, grids, ax, ay))
    return index


def _labels(axis: Axis) -> list[str]:
    return [f"{flag_name(axis.name)}={v}" for v in axis.labels]


def _order(s) -> tuple:
    """Cells that share a model and LoRA run together, so the pipeline changes as little as it can."""
    return (s.model, s.lora or "", s.lora_scale_unet, s.lora_scale_text_encoder, s.scheduler, s.prompt, s.seed)


def _html(out: Path, grids, ax: Axis, ay: Axis) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>dreambooth grid</title>",
        "<style>body{font-family:sans-serif}td{padding:2px;text-align:center;vertical-align:top}"
        "img.cell{width:160px;height:160px;cursor:pointer}#info{white-space:pre-wrap;background:#f4f4f4;padding:8px}</style>",
        "<p>Hover a cell for its settings; click it to show them below (and copy them into AUTOMATIC1111's "
        "PNG Info or <code>dreambooth generate --from-image</code> the image).</p><div id='info'></div>",
    ]
    for name, title, rows in grids:
        parts.append(f"<h2>{html.escape(title or 'grid')}</h2><p><a href='{name}'>{name}</a></p><table><tr><td></td>")
        parts += [f"<th>{html.escape(v)}</th>" for v in _labels(ax)]
        parts.append("</tr>")
        for yl, row in zip(_labels(ay) if ay.name else [""] * len(rows), rows):
            parts.append(f"<tr><th>{html.escape(yl)}</th>")
            for path, text in row:
                rel = os.path.relpath(path, out)
                esc = html.escape(text, quote=True)
                parts.append(
                    f"<td><a href='{html.escape(rel)}' onclick=\"document.getElementById('info').textContent="
                    f"this.firstChild.title;return false;\"><img class='cell' src='{html.escape(rel)}' title=\"{esc}\"></a></td>"
                )
            parts.append("</tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"
