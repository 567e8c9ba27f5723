"""Several concepts in one run (`--concepts FILE.yaml`): each with its photos, its instance prompt and,
optionally, its own prior preservation.

    - instance_dir: photos/my-cat
      instance_prompt: a photo of sks cat
      class_prompt: a photo of a cat
      class_dir: class-images/cat
    - instance_dir: photos/my-mug
      instance_prompt: a photo of zwx mug
      num_class_images: 50           # (default: --num-class-images)
      class_prompt: a photo of a mug
      class_dir: class-images/mug

Training takes the concepts in turn, one per micro-batch, whatever their photo counts: a concept
with 20 photos does not crowd out one with 4 (diffusers #752, #1843, #2599 report the quality drop
when one concept dominates).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError


@dataclasses.dataclass
class Concept:
    instance_dir: str
    instance_prompt: str
    class_prompt: str | None = None
    class_dir: str | None = None
    num_class_images: int = 100


_KEYS = tuple(f.name for f in dataclasses.fields(Concept))


def load_concepts(path: str, num_class_images: int) -> list[Concept]:
    """The concepts of a YAML file: a list of mappings (or {concepts: [...]}); relative folders are
    relative to the file. UserError naming the file, the entry and the problem."""
    import yaml

    f = Path(path)
    if not f.is_file():
        raise UserError(f"--concepts {path}: no such file")
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--concepts {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and "concepts" in data:
        data = data["concepts"]
    if not isinstance(data, list) or not data:
        raise UserError(f"--concepts {path}: must be a list of concepts (instance_dir, instance_prompt, ...)")
    out = []
    for i, entry in enumerate(data, start=1):
        where = f"--concepts {path}: concept {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be a mapping of instance_dir, instance_prompt, ...")
        unknown = [k for k in entry if k not in _KEYS]
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(_KEYS)})")
        for key in ("instance_dir", "instance_prompt"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f"{where}: '{key}' is required")
        if (entry.get("class_prompt") is None) != (entry.get("class_dir") is None):
            raise UserError(f"{where}: class_prompt and class_dir go together (prior preservation needs both)")
        n = entry.get("num_class_images", num_class_images)
        if not isinstance(n, int) or n < 1:
            raise UserError(f"{where}: num_class_images must be a whole number of at least 1, got {n!r}")

        def local(p):
            return None if p is None else str((f.parent / Path(p).expanduser()) if not Path(p).is_absolute() else p)

        out.append(
            Concept(
                instance_dir=local(entry["instance_dir"]),
                instance_prompt=entry["instance_prompt"],
                class_prompt=entry.get("class_prompt"),
                class_dir=local(entry.get("class_dir")),
                num_class_images=n,
            )
        )
    return out


def concepts_of(cfg) -> list[Concept]:
    """The run's concepts: those of --concepts, or the one the flags describe."""
    if cfg.concepts:
        return load_concepts(cfg.concepts, cfg.num_class_images)
    return [Concept(cfg.instance_dir, cfg.instance_prompt, cfg.class_prompt, cfg.class_dir, cfg.num_class_images)]
