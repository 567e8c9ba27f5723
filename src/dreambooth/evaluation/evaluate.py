"""`dreambooth evaluate`: score generated images against the real photos with the paper's metrics,
or run the whole protocol (generate 4 images per DreamBench prompt and class images, then score)."""

from __future__ import annotations

import csv
import io as _io
import json
import logging
from collections import defaultdict
from pathlib import Path

from .. import io
from ..config import EvaluateConfig
from ..data.images import check_images, list_images
from ..errors import UserError
from . import dreambench
from .metrics import clip_i_score, clip_t_scores, dino_score, div_score, pres_score, strip_identifier

log = logging.getLogger(__name__)

# DreamBooth paper, Table 1 (DreamBench, 4 images per subject and prompt) and Table 3 (Imagen).
PAPER = {
    "dino": {"real images": 0.774, "DreamBooth (SD)": 0.668, "Textual Inversion": 0.569},
    "clip_i": {"real images": 0.885, "DreamBooth (SD)": 0.803, "Textual Inversion": 0.780},
    "clip_t": {"DreamBooth (SD)": 0.305, "Textual Inversion": 0.255},
    "pres": {"DreamBooth (Imagen), with prior preservation": 0.493, "without": 0.664},
    "div": {"DreamBooth (Imagen), with prior preservation": 0.391, "without": 0.371},
}
NAMES = {
    "dino": "DINO (higher is better)",
    "clip_i": "CLIP-I (higher)",
    "clip_t": "CLIP-T (higher)",
    "pres": "PRES (lower is better)",
    "div": "DIV (higher)",
}


def folder_images(folder: str | None, flag: str) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        raise UserError(f"{flag} {folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{flag} {folder}: holds no images")
    check_images(paths, flag)
    return paths


def embedded_prompt(path: Path) -> str | None:
    """The prompt an image was made with: its PNG 'parameters' text, else its JSON sidecar."""
    from ..formats.pnginfo import parse_a1111, read_parameters

    try:
        text = read_parameters(path)
    except OSError:
        text = None
    if text:
        return parse_a1111(text)["prompt"][0]
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())["prompt"]
        except (ValueError, KeyError, TypeError):
            return None
    return None


def prompts_for(paths: list[Path], cfg: EvaluateConfig) -> list[str]:
    if cfg.prompts_file:
        from ..generation import read_prompts_file

        lines = read_prompts_file(cfg.prompts_file)
        if len(lines) == 1:
            return lines * len(paths)
        if len(lines) != len(paths):
            raise UserError(
                f"--prompts-file {cfg.prompts_file}: {len(lines)} prompts for {len(paths)} images (give one, or one per image)"
            )
        return lines
    if cfg.prompt:
        return [cfg.prompt[0]] * len(paths)
    out = []
    for p in paths:
        prompt = embedded_prompt(p)
        if prompt is None:
            raise UserError(
                f"--generated {cfg.generated}: no prompt recoverable for {p.name} (no 'parameters' text, no JSON "
                "sidecar); give --prompt or --prompts-file"
            )
        out.append(prompt)
    return out


def protocol_prompts(cfg: EvaluateConfig) -> list[str]:
    kind = dreambench.kind_of(cfg.class_noun) if cfg.kind == "auto" else cfg.kind
    if cfg.prompts == "dreambench":
        return dreambench.prompts(kind, cfg.identifier, cfg.class_noun)
    path = Path(cfg.prompts)
    if not path.is_file():
        raise UserError(f"--prompts {cfg.prompts}: neither 'dreambench' nor a file")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"--prompts {cfg.prompts}: holds no prompt")
    return [ln.replace("{identifier}", cfg.identifier).replace("{class}", cfg.class_noun) for ln in lines]


def generate_protocol(
    cfg: EvaluateConfig, prompts: list[str], progress: bool
) -> tuple[list[tuple[Path, str]], list[Path]]:
    """Images for every protocol prompt (and the class prompt), named by the hash of their settings,
    so a rerun reuses what it made and never reuses an image made with other settings."""
    from tqdm.auto import tqdm

    from ..generation import Engine, image_settings, save_image
    from ..grid import cell_key
    from ..models import check_model

    check_model(cfg.model, config=cfg.model_config, allow_pickle=cfg.allow_pickle)
    engine = Engine(cfg.dtype)
    out = Path(cfg.output_dir)
    subject = [(out / "generated", p, cfg.seed + i) for p in prompts for i in range(cfg.images_per_prompt)]
    class_prompt = cfg.class_prompt or f"a {cfg.class_noun}"
    klass = [(out / "class", class_prompt, cfg.seed + i) for i in range(cfg.num_class_images)]
    jobs = [
        (folder / f"{cell_key(s)}.png", s)
        for folder, p, seed in subject + klass
        for s in [image_settings(cfg, engine, p, seed)]
    ]
    todo = [(path, s) for path, s in jobs if not path.exists()]
    engine.check([s for _, s in todo])
    for path, s in tqdm(todo, desc="generating", unit="img", disable=not progress):
        save_image(engine.render([s])[0], s, path)
    paths = [path for path, _ in jobs]
    return [(p, s.prompt) for p, (_, s) in zip(paths[: len(subject)], jobs)], paths[len(subject) :]


