"""Generating images with a base model and a trained LoRA, and laying them out in grids."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def generate(
    pipe, prompt: str, seeds: list[int], *, steps: int = 30, guidance: float = 7.5, size: int | None = None
) -> list[Image.Image]:
    """One image per seed; image i depends only on seeds[i], so any one can be reproduced alone."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(
        prompt=[prompt] * len(seeds),
        generator=generators,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
    ).images


def image_grid(
    rows: list[list[Image.Image]], row_labels: list[str], cell: int = 128, label_width: int = 200
) -> Image.Image:
    """Rows of images, each scaled to cell x cell, with a text label at the left of each row."""
    ncols = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_width + ncols * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for y, (row, label) in enumerate(zip(rows, row_labels)):
        draw.multiline_text((6, y * cell + 6), _wrap(label, 28), fill="black", font=font)
        for x, im in enumerate(row):
            grid.paste(
                im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (label_width + x * cell, y * cell)
            )
    return grid


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
