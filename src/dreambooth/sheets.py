"""Contact sheets: images in labelled rows and columns (validation grids, X/Y grids, comparisons)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(
    rows: list[list[Image.Image | None]],
    col_labels: list[str] | None,
    row_labels: list[str] | None,
    title: str | None = None,
    cell: int = 128,
    label_width: int = 160,
) -> Image.Image:
    """A grid with column labels on top, row labels at the left and an optional title."""
    font = ImageFont.load_default(size=13)
    ncols = max(len(r) for r in rows)
    left = label_width if row_labels else 0
    col_lines = max((_wrap(c, cell // 7).count("\n") + 1 for c in col_labels or []), default=0)
    head = 16 * col_lines + 6 if col_labels else 0
    top = (24 if title else 0) + head
    grid = Image.new("RGB", (left + ncols * cell, top + len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    for x, label in enumerate(col_labels or []):
        draw.multiline_text(
            (left + x * cell + 4, top - head + 2), _wrap(label, cell // 7), fill="black", font=font, spacing=3
        )
    for y, row in enumerate(rows):
        if row_labels:
            draw.multiline_text(
                (6, top + y * cell + 6), _wrap(row_labels[y], label_width // 7), fill="black", font=font
            )
        for x, im in enumerate(row):
            if im is not None:
                grid.paste(
                    im.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS), (left + x * cell, top + y * cell)
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