def collect(cfg: EvaluateConfig, prompts: list[str] | None = None, progress: bool = True):
    """The real photos, the generated images with their prompts, and the class images."""
    real = folder_images(cfg.real, "--real")
    if cfg.model:
        generated, class_paths = generate_protocol(cfg, prompts or protocol_prompts(cfg), progress)
    else:
        gen_paths = folder_images(cfg.generated, "--generated")
        generated = list(zip(gen_paths, prompts_for(gen_paths, cfg)))
        class_paths = folder_images(cfg.class_generated, "--class-generated") if cfg.class_generated else []
    return real, generated, class_paths


def extractors_for(cfg: EvaluateConfig):
    import torch

    from .extractors import ClipExtractor, DinoExtractor

    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir) / "embeddings"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return DinoExtractor(cfg.dino_model, cache, device), ClipExtractor(cfg.clip_model, cache, device)


def score(cfg: EvaluateConfig, real, generated, class_paths, dino, clip) -> tuple[dict, list[dict]]:
    """The metrics of generated images against the real ones (and of class images, for PRES)."""
    import torch

    from .extractors import lpips_distances

    paths = [p for p, _ in generated]
    scored = [p if cfg.keep_identifier else strip_identifier(p, cfg.identifier) for _, p in generated]
    bs = cfg.embed_batch_size
    real_dino, real_clip = dino.embed_files(real, bs), clip.embed_files(real, bs)
    gen_dino, gen_clip = dino.embed_files(paths, bs), clip.embed_files(paths, bs)
    unique = sorted(set(scored))
    text = dict(zip(unique, clip.embed_texts(unique)))
    clip_t = clip_t_scores(gen_clip, torch.stack([text[p] for p in scored]))
    metrics = {
        "dino": dino_score(gen_dino, real_dino),
        "clip_i": clip_i_score(gen_clip, real_clip),
        "clip_t": float(clip_t.mean()),
    }
    if class_paths:
        metrics["pres"] = pres_score(dino.embed_files(class_paths, bs), real_dino)
    groups = defaultdict(list)
    for path, prompt in generated:
        groups[prompt].append(path)
    pairs = [g for g in groups.values() if len(g) > 1]
    distances, why = lpips_distances(pairs) if pairs else (None, "no prompt has two or more images")
    if distances:
        metrics["div"] = div_score(distances)
    result = {
        **metrics,
        "div_unavailable": why if "div" not in metrics else None,
        "n_real": len(real),
        "n_generated": len(paths),
        "n_class": len(class_paths),
        "n_prompts": len(groups),
        "dino_model": cfg.dino_model,
        "clip_model": cfg.clip_model,
        "identifier": cfg.identifier,
        "clip_t_prompt_has_identifier": cfg.keep_identifier,
    }
    return result, _per_prompt(generated, gen_dino, gen_clip, real_dino, real_clip, clip_t)


def run_evaluate(cfg: EvaluateConfig, progress: bool = True) -> dict:
    cfg.validate()
    real, generated, class_paths = collect(cfg, progress=progress)
    dino, clip = extractors_for(cfg)
    result, rows = score(cfg, real, generated, class_paths, dino, clip)
    _write(Path(cfg.output_dir), result, rows)
    print(markdown_table(result))
    return result


def _per_prompt(generated, gen_dino, gen_clip, real_dino, real_clip, clip_t) -> list[dict]:
    by_prompt = defaultdict(list)
    for i, (_, prompt) in enumerate(generated):
        by_prompt[prompt].append(i)
    rows = []
    for prompt, idx in by_prompt.items():
        rows.append(
            {
                "prompt": prompt,
                "images": len(idx),
                "dino": round(dino_score(gen_dino[idx], real_dino), 6),
                "clip_i": round(clip_i_score(gen_clip[idx], real_clip), 6),
                "clip_t": round(float(clip_t[idx].mean()), 6),
            }
        )
    return rows


def markdown_table(r: dict) -> str:
    lines = ["| metric | this evaluation | paper |", "|---|---|---|"]
    for key, name in NAMES.items():
        value = f"{r[key]:.3f}" if r.get(key) is not None else ("unavailable" if key == "div" else "-")
        paper = "; ".join(f"{k} {v}" for k, v in PAPER[key].items())
        lines.append(f"| {name} | {value} | {paper} |")
    lines.append(
        f"\n{r['n_generated']} generated images over {r['n_prompts']} prompts, {r['n_real']} real, {r['n_class']} class; "
        f"extractors {r['dino_model']} and {r['clip_model']} (the paper's figures hold for DINO ViT-S/16 and CLIP ViT-B/32)."
    )
    if r.get("div_unavailable"):
        lines.append(f"DIV unavailable: {r['div_unavailable']}.")
    return "\n".join(lines)


def _write(out: Path, result: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "metrics.json", json.dumps(result, indent=2))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["prompt", "images", "dino", "clip_i", "clip_t"])
    writer.writeheader()
    writer.writerows(rows)
    io.write_text(out / "per_prompt.csv", buf.getvalue())
    io.write_text(out / "metrics.md", markdown_table(result) + "\n")
