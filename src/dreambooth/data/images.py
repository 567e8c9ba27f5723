"""Finding, checking and preparing training photos."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden and temporary files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def check_images(paths: list[Path], flag: str) -> None:
    """Open and decode every image, so a broken file fails before any model is loaded."""
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{flag}: {p} is not a readable image ({type(e).__name__})") from None


def instance_images(folder: str | None) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        raise UserError(f"--instance-dir {folder}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise UserError(f"--instance-dir {folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    check_images(paths, "--instance-dir")
    return paths


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image with its EXIF orientation applied, as RGB (alpha composited on white)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")


def crop_box(w: int, h: int, resolution: int, crop_xy: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of `resize_and_crop` for a w x h image (pure)."""
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    return nw, nh, round((nw - resolution) * crop_xy[0]), round((nh - resolution) * crop_xy[1])


def resize_and_crop(im: Image.Image, resolution: int, crop_xy: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """Resize the shorter side to `resolution`, then crop a square; crop_xy in [0, 1] places the crop
    (0.5, 0.5 is the centre crop)."""
    nw, nh, left, top = crop_box(*im.size, resolution, crop_xy)
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    return im.crop((left, top, left + resolution, top + resolution))


def micro_conditioning(
    size: tuple[int, int], resolution: int, crop_xy: tuple[float, float], flip: bool
) -> tuple[int, int, int, int, int, int]:
    """SDXL's size and crop conditioning of one training image (Podell et al., 2023, section 2.2):
    (original height, original width, crop top, crop left, target height, target width), the crop
    measured in the resized image, and in the mirrored one when flipped, as diffusers' SDXL scripts
    compute it (pure)."""
    w, h = size
    nw, _, left, top = crop_box(w, h, resolution, crop_xy)
    if flip:
        left = nw - resolution - left
    return (h, w, top, left, resolution, resolution)
