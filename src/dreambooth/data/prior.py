"""Class images for prior preservation (DreamBooth, section 3.3): generated once with the base model.

Image i is generated from seed + i and written atomically as class-{i:05d}.png, so an interrupted
generation continues where it stopped and makes the same images it would have made in one go.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import UserError
from .images import check_images, list_images

log = logging.getLogger(__name__)


def class_image_name(index: int) -> str:
    return f"class-{index:05d}.png"


def missing_class_indices(class_dir: str | Path, num_images: int) -> list[int]:
    """Indices of the class images still to generate (images already there count, whatever their name)."""
    existing = list_images(class_dir)
    need = num_images - len(existing)
    names = {p.name for p in existing}
    out: list[int] = []
    i = 0
    while len(out) < need:
        if class_image_name(i) not in names:
            out.append(i)
        i += 1
    return out


def class_images(class_dir: str | Path, num_images: int) -> list[Path]:
    """The class images training uses: the first `num_images` of the folder, by name."""
    paths = list_images(class_dir)[:num_images]
    if len(paths) < num_images:
        raise UserError(f"--class-dir {class_dir}: holds {len(paths)} images, {num_images} needed")
    return paths


def check_class_dir(class_dir: str | Path) -> None:
    p = Path(class_dir)
    if p.exists() and not p.is_dir():
        raise UserError(f"--class-dir {class_dir}: is a file, not a folder")
    check_images(list_images(p), "--class-dir")


def generate_class_images(
    pipe,
    prompt: str,
    class_dir: str | Path,
    indices: list[int],
    *,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int,
    resolution: int,
    progress: bool = True,
) -> int:
    """Generate the images `indices` into class_dir, batched, guided as the pipeline's family is;
    returns how many were written."""
    import torch
    from tqdm.auto import tqdm

    from ..families import family_of_pipeline
    from ..io import atomic_path

    class_dir = Path(class_dir)
    class_dir.mkdir(parents=True, exist_ok=True)
    family = family_of_pipeline(pipe)
    bar = tqdm(total=len(indices), desc="class images", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in batch]
        with torch.no_grad():
            images = pipe(
                prompt=[prompt] * len(batch),
                generator=generators,
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                **family.call_kwargs(None, guidance, False, pipe=pipe, batch=len(batch)),
            ).images
        for i, image in zip(batch, images):
            with atomic_path(class_dir / class_image_name(i)) as tmp:
                image.save(tmp, format="PNG")
        bar.update(len(batch))
    bar.close()
    return len(indices)
